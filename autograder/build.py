"""`python -m autograder build [--check]`: regenerate everything derived from `solutions/*.py`.

For each chapter: the nbgrader source notebook (`solutions/NN_topic.ipynb`), the
release (`chapters/NN_topic.ipynb`, written by nbgrader's generate_assignment,
which clears solutions and hidden tests and locks the graded cells), and the
reference module (`mechlab/topic/reference.py`). With `check=True` nothing is
written: every file that differs from what the build would write is named.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import nbformat

from autograder.chapters import Chapter
from autograder.course import ThrowawayCourse
from autograder.source import BEGIN_HIDDEN, BEGIN_SOLUTION, notebook_text, read_source

log = logging.getLogger("autograder")


def clean_release(path: Path) -> str:
    """nbgrader's release, with the execution state a source must not carry stripped."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    text = notebook_text(nb)
    for marker in (BEGIN_SOLUTION, BEGIN_HIDDEN):
        if marker in text:  # would mean nbgrader kept a solution: never ship that
            raise RuntimeError(f"the release of {path.name} still holds '{marker}'")
    return text


def derived_files(chapter: Chapter) -> dict[Path, str]:
    """Every file the build writes for `chapter`, with its content."""
    source = read_source(chapter)
    solution_text = notebook_text(source.notebook)
    with tempfile.TemporaryDirectory(prefix="mechlab-build-") as tmp:
        course = ThrowawayCourse(chapter, Path(tmp), source.meta.limits)
        release_text = clean_release(course.generate_assignment(solution_text))
    return {
        chapter.solution_notebook: solution_text,
        chapter.release_notebook: release_text,
        chapter.reference_module: source.reference_code,
    }


def build(chapters: list[Chapter], *, check: bool = False) -> list[Path]:
    """Write (or, with check, compare) every derived file; returns the stale ones."""
    stale: list[Path] = []
    for chapter in chapters:
        for path, text in derived_files(chapter).items():
            current = path.read_text() if path.exists() else None
            if current == text:
                continue
            stale.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                log.info("wrote %s", path.relative_to(chapter.root))
    return stale
