"""Every real chapter, graded as an instructor would grade it. Grading the solution
notebook is also its execution test (one run, not two): it must get full marks with
no cell raising. The untouched release gets zero, and a submission with exactly one
exercise wrong loses exactly that exercise's points."""

from __future__ import annotations

import nbformat
import pytest

from autograder.chapters import discover
from autograder.source import read_source
from conftest import grade, scores, solution_cell

CHAPTERS = discover()

# Appended to one solution cell: the learner's function returns a slightly wrong value.
PERTURB = '''

def _perturbed(fn):
    import functools, torch
    def nudge(v):
        if isinstance(v, torch.Tensor):
            return v + 0.5 if v.is_floating_point() else v + 1
        if isinstance(v, (tuple, list)):
            return type(v)(nudge(x) for x in v)
        if isinstance(v, bool):
            return not v
        return v + 1 if isinstance(v, (int, float)) else v
    @functools.wraps(fn)
    def wrong(*args, **kwargs):
        return nudge(fn(*args, **kwargs))
    wrong.__module__ = "__main__"
    return wrong

{name} = _perturbed({name})
'''


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_solution_executes_cleanly_and_gets_full_marks(chapter, tmp_path):
    result = grade(chapter.solution_notebook, None, "--feedback", str(tmp_path))
    assert result["cell_errors"] == [], result["cell_errors"]
    failed = {e["id"]: e["message"] for e in result["exercises"] if e["score"] != e["max_score"]}
    assert failed == {}
    assert result["score"] == result["max_score"] > 0


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_untouched_release_gets_zero(chapter, tmp_path):
    result = grade(chapter.release_notebook, None, "--feedback", str(tmp_path))
    assert result["chapter"] == chapter.name and result["status"] == "ok"
    assert result["score"] == 0 and result["max_score"] == sum(e.points for e in read_source(chapter).exercises)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_one_wrong_exercise_loses_exactly_its_points(chapter, tmp_path):
    source = read_source(chapter)
    target = source.exercises[0]
    nb = nbformat.read(chapter.solution_notebook, as_version=4)
    cell = solution_cell(nb, target.id)
    cell.source += PERTURB.format(name=target.id)
    path = tmp_path / f"{chapter.name}_one_wrong.ipynb"
    nbformat.write(nb, path)
    result = grade(path, None, "--feedback", str(tmp_path))
    expected = {e.id: float(e.points) for e in source.exercises} | {target.id: 0.0}
    assert scores(result) == expected, result["exercises"]
