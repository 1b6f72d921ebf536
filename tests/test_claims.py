"""The markers that tie a number in a chapter's text to the output that backs it
(autograder/claims.py): what they read, and that a wrong or unbacked claim is caught."""

from __future__ import annotations

import nbformat
import pytest

from autograder import claims
from autograder.chapters import discover
from autograder.source import read_source


def _notebook(markdown: str, printed: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(markdown),
                nbformat.v4.new_code_cell("...", outputs=[nbformat.v4.new_output("stream", text=printed)])]
    return nb


def test_a_claim_is_the_last_number_before_its_marker_within_one_unit_of_its_last_digit():
    nb = _notebook("final loss 0.241<!-- out: loss at p=0.57: --> against 0.183<!-- out: loss at p=1.00: -->, "
                   "94%<!-- out: success rate --> of 3 runs",
                   "loss at p=0.57: 0.2416\nloss at p=1.00: 0.1827\nsuccess rate 93.2%\n")
    found = claims.claims(nb)
    assert [(c.label, c.text, c.tolerance) for c in found] == [
        ("loss at p=0.57:", "0.241", 0.001), ("loss at p=1.00:", "0.183", 0.001), ("success rate", "94", 1.0)]
    assert claims.disagreements(nb) == []


@pytest.mark.parametrize("printed, problem", [
    ("loss at p=0.57: 0.2431\n", "the text says 0.241, the output says loss at p=0.57: 0.2431"),
    ("loss at p=0.5: 0.241\n", "no output prints that label"),
    ("loss at p=0.57: none\n", "no output prints that label followed by a number"),
])
def test_a_claim_the_output_contradicts_or_does_not_show_is_reported(printed, problem):
    problems = claims.disagreements(_notebook("loss 0.241<!-- out: loss at p=0.57: -->", printed))
    assert len(problems) == 1 and problem in problems[0] and problems[0].startswith("cell 1:")


def test_a_stated_tolerance_absolute_or_relative_replaces_the_last_digit_rule():
    assert claims.disagreements(_notebook("about 2.0<!-- out: norm ±0.3 --> and 50<!-- out: rate ±10% -->",
                                          "norm 2.25 rate 54.9")) == []
    assert len(claims.disagreements(_notebook("about 2.0<!-- out: norm ±0.3 -->", "norm 2.35"))) == 1
    assert len(claims.disagreements(_notebook("50<!-- out: rate ±10% -->", "rate 55.1"))) == 1


def test_a_marker_with_no_number_before_it_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="no number before"):
        claims.claims(_notebook("the loss<!-- out: loss -->", "loss 1"))


@pytest.mark.parametrize("chapter", discover(), ids=lambda c: c.name)
def test_every_chapter_backs_numbers_in_its_text_with_markers(chapter):
    """Each chapter's markers parse (the graded run checks their values: test_chapters)."""
    assert claims.claims(read_source(chapter).notebook), "no number in the text is tied to an output"
