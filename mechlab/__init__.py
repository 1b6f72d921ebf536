"""mechlab: the library behind the mechanistic-interpretability course.

Chapters import it for the pieces that are not the exercise itself: device and
seeds (`setup`), quiet progress bars (`progress`), the checks under each exercise
(`mechlab.checks`, `mechlab.exercises`), the reference solutions
(`mechlab.reference`, generated from `solutions/`), self-grading (`grade_me`),
and each chapter's plots and models.

The names below load on first use, so that the grader, which only needs
`mechlab.grading`'s table, does not pay for importing torch in every process.
"""

import importlib

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


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mechlab' has no attribute {name!r}")
