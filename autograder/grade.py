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

import copy
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
from autograder.execute import KERNEL_DIED, KERNEL_UNRESPONSIVE, NOT_RUN, USAGE, CellLimits, timeout_error
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
    return {(c.get("source") or "").strip() for c in nb.get("cells", [])} - {""}


def sanitize(nb: nbformat.NotebookNode, source: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """What a submission's cells claim about themselves is never trusted: before nbgrader
    reads it, a cell with a grade id of the chapter gets the source's nbgrader metadata
    back (flags flipped by hand, or an old schema version, would otherwise abort the
    whole autograde), and a cell with a grade id the chapter does not have (copied from
    another chapter, or invented) becomes an ordinary cell. Missing sources become ""."""
    known = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]
             for c in source.cells if "nbgrader" in c.metadata}
    for cell in nb.cells:
        if not isinstance(cell.get("source"), str):
            cell.source = "".join(cell.source) if isinstance(cell.get("source"), list) else ""
        if not isinstance(cell.get("metadata"), dict):
            cell.metadata = nbformat.NotebookNode()
        meta = cell.metadata.get("nbgrader")
        if meta is None:
            continue
        grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
        if isinstance(grade_id, str) and grade_id in known:
            cell.metadata["nbgrader"] = copy.deepcopy(known[grade_id])
        else:
            del cell.metadata["nbgrader"]
    return nb


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


def _timed_out(cell: nbformat.NotebookNode) -> str | None:
    """Which limit the cell broke, or None. The executor interrupts a cell over a limit:
    the kernel reports a KeyboardInterrupt and nbgrader's Execute appends a CellTimeoutError
    after it, whose value says which limit and by how much (execute.py)."""
    error = timeout_error(cell)
    return None if error is None else (error.get("evalue") or "the cell hit its time limit")


def _used(cell: nbformat.NotebookNode | None) -> float | None:
    """CPU seconds the cell used, as the executor recorded it."""
    usage = (cell or {}).get("metadata", {}).get(USAGE) or {}
    return usage.get("cpu_seconds") if isinstance(usage.get("cpu_seconds"), (int, float)) else None


def _kernel_lost(cell: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    """The error output `ResilientExecute` adds to a cell that killed or hung the kernel."""
    return next((o for o in cell.get("outputs", []) if o.output_type == "error"
                 and o.get("ename") in (KERNEL_DIED, KERNEL_UNRESPONSIVE, NOT_RUN)), None)


def _reference_needed(limits: CellLimits, reference_cpu: float | None) -> str:
    needed = f"; the reference solution's test needs about {reference_cpu:.1f} s" if reference_cpu is not None else ""
    return f"(limits per cell: {limits.describe()}{needed})"


def _message(cell: nbformat.NotebookNode | None, solution_cells: list[nbformat.NotebookNode], limits: CellLimits,
             reference_cpu: float | None = None) -> str:
    """What a learner should read about a test cell's outcome."""
    if cell is None:
        return "test cell missing from the graded notebook"
    error = _error(cell)
    why = _timed_out(cell)
    if why:
        return f"timed out: {why} {_reference_needed(limits, reference_cpu)}"
    lost = _kernel_lost(cell)
    if lost is not None:
        return f"the test could not run: {lost.evalue}"[:MAX_MESSAGE]
    if error is not None:
        for solution in solution_cells:  # say where it really broke
            lost = _kernel_lost(solution)
            if lost is not None:
                what = {KERNEL_DIED: "killed the kernel", KERNEL_UNRESPONSIVE: "hung the kernel"}.get(
                    lost.ename, "was not run")
                return (f"your solution cell {what} ({lost.evalue}), "
                        f"so the test could not use it: {error_summary(error)}")[:MAX_MESSAGE]
            if stopped := _timed_out(solution):
                return (f"your solution cell timed out ({stopped}: an endless loop?), "
                        f"so the test could not use it: {error_summary(error)}")[:MAX_MESSAGE]
            raised = _error(solution)
            if raised is not None and "course's reference" in error_summary(error):
                return (f"your solution cell raised {error_summary(raised)}, so the test got the course's "
                        f"reference in its place: {error_summary(error)}")[:MAX_MESSAGE]
        stdout = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")
        which = "hidden tests failed" if VISIBLE_PASSED in stdout else "visible checks failed"
        return f"{which}: {error_summary(error)}"[:MAX_MESSAGE]
    for output in cell.get("outputs", []):
        if output.output_type == "stream" and output.name == "stderr":
            return ("failed: the cell wrote to stderr, which nbgrader counts as an error: "
                    + output.text.strip()[:MAX_MESSAGE])
    return "passed"


REFERENCE_CPU = Path(__file__).parent / "reference_cpu.json"


def reference_cpu_seconds(chapter: Chapter) -> dict[str, float]:
    """CPU seconds each test cell of the chapter's reference solution used when it was last
    measured (`benchmarks/reference_cpu.py`, which writes autograder/reference_cpu.json)."""
    try:
        return json.loads(REFERENCE_CPU.read_text()).get(chapter.name, {})
    except (OSError, ValueError):
        return {}


def _incident(cells: list[nbformat.NotebookNode], where: str) -> list[str]:
    enames = {o.get("ename") for c in cells for o in c.get("outputs", []) if o.output_type == "error"}
    found = []
    if "CellTimeoutError" in enames:
        found.append(f"timeout in {where}")
    if KERNEL_DIED in enames:
        found.append(f"kernel died in {where}")
    if KERNEL_UNRESPONSIVE in enames:
        found.append(f"kernel hung in {where}")
    return found


def _incidents(source: SourceNotebook, graded: nbformat.NotebookNode) -> list[str]:
    """'timeout in exercise 3', 'kernel died in exercise 2', 'timeout in cell 14 (outside the
    exercises)': what an instructor should see."""
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in graded.cells}
    found = []
    for ex in source.exercises:
        own = [cells[i] for i in [*ex.solution_cells, ex.test_id] if i in cells]
        found += _incident(own, f"exercise {ex.number} ({ex.id})")
    for i, cell in enumerate(graded.cells):
        if not cell.metadata.get("nbgrader", {}).get("grade_id"):
            found += _incident([cell], f"cell {i + 1} (outside the exercises)")
    if any(_kernel_lost(c) is not None and _kernel_lost(c).ename == NOT_RUN for c in graded.cells):
        found.append("stopped: the notebook kept breaking its kernel")
    return found


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit|Interrupt))(?::\s*(.*))?$")


def failure_cause(text: str) -> str:
    """The most telling exception line of nbgrader's log: the last one that is not
    nbgrader's own "Please see the above traceback" wrapper."""
    for line in reversed(text.strip().splitlines()):
        match = _EXCEPTION_LINE.match(line.strip())
        if match and match[1] != "NbGraderException":
            return line.strip()[:300]
    return "unknown error"


def _failure(outcome: dict) -> tuple[str, str]:
    """(status, message) for an autograde that nbgrader gave up on."""
    text = f"{outcome.get('log', '')}\n{outcome.get('error', '')}"
    if "DeadKernelError" in text or "Kernel died" in text:
        status = "kernel died"
        why = ("not graded: the kernel died while running the notebook (os._exit, a crash, or "
               "running out of memory), and nbgrader stops grading a notebook whose kernel dies")
    else:
        cause = failure_cause(text)
        status = f"failed: {cause}"
        why = f"not graded: nbgrader could not execute the notebook ({cause})"
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


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def default_feedback_dir(submission: Path, root: Path) -> Path:
    """Next to the submission, unless that is inside the course: grading leaves the
    course's checkout as it found it, so feedback then goes to the temp folder."""
    inside = submission.resolve().is_relative_to(root.resolve())
    return Path(tempfile.gettempdir()) / "mechlab-feedback" if inside else submission.parent


@dataclass(frozen=True)
class Execution:
    """How a submission's kernel runs: sandboxed (sandbox.py), the folders it must not
    see, and whether its own output reaches the terminal."""

    sandbox: bool = False
    hidden: tuple[Path, ...] = ()
    verbose: bool = False


def grade_file(submission: Path, chapters: list[Chapter], feedback_dir: Path | None = None,
               releases: ReleaseCache | None = None, execution: Execution = Execution(),
               graded_copy: Path | None = None) -> GradeResult:
    """Grade `submission` against the matching chapter; always returns a result.
    `graded_copy`: also write the executed, graded notebook there (hidden tests and all:
    for the instructor and the course's tests, never for learners)."""
    root = chapters[0].root
    feedback_path = (feedback_dir or default_feedback_dir(submission, root)) / f"{submission.stem}.feedback.html"
    try:
        nb = nbformat.read(submission, as_version=4)
        if not isinstance(nb.get("cells"), list):
            raise ValueError("it has no list of cells")
    except Exception as e:  # not JSON, not a notebook, unreadable: all the same to a grade
        nb, problem = None, f"not a notebook: {_first_line(e)}"
    else:
        problem = None
    chapter = source = None
    # the kernel imports this course's reference modules (for a course other than the
    # installed one, from its root: see mechlab/__init__.py)
    os.environ["MECHLAB_COURSE_ROOT"] = str(root)
    trusted = course_digests(root)
    try:
        chapter = identify_chapter(nb, submission.name, chapters)
        source = read_source(chapter) if chapter else None
        if problem or chapter is None:
            status = problem or "not a chapter of this course: no graded cell or file name matches one"
            result = _zero_result(chapter, source, status, status)
        else:
            result = _autograde(sanitize(nb, source.notebook), chapter, source, feedback_path, releases, execution,
                                graded_copy)
    except Exception as e:  # a submission the grader could not handle: it costs that submission only
        log.exception("grading %s failed", submission)
        status = f"grader error: {_first_line(e)}"
        result = _zero_result(chapter, source, status, f"not graded: {status}")
    # what the grader itself wrote (the feedback, when it goes into the course) is not tampering
    changed = [f for f in changed_files(trusted, course_digests(root)) if Path(f) != feedback_path.resolve()]
    if changed:  # the submission wrote into the course itself: nothing it earned counts
        log.error("the course's files changed while %s was graded: %s. Restore them (git checkout -- %s) "
                  "before grading anything else.", submission, ", ".join(changed), " ".join(COURSE_CODE))
        status = f"{TAMPERED}: {', '.join(changed)[:300]}"
        result = _zero_result(chapter, source, status, f"0 points: {status}")
    if result.feedback is None:
        feedback_path.parent.mkdir(parents=True, exist_ok=True)
        _write_plain_feedback(result, feedback_path)
        result.feedback = str(feedback_path)
    return result


def limit_memory(gigabytes: float) -> None:
    """An address-space limit on this process, which the kernel it starts inherits, so a
    submission that allocates too much gets a MemoryError in its own cell (0: no limit)."""
    if gigabytes > 0:
        limit = int(gigabytes * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def tree_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root (byte-compiled files aside), by relative path."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and "__pycache__" not in path.parts}


COURSE_CODE = ("mechlab", "autograder", "solutions")  # what grading trusts, under the course root
TAMPERED = "changed the course's own files during grading"


def course_digests(root: Path) -> dict[str, str]:
    """Digests of everything grading trusts: the course's code and sources under `root`,
    and the mechlab and autograder packages this process imports (the same folders when
    the course is installed from its repository, as `make` does)."""
    import autograder
    import mechlab

    folders = {(root / part).resolve() for part in COURSE_CODE}
    folders |= {Path(package.__file__).parent.resolve() for package in (mechlab, autograder)}
    return {f"{folder}/{name}": digest for folder in sorted(folders) if folder.is_dir()
            for name, digest in tree_digests(folder).items()}


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


@dataclass(frozen=True)
class ReleaseCache:
    """Class grading generates each chapter's nbgrader assignment once, in `folder`, and
    copies it for every submission (generate_assignment costs a second or two; a copy,
    milliseconds). The parent process builds it before any submission runs and hands the
    children its digests: a copy is used only while its files still match them, so a
    submission that finds the folder and edits it cannot change anyone else's grading."""

    folder: Path
    digests: dict[str, dict[str, str]]  # template name -> tree_digests

    @staticmethod
    def template_name(chapter: Chapter, source: SourceNotebook) -> str:
        text = notebook_text(source.notebook)
        return f"{chapter.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    @classmethod
    def build(cls, chapters: list[Chapter], folder: Path) -> ReleaseCache:
        digests = {}
        for chapter in chapters:
            source = read_source(chapter)
            template = folder / cls.template_name(chapter, source)
            shutil.rmtree(template, ignore_errors=True)
            ThrowawayCourse(chapter, template, source.meta.limits).generate_assignment(notebook_text(source.notebook))
            digests[template.name] = tree_digests(template)
        return cls(folder, digests)

    def to_json(self) -> str:
        return json.dumps({"folder": str(self.folder), "digests": self.digests})

    @classmethod
    def from_json(cls, text: str) -> ReleaseCache:
        data = json.loads(text)
        return cls(Path(data["folder"]), data["digests"])

    def copy_to(self, chapter: Chapter, source: SourceNotebook, root: Path) -> bool:
        """Copy the chapter's template to `root`, if it is there and untouched."""
        name = self.template_name(chapter, source)
        template = self.folder / name
        if name not in self.digests or not template.is_dir():
            return False
        if tree_digests(template) != self.digests[name]:
            log.warning("the release cache %s was modified during grading; building a private copy", template)
            return False
        shutil.copytree(template, root)
        return True


def released_course(chapter: Chapter, source: SourceNotebook, root: Path,
                    releases: ReleaseCache | None = None, execution: Execution = Execution()) -> ThrowawayCourse:
    """A throwaway course at `root` with the chapter generated (gradebook, release)."""
    options = dict(limits=source.meta.limits, sandbox=execution.sandbox, hidden=execution.hidden,
                   verbose=execution.verbose)
    if releases is not None and releases.copy_to(chapter, source, root):
        return ThrowawayCourse(chapter, root, **options)
    course = ThrowawayCourse(chapter, root, **options)
    course.generate_assignment(notebook_text(source.notebook))
    return course


def _autograde(nb: nbformat.NotebookNode, chapter: Chapter, source: SourceNotebook,
               feedback_path: Path, releases: ReleaseCache | None, execution: Execution,
               graded_copy: Path | None = None) -> GradeResult:
    limits = source.meta.limits
    reference_cpu = reference_cpu_seconds(chapter)
    with tempfile.TemporaryDirectory(prefix="mechlab-grade-") as tmp:
        tmp = Path(tmp)
        course = released_course(chapter, source, tmp / "course", releases, execution)
        submitted = tmp / "submitted.ipynb"
        nbformat.write(nb, submitted)
        course.submit(submitted, STUDENT)
        log.info("autograding %s as chapter %s (per cell: %s)", feedback_path.stem, chapter.name, limits.describe())
        outcome = course.autograde(STUDENT)
        if not outcome["success"]:
            log.warning("nbgrader autograde failed:\n%s", outcome.get("log", ""))
            return _zero_result(chapter, source, *_failure(outcome))
        graded = nbformat.read(course.autograded_notebook(STUDENT), as_version=4)
        if graded_copy is not None:
            graded_copy.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(graded, graded_copy)
        cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in graded.cells}
        scores = course.scores(STUDENT)
        exercises = []
        for ex in source.exercises:
            score, max_score = scores.get(ex.test_id, (0.0, float(ex.points)))
            solutions = [cells[i] for i in ex.solution_cells if i in cells]
            exercises.append(ExerciseScore(ex.id, score, max_score,
                                            _message(cells.get(ex.test_id), solutions, limits,
                                                     reference_cpu.get(ex.test_id)),
                                            cpu_seconds=_used(cells.get(ex.test_id))))
        restored = [ex.id for ex in source.exercises if ex.test_id not in _grade_ids(nb)]
        incidents = _incidents(source, graded) + (
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
