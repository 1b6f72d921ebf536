"""Self-grading: run a chapter's hidden tests on your functions, in your kernel.

`mechlab.grade_me()` (the last cell of every chapter) finds each exercise's function
in the notebook, runs the same hidden tests the instructor's grader runs, and prints
the same per-exercise table. It measures the CPU time each hidden test takes, as the
grader's per-cell limit counts it, and fails a test over the limit as the grader would.
It is a preview: the instructor's grading re-executes
the whole notebook from scratch in a fresh kernel, so a function that only works
because of a cell you ran out of order, or deleted since, will not count there.

The table format is shared with `python -m autograder grade`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import time
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class ExerciseScore:
    id: str
    score: float
    max_score: float
    message: str
    cpu_seconds: float | None = None  # CPU time of the exercise's test cell (the grader), or of its hidden tests


def format_table(chapter: str | None, exercises: list[ExerciseScore], status: str = "ok") -> str:
    """`chapter X: S / M points (status)`, then one line per exercise with its message."""
    score, max_score = sum(e.score for e in exercises), sum(e.max_score for e in exercises)
    width = max([len(e.id) for e in exercises] + [8])
    lines = [f"chapter {chapter or '?'}: {score:g} / {max_score:g} points ({status})"]
    for e in exercises:
        first = e.message.splitlines()[0] if e.message else ""
        lines.append(f"  {e.id:<{width}}  {e.score:>4g} / {e.max_score:<4g} {first}")
    return "\n".join(lines)


def cpu_seconds() -> float:
    """CPU time of this process (every thread) and of the children it has waited for: what
    the grader's per-cell limit counts (it reads the kernel's whole process tree)."""
    try:
        import resource
    except ImportError:  # Windows
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


WARN_SHARE = 0.5  # a hidden test using over half the limit here is too close for comfort


def _score(test, fn, cpu_limit: float | None) -> tuple[bool, str, float]:
    """Run one hidden test on `fn`: (passed, message, CPU seconds). Over the grader's CPU
    limit counts as failed, as under grading; over half of it passes with a warning."""
    from mechlab.checks import self_grading  # watches for the reference as the grader does

    quiet = io.StringIO()
    start = cpu_seconds()
    try:
        with contextlib.redirect_stdout(quiet), self_grading():
            test(fn)
    except Exception as e:  # CheckFailed, and whatever the learner's function raised
        return False, f"{type(e).__name__}: {e}", cpu_seconds() - start
    used = cpu_seconds() - start
    if cpu_limit is not None and used > cpu_limit:
        return False, (f"over the grader's limit: the hidden tests used {used:.0f} s of CPU time here, and a "
                       f"graded cell may use {cpu_limit:g} s (the grader would stop it: make it faster)"), used
    if cpu_limit is not None and used > WARN_SHARE * cpu_limit:
        return True, (f"passed, but close to the grader's limit: the hidden tests used {used:.0f} s of CPU time "
                      f"here, of the {cpu_limit:g} s a graded cell may use (the grader runs on a CPU)"), used
    return True, "passed", used


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
            ok, message, used = _score(getattr(tests, f"grade_{exercise}"), fn, getattr(reference, "CPU_LIMIT", None))
        results.append(ExerciseScore(exercise, float(points) if ok else 0.0, float(points), message,
                                     None if fn is None else round(used, 2)))
    print(format_table(chapter, results, "self-graded in this kernel"))
    print("\nThis is a preview. The instructor's grader re-executes the whole notebook from scratch "
          "in a fresh kernel: run Kernel > Restart & Run All before you hand it in.")
    return results
