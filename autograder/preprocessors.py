"""The course's own nbgrader preprocessors: what nbgrader leaves open (see DESIGN.md).

- `HideHiddenTests` (feedback): nbgrader's feedback HTML shows the hidden tests'
  source (nbgrader issue 917), and IPython tracebacks quote the failing line of
  the test cell. Graded cells keep their visible part and their outcome, the
  hidden part is replaced by a note, and tracebacks become `Error: message`.
- `RestoreHiddenTests` (autograde, sanitizing): a test cell arrives from the
  release without its hidden tests, which nbgrader's OverwriteCells reports as a
  changed checksum on *every* untouched submission (nbgrader issue 1961), so
  real tampering drowns in false alarms. Cells that match the release exactly
  get their hidden tests back first; only real edits are then reported.
- `DeduplicateGradeIds` (autograde, sanitizing): nbgrader's DeduplicateIds keeps
  the last cell of a copied grade id but leaves the others with empty nbgrader
  metadata, on which OverwriteCells (with add_missing_cells) crashes, zeroing
  the whole submission. The copies become ordinary cells instead.
- `RecoverCellMetadata` and `AppendMissingGradeCells` (autograde, sanitizing):
  some editors drop cell metadata, and nbgrader then crashes restoring the test
  cells (KeyError on the solution cell before them). Cells are matched back by
  content first: a locked cell by its released text, a solution cell by the
  `def`/`class` line it keeps; test cells still missing are restored from the
  source at the end of the notebook, where every function is defined.
- `PrepareTestCells` (autograde, sanitizing), three things before a test cell runs:
  it prints VISIBLE_PASSED between the visible checks and the hidden tests, so
  the grade says which of the two failed; it drops `mechlab.checks` and the
  chapter packages with their `checks` and `reference` from `sys.modules`, so the cell's
  imports load them again from disk and a learner cell that rebound a check
  helper (`checks.grade_toy_forward = lambda f: None`) gains nothing (they compare
  with `mechlab.pristine`, which is never reloaded); and it sends stderr to
  stdout, because nbgrader fails a test cell on any stderr text, and a learner's
  own progress bar or warning is noise, not a wrong answer (a failed check
  raises, and that still fails the cell). And it grades the cell's exercise on its
  own: until the cell ends, the other exercises' names are their references
  (`mechlab.checks.isolate_test_cell`), so a wrong exercise 2 never costs exercise 3.
- `ProvideReferences` (autograde, sanitizing): a cell after the setup cell puts every
  exercise's reference function under its name, before any learner code runs. A
  learner's definition replaces it; an exercise that is missing, a syntax error, an
  endless loop or a dead kernel leaves the reference in place, which earns that
  exercise nothing (`mechlab.checks.own_work`) but lets every later exercise that
  uses its name (`forward: Callable = toy_forward`) be defined and graded on its own.
- `CapOutputSize` (autograde): nbgrader's LimitOutput counts lines, so one
  50 MB line reaches the gradebook and the feedback; this caps every output's size.
"""

from __future__ import annotations

import copy
import re

from nbformat import NotebookNode
from nbformat.v4 import new_code_cell
from nbgrader.api import Gradebook, MissingEntry
from nbconvert.preprocessors import Preprocessor
from nbgrader import utils
from nbgrader.preprocessors import ClearHiddenTests, DeduplicateIds, OverwriteCells
from traitlets import Bool, Integer

from autograder.chapters import CHAPTER_NAME

HIDDEN_REGION = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", re.DOTALL)
HIDDEN_NOTE = "# (hidden tests: they decide the grade; their source is not shown)"


class CoursePreprocessor(Preprocessor):
    """nbconvert's preprocessors are off unless enabled; the course's are always on."""

    enabled = Bool(True).tag(config=True)


def is_graded(cell: NotebookNode) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("grade"))


def error_summary(output: NotebookNode) -> str:
    """`ename: evalue` of an error output, without the traceback."""
    return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".rstrip(": ")


class HideHiddenTests(CoursePreprocessor):
    """Strip hidden-test source and tracebacks from graded cells (feedback only)."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and is_graded(cell):
            visible = "".join(line for line in cell.source.removeprefix(FRESH_MODULES).splitlines(keepends=True)
                              if not line.endswith("# added by the grader\n"))
            cell.source = HIDDEN_REGION.sub(HIDDEN_NOTE, visible)
            for output in cell.get("outputs", []):
                if output.output_type == "error":
                    output.traceback = [error_summary(output)]
        return cell, resources


class RestoreHiddenTests(CoursePreprocessor):
    """Put the hidden tests back into test cells that are exactly as released."""

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        clear = ClearHiddenTests()
        with Gradebook(info["db_url"]) as gb:
            for cell in nb.cells:
                grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
                if not grade_id or cell.cell_type != "code" or not is_graded(cell):
                    continue
                try:
                    source = gb.find_source_cell(grade_id, info["notebook"], info["assignment"]).source
                except MissingEntry:
                    continue  # OverwriteCells reports it
                released = copy.deepcopy(cell)
                released.source = source
                clear._remove_hidden_test_region(released)
                if cell.source == released.source:
                    cell.source = source
        return nb, resources


def _signature(source: str) -> str | None:
    return next((line for line in source.splitlines() if line.startswith(("def ", "class ", "async def "))), None)


class RecoverCellMetadata(CoursePreprocessor):
    """Give cells that lost their nbgrader metadata the metadata of the source cell they match."""

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        with Gradebook(info["db_url"]) as gb:
            source = gb.find_notebook(info["notebook"], info["assignment"])
            points = {c.name: c.max_score for c in source.grade_cells}
            solutions = {c.name for c in source.solution_cells}
            present = {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells}
            wanted = {}  # released text or solution signature -> nbgrader metadata
            for cell in source.source_cells:
                if cell.name in present:
                    continue
                meta = {"grade": cell.name in points, "grade_id": cell.name, "locked": cell.locked,
                        "schema_version": 3, "solution": cell.name in solutions, "task": False}
                if meta["grade"]:
                    meta["points"] = points[cell.name]
                if meta["solution"]:
                    key = _signature(cell.source)
                else:
                    released = NotebookNode(cell_type=cell.cell_type, source=cell.source, metadata={})
                    ClearHiddenTests()._remove_hidden_test_region(released)
                    key = released.source.strip()
                for text in (key, cell.source.strip()):  # as released, or as in the source itself
                    if text:
                        wanted.setdefault(text, meta)
        for cell in nb.cells:
            if "nbgrader" in cell.metadata:
                continue
            meta = wanted.pop(cell.source.strip(), None) or wanted.pop(_signature(cell.source) or "", None)
            if meta:
                self.log.warning("cell %s had lost its metadata: matched back by its content", meta["grade_id"])
                cell.metadata["nbgrader"] = meta
        return nb, resources


class AppendMissingGradeCells(OverwriteCells):
    """OverwriteCells, but missing test cells go to the end of the notebook, in source
    order (nbgrader puts each after the previous graded cell, and crashes if that is
    missing too)."""

    def add_missing_grade_cells(self, nb, resources):
        source = self.gradebook.find_notebook(self.notebook_id, self.assignment_id)
        present = {c.metadata.nbgrader["grade_id"] for c in nb.cells if utils.is_grade(c) or utils.is_solution(c)}
        points = {c.name: c.max_score for c in source.grade_cells}
        solutions = {c.name for c in source.solution_cells}
        for cell in source.source_cells:
            if cell.name in points and cell.name not in present:
                self.log.warning("Missing grade cell %s encountered, adding to the end of the notebook", cell.name)
                restored = self.missing_cell_transform(cell, points[cell.name], is_solution=cell.name in solutions)
                restored.id = f"restored-{cell.name}"
                nb.cells.append(restored)
        return nb, resources


class DeduplicateGradeIds(DeduplicateIds):
    """nbgrader's DeduplicateIds, leaving the copies with no nbgrader metadata at all."""

    def preprocess_cell(self, cell, resources, index):
        cell, resources = super().preprocess_cell(cell, resources, index)
        if cell.metadata.get("nbgrader", None) == {}:
            del cell.metadata["nbgrader"]
        return cell, resources


# The one module never reloaded: it holds the torch and NumPy functions as they were
# before any learner code ran (mechlab.pristine), which a fresh import could not recover.
KEPT_MODULES = ("mechlab.pristine",)
# Before each test cell: put back the variable that says the notebook is being graded
# (own_work watches for the reference only then), drop every other mechlab module,
# course-wide and chapter alike, helpers included (whatever a learner cell put in their
# place in sys.modules, on a package, or into a module: a patched `zoo.load`, a bar of
# an investigation, a fake `under_grading`), so the test imports them again from disk
# with fresh caches; and send stderr to stdout.
FRESH_MODULES = (
    "import sys as _g, importlib as _i, os as _o  # added by the grader\n"
    "_o.environ['NBGRADER_EXECUTION'] = 'autograde'  # added by the grader\n"
    "[_g.modules.pop(_m) for _m in [_n for _n in _g.modules if (_n == 'mechlab' or _n.startswith('mechlab.')) "
    f"and _n not in {KEPT_MODULES!r}]]  # added by the grader\n"
    "[setattr(_i.import_module(_m.rpartition('.')[0]), _m.rpartition('.')[2], _g.modules[_m]) for _m in "
    f"{KEPT_MODULES!r} if _m in _g.modules]  # added by the grader\n"
    "_g.stderr = _g.stdout; del _i, _o  # added by the grader\n")


VISIBLE_PASSED = "visible checks passed; now the hidden tests"


ISOLATE = ("__import__('mechlab.checks').checks.isolate_test_cell(globals(), {name!r}, {topic!r})"
           "  # added by the grader\n")


class PrepareTestCells(CoursePreprocessor):
    """Prefix every graded cell with FRESH_MODULES and ISOLATE (its exercise graded on its
    own: mechlab.checks.isolate_test_cell), and mark where its hidden tests begin (after
    OverwriteCells has restored the cell from the source)."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and is_graded(cell) and not cell.source.startswith(FRESH_MODULES):
            marked = cell.source.replace("### BEGIN HIDDEN TESTS", f"print({VISIBLE_PASSED!r})\n### BEGIN HIDDEN TESTS", 1)
            name = cell.metadata["nbgrader"]["grade_id"].removesuffix("_test")
            topic = _topic(resources)
            cell.source = FRESH_MODULES + ISOLATE.format(name=name, topic=topic) + marked
        return cell, resources


def _topic(resources) -> str:
    """The chapter's topic (`superposition` of `01_superposition`), as nbgrader names the notebook."""
    return CHAPTER_NAME.match(resources["nbgrader"]["notebook"])["topic"]


PROVIDE_REFERENCES = """\
# Added by the grader: every exercise's function starts as the course's reference, so an
# exercise that is missing or broken in this notebook costs its own points only (the
# reference earns nothing). Your own definitions below replace these.
from mechlab import chapters as _grader_chapters
_grader_reference = _grader_chapters.reference({topic!r})
globals().update({{_name: getattr(_grader_reference, _name) for _name in _grader_reference.POINTS}})
del _grader_chapters, _grader_reference
"""
PROVIDE_REFERENCES_ID = "grader-provides-references"


class ProvideReferences(CoursePreprocessor):
    """Insert PROVIDE_REFERENCES after the setup cell (at the top when it is gone)."""

    def preprocess(self, nb, resources):
        if any(c.get("id") == PROVIDE_REFERENCES_ID for c in nb.cells):
            return nb, resources
        topic = _topic(resources)
        setup = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                      and ("setup" in c.metadata.get("tags", []) or "mechlab.setup(" in c.source)), -1)
        cell = new_code_cell(PROVIDE_REFERENCES.format(topic=topic))
        cell.id = PROVIDE_REFERENCES_ID
        nb.cells.insert(setup + 1, cell)
        return nb, resources


class CapOutputSize(CoursePreprocessor):
    """Cut every text output to `max_chars` characters and drop oversized rich outputs."""

    max_chars = Integer(20_000, help="Characters kept of each output.").tag(config=True)

    def _cut(self, text: str) -> str:
        if len(text) <= self.max_chars:
            return text
        return text[: self.max_chars] + f"\n... [output cut: {len(text):,} characters in all]\n"

    def preprocess_cell(self, cell, resources, index):
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                output.text = self._cut(output.text)
            elif output.output_type == "error":
                output.evalue = self._cut(output.evalue)
                output.traceback = [self._cut(line) for line in output.traceback[-50:]]
            elif "data" in output:
                for mime, value in list(output.data.items()):
                    text = value if isinstance(value, str) else str(value)
                    if len(text) > 50 * self.max_chars:  # images and widgets are large but bounded
                        output.data = {"text/plain": f"[output dropped: {mime}, {len(text):,} characters]"}
                        break
        return cell, resources
