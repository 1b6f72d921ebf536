"""mechlab: the library behind the mechanistic-interpretability course.

Course-wide modules (what every chapter stands on): `runtime` (device, seeds, quiet
progress bars), `checks` (what every exercise's checks are made of), `grading`
(`grade_me`), `corpus` (the synthetic world) and `zoo` (its trained models). Above them,
one package per chapter, named by its topic (`mechlab.superposition`, ...,
`mechlab.steering`): its helpers and plots, its `checks` (visible and hidden) and its
`reference`, generated from `solutions/NN_topic.py`. `mechlab.chapters` finds a
chapter's modules by topic; the README's maintainer section has the map.

The names below load on first use, so that the grader, which only needs
`mechlab.grading`'s table, does not pay for importing torch in every process.
"""

import importlib
import os
from pathlib import Path

__version__ = "0.1.0"

_EXPORTS = {
    "setup": "mechlab.runtime",
    "progress": "mechlab.runtime",
    "pick_device": "mechlab.runtime",
    "seed_everything": "mechlab.runtime",
    "under_grading": "mechlab.runtime",
    "grade_me": "mechlab.grading",
}
__all__ = [*_EXPORTS, "__version__"]

# The grader sets MECHLAB_COURSE_ROOT when it grades a course other than the installed
# one (a test's fixture course): that course's chapter packages are importable too,
# after the installed ones (see mechlab.chapters).
_other_course = os.environ.get("MECHLAB_COURSE_ROOT")
if _other_course and (Path(_other_course) / "mechlab").is_dir():
    _folder = str((Path(_other_course) / "mechlab").resolve())
    if _folder not in [str(Path(p).resolve()) for p in __path__]:
        __path__.append(_folder)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mechlab' has no attribute {name!r}")
