"""Reference solutions, one module per chapter, GENERATED from `solutions/NN_topic.py`
by `python -m autograder build` (never edit them by hand).

A learner who is stuck on an exercise can take the reference version and go on:
``from mechlab.reference.superposition import toy_forward``. The hidden tests
recognise these functions and give them no points (`mechlab.checks.own_work`).

The grader sets `MECHLAB_COURSE_ROOT` when it grades a course other than the
installed one (a test's fixture course): that course's reference modules are then
importable here too.
"""

import os
from pathlib import Path

_other_course = os.environ.get("MECHLAB_COURSE_ROOT")
if _other_course and (Path(_other_course) / "mechlab" / "reference").is_dir():
    _folder = str((Path(_other_course) / "mechlab" / "reference").resolve())
    if _folder not in [str(Path(p).resolve()) for p in __path__]:
        __path__.append(_folder)
