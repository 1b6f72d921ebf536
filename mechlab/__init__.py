"""mechlab: the library behind the mechanistic-interpretability course.

Chapters import it for the pieces that are not the exercise itself: device and
seeds (`setup`), quiet progress bars (`progress`), the checks under each exercise
(`mechlab.checks`, `mechlab.exercises`), the reference solutions
(`mechlab.reference`, generated from `solutions/`), self-grading (`grade_me`),
and each chapter's plots and models.
"""

import mechlab.pristine  # noqa: F401  first, before any learner code: see its docstring
from mechlab.grading import grade_me
from mechlab.runtime import pick_device, progress, seed_everything, setup, under_grading

__version__ = "0.1.0"
__all__ = ["grade_me", "pick_device", "progress", "seed_everything", "setup", "under_grading", "__version__"]
