"""Each chapter on a Colab-like fresh runtime: its first cell installs the course and what
the runtime lacks, leaves torch (and every package Colab already had) as it was, and then
the chapter runs.

The runtime (colab_runtime.py) holds torch, numpy and the notebook stack at Colab-like
versions, a stub `google.colab`, and no mechlab. Per chapter, in a fresh copy of it:

1. the release notebook's setup cell (chapters/NN_topic.ipynb, the cell a learner runs
   first) runs in a kernel of that runtime; it must pip-install the course from its
   repository URL (served here from a snapshot of this working tree);
2. `pip freeze` before and after: the torch line identical, nothing removed or downgraded,
   ipywidgets untouched (Colab's front end draws its own 7.x only); upgrades and additions
   are listed in artifacts/colab/NN_topic.json;
3. the kernel imports mechlab and torch from the runtime (not from this checkout);
4. the rest of the chapter runs in that same kernel: the *solution* notebook's cells after
   its setup cell (the release's exercises are empty, so its checks would fail), every
   cell without an error, hidden tests and `grade_me` included.

Slow (the course's dependencies are resolved from the package index for each chapter,
as on Colab), so it runs only when asked: `make test-colab`, or MECHLAB_TEST_COLAB=1.
"""

from __future__ import annotations

import json
import os
import time

import nbformat
import pytest

import colab_runtime as colab
from autograder.chapters import CHAPTER_NAME, REPO_ROOT, discover
from autograder.execute import PromptClient
from autograder.source import read_source

CHAPTERS = [c for c in discover() if c.release_notebook.exists() and c.solution_notebook.exists()]
ARTIFACTS = REPO_ROOT / "artifacts" / "colab"
SETUP_TIMEOUT = 900  # seconds: resolving and installing the course's dependencies with pip

pytestmark = [pytest.mark.colab, pytest.mark.skipif(
    os.environ.get("MECHLAB_TEST_COLAB") != "1",
    reason="the Colab-like runtime test is slow and needs the package index: `make test-colab` "
           "(or MECHLAB_TEST_COLAB=1) runs it")]


@pytest.fixture(scope="session")
def base_runtime():
    return colab.base_runtime()


@pytest.fixture(scope="session")
def course_snapshot(tmp_path_factory):
    return colab.course_snapshot(tmp_path_factory.mktemp("course") / "mechlab")


def setup_index(nb: nbformat.NotebookNode) -> int:
    return next(i for i, c in enumerate(nb.cells) if "setup" in c.metadata.get("tags", []))


def test_every_chapter_is_covered():
    assert {c.name for c in CHAPTERS} == {p.stem for p in (REPO_ROOT / "chapters").glob("*.ipynb")
                                         if CHAPTER_NAME.match(p.stem)}


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_chapter_sets_itself_up_and_runs_on_a_colab_like_runtime(chapter, base_runtime, course_snapshot, tmp_path):
    release = nbformat.read(chapter.release_notebook, as_version=4)
    solution = nbformat.read(chapter.solution_notebook, as_version=4)
    setup = release.cells[setup_index(release)]
    assert setup.source == solution.cells[setup_index(solution)].source, \
        "the release and the solution notebook have different setup cells: run `make build`"

    runtime = colab.fresh_runtime(base_runtime, tmp_path / "runtime")
    before = colab.freeze(runtime)
    assert "mechlab" not in before and "torch" in before

    content = tmp_path / "content"  # the kernel's working directory, as Colab's /content
    content.mkdir()
    env = colab.pip_env(tmp_path / "pip") | colab.git_redirect(course_snapshot) | {
        "PATH": f"{runtime / 'bin'}:{os.environ['PATH']}", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    probe = nbformat.v4.new_code_cell(
        "import json, sys, mechlab, torch\n"
        "print(json.dumps({'mechlab': mechlab.__file__, 'torch': torch.__file__, 'python': sys.executable}))")
    rest = solution.cells[setup_index(solution) + 1:]
    nb = nbformat.v4.new_notebook(cells=[setup, probe] + rest, metadata=solution.metadata)
    client = PromptClient(nb, km=colab.kernel_manager(runtime, tmp_path / "kernels"),
                            timeout=int(read_source(chapter).meta.limits.wall),
                            resources={"metadata": {"path": str(content)}})
    timings = {}
    with client.setup_kernel(env=env):
        start = time.monotonic()
        client.timeout = SETUP_TIMEOUT
        client.execute_cell(nb.cells[0], 0)
        timings["setup_cell_seconds"] = round(time.monotonic() - start, 1)
        after = colab.freeze(runtime)
        client.execute_cell(nb.cells[1], 1)
        where = json.loads("".join(o.get("text", "") for o in nb.cells[1].outputs))
        start = time.monotonic()
        client.timeout = int(read_source(chapter).meta.limits.wall)
        for index in range(2, len(nb.cells)):
            if nb.cells[index].cell_type == "code":
                client.execute_cell(nb.cells[index], index)
        timings["chapter_seconds"] = round(time.monotonic() - start, 1)

    change = colab.compare(before, after)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report = {"chapter": chapter.name, **timings, "torch": after.get("torch"), "mechlab": after.get("mechlab"),
              "removed": change.removed, "downgraded": change.downgraded, "upgraded": change.upgraded,
              "added": change.added, "imports": where}
    (ARTIFACTS / f"{chapter.name}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))

    setup_text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "mechlab: device=" in setup_text, setup_text
    assert after["torch"] == before["torch"], f"the setup cell changed torch: {change}"
    assert "mechlab" in after, "the setup cell did not install the course"
    assert change.removed == [] and change.downgraded == [], f"the setup cell broke Colab's packages: {change}"
    assert after["ipywidgets"] == before["ipywidgets"], \
        f"the setup cell changed ipywidgets, which Colab's front end draws only at its own version: {change}"
    for path in where.values():
        assert path.startswith(str(runtime)), f"{path} is not from the Colab-like runtime {runtime}"
    errors = [(i, o.ename) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert errors == []
