"""The grader on the fixture chapter: right scores, and bad submissions cost points,
never the grading run. Each submission is built here from the fixture's solution
or release notebook, graded through the real command line and nbgrader."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

import mechlab.checks as checks_module
from autograder.course import ThrowawayCourse
from autograder.sandbox import unavailable
from autograder.source import read_source
from conftest import grade, messages, run_cli, scores, solution_cell

FULL = {"add": 1.0, "scale": 2.0, "count_positive": 3.0}


def submit(chapter, tmp_path: Path, name: str, edit=None, *, release: bool = False) -> Path:
    """Write a submission made from the solution (or release) notebook, edited by `edit(nb)`."""
    nb = nbformat.read(chapter.release_notebook if release else chapter.solution_notebook, as_version=4)
    if edit:
        edit(nb)
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def set_solution(exercise: str, code: str):
    def edit(nb):
        solution_cell(nb, exercise).source = code
    return edit


def test_solution_gets_full_marks(fixture_course, tmp_path):
    result = grade(submit(fixture_course, tmp_path, "solution.ipynb"), fixture_course.root)
    assert scores(result) == FULL
    assert (result["chapter"], result["score"], result["max_score"]) == ("00_fixture", 6.0, 6.0)
    assert set(messages(result).values()) == {"passed"}
    assert result["cell_errors"] == []


def test_untouched_release_gets_zero_and_says_why(fixture_course, tmp_path):
    result = grade(submit(fixture_course, tmp_path, "release.ipynb", release=True), fixture_course.root)
    assert result["score"] == 0.0 and result["max_score"] == 6.0
    assert "not implemented yet" in messages(result)["add"]


def test_one_wrong_exercise_loses_exactly_its_points(fixture_course, tmp_path):
    wrong = "def scale(x, k):\n    return k * x + 1\n"
    result = grade(submit(fixture_course, tmp_path, "wrong.ipynb", set_solution("scale", wrong)),
                   fixture_course.root)
    assert scores(result) == {**FULL, "scale": 0.0}
    # the message says which checks failed and what differs, as the visible checks print it
    assert messages(result)["scale"].startswith("visible checks failed: CheckFailed: scale(k=2): 3 of 3 entries differ")


def test_a_wrong_exercise_1_costs_nothing_to_the_exercise_that_uses_it(fixture_course, tmp_path):
    """count_positive's default `combine=add` is the learner's wrong add; graded on its own
    (visible checks and hidden tests), count_positive keeps its points."""
    wrong = "def add(a, b):\n    return a - b\n"
    result = grade(submit(fixture_course, tmp_path, "wrongadd.ipynb", set_solution("add", wrong)),
                   fixture_course.root)
    assert scores(result) == {**FULL, "add": 0.0}, result["exercises"]


def test_message_says_when_only_the_hidden_tests_failed(fixture_course, tmp_path):
    sneaky = "def scale(x, k):\n    return k * x if k == 2.0 else x\n"  # right on the visible case only
    result = grade(submit(fixture_course, tmp_path, "sneaky.ipynb", set_solution("scale", sneaky)),
                   fixture_course.root)
    assert scores(result) == {**FULL, "scale": 0.0}
    assert messages(result)["scale"].startswith("hidden tests failed: CheckFailed: scale(k=0.0)")


@pytest.mark.parametrize("way, code", [
    ("pass", "pass\n"),
    ("syntax error", "def add(a, b)\n    return a + b\n"),
    ("endless loop", "while True:\n    pass\n"),
    ("os._exit", "import os\nos._exit(1)\n"),
])
def test_each_way_of_losing_exercise_1_costs_only_its_points(fixture_course, tmp_path, way, code):
    """count_positive's definition uses `add` as a default (as chapter 1's training loop
    uses toy_forward): under grading the missing name is the reference, so it is defined,
    and graded on its own."""
    result = grade(submit(fixture_course, tmp_path, "lost.ipynb", set_solution("add", code)), fixture_course.root)
    assert scores(result) == {**FULL, "add": 0.0}, result["exercises"]
    message = messages(result)["add"]
    assert {"pass": "course's reference implementation", "syntax error": "raised SyntaxError",
            "endless loop": "solution cell timed out", "os._exit": "killed the kernel"}[way] in message
    if way == "syntax error":
        assert any("SyntaxError" in e for e in result["cell_errors"])


def test_raising_code_costs_only_its_exercise(fixture_course, tmp_path):
    raising = "def count_positive(x):\n    raise ValueError('oops')\n"
    result = grade(submit(fixture_course, tmp_path, "raises.ipynb", set_solution("count_positive", raising)),
                   fixture_course.root)
    assert scores(result) == {**FULL, "count_positive": 0.0}
    assert "ValueError: oops" in messages(result)["count_positive"]


def test_endless_loops_cost_their_exercise_after_the_timeout(fixture_course, tmp_path):
    def edit(nb):
        solution_cell(nb, "add").source = "while True:\n    pass\n"  # never defines add
        solution_cell(nb, "scale").source = "def scale(x, k):\n    while True:\n        pass\n"
    result = grade(submit(fixture_course, tmp_path, "loops.ipynb", edit), fixture_course.root)
    assert scores(result) == {**FULL, "add": 0.0, "scale": 0.0}
    assert "solution cell timed out" in messages(result)["add"]
    # the ordinary cell after them calls scale too (with the reference add in place of the missing one)
    assert result["status"] == ("timeout in exercise 1 (add); timeout in exercise 2 (scale); "
                                "timeout in cell 13 (outside the exercises)")
    # which limit it broke, by how much, and what the limits are
    assert re.search(r"timed out: the cell used \d+ s of CPU time, over the limit of 8 s per cell",
                     messages(result)["scale"]), messages(result)["scale"]
    assert "limits per cell: 8 s of CPU time" in messages(result)["scale"]


def test_an_endless_sleep_costs_its_exercise_in_bounded_time(fixture_course, tmp_path):
    """Sleeping burns no CPU, so the CPU limit never comes: the cell is stopped after the
    chapter's idle limit (8 s here: min(60, cpu_limit)) instead of the wall-clock backstop."""
    sleeps = "import time\n\ndef scale(x, k):\n    time.sleep(10**6)\n"
    start = time.monotonic()
    result = grade(submit(fixture_course, tmp_path, "sleeps.ipynb", set_solution("scale", sleeps)),
                   fixture_course.root)
    took = time.monotonic() - start
    assert scores(result) == {**FULL, "scale": 0.0}, result["exercises"]
    assert "used no CPU for" in messages(result)["scale"], messages(result)["scale"]
    # the visible check's call and the ordinary cell after it each wait out the idle limit, not the
    # 80 s backstop (generous bound: the grading itself takes ~20 s on a busy 2-core machine)
    assert took < 160, took


def _hogs(n: int, seconds: float) -> list:
    """`n` CPU-bound processes that end by themselves after `seconds` (and are killed by the test)."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    # each in its own session: with the kernel's autogroup scheduling, processes of one session
    # share one slice of the CPU, as the other users of a shared machine do not
    return [subprocess.Popen([sys.executable, "-c", code], start_new_session=True) for _ in range(n)]


def test_a_correct_notebook_keeps_full_marks_on_a_busy_machine(fixture_course, tmp_path):
    """The per-cell limit counts the kernel's CPU time: a cell that needs 5 s of CPU, under the
    fixture's 8 s limit, passes while three CPU-bound processes per core make it wait (a
    wall-clock limit of 8 s, as in nbgrader, failed it)."""
    burn = ("import time\n_end = time.process_time() + 5\nwhile time.process_time() < _end:\n    pass\n"
            "print('burned')\n")

    def edit(nb):
        solution_cell(nb, "add").source += "\n" + burn
    graded = tmp_path / "graded.ipynb"
    hogs = _hogs(3 * (os.cpu_count() or 1), 240)
    try:
        result = grade(submit(fixture_course, tmp_path, "busy.ipynb", edit), fixture_course.root,
                       "--graded-notebook", str(graded))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert scores(result) == FULL, result["exercises"]
    usage = solution_cell(nbformat.read(graded, as_version=4), "add").metadata["mechlab"]
    assert 4.5 < usage["cpu_seconds"] < 8, usage
    assert usage["wall_seconds"] > 8, f"the machine was not busy enough to show anything: {usage}"


def test_dead_kernel_costs_only_the_exercise_that_killed_it(fixture_course, tmp_path):
    dies = "import os\nos._exit(1)\n"
    result = grade(submit(fixture_course, tmp_path, "dies.ipynb", set_solution("scale", dies)),
                   fixture_course.root)
    assert scores(result) == {**FULL, "scale": 0.0}  # add (before) and count_positive (after) graded
    assert result["status"] == "kernel died in exercise 2 (scale)"
    assert "killed the kernel" in messages(result)["scale"]


def test_deleted_test_cell_is_restored_not_skipped(fixture_course, tmp_path):
    def edit(nb):
        nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "add_test"]
    result = grade(submit(fixture_course, tmp_path, "deleted.ipynb", edit), fixture_course.root)
    assert scores(result) == FULL


def test_copied_test_cell_is_ignored_and_the_original_graded(fixture_course, tmp_path):
    """nbgrader alone crashes on a duplicate grade id (KeyError 'grade_id'), zeroing everything."""
    def edit(nb):
        index = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "add_test")
        copy = nbformat.from_dict(json.loads(json.dumps(nb.cells[index])))
        copy.id = "learner-copy"
        nb.cells.insert(index + 1, copy)
    result = grade(submit(fixture_course, tmp_path, "dup.ipynb", edit), fixture_course.root)
    assert scores(result) == FULL and result["status"] == "ok"


def test_huge_output_is_capped_before_the_feedback(fixture_course, tmp_path):
    def edit(nb):
        solution_cell(nb, "scale").source += "\nprint('x' * 5_000_000)  # one 5 MB line\n"
    result = grade(submit(fixture_course, tmp_path, "huge.ipynb", edit), fixture_course.root)
    assert scores(result) == FULL
    feedback = Path(result["feedback"])
    assert feedback.stat().st_size < 1_000_000 and "output cut: 5,000,001 characters" in feedback.read_text()


def test_edited_test_cell_is_overwritten_from_the_source(fixture_course, tmp_path):
    def edit(nb):
        test = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "scale_test")
        test.source = "pass  # the learner emptied the test"
        solution_cell(nb, "scale").source = "def scale(x, k):\n    return x\n"
    result = grade(submit(fixture_course, tmp_path, "tampered.ipynb", edit), fixture_course.root)
    assert scores(result)["scale"] == 0.0


def test_retyped_and_repointed_test_cells_are_restored(fixture_course, tmp_path):
    def edit(nb):
        cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
        cells["add_test"].cell_type = "markdown"  # retyped: code -> markdown
        del cells["add_test"]["outputs"], cells["add_test"]["execution_count"]
        # re-pointed: the learner's own cell claims to be scale's test, and the real one is gone
        fake = cells["scale_test"]
        fake.source = "print('all good')"
        solution_cell(nb, "scale").source = "def scale(x, k):\n    return x\n"
    result = grade(submit(fixture_course, tmp_path, "retyped.ipynb", edit), fixture_course.root)
    assert scores(result) == {**FULL, "scale": 0.0}


def test_silencing_tracebacks_gains_nothing(fixture_course, tmp_path):
    cheat = ("get_ipython().showtraceback = lambda *args, **kwargs: None\n"
             "def scale(x, k):\n    return x\n")
    result = grade(submit(fixture_course, tmp_path, "silent.ipynb", set_solution("scale", cheat)),
                   fixture_course.root)
    assert scores(result) == {**FULL, "scale": 0.0}


def test_rebinding_torch_allclose_and_eq_gains_nothing(fixture_course, tmp_path):
    cheat = ("import torch\n"
             "torch.allclose = lambda *a, **k: True\n"
             "torch.Tensor.__eq__ = lambda self, other: True\n"
             "class Liar:\n"
             "    def __eq__(self, other): return True\n"
             "def scale(x, k):\n    return Liar()\n")
    result = grade(submit(fixture_course, tmp_path, "cheat.ipynb", set_solution("scale", cheat)),
                   fixture_course.root)
    assert scores(result)["scale"] == 0.0
    assert "expected a torch.Tensor, got Liar" in messages(result)["scale"]


def test_rebinding_the_course_check_helpers_gains_nothing(fixture_course, tmp_path):
    cheat = ("import mechlab.checks\n"
             "mechlab.checks.compare_function = lambda *args, **kwargs: None\n"
             "mechlab.checks.assert_value_close = lambda *args, **kwargs: None\n"
             "def scale(x, k):\n    return x\n")
    result = grade(submit(fixture_course, tmp_path, "cheat2.ipynb", set_solution("scale", cheat)),
                   fixture_course.root)
    assert scores(result) == {**FULL, "scale": 0.0}
    assert "entries differ" in messages(result)["scale"]


FAKE_CHAPTER_CHECKS = """
import os, sys, types
import mechlab, mechlab.superposition.checks, mechlab.superposition.toy_models, mechlab.steering.checks
import mechlab.zoo, mechlab.runtime, mechlab.pristine, mechlab.steering.investigation
real_pristine = mechlab.pristine
fake = types.ModuleType("fake")
sys.modules.pop("mechlab.superposition.checks")
mechlab.superposition.checks = fake                     # on the package, out of sys.modules
fake_package = types.ModuleType("mechlab.steering")
fake_package.checks, fake_package.__path__ = fake, []
sys.modules["mechlab.steering"] = mechlab.steering = fake_package   # the package itself
mechlab.chapters.reference = lambda topic: fake        # where own_work looks for the reference
mechlab.zoo.load = lambda *a, **k: None                # every chapter's models
mechlab.runtime.under_grading = lambda: False          # own_work's watch
os.environ.pop("NBGRADER_EXECUTION", None)             # ditto
sys.modules["mechlab.steering.investigation"].MIN_SUCCESS = 0.0   # an investigation's bar
mechlab.superposition.toy_models.importance_decay = None  # a chapter's helper
exec(FRESH_MODULES)
from mechlab.superposition import checks as ch1
from mechlab.steering import checks as ch5
from mechlab.steering import investigation
import mechlab.chapters, mechlab.superposition.toy_models, mechlab.zoo, mechlab.runtime
print(ch1.__file__.endswith("superposition/checks.py"), ch5.__file__.endswith("steering/checks.py"),
      mechlab.chapters.reference("superposition").__name__, mechlab.zoo.load.__module__,
      mechlab.runtime.under_grading(), investigation.MIN_SUCCESS > 0,
      callable(mechlab.superposition.toy_models.importance_decay),
      mechlab.pristine is real_pristine)
"""


def test_each_test_cell_imports_the_course_from_disk_whatever_was_put_in_its_place():
    """What the grader runs before every test cell (FRESH_MODULES), in a fresh process: a
    fake checks module on the chapter package, a fake chapter package, a patched chapter
    lookup, a patched model loader, a faked `under_grading` and its environment variable,
    an investigation's lowered bar and an edited helper are all gone; only the module
    that holds the pristine torch functions is kept."""
    import subprocess
    import sys

    from autograder.preprocessors import FRESH_MODULES

    code = f"FRESH_MODULES = {FRESH_MODULES!r}\n" + FAKE_CHAPTER_CHECKS
    env = {**__import__("os").environ, "NBGRADER_EXECUTION": "autograde"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.stdout.split() == ["True", "True", "mechlab.superposition.reference", "mechlab.zoo", "True",
                                  "True", "True", "True"], out.stderr


REFERENCE_ROUTES = {  # exercise 1's reference reached at run time, each a different way
    "the reference itself": "from mechlab.fixture.reference import add\n",
    "a wrapper": "from mechlab.fixture import reference as _ref\ndef add(a, b):\n    return _ref.add(a, b)\n",
    "a lambda": "import mechlab.fixture.reference as _ref\nadd = lambda a, b: _ref.add(a, b)\n",
    "a partial": "import functools\nfrom mechlab.fixture.reference import add as _ref\nadd = functools.partial(_ref)\n",
    "getattr(importlib)": ("import importlib\n"
                           "def add(a, b):\n    return getattr(importlib.import_module('mechlab.fixture.reference'), "
                           "'add')(a, b)\n"),
    "a copied __code__": ("from mechlab.fixture.reference import add as _ref\ndef add(a, b):\n    pass\n"
                          "add.__code__ = _ref.__code__\n"),
    "a method": ("from mechlab.fixture.reference import add as _ref\nclass Adder:\n"
                 "    def __call__(self, a, b):\n        return _ref(a, b)\nadd = Adder()\n"),
    "a thread": ("import threading\nfrom mechlab.fixture.reference import add as _ref\ndef add(a, b):\n"
                 "    out = []\n    t = threading.Thread(target=lambda: out.append(_ref(a, b)))\n"
                 "    t.start(); t.join()\n    return out[0]\n"),
    "the profiler turned off": ("import sys\nfrom mechlab.fixture.reference import add as _ref\ndef add(a, b):\n"
                                "    sys.setprofile(None)\n    return _ref(a, b)\n"),
}


@pytest.mark.parametrize("route", REFERENCE_ROUTES)
def test_reaching_the_exercises_own_reference_earns_nothing(fixture_course, tmp_path, route):
    """The reference ships as the stuck learner's escape hatch; reached by any route at run
    time, it earns that exercise nothing, and the grade says why."""
    result = grade(submit(fixture_course, tmp_path, "stuck.ipynb", set_solution("add", REFERENCE_ROUTES[route])),
                   fixture_course.root)
    assert scores(result) == {**FULL, "add": 0.0}, result["exercises"]
    assert ("reference implementation" if route == "the reference itself" else
            "uses the course's reference for exercise 1 (add)") in messages(result)["add"]


def test_calling_another_exercises_reference_keeps_the_points(fixture_course, tmp_path):
    """How a learner who skipped exercise 1 still does exercise 3: allowed, and graded."""
    code = ("from mechlab.fixture.reference import add as ref_add\n"
            "def count_positive(x, combine=ref_add):\n    return int((combine(x, x) > 0).sum().item())\n")
    result = grade(submit(fixture_course, tmp_path, "other.ipynb", set_solution("count_positive", code)),
                   fixture_course.root)
    assert scores(result) == FULL, result["exercises"]


def test_file_that_is_not_a_notebook_gets_a_clear_zero(fixture_course, tmp_path):
    junk = tmp_path / "00_fixture_final.ipynb"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not json at all")
    result = grade(junk, fixture_course.root)
    assert result["score"] == 0.0 and result["max_score"] == 6.0  # chapter known from the file name
    assert result["status"].startswith("not a notebook")
    unknown = tmp_path / "essay.ipynb"
    unknown.write_text("{}")
    result = grade(unknown, fixture_course.root)
    assert result["chapter"] is None and result["score"] == 0.0
    assert Path(result["feedback"]).is_file()


def test_notebook_that_lost_its_metadata_is_still_graded(fixture_course, tmp_path):
    """Some editors drop cell metadata: the chapter is recognised by the cells' text,
    and the test cells are restored from the source."""
    def edit(nb):
        for cell in nb.cells:
            cell.metadata = {}
    result = grade(submit(fixture_course, tmp_path, "stripped.ipynb", edit), fixture_course.root)
    assert result["chapter"] == "00_fixture" and scores(result) == FULL


def test_colab_download_grades_like_the_same_work_from_jupyterlab(fixture_course, tmp_path):
    """Colab adds its own metadata, outputs and execution counts, and sometimes drops cell ids."""
    def edit(nb):
        nb.metadata = {"colab": {"provenance": [], "toc_visible": True}, "accelerator": "GPU",
                       "kernelspec": {"name": "python3", "display_name": "Python 3"},
                       "language_info": {"name": "python"}}
        for i, cell in enumerate(nb.cells):
            cell.metadata["id"] = f"colab-{i}"
            cell.metadata.setdefault("colab", {"base_uri": "https://localhost:8080/"})
            if cell.cell_type == "code":
                cell.execution_count = i
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="stale output\n")]
    colab = grade(submit(fixture_course, tmp_path, "colab.ipynb", edit), fixture_course.root)
    lab = grade(submit(fixture_course, tmp_path, "lab.ipynb"), fixture_course.root)
    assert scores(colab) == scores(lab) == FULL and colab["status"] == lab["status"] == "ok"


def test_renamed_submission_is_matched_by_its_grade_ids(fixture_course, tmp_path):
    result = grade(submit(fixture_course, tmp_path, "Copy of my homework (2).ipynb"), fixture_course.root)
    assert result["chapter"] == "00_fixture" and result["score"] == 6.0


def test_feedback_shows_messages_but_never_hidden_tests(fixture_course, tmp_path):
    wrong = "def scale(x, k):\n    return k * x + 1\n"
    path = submit(fixture_course, tmp_path, "fb.ipynb", set_solution("scale", wrong))
    result = grade(path, fixture_course.root, "--feedback", str(tmp_path / "feedback"))
    html = Path(result["feedback"]).read_text()
    assert Path(result["feedback"]).parent == tmp_path / "feedback"
    assert "entries differ" in html  # the failing check's message
    assert "4 / 6 points</h2>" in html  # the summary table on top
    assert "hidden tests: they decide the grade" in html
    for hidden in ("own_work", "BEGIN HIDDEN TESTS", "k=-1.5"):
        assert hidden not in html


def test_table_output_for_people(fixture_course, tmp_path):
    proc = run_cli("grade", str(submit(fixture_course, tmp_path, "s.ipynb")), root=fixture_course.root)
    assert proc.returncode == 0
    assert "6 / 6 points" in proc.stdout and "count_positive" in proc.stdout


def test_untouched_release_raises_no_nbgrader_warnings(fixture_course, tmp_path):
    """nbgrader #1961: every untouched release used to report 'checksum changed'."""
    source = read_source(fixture_course)
    course = ThrowawayCourse(fixture_course, tmp_path / "course", source.meta.limits)
    course.api.log.setLevel("INFO")
    course.generate_assignment(fixture_course.solution_notebook.read_text())
    course.submit(fixture_course.release_notebook, "student")
    outcome = course.autograde("student")
    assert outcome["success"], outcome.get("error")
    assert "[WARNING]" not in outcome["log"], outcome["log"]
    assert "[INFO]" in outcome["log"]  # the log was really captured


def test_json_is_the_only_thing_on_stdout(fixture_course, tmp_path):
    proc = run_cli("grade", str(submit(fixture_course, tmp_path, "j.ipynb")), "--json", root=fixture_course.root)
    json.loads(proc.stdout)  # raises if anything else was printed


# ---------------------------------------------------------------- found by trying to break the grader


def test_a_loop_that_ignores_the_interrupt_costs_only_its_exercise(fixture_course, tmp_path):
    """nbclient interrupts a cell at the timeout; this one ignores SIGINT, so the kernel
    stays busy and, left alone, every later cell would time out too."""
    stubborn = ("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "def scale(x, k):\n    return k * x\nwhile True:\n    pass\n")
    result = grade(submit(fixture_course, tmp_path, "stubborn.ipynb", set_solution("scale", stubborn)),
                   fixture_course.root)
    assert scores(result) == {**FULL, "scale": 0.0}
    assert "kernel hung in exercise 2 (scale)" in result["status"]
    assert "hung the kernel" in messages(result)["scale"]


def test_cells_copied_from_another_chapter_or_with_invented_ids_are_ordinary_cells(fixture_course, tmp_path):
    """nbgrader alone aborts on a grade id its gradebook does not know (KeyError 'grade_id')."""
    def edit(nb):
        for grade_id, flags in [("toy_forward_solution", {"solution": True}), ("toy_forward_test", {"grade": True}),
                                ("bonus", {"solution": False, "locked": True})]:
            nb.cells.append(nbformat.v4.new_code_cell("x = 1", metadata={"nbgrader": {
                "grade_id": grade_id, "schema_version": 3, "task": False, "locked": False, "solution": False,
                "grade": False, "points": 2, **flags}}))
    result = grade(submit(fixture_course, tmp_path, "copied.ipynb", edit), fixture_course.root)
    assert scores(result) == FULL and result["status"] == "ok"


def test_flags_flipped_on_known_cells_are_reset_from_the_source(fixture_course, tmp_path):
    """nbgrader alone aborts ("Inconsistent checksums", "nbgrader update") on each of these."""
    def edit(nb):
        test = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "add_test")
        test.metadata.nbgrader.update(grade=False, locked=False, solution=True)
        solution_cell(nb, "scale").metadata.nbgrader["schema_version"] = 1
    result = grade(submit(fixture_course, tmp_path, "flags.ipynb", edit), fixture_course.root)
    assert scores(result) == FULL


def test_a_cell_without_source_is_graded_not_a_crash(fixture_course, tmp_path):
    path = submit(fixture_course, tmp_path, "null.ipynb")
    raw = json.loads(path.read_text())
    raw["cells"].append({"cell_type": "code", "source": None, "metadata": {}, "outputs": [],
                         "execution_count": None, "id": "nullsource"})
    path.write_text(json.dumps(raw))
    result = grade(path, fixture_course.root)
    assert result["score"] == 6.0


def test_writing_a_score_into_the_gradebook_gains_nothing(fixture_course, tmp_path):
    """The throwaway gradebook sits in the kernel's reach; nbgrader's `score` prefers a
    manual score, which the grader never reads (and never exceeds the maximum)."""
    cheat = ("import os, sqlite3, pathlib\n"
             "here = pathlib.Path(os.getcwd())\n"
             "db = next(p / 'gradebook.db' for p in [here, *here.parents] if (p / 'gradebook.db').exists())\n"
             "def scale(x, k):\n    return x\n"
             "with sqlite3.connect(db) as c:\n    c.execute('UPDATE grade SET manual_score = 1000')\n")
    result = grade(submit(fixture_course, tmp_path, "db.ipynb", set_solution("scale", cheat)), fixture_course.root)
    assert scores(result) == {**FULL, "scale": 0.0} and result["score"] == 4.0


def test_changing_the_course_files_costs_the_submission_and_is_reported(fixture_course, tmp_path):
    """Learner code runs as the instructor's user; the checks it is graded with must not
    be rewritable in its favour, and never silently for the next student."""
    root = tmp_path / "course"
    shutil.copytree(fixture_course.root, root)
    target = root / "solutions" / "00_fixture.py"
    writes = f"def add(a, b):\n    return a + b\nopen({str(target)!r}, 'a').write('# changed\\n')\n"
    proc = run_cli("grade", str(submit(fixture_course, tmp_path, "w.ipynb", set_solution("add", writes))),
                   "--json", "--sandbox", "off", root=root)  # the digests: the line behind the sandbox
    result = json.loads(proc.stdout)
    assert proc.returncode == 3 and result["score"] == 0.0
    assert result["status"].startswith("changed the course's own files during grading")
    assert "00_fixture.py" in result["status"] and "git checkout" in proc.stderr


def test_processes_a_submission_starts_do_not_outlive_its_grading_even_unsandboxed(fixture_course, tmp_path):
    """nbclient shuts a kernel down by killing its process group, which takes along what
    the learner's code started (not what escapes it with setsid: that takes the sandbox)."""
    pid_file = tmp_path / "pid"
    spawn = (f"import subprocess, sys\nchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
             f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
             "def add(a, b):\n    return a + b\n")
    result = grade(submit(fixture_course, tmp_path, "spawn.ipynb", set_solution("add", spawn)), fixture_course.root,
                   "--sandbox", "off")
    assert result["score"] == 6.0
    pid = int(pid_file.read_text())
    for _ in range(50):  # killed with the kernel's process group; give the OS a moment
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):  # dead, waiting to be reaped by whoever adopted it
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError(f"process {pid}, started by the submission, outlived its grading")


# ---------------------------------------------------------------- the sandbox (bubblewrap)

needs_bwrap = pytest.mark.skipif(unavailable() is not None, reason=f"no sandbox here: {unavailable()}")


def _processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


@needs_bwrap
def test_sandboxed_submission_keeps_its_points_and_leaves_nothing_behind(fixture_course, tmp_path):
    """A detached sleeper (setsid), an append to an installed course file, a write to
    another student's feedback and a connection out: the correct code keeps its marks, and
    afterwards no process of it is left and nothing outside its scratch folder changed."""
    marker = f"mechlab-sleeper-{uuid.uuid4().hex}"
    course_file = Path(checks_module.__file__)  # the installed course, which grading trusts
    others = tmp_path / "other-student.feedback.html"
    others.write_text("alice's feedback")
    listener = socket.create_server(("127.0.0.1", 0))  # a service on this machine's loopback
    listener.setblocking(False)
    hostile = (
        "import socket, subprocess, sys\n"
        f"subprocess.Popen(['setsid', sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}],\n"
        "                 start_new_session=True)\n"
        "tried = []\n"
        f"for target in [{str(course_file)!r}, {str(others)!r}]:\n"
        "    try:\n        open(target, 'a').write('# changed')\n        tried.append('written')\n"
        "    except OSError as e:\n        tried.append(type(e).__name__)\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), timeout=2)\n"
        "    tried.append('connected')\nexcept OSError as e:\n    tried.append(type(e).__name__)\n"
        "print('TRIED', *tried)\n"
        "def add(a, b):\n    return a + b\n")
    before = course_file.read_bytes()
    result = grade(submit(fixture_course, tmp_path, "hostile.ipynb", set_solution("add", hostile)),
                   fixture_course.root, "--feedback", str(tmp_path / "fb"), "--sandbox", "required")
    assert result["score"] == 6.0 and result["status"] == "ok", result
    assert course_file.read_bytes() == before and others.read_text() == "alice's feedback"
    tried = re.search(r"TRIED ([\w ]+)", Path(result["feedback"]).read_text())[1].split()
    # read-only (the course), not there (the other feedback, outside its private /tmp), refused
    assert tried == ["OSError", "FileNotFoundError", "ConnectionRefusedError"], tried
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever reached it
    listener.close()
    assert _processes_with(marker) == []


def test_without_bubblewrap_grading_warns_once_or_refuses_when_required(fixture_course, tmp_path):
    path = submit(fixture_course, tmp_path, "s.ipynb")
    env = {"MECHLAB_BWRAP": str(tmp_path / "no-bwrap-here")}
    proc = run_cli("grade", str(path), "--json", "--feedback", str(tmp_path), root=fixture_course.root, env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["score"] == 6.0
    warnings = [line for line in proc.stderr.splitlines() if "without a sandbox" in line]
    assert len(warnings) == 1 and "bubblewrap is not installed" in warnings[0], proc.stderr
    proc = run_cli("grade", str(path), "--sandbox", "required", root=fixture_course.root, env=env)
    assert proc.returncode == 2 and "--sandbox required" in proc.stderr and proc.stdout == ""


def test_grading_is_quiet_on_the_console(fixture_course, tmp_path):
    """No kernel or nbconvert warnings for an instructor to mistake for errors; -v shows them."""
    proc = run_cli("grade", str(submit(fixture_course, tmp_path, "q.ipynb")), "--feedback", str(tmp_path),
                   root=fixture_course.root)
    assert proc.returncode == 0 and "6 / 6 points" in proc.stdout
    assert proc.stderr.strip() == "" or "without a sandbox" in proc.stderr, proc.stderr
