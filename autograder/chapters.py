"""Where each chapter's files live, and what its source says about it.

A chapter is named `NN_topic` (two digits, then snake_case). Its one source is
`solutions/NN_topic.py`, a jupytext percent script; everything else is derived:

    solutions/NN_topic.py  --build-->  solutions/NN_topic.ipynb     (nbgrader source notebook)
                                       chapters/NN_topic.ipynb      (release, via nbgrader)
                                       mechlab/topic/reference.py   (reference solutions)

The chapter's package `mechlab/topic/` (helpers, plots, `checks.py`) is written by hand;
the build only writes `reference.py` into it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHAPTER_NAME = re.compile(r"^(?P<number>\d\d)_(?P<topic>[a-z][a-z0-9_]*)$")


@dataclass(frozen=True)
class Chapter:
    """The paths of one chapter under a course root (the repo, or a test's tmp copy)."""

    name: str  # e.g. "01_superposition"; also nbgrader's assignment and notebook id
    root: Path

    def __post_init__(self) -> None:
        if not CHAPTER_NAME.match(self.name):
            raise ValueError(f"chapter name {self.name!r} is not of the form NN_topic (e.g. 01_superposition)")

    @property
    def topic(self) -> str:
        return CHAPTER_NAME.match(self.name)["topic"]

    @property
    def source(self) -> Path:
        return self.root / "solutions" / f"{self.name}.py"

    @property
    def solution_notebook(self) -> Path:
        return self.root / "solutions" / f"{self.name}.ipynb"

    @property
    def release_notebook(self) -> Path:
        return self.root / "chapters" / f"{self.name}.ipynb"

    @property
    def package(self) -> Path:
        """`mechlab/<topic>/`: the chapter's helpers, plots, checks and reference."""
        return self.root / "mechlab" / self.topic

    @property
    def reference_module(self) -> Path:
        return self.package / "reference.py"


def discover(root: Path = REPO_ROOT) -> list[Chapter]:
    """Every chapter whose source is in `root/solutions/`, in chapter order."""
    sources = sorted((root / "solutions").glob("*.py"))
    chapters = [Chapter(p.stem, root) for p in sources if CHAPTER_NAME.match(p.stem)]
    if not chapters:
        raise FileNotFoundError(f"no chapter sources (solutions/NN_topic.py) under {root}")
    return chapters
