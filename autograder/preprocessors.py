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
- `CapOutputSize` (autograde): nbgrader's LimitOutput counts lines, so one
  50 MB line reaches the gradebook and the feedback; this caps every output's size.
"""

from __future__ import annotations

import copy
import re

from nbformat import NotebookNode
from nbgrader.api import Gradebook, MissingEntry
from nbconvert.preprocessors import Preprocessor
from nbgrader.preprocessors import ClearHiddenTests, DeduplicateIds
from traitlets import Bool, Integer

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
            cell.source = HIDDEN_REGION.sub(HIDDEN_NOTE, cell.source)
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


class DeduplicateGradeIds(DeduplicateIds):
    """nbgrader's DeduplicateIds, leaving the copies with no nbgrader metadata at all."""

    def preprocess_cell(self, cell, resources, index):
        cell, resources = super().preprocess_cell(cell, resources, index)
        if cell.metadata.get("nbgrader", None) == {}:
            del cell.metadata["nbgrader"]
        return cell, resources


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
