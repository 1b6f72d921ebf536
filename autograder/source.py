"""From a chapter's jupytext source to nbgrader's source notebook and the reference module.

The source marks what each cell is with as little ceremony as possible, and this
module writes the nbgrader metadata that follows from it:

- `# %% [markdown] exercise={"id": ..., "kind": ..., "difficulty": 1-5,
  "importance": 1-5, "minutes": N, "points": N}` opens an exercise. Its heading must
  read `### Exercise K: title` with K the exercise's number; the build adds the kind /
  difficulty / importance / minutes / points line under it, and locks the cell. The
  kind (`KINDS`) says what the learner does: builds a tool, runs an experiment that
  produces a finding, or investigates a question the chapter does not answer.
- A code cell holding `### BEGIN SOLUTION` is a solution cell of the open exercise.
- A code cell holding `### BEGIN HIDDEN TESTS` is the exercise's one graded test
  cell (locked, worth the exercise's points).
- `tags=["setup"]` is replaced with the shared setup cell, `tags=["exercise-map"]`
  with a table of the chapter's exercises, and `tags=["export"]` cells (imports)
  go into the reference module together with every solution cell.
- `tags=["interactive"]` marks a cell whose output only a browser draws (an ipywidgets
  panel, a circuitsvis picture): the browser test runs those cells (tests/labbrowser.py),
  and each chapter's graded run checks that no other cell draws one.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat
from nbformat import NotebookNode

from autograder.chapters import REPO_ROOT, Chapter
from autograder.execute import CellLimits

NBGRADER_SCHEMA_VERSION = 3
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
SETUP_TEMPLATE = Path(__file__).parent / "templates" / "setup_cell.py"
EXERCISE_ID = re.compile(r"^[a-z][a-z0-9_]*$")
HEADING = re.compile(r"^### Exercise (?P<number>\d+): \S")
# What an exercise has the learner do, as its header and the chapter's exercise map say it.
KINDS = {
    "build": "write a tool the chapter's experiments use",
    "experiment": "run an intervention, a sweep or a comparison whose result is one of the chapter's findings",
    "investigation": "answer a question the chapter leaves open, about a model whose truth it does not show",
}


GRADE_ME_TEXT = """## Check your work

The cell below runs this chapter's hidden tests on your functions, here in your
kernel, and prints the table your instructor's grader would print. Run it any time
(or call `mechlab.grade_me()` anywhere). The instructor's grader re-executes the
whole notebook from scratch in a fresh kernel, so before you hand the notebook in,
run *Kernel > Restart Kernel and Run All Cells* and check that nothing breaks."""


class SourceError(ValueError):
    """The chapter source breaks one of the rules above; the message names the cell."""


@dataclass
class Exercise:
    id: str
    number: int
    title: str
    kind: str
    difficulty: int
    importance: int
    minutes: int
    points: int
    solution_cells: list[str] = field(default_factory=list)  # grade ids
    test_cell: str | None = None  # grade id

    @property
    def test_id(self) -> str:
        return f"{self.id}_test"


@dataclass(frozen=True)
class ChapterMeta:
    """The `course:` block of the source's jupytext header."""

    chapter: int
    title: str
    seed: int
    cpu_limit: int  # CPU seconds per cell under grading (the kernel and what it starts): execute.py
    wall_limit: int | None = None  # wall-clock backstop per cell (default 10x cpu_limit)
    idle_limit: int | None = None  # seconds in a row without CPU use per cell (default min(60, cpu_limit))

    @property
    def limits(self) -> CellLimits:
        return CellLimits.for_cpu(self.cpu_limit, self.wall_limit, self.idle_limit)


def chapter_meta(nb: NotebookNode, where: str) -> ChapterMeta:
    course = nb.metadata.get("course")
    if not isinstance(course, dict):
        raise SourceError(f"{where}: the jupytext header needs a `course:` block "
                          "(chapter, title, seed, cpu_limit)")
    try:
        meta = ChapterMeta(**course)
    except TypeError as e:
        raise SourceError(f"{where}: course header: {e}") from None
    for key in ("chapter", "seed", "cpu_limit"):
        if not isinstance(getattr(meta, key), int) or getattr(meta, key) < 0:
            raise SourceError(f"{where}: course.{key} must be a non-negative integer")
    for key in ("wall_limit", "idle_limit"):
        if getattr(meta, key) is not None and (not isinstance(getattr(meta, key), int) or getattr(meta, key) <= 0):
            raise SourceError(f"{where}: course.{key} must be a positive integer (or left out)")
    return meta


def repository_url() -> str:
    """The course's repository URL, written once, in pyproject.toml."""
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"]


def _nbgrader(grade_id: str, *, solution: bool = False, grade: bool = False,
              locked: bool = False, points: int | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked,
            "schema_version": NBGRADER_SCHEMA_VERSION, "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return meta


def _exercise(meta: object, number: int, source: str, where: str) -> Exercise:
    if not isinstance(meta, dict):
        raise SourceError(f"{where}: exercise metadata must be a JSON object")
    keys = {"id", "kind", "difficulty", "importance", "minutes", "points"}
    if set(meta) != keys:
        raise SourceError(f"{where}: exercise metadata needs exactly the keys {sorted(keys)}, "
                          f"got {sorted(meta)}")
    if not isinstance(meta["id"], str) or not EXERCISE_ID.match(meta["id"]):
        raise SourceError(f"{where}: exercise id {meta['id']!r} must be snake_case")
    if meta["kind"] not in KINDS:
        raise SourceError(f"{where}: exercise {meta['id']}: kind must be one of {sorted(KINDS)}, got {meta['kind']!r}")
    for key in ("difficulty", "importance"):
        if meta[key] not in (1, 2, 3, 4, 5):
            raise SourceError(f"{where}: exercise {meta['id']}: {key} must be an integer from 1 to 5")
    for key in ("minutes", "points"):
        if not isinstance(meta[key], int) or meta[key] <= 0:
            raise SourceError(f"{where}: exercise {meta['id']}: {key} must be a positive integer")
    first_line = source.splitlines()[0] if source else ""
    heading = HEADING.match(first_line)
    if not heading or int(heading["number"]) != number:
        raise SourceError(f"{where}: exercise {meta['id']} must start with the heading "
                          f"'### Exercise {number}: <title>', found {first_line!r}")
    return Exercise(title=first_line.split(": ", 1)[1], number=number, **meta)


def _badge_line(ex: Exercise, cpu_limit: int) -> str:
    def dots(n: int, mark: str) -> str:
        return mark * n + "⚪" * (5 - n)
    return (f"> **{ex.kind.capitalize()}** · **Difficulty** {dots(ex.difficulty, '🔴')} · **Importance** {dots(ex.importance, '🔵')}"
            f" · **about {ex.minutes} minutes** · **{ex.points} point{'s' * (ex.points != 1)}**"
            f" · graded within **{cpu_limit} s of CPU time** per cell")


def _exercise_map(exercises: list[Exercise], limits: CellLimits) -> str:
    rows = ["| # | exercise | kind | difficulty | importance | minutes | points |",
            "|---|---|---|---|---|---|---|"]
    for ex in exercises:
        rows.append(f"| {ex.number} | {ex.title} (`{ex.id}`) | {ex.kind} | {'🔴' * ex.difficulty} | "
                    f"{'🔵' * ex.importance} | {ex.minutes} | {ex.points} |")
    rows.append(f"| | **total** | | | | **{sum(e.minutes for e in exercises)}** | "
                f"**{sum(e.points for e in exercises)}** |")
    by_kind = {kind: sum(e.points for e in exercises if e.kind == kind) for kind in KINDS}
    kinds = "; ".join(f"**{kind}** ({KINDS[kind]}): {points} points" for kind, points in by_kind.items() if points)
    return ("## Exercises in this chapter\n\n" + "\n".join(rows) + "\n\n"
            f"**Kinds.** {kinds}.\n\n"
            f"**Limits under grading.** Each cell may use {limits.cpu:g} s of CPU time: what your kernel and "
            "the processes it starts compute, not the time a busy machine makes it wait. A cell is also "
            f"stopped after {limits.wall:g} s of wall-clock time, or after {limits.idle:g} s in a row without "
            "using the CPU (a sleep or a read that never ends). A cell stopped this way costs its exercise's "
            "points. `mechlab.grade_me()` measures the CPU time of each hidden test in your kernel and warns "
            "when one comes near the limit.")


def _cell_id(cell: NotebookNode, used: set[str]) -> str:
    """Stable ids, so that regenerating an unchanged chapter changes no byte."""
    base = cell.metadata.get("nbgrader", {}).get("grade_id") or \
        hashlib.sha1(cell.source.encode()).hexdigest()[:12]
    cell_id, n = base, 1
    while cell_id in used:
        n += 1
        cell_id = f"{base}-{n}"
    used.add(cell_id)
    return cell_id


@dataclass
class SourceNotebook:
    notebook: NotebookNode
    meta: ChapterMeta
    exercises: list[Exercise]
    reference_code: str


def read_source(chapter: Chapter) -> SourceNotebook:
    """Parse `solutions/NN_topic.py` into nbgrader's source notebook plus what it defines."""
    where_file = str(chapter.source.relative_to(chapter.root))
    nb = jupytext.read(chapter.source)
    meta = chapter_meta(nb, where_file)
    exercises: list[Exercise] = []
    setup_cells = 0
    exports: list[str] = []
    solutions: list[str] = []

    for index, cell in enumerate(nb.cells):
        where = f"{where_file}, cell {index + 1}"
        cell.metadata.pop("lines_to_next_cell", None)
        tags = cell.metadata.get("tags", [])
        current = exercises[-1] if exercises else None
        if "setup" in tags:
            setup_cells += 1
            template = SETUP_TEMPLATE.read_text()
            cell.source = template.format(repository=repository_url(), seed=meta.seed, chapter=chapter.name).rstrip()
        elif cell.cell_type == "markdown" and "exercise" in cell.metadata:
            ex = _exercise(cell.metadata["exercise"], len(exercises) + 1, cell.source, where)
            if any(e.id == ex.id for e in exercises):
                raise SourceError(f"{where}: exercise id {ex.id!r} is used twice")
            if current is not None and current.test_cell is None:
                raise SourceError(f"{where}: exercise {current.id!r} has no test cell before the next exercise")
            exercises.append(ex)
            heading, _, rest = cell.source.partition("\n")
            cell.source = f"{heading}\n\n{_badge_line(ex, meta.cpu_limit)}\n{rest}".rstrip()
            cell.metadata["nbgrader"] = _nbgrader(f"{ex.id}_intro", locked=True)
        elif cell.cell_type == "code" and BEGIN_SOLUTION in cell.source:
            if current is None or current.test_cell is not None:
                raise SourceError(f"{where}: a solution cell must follow an exercise header "
                                  "(and come before that exercise's test cell)")
            if END_SOLUTION not in cell.source:
                raise SourceError(f"{where}: '{BEGIN_SOLUTION}' without '{END_SOLUTION}'")
            n = len(current.solution_cells) + 1
            grade_id = f"{current.id}_solution" + (f"_{n}" if n > 1 else "")
            current.solution_cells.append(grade_id)
            cell.metadata["nbgrader"] = _nbgrader(grade_id, solution=True)
            solutions.append("\n".join(line for line in cell.source.splitlines()
                                       if line.strip() not in (BEGIN_SOLUTION, END_SOLUTION)))
        elif cell.cell_type == "code" and BEGIN_HIDDEN in cell.source:
            if current is None or not current.solution_cells or current.test_cell is not None:
                raise SourceError(f"{where}: a test cell must follow its exercise's solution cell(s), "
                                  "one test cell per exercise")
            if END_HIDDEN not in cell.source:
                raise SourceError(f"{where}: '{BEGIN_HIDDEN}' without '{END_HIDDEN}'")
            current.test_cell = current.test_id
            cell.metadata["nbgrader"] = _nbgrader(current.test_id, grade=True, locked=True,
                                                  points=current.points)
        if "export" in tags:
            exports.append(cell.source)

    if setup_cells != 1:
        raise SourceError(f"{where_file}: needs exactly one cell tagged 'setup', found {setup_cells}")
    if not exercises:
        raise SourceError(f"{where_file}: no exercises (markdown cells with exercise={{...}} metadata)")
    if exercises[-1].test_cell is None:
        raise SourceError(f"{where_file}: exercise {exercises[-1].id!r} has no test cell")
    for cell in nb.cells:
        if "exercise-map" in cell.metadata.get("tags", []):
            cell.source = _exercise_map(exercises, meta.limits)
    nb.cells += [nbformat.v4.new_markdown_cell(GRADE_ME_TEXT), nbformat.v4.new_code_cell("mechlab.grade_me();")]

    used: set[str] = set()
    for cell in nb.cells:
        cell.id = _cell_id(cell, used)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("jupytext", None)
    nb.metadata["language_info"] = {"name": "python"}
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)

    reference = "\n\n\n".join(
        [f'"""Reference solutions of chapter {meta.chapter}: {meta.title}.\n\n'
         f"GENERATED from {where_file} by `python -m autograder build`: do not edit.\n"
         f'"""'] + exports + solutions
        + [f"__all__ = {[ex.id for ex in exercises]!r}\n"
           f"CHAPTER = {chapter.name!r}\n"
           f"CPU_LIMIT = {meta.cpu_limit}  # CPU seconds per cell under grading\n"
           f"POINTS = {{{', '.join(f'{ex.id!r}: {ex.points}' for ex in exercises)}}}"]) + "\n"
    return SourceNotebook(nb, meta, exercises, reference)


def notebook_text(nb: NotebookNode) -> str:
    """A notebook as the build writes it: stable key order, one trailing newline."""
    return nbformat.writes(nb) + "\n"
