"""Where a chapter's modules are, for the course-wide code that looks them up by name.

Chapter `NN_topic` is the package `mechlab.<topic>`: its checks (visible and hidden) in
`mechlab.<topic>.checks` and its reference solutions, generated from
`solutions/NN_topic.py`, in `mechlab.<topic>.reference`. The course-wide modules never
import a chapter; they find one here, by its topic, when a learner's notebook or the
grader names it.

The grader sets `MECHLAB_COURSE_ROOT` when it grades a course other than the installed
one (a test's fixture course); `mechlab/__init__.py` then adds that course's `mechlab/`
folder to the package, so its chapters are found here too.
"""

from __future__ import annotations

import importlib
import types
from pathlib import Path

import mechlab


def reference(topic: str) -> types.ModuleType:
    """`mechlab.<topic>.reference`: the chapter's reference solutions."""
    return importlib.import_module(f"mechlab.{topic}.reference")


def checks(topic: str) -> types.ModuleType:
    """`mechlab.<topic>.checks`: the chapter's `check_x` and `grade_x` for every exercise `x`."""
    return importlib.import_module(f"mechlab.{topic}.checks")


def topic_of(module_name: str) -> str | None:
    """The chapter of a module of one (`superposition` for `mechlab.superposition.checks`)."""
    parts = module_name.split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "mechlab" else None


def topics() -> list[str]:
    """Every chapter package that has a reference module, in the installed course and in
    the one being graded."""
    found = {d.name for folder in mechlab.__path__ for d in Path(folder).iterdir()
             if d.is_dir() and (d / "reference.py").is_file()}
    return sorted(found)
