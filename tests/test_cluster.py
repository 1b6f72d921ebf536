"""Grading a class on a Dask cluster (`grade --scheduler`), started here on 127.0.0.1 as an
instructor would start one: `dask scheduler` and `dask worker` processes. The grades are
the local run's; a worker killed while it grades costs nothing but a retry; a worker
whose course differs refuses."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import psutil
import pytest

from autograder.chapters import REPO_ROOT
from autograder.cluster import LocalCluster
from conftest import run_cli, solution_cell


CLASS = {  # student -> edits of the fixture's solution notebook ("release": the untouched release)
    "alice": {},
    "bob": "release",
    "carol": {"scale": "def scale(x, k):\n    return k * x + 1\n"},
    "dave": {"add": "def add(a, b)\n    return a + b\n"},
    "frank": {"scale": "import os\nos._exit(1)\n"},
}
SLOW = {"add": "import time\ntime.sleep(5)  # long enough to be killed while it grades\n"
               "def add(a, b):\n    return a + b\n"}


def _zip(fixture_course, path: Path, students: dict) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for student, edit in students.items():
            source = fixture_course.release_notebook if edit == "release" else fixture_course.solution_notebook
            nb = nbformat.read(source, as_version=4)
            for exercise, code in (edit if isinstance(edit, dict) else {}).items():
                solution_cell(nb, exercise).source = code
            archive.writestr(f"{student}/00_fixture.ipynb", nbformat.writes(nb))
    return path


def _rows(out: Path) -> list[dict]:
    with open(out / "grades.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def cluster(tmp_path):
    with LocalCluster(tmp_path, workers=2) as c:
        yield c


def test_a_class_graded_on_two_workers_gets_the_local_runs_grades(fixture_course, cluster, tmp_path):
    zip_path = _zip(fixture_course, tmp_path / "class.zip", CLASS)
    local = run_cli("grade", str(zip_path), "--out", str(tmp_path / "local"), "--jobs", "2",
                    root=fixture_course.root)
    assert local.returncode == 0, local.stderr
    remote = run_cli("grade", str(zip_path), "--out", str(tmp_path / "remote"), "--scheduler", cluster.address,
                     root=fixture_course.root)
    assert remote.returncode == 0, remote.stderr
    assert _rows(tmp_path / "remote") == _rows(tmp_path / "local")
    assert {r["student"]: r["score"] for r in _rows(tmp_path / "remote")} == {
        "alice": "6", "bob": "0", "carol": "4", "dave": "5", "frank": "4"}
    for student in CLASS:  # the feedback came back from the workers
        html = (tmp_path / "remote" / "feedback" / student / "00_fixture.html").read_text()
        assert "BEGIN HIDDEN TESTS" not in html and "00_fixture" in html
    again = run_cli("grade", str(zip_path), "--out", str(tmp_path / "remote"), "--scheduler", cluster.address,
                    root=fixture_course.root)  # resume: nothing left to grade
    assert again.returncode == 0 and "0 submission(s) graded in this run" in again.stdout


def _grading_child(worker: subprocess.Popen, timeout: float = 120) -> psutil.Process | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(worker.pid).children(recursive=True):
            try:
                if "grade" in child.cmdline():
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    return None


def _grade_and_kill_the_grading_worker(fixture_course, cluster, tmp_path, *extra: str) -> tuple[Path, str]:
    """Grade a slow submission on the cluster and SIGKILL the worker that grades it (as the
    machine's OOM killer or a preemption would); the run's output folder and stderr."""
    zip_path = _zip(fixture_course, tmp_path / "class.zip", {"slow": SLOW})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "autograder", "--root", str(fixture_course.root), "grade", str(zip_path),
           "--out", str(out), "--scheduler", cluster.address, *extra]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        victim = next((name for name, proc in cluster.workers.items() if _grading_child(proc, 0.5)), None)
    assert victim is not None, "no worker started grading"
    cluster.workers.pop(victim).send_signal(signal.SIGKILL)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    return out, stderr


def test_a_worker_killed_while_it_grades_costs_a_retry_not_a_grade(fixture_course, cluster, tmp_path):
    out, _ = _grade_and_kill_the_grading_worker(fixture_course, cluster, tmp_path)
    [row] = _rows(out)
    assert (row["student"], row["score"], row["status"]) == ("slow", "6", "ok")
    [log] = (out / "results").glob("*.log")
    assert "retried after losing worker(s) tcp://" in log.read_text() and "graded on attempt 2" in log.read_text()


def test_a_worker_with_an_edited_course_refuses(fixture_course, cluster, tmp_path):
    course = tmp_path / "other-course"
    for part in ("mechlab", "autograder"):
        shutil.copytree(REPO_ROOT / part, course / part, ignore=shutil.ignore_patterns("__pycache__"))
    with open(course / "mechlab" / "checks.py", "a") as f:
        f.write("\n# edited on this machine\n")
    cluster.add_worker("edited", course)
    zip_path = _zip(fixture_course, tmp_path / "class.zip", {"alice": {}})
    proc = run_cli("grade", str(zip_path), "--out", str(tmp_path / "out"), "--scheduler", cluster.address,
                   root=fixture_course.root)
    assert proc.returncode == 4
    assert "STOPPED: worker tcp://127.0.0.1:" in proc.stderr and "mechlab/checks.py" in proc.stderr
    assert not (tmp_path / "out" / "grades.csv").exists()


def test_a_submission_that_keeps_losing_workers_is_reported_not_graded_and_regraded_next_run(
        fixture_course, cluster, tmp_path):
    out, stderr = _grade_and_kill_the_grading_worker(fixture_course, cluster, tmp_path, "--retries", "0")
    [row] = _rows(out)
    assert row["status"].startswith("grading infrastructure failed: 1 worker(s) were lost while grading it")
    assert row["score"] == "" and "NOT GRADED: 1 submission(s)" in stderr
    assert not list((out / "results").glob("*.json"))  # nothing stored: not a 0
    again = run_cli("grade", str(tmp_path / "class.zip"), "--out", str(out), "--scheduler", cluster.address,
                    root=fixture_course.root)  # the remaining worker grades it
    assert again.returncode == 0, again.stderr
    [row] = _rows(out)
    assert (row["score"], row["status"]) == ("6", "ok")
