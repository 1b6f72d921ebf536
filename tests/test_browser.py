"""The solution notebooks, run in JupyterLab in a real (headless) browser, draw what a
learner should see: every cell runs, no cell raises, every ipywidgets panel, circuitsvis
picture and plot is drawn with a size, the browser console has no error, and a slider
redraws its output when moved with the keyboard. Chapter 1 runs whole; every other chapter
with a cell tagged "interactive" runs as those cells and what they need (labbrowser's
`browser_copy`). Screenshots go to artifacts/browser/.

Needs Debian's chromium and chromium-driver and selenium (`make test-browser` installs
them); without them these tests are skipped, and say why. The machinery is in
labbrowser.py. The notebooks are found by globbing solutions/, so a new chapter is
covered as soon as its notebook is built."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from autograder.chapters import CHAPTER_NAME, REPO_ROOT
from labbrowser import WHOLE_NOTEBOOK, JupyterLab, Notebook, browser_copy, chrome, copy_notebooks, missing

NOTEBOOKS = sorted(p for p in (REPO_ROOT / "solutions").glob("*.ipynb")
                   if CHAPTER_NAME.match(p.stem) and browser_copy(p) is not None)
ARTIFACTS = REPO_ROOT / "artifacts" / "browser"
RUN_TIMEOUT = 1800  # seconds for one notebook's Run All; chapters take 0.5-3 min on 2 idle cores

pytestmark = [pytest.mark.browser, pytest.mark.skipif(missing() is not None, reason=f"browser tests: {missing()}")]


@pytest.fixture(scope="session")  # (the slow tests run first, between other files' tests: see conftest)
def lab(tmp_path_factory):
    """JupyterLab serving copies of the solution notebooks (and the self-test's notebook)."""
    root = tmp_path_factory.mktemp("lab") / "notebooks"
    copy_notebooks(NOTEBOOKS, root)
    nbformat.write(self_test_notebook(), root / "browser_self_test.ipynb")
    with JupyterLab(root, root.parent / "jupyter.log") as server:
        yield server


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    driver = chrome(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def run_notebook(notebook: Notebook) -> tuple[object, list[str]]:
    """Open the notebook, run all its cells, take its screenshot (the end of the notebook,
    where Run All leaves it, or wherever it stopped), measure the outputs; returns the
    result and the browser console's errors so far."""
    notebook.open()
    try:
        result = notebook.run_all(RUN_TIMEOUT)
    finally:
        notebook.show_outcome()
        notebook.screenshot(ARTIFACTS / f"{notebook.name.removesuffix('.ipynb')}.png")
    return notebook.measure(result), notebook.console_errors()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_draws_in_jupyterlab(path, lab, browser):
    stem, notebook, shots, moved = path.stem, Notebook(browser, lab, path.name), [], None
    try:
        result, console = run_notebook(notebook)
        for item in result.of("widget") + result.of("circuitsvis"):
            shots.append(notebook.element_screenshot(item["marker"], ARTIFACTS / f"{stem}-{item['marker']}.png"))
        if notebook.slider() is not None:
            moved = notebook.move_slider()
            notebook.element_screenshot(moved[1]["panel"], ARTIFACTS / f"{stem}-{moved[1]['panel']}-moved.png")
    finally:
        closing = notebook.close()
    console += closing
    summary = {"notebook": path.name, "run_all_seconds": round(result.seconds, 1),
               "rendered": {k: len(result.of(k)) for k in ("widget", "progress", "circuitsvis", "image", "plotly")},
               "screenshots": [p.name for p in shots], "console_errors": console}
    (ARTIFACTS / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    print(summary)

    assert result.errors == [], f"cells raised: {result.errors}"
    assert result.unexecuted == [], f"cells that never ran: {result.unexecuted}"

    widgets = result.of("widget") + result.of("progress")
    assert len(widgets) == result.expected("widgets"), \
        f"{result.expected('widgets')} widget outputs, {len(widgets)} drawn: {widgets}"
    assert len(result.of("circuitsvis")) == result.expected("circuitsvis"), result.of("circuitsvis")
    assert all(c["drawn"] for c in result.of("circuitsvis")), "circuitsvis left its div empty"
    assert len(result.of("image")) >= result.expected("images"), "an image output was not drawn"
    assert result.of("widget-error") == []
    flat = [r for r in result.rendered if r["kind"] != "widget-error" and not (r["width"] > 0 and r["height"] > 0)]
    assert flat == [], f"drawn with no size: {flat}"
    assert all(i["natural"] > 0 for i in result.of("image")), "an image did not load"
    assert console == [], f"errors in the browser console: {console}"

    if moved is not None:  # a slider must redraw what it drives
        before, after = moved
        assert after["readout"] != before["readout"], f"the slider did not move: {before} -> {after}"
        assert after["images"] != before["images"] or after["output"] != before["output"], \
            f"moving the slider changed nothing in its panel ({before['readout']} -> {after['readout']})"


def test_some_chapter_has_a_slider_to_move():
    """The slider check above runs where a notebook has a slider; chapter 1 must have one
    (`superposition.explore_toy_models`), so the check never silently runs nowhere."""
    source = (REPO_ROOT / "solutions" / "01_superposition.py").read_text()
    assert "explore_toy_models(" in source


# ---------------------------------------------------------------- the checks themselves


def self_test_notebook() -> nbformat.NotebookNode:
    """A notebook with one of everything the checks look for, and a JavaScript error, a
    raising cell and a cell that must then never run."""
    return new_notebook(cells=[
        new_markdown_cell("# browser self-test"),
        new_code_cell("import ipywidgets\n"
                      "from IPython.display import HTML, display\n"
                      "def show(n):\n    print('value', n * 10)\n"
                      "ipywidgets.interactive(show, n=ipywidgets.IntSlider(value=1, min=0, max=5))"),
        new_code_cell("display(HTML('<script>throw new Error(\"browser-self-test error\")</script>'))"),
        new_code_cell("raise ValueError('browser-self-test raise')"),
        new_code_cell("print('never runs')"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def test_checks_see_a_cell_error_a_javascript_error_and_a_moving_slider(lab, browser):
    notebook = Notebook(browser, lab, "browser_self_test.ipynb")
    try:
        result, console = run_notebook(notebook)
        before, after = notebook.move_slider()
    finally:
        closing = notebook.close()
    console += closing
    assert [e.split(":")[1].strip() for e in result.errors] == ["ValueError"], result.errors
    assert len(result.unexecuted) == 1, result.cells
    assert len(result.of("widget")) == 1 and result.of("widget")[0]["height"] > 0
    assert any("browser-self-test error" in line for line in console), console
    assert (before["readout"], after["readout"]) == ("1", "2")
    assert "value 10" in before["output"] and "value 20" in after["output"], (before, after)
