"""Shared fixtures: a tiny fixture course built in a temporary directory, and helpers
that run the course's command line the way an instructor does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from autograder.chapters import REPO_ROOT, Chapter

# Tests run two at a time (pytest -n 2) on a 2-core machine, and each grading starts a
# kernel: torch's default of one thread per core in every process oversubscribes the
# CPU and OpenMP's spin-waits slow everything down eightfold. One thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")

FIXTURE_SOURCE = Path(__file__).parent / "fixtures" / "00_fixture.py"
CHAPTER_NAME_IN_ID = re.compile(r"\d\d_[a-z][a-z0-9_]*")


def run_cli(*args: str, root: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m autograder ...` in a subprocess, as an instructor would run it."""
    cmd = [sys.executable, "-m", "autograder"] + (["--root", str(root)] if root else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})})


def grade(path: Path, root: Path | None = None, *extra: str) -> dict:
    """Grade one file with `--json`; stdout must be exactly one JSON object."""
    proc = run_cli("grade", str(path), "--json", *extra, root=root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout should be one JSON line, got:\n{proc.stdout}"
    return json.loads(lines[0])


def scores(result: dict) -> dict[str, float]:
    return {e["id"]: e["score"] for e in result["exercises"]}


def messages(result: dict) -> dict[str, str]:
    return {e["id"]: e["message"] for e in result["exercises"]}


def solution_cell(nb: nbformat.NotebookNode, exercise: str) -> nbformat.NotebookNode:
    """The (first) solution cell of `exercise` in a source or release notebook."""
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == f"{exercise}_solution")


def as_learner(fn):
    """A copy of a reference function that looks like one defined in a notebook."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__module__ = "__main__"
    return copy


@pytest.fixture(scope="session")
def fixture_course(tmp_path_factory) -> Chapter:
    """The fixture chapter, built (source notebook, release, reference) in its own root."""
    root = tmp_path_factory.mktemp("fixture_course")
    (root / "solutions").mkdir()
    shutil.copy(FIXTURE_SOURCE, root / "solutions" / FIXTURE_SOURCE.name)
    proc = run_cli("build", root=root)
    assert proc.returncode == 0, proc.stderr
    return Chapter("00_fixture", root)


def check_tests(checks: types.ModuleType, exercises: list[str], mutants: list[tuple], variants: list[tuple]):
    """The three tests every chapter's check-test module runs, for it to bind at module level
    (where pytest collects them): each hidden test fails each plausible wrong answer in
    `mutants` ((exercise, function, regex the message must match)) and says why; every
    exercise has a mutant; and each correct answer written differently in `variants`
    ((exercise, function)) passes."""
    from mechlab.checks import CheckFailed

    @pytest.mark.parametrize("name, mutant, message", mutants, ids=[m[1].__name__ for m in mutants])
    def test_grade_fails_a_wrong_answer_and_says_why(name, mutant, message):
        with pytest.raises(CheckFailed, match=message):
            getattr(checks, f"grade_{name}")(as_learner(mutant))

    def test_every_exercise_has_a_mutant():
        assert {m[0] for m in mutants} == set(exercises)

    @pytest.mark.parametrize("name, variant", variants, ids=[v[1].__name__ for v in variants])
    def test_grade_accepts_a_correct_variant(name, variant, capsys):
        getattr(checks, f"grade_{name}")(as_learner(variant))
        assert capsys.readouterr().out.startswith("✓")

    return test_grade_fails_a_wrong_answer_and_says_why, test_every_exercise_has_a_mutant, \
        test_grade_accepts_a_correct_variant


def as_notebook_cell(fn):
    """The function `fn` as a learner's notebook cell defines it: its source compiled under an
    ipykernel cell's file name, in the globals of its own module (so its imports resolve).
    Unlike `as_learner`, the grader's watch does not take it for the reference's code."""
    import inspect
    import textwrap

    namespace = dict(fn.__globals__)
    exec(compile(textwrap.dedent(inspect.getsource(fn)), "/tmp/ipykernel_0/cell.py", "exec"), namespace)
    copy = namespace[fn.__name__]
    copy.__module__ = "__main__"
    return copy


def replay_differences(train, info, name: str, points: int = 3, rel: float = 1e-3) -> dict:
    """A committed dictionary (SAE, transcoder) retrained for its first `points` recorded
    history steps with the same seeds and data: {(metric, step): (replayed, recorded)} where
    they differ by more than `rel` (other CPUs and thread counts round differently; on the
    machine that trained it they agree to the last digit). Empty means the checkpoint's
    training began as its recipe says: the seconds a test can spend, where a whole retrain
    takes minutes (`make retrain`)."""
    recorded = info(name)
    every = recorded["history_every"]
    _, meta = train(name, stop_after=(points - 1) * every + 1)
    assert meta["metrics"] == {} and all(len(v) == points for v in meta["history"].values())
    return {(key, i * every): (v, recorded["history"][key][i]) for key, values in meta["history"].items()
            for i, v in enumerate(values) if abs(v - recorded["history"][key][i]) > rel * max(1.0, abs(v))}


# Seconds a slow test takes in CI (two workers on two cores), to start the longest first: with
# `--dist load --maxschedchunk 1` (the Makefile) each worker takes the next test when it is free,
# so the two finish together instead of one grading chapter 7 alone at the end. CHAPTER_SECONDS
# is a chapter's graded run (a chapter not listed counts as 120 s); its lost-exercise grading
# runs only the cells the exercises need (about a third of it), its untouched release fails
# fast, and the browser runs chapter 1 whole and the others' interactive cells (tests/nbslice.py).
CHAPTER_SECONDS = {"07_model_diffing": 215, "06_transcoders": 200, "04_sparse_autoencoders": 160,
                   "01_superposition": 80, "05_steering": 70, "02_induction_heads": 30,
                   "03_activation_patching": 40}
SHARE_OF_CHAPTER = {"losing_exercise": 1 / 3, "untouched_release": 1 / 4}
BROWSER_SECONDS = {"01_superposition": 85}  # the others: 15-30 s
SLOW_TESTS = {"keeps_full_marks_on_a_busy_machine": 75, "test_every_student_gets_exactly_the_expected_points": 80,
              "test_a_class_graded_on_two_workers": 80}


def expected_seconds(item) -> float:
    callspec = getattr(item, "callspec", None)
    chapter = CHAPTER_NAME_IN_ID.search(callspec.id) if callspec is not None else None
    if item.path.name == "test_browser.py" and chapter is not None:
        return BROWSER_SECONDS.get(chapter[0], 25)
    if item.path.name == "test_chapters.py" and chapter is not None:
        share = next((v for k, v in SHARE_OF_CHAPTER.items() if k in item.name), 1)
        return share * CHAPTER_SECONDS.get(chapter[0], 120)
    return next((seconds for key, seconds in SLOW_TESTS.items() if key in item.name), 0.0)


def pytest_collection_modifyitems(config, items):
    """Longest first (`expected_seconds`; the rest keep their order, after them). Whole retrains
    of the zoo's models (`@pytest.mark.retrain`, minutes each) run only when asked, as `make
    retrain` asks: `make test` replays the first steps of each instead."""
    items.sort(key=lambda item: -expected_seconds(item))
    if os.environ.get("MECHLAB_TEST_RETRAIN") == "1":
        return
    skip = pytest.mark.skip(reason="a whole retrain: `make retrain` (or MECHLAB_TEST_RETRAIN=1) runs it")
    for item in items:
        if "retrain" in item.keywords:
            item.add_marker(skip)
