"""Grade one submitted notebook with nbgrader, and say per exercise what happened.

The submission is matched to its chapter by its content (the grade ids in its
cells, or their text: a file renamed by its student, downloaded from Colab, or
stripped of its metadata by an editor still grades), then autograded
in a throwaway nbgrader course built from the chapter's source notebook, so the
hidden tests and every locked cell come from the source, never from the
submission. Whatever the file holds, the result is a `GradeResult`: a file that
is not a notebook, a kernel that dies or a cell that never ends costs points,
not the grading run.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import re
import resource
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from autograder.chapters import Chapter
from autograder.course import ThrowawayCourse
from autograder.execute import KERNEL_DIED
from autograder.preprocessors import VISIBLE_PASSED, error_summary
from autograder.source import SourceNotebook, notebook_text, read_source
from mechlab.grading import ExerciseScore, format_table

log = logging.getLogger("autograder")
STUDENT = "submission"  # nbgrader's student id for a single file
MAX_MESSAGE = 2000


@dataclass
class GradeResult:
    chapter: str | None
    score: float
    max_score: float
    exercises: list[ExerciseScore]
    status: str = "ok"
    feedback: str | None = None  # path of the feedback HTML
    # cells outside the tests that raised (1-based): costs nothing, but tells an
    # instructor where a learner's notebook broke, and proves a solution runs clean
    cell_errors: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    def table(self) -> str:
        table = format_table(self.chapter, self.exercises, self.status)
        return f"{table}\nfeedback: {self.feedback}" if self.feedback else table


def _grade_ids(nb: nbformat.NotebookNode) -> set[str]:
    return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.get("cells", [])} - {None}


def _sources(nb: nbformat.NotebookNode) -> set[str]:
    return {c.get("source", "").strip() for c in nb.get("cells", [])} - {""}


def identify_chapter(nb: nbformat.NotebookNode | None, filename: str, chapters: list[Chapter]) -> Chapter | None:
    """The chapter whose graded cells the submission shares most; failing that (an
    editor that drops cell metadata), the one whose cells' text it shares most;
    failing that, its file name's NN_."""
    if nb is not None:
        releases = [(c, nbformat.read(c.release_notebook, as_version=4)) for c in chapters]
        for similarity in (lambda r: len(_grade_ids(r) & _grade_ids(nb)), lambda r: len(_sources(r) & _sources(nb))):
            best, chapter = max(((similarity(r), c) for c, r in releases), key=lambda pair: pair[0])
            if best > 0:
                return chapter
    number = re.search(r"(?<!\d)(\d\d)_", filename)
    matches = [c for c in chapters if number and c.name.startswith(number[1] + "_")]
    return matches[0] if len(matches) == 1 else None


def _error(cell: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    return next((o for o in cell.get("outputs", []) if o.output_type == "error"), None)


def _timed_out(cell: nbformat.NotebookNode) -> bool:
    """nbclient interrupts a cell at the timeout: the kernel reports a KeyboardInterrupt
    and nbgrader's Execute appends a CellTimeoutError after it."""
    return any(o.get("ename") == "CellTimeoutError" for o in cell.get("outputs", []) if o.output_type == "error")


def _message(cell: nbformat.NotebookNode | None, solution_cells: list[nbformat.NotebookNode], timeout: int) -> str:
    """What a learner should read about a test cell's outcome."""
    if cell is None:
        return "test cell missing from the graded notebook"
    error = _error(cell)
    if _timed_out(cell):
        return (f"timed out: the test ran longer than the chapter's limit of {timeout} s per cell "
                "(an endless loop in your function, or work far slower than the reference)")
    if error is not None:
        for solution in solution_cells:  # say where it really broke
            if _timed_out(solution):
                return (f"your solution cell timed out after {timeout} s (an endless loop?), "
                        f"so the test could not use it: {error_summary(error)}")[:MAX_MESSAGE]
            died = _error(solution)
            if died is not None and died.get("ename") == KERNEL_DIED:
                return (f"your solution cell killed the kernel ({died.evalue}), "
                        f"so the test could not use it: {error_summary(error)}")[:MAX_MESSAGE]
        stdout = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")
        which = "hidden tests failed" if VISIBLE_PASSED in stdout else "visible checks failed"
        return f"{which}: {error_summary(error)}"[:MAX_MESSAGE]
    for output in cell.get("outputs", []):
        if output.output_type == "stream" and output.name == "stderr":
            return ("failed: the cell wrote to stderr, which nbgrader counts as an error: "
                    + output.text.strip()[:MAX_MESSAGE])
    return "passed"


def _incidents(source: SourceNotebook, cells: dict[str, nbformat.NotebookNode]) -> list[str]:
    """'timeout in exercise 3', 'kernel died in exercise 2': what an instructor should see."""
    found = []
    for ex in source.exercises:
        own = [cells[i] for i in [*ex.solution_cells, ex.test_id] if i in cells]
        if any(_timed_out(c) for c in own):
            found.append(f"timeout in exercise {ex.number} ({ex.id})")
        if any(o.get("ename") == KERNEL_DIED for c in own for o in c.get("outputs", [])):
            found.append(f"kernel died in exercise {ex.number} ({ex.id})")
    return found


def _failure(outcome: dict) -> tuple[str, str]:
    """(status, message) for an autograde that nbgrader gave up on."""
    text = f"{outcome.get('error', '')}\n{outcome.get('log', '')}"
    if "DeadKernelError" in text or "Kernel died" in text:
        status = "kernel died"
        why = ("not graded: the kernel died while running the notebook (os._exit, a crash, or "
               "running out of memory), and nbgrader stops grading a notebook whose kernel dies")
    else:
        last = (outcome.get("error") or "").strip().splitlines()[-1:] or ["unknown error"]
        status = f"failed: {last[0][:300]}"
        why = f"not graded: nbgrader could not execute the notebook ({last[0][:300]})"
    return status, why


def _zero_result(chapter: Chapter | None, source: SourceNotebook | None, status: str, why: str) -> GradeResult:
    exercises = [ExerciseScore(ex.id, 0.0, float(ex.points), why) for ex in source.exercises] if source else []
    max_score = float(sum(e.max_score for e in exercises))
    return GradeResult(chapter.name if chapter else None, 0.0, max_score, exercises, status)


def _summary_html(chapter: str | None, exercises: list[ExerciseScore], status: str) -> str:
    """The per-exercise table every feedback file starts with."""
    rows = "".join(f"<tr><td>{html.escape(e.id)}</td><td>{e.score:g} / {e.max_score:g}</td>"
                   f"<td><pre style='white-space: pre-wrap'>{html.escape(e.message)}</pre></td></tr>"
                   for e in exercises)
    score, max_score = sum(e.score for e in exercises), sum(e.max_score for e in exercises)
    return (f"<div class='container' style='margin: 1em auto; max-width: 1000px'>"
            f"<h2>{html.escape(chapter or 'unknown chapter')}: {score:g} / {max_score:g} points</h2>"
            f"<p>{html.escape(status)}. Your notebook was run from scratch in a fresh kernel; "
            f"each exercise was graded on its own.</p>"
            f"<table class='table'><tr><th>exercise</th><th>points</th><th>result</th></tr>{rows}</table></div>")


def _write_plain_feedback(result: GradeResult, dest: Path) -> None:
    dest.write_text("<!doctype html><meta charset='utf-8'><title>Feedback</title><body>"
                    + _summary_html(result.chapter, result.exercises, result.status) + "</body>")


def grade_file(submission: Path, chapters: list[Chapter], feedback_dir: Path | None = None) -> GradeResult:
    """Grade `submission` against the matching chapter; always returns a result."""
    feedback_path = (feedback_dir or submission.parent) / f"{submission.stem}.feedback.html"
    try:
        nb = nbformat.read(submission, as_version=4)
    except Exception as e:  # not JSON, not a notebook, unreadable: all the same to a grade
        nb, problem = None, f"not a notebook: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    else:
        problem = None
    chapter = identify_chapter(nb, submission.name, chapters)
    source = read_source(chapter) if chapter else None
    if problem or chapter is None:
        status = problem or "not a chapter of this course: no graded cell or file name matches one"
        result = _zero_result(chapter, source, status, status)
    else:
        result = _autograde(nb, chapter, source, feedback_path)
    if result.feedback is None:
        feedback_path.parent.mkdir(parents=True, exist_ok=True)
        _write_plain_feedback(result, feedback_path)
        result.feedback = str(feedback_path)
    return result


RELEASE_CACHE = "MECHLAB_GRADER_CACHE"  # a folder: class grading shares one release per chapter
MEMORY_LIMIT = "MECHLAB_GRADER_MEMORY_GB"  # address-space limit of a grading process and its kernel


def limit_memory_from_env() -> None:
    """Apply $MECHLAB_GRADER_MEMORY_GB to this process; the kernel it starts inherits it,
    so a submission that allocates too much gets a MemoryError in its own cell."""
    gigabytes = os.environ.get(MEMORY_LIMIT)
    if gigabytes:
        limit = int(float(gigabytes) * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def released_course(chapter: Chapter, source: SourceNotebook, root: Path) -> ThrowawayCourse:
    """A throwaway course at `root` with the chapter generated (gradebook, release).

    When $MECHLAB_GRADER_CACHE names a folder, the generated course is built there once
    per version of the chapter and copied for each submission (generate_assignment
    costs a second or two; a copy, milliseconds)."""
    text = notebook_text(source.notebook)
    cache = os.environ.get(RELEASE_CACHE)
    if cache:
        template = Path(cache) / f"{chapter.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
        if not template.exists():
            with tempfile.TemporaryDirectory(dir=cache) as building:
                ThrowawayCourse(chapter, Path(building) / "course", source.meta.timeout).generate_assignment(text)
                try:  # another worker may have finished first: theirs is as good
                    os.rename(Path(building) / "course", template)
                except OSError:
                    pass
        shutil.copytree(template, root)
        return ThrowawayCourse(chapter, root, timeout=source.meta.timeout)
    course = ThrowawayCourse(chapter, root, timeout=source.meta.timeout)
    course.generate_assignment(text)
    return course


def _autograde(nb: nbformat.NotebookNode, chapter: Chapter, source: SourceNotebook,
               feedback_path: Path) -> GradeResult:
    timeout = source.meta.timeout
    with tempfile.TemporaryDirectory(prefix="mechlab-grade-") as tmp:
        tmp = Path(tmp)
        course = released_course(chapter, source, tmp / "course")
        submitted = tmp / "submitted.ipynb"
        nbformat.write(nb, submitted)
        course.submit(submitted, STUDENT)
        log.info("autograding %s as chapter %s (per-cell timeout %d s)", feedback_path.stem, chapter.name, timeout)
        outcome = course.autograde(STUDENT)
        if not outcome["success"]:
            log.warning("nbgrader autograde failed:\n%s", outcome.get("log", ""))
            return _zero_result(chapter, source, *_failure(outcome))
        graded = nbformat.read(course.autograded_notebook(STUDENT), as_version=4)
        cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in graded.cells}
        scores = course.scores(STUDENT)
        exercises = []
        for ex in source.exercises:
            score, max_score = scores.get(ex.test_id, (0.0, float(ex.points)))
            solutions = [cells[i] for i in ex.solution_cells if i in cells]
            exercises.append(ExerciseScore(ex.id, score, max_score,
                                            _message(cells.get(ex.test_id), solutions, timeout)))
        restored = [ex.id for ex in source.exercises if ex.test_id not in _grade_ids(nb)]
        incidents = _incidents(source, cells) + (
            [f"test cells deleted or stripped of their metadata, restored from the source: {', '.join(restored)}"]
            if restored else [])
        status = "; ".join(incidents) or "ok"
        cell_errors = [f"cell {i + 1}: {error_summary(_error(c))[:200]}" for i, c in enumerate(graded.cells)
                       if _error(c) is not None and not c.metadata.get("nbgrader", {}).get("grade")]
        feedback_path.parent.mkdir(parents=True, exist_ok=True)
        html_text = course.generate_feedback(STUDENT).read_text()
        feedback_path.write_text(html_text.replace("<body>", "<body>\n" + _summary_html(
            chapter.name, exercises, status), 1))
    return GradeResult(chapter.name, sum(e.score for e in exercises), sum(e.max_score for e in exercises),
                       exercises, status, str(feedback_path), cell_errors)
