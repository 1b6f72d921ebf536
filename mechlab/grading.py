"""Self-grading: run a chapter's hidden tests on your functions, in your kernel.

`mechlab.grade_me()` (the last cell of every chapter) finds each exercise's function
in the notebook, runs the same hidden tests the instructor's grader runs, and prints
the same per-exercise table. It is a preview: the instructor's grading re-executes
the whole notebook from scratch in a fresh kernel, so a function that only works
because of a cell you ran out of order, or deleted since, will not count there.

The table format is shared with `python -m autograder grade`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class ExerciseScore:
    id: str
    score: float
    max_score: float
    message: str


def format_table(chapter: str | None, exercises: list[ExerciseScore], status: str = "ok") -> str:
    """`chapter X: S / M points (status)`, then one line per exercise with its message."""
    score, max_score = sum(e.score for e in exercises), sum(e.max_score for e in exercises)
    width = max([len(e.id) for e in exercises] + [8])
    lines = [f"chapter {chapter or '?'}: {score:g} / {max_score:g} points ({status})"]
    for e in exercises:
        first = e.message.splitlines()[0] if e.message else ""
        lines.append(f"  {e.id:<{width}}  {e.score:>4g} / {e.max_score:<4g} {first}")
    return "\n".join(lines)


def _score(test, fn) -> tuple[bool, str]:
    from mechlab.checks import self_grading  # watches for the reference as the grader does

    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), self_grading():
            test(fn)
    except Exception as e:  # CheckFailed, and whatever the learner's function raised
        return False, f"{type(e).__name__}: {e}"
    return True, "passed"


def grade_me(chapter: str | None = None, namespace: Mapping | None = None) -> list[ExerciseScore]:
    """Run the hidden tests of `chapter` (default: the one whose setup cell ran) on the
    functions of the same names in `namespace` (default: the caller's globals)."""
    from mechlab import runtime  # here, not at the top: the grader imports this module without torch

    if runtime.under_grading():  # the grader runs the hidden tests in each test cell already
        print("Graded by the instructor's grader: see the feedback for your scores.")
        return []
    chapter = chapter or runtime.current_chapter()
    if chapter is None:
        raise ValueError("which chapter? Run the chapter's setup cell first, or pass chapter='01_superposition'")
    if namespace is None:
        namespace = inspect.currentframe().f_back.f_globals
    topic = chapter.split("_", 1)[1]
    from mechlab import chapters

    reference, tests = chapters.reference(topic), chapters.checks(topic)
    results = []
    for exercise, points in reference.POINTS.items():
        fn = namespace.get(exercise)
        if fn is None:
            ok, message = False, f"no function named {exercise} in this notebook (did you run its cell?)"
        else:
            ok, message = _score(getattr(tests, f"grade_{exercise}"), fn)
        results.append(ExerciseScore(exercise, float(points) if ok else 0.0, float(points), message))
    print(format_table(chapter, results, "self-graded in this kernel"))
    print("\nThis is a preview. The instructor's grader re-executes the whole notebook from scratch "
          "in a fresh kernel: run Kernel > Restart & Run All before you hand it in.")
    return results
