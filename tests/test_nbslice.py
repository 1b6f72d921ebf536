"""tests/nbslice.py: what the cheaper tests leave out of a notebook, and what they keep."""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from autograder.chapters import discover
from autograder.source import read_source
from labbrowser import WHOLE_NOTEBOOK, browser_copy, interactive
from nbslice import names, needed
from test_chapters import exercises_and_what_they_need


def sources(nb: nbformat.NotebookNode) -> list[str]:
    return [c.source for c in nb.cells]


def test_names_sees_top_level_bindings_changes_and_reads_not_local_ones():
    written, read = names("import numpy as np, os.path\nfrom x import y as z\n"
                          "def f(a=default):\n    local = a + outer\n    return local\n"
                          "class C(Base):\n    attr = 1\n"
                          "for i, (j, k) in pairs:\n    total += i\n"
                          "store.scale = 2\ntable['x'] = 1\n[w for w in words]\n%timeit f()\n")
    assert written == {"np", "os", "z", "f", "C", "i", "j", "k", "total", "store", "table"}
    assert {"default", "outer", "Base", "pairs", "words"} <= read  # (a magic line is not read)
    assert "local" not in written and "attr" not in written and "w" not in written
    assert names("def broken(x)\n    return x\n") is None


def test_needed_keeps_the_chain_a_kept_cell_reads_and_drops_the_rest():
    nb = new_notebook(cells=[
        new_code_cell("setup = 1"),
        new_markdown_cell("text"),
        new_code_cell("data = load(setup)"),
        new_code_cell("slow = experiment(data)"),  # read by nothing kept
        new_code_cell("data.scale = 2"),  # changes what a kept cell reads
        new_code_cell("show(slow)"),
        new_code_cell("def exercise(x):\n    return x + data.scale"),
        new_code_cell("check(exercise)"),
        new_code_cell("later = 3"),  # after the last kept cell
    ])
    sliced = needed(nb, lambda i, c: c.source.startswith(("def exercise", "check(")))
    assert sources(sliced) == ["setup = 1", "text", "data = load(setup)", "data.scale = 2",
                               "def exercise(x):\n    return x + data.scale", "check(exercise)"]


def test_a_cell_that_does_not_parse_is_kept_and_reads_nothing():
    nb = new_notebook(cells=[new_code_cell("a = 1"), new_code_cell("def f(x)\n    return a")])
    assert sources(needed(nb, lambda i, c: False)) == ["def f(x)\n    return a"]


def test_the_lost_exercise_submission_keeps_every_graded_cell_and_drops_the_experiments():
    """On chapter 7: the cells a learner may delete without changing a grade go (the causal
    table, 50 s of CPU, and the transplant sweep), the setup and every graded cell stay, and every name a kept cell
    reads at the top level is bound by a kept cell before it or by the setup's imports."""
    chapter = next(c for c in discover() if c.name == "07_model_diffing")
    nb = nbformat.read(chapter.solution_notebook, as_version=4)
    sliced = exercises_and_what_they_need(nb)
    grade_ids = lambda cells: [c.metadata.get("nbgrader", {}).get("grade_id") for c in cells  # noqa: E731
                               if c.metadata.get("nbgrader", {}).get("grade_id")]
    exercises = read_source(chapter).exercises
    assert grade_ids(sliced.cells) == grade_ids(nb.cells) and len(grade_ids(nb.cells)) == 3 * len(exercises) >= 39  # intro, solution, test each
    kept = sources(sliced)
    assert kept[:2] == sources(nb)[:2]  # the title and the setup
    assert not any(s.startswith(("causal = ex.causal_table(", "sweep = transplant_sweep(")) for s in kept)
    assert any("behaviour = ex.behaviour_table(" in s for s in sources(nb))


def test_the_browser_runs_one_chapter_whole_and_every_interactive_cell_of_the_others():
    """What test_browser.py runs: chapter 1 whole; of every other chapter, its setup and its
    cells tagged "interactive" with what they need, or nothing when it has none."""
    runs = {}
    for chapter in discover():
        nb = nbformat.read(chapter.solution_notebook, as_version=4)
        copy = browser_copy(chapter.solution_notebook)
        tagged = [c.source for c in nb.cells if interactive(c)]
        if chapter.name == WHOLE_NOTEBOOK:
            assert sources(copy) == sources(nb) and tagged
        elif not tagged:
            assert copy is None
        else:
            assert [c.source for c in copy.cells if interactive(c)] == tagged
            assert len(copy.cells) < len(nb.cells) and sources(copy)[1] == sources(nb)[1]  # the setup
        runs[chapter.name] = None if copy is None else sum(c.cell_type == "code" for c in copy.cells)
    assert runs["01_superposition"] > 40 and runs["03_activation_patching"] is None and runs["06_transcoders"] < 25


def test_only_the_statements_a_kept_cell_needs_are_kept_of_a_cell_it_needs():
    nb = new_notebook(cells=[
        new_code_cell("live = train()  # slow\n@cache\ndef load(n):\n    return n\n"
                      "tcs = load(1)\ntable = compare(live, tcs)\n%time x = 1"),
        new_code_cell("show(tcs)"),
    ])
    assert sources(needed(nb, lambda i, c: i == 1)) == ["@cache\ndef load(n):\n    return n\ntcs = load(1)",
                                                        "show(tcs)"]
