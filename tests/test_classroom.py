"""Grading a whole class in one command: a zip as a learning platform exports it, with
every kind of bad submission, graded in parallel into grades.csv, nbgrader's gradebook
and one feedback file per submission; re-runs are idempotent and resume."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import nbformat
import pytest
from filelock import FileLock
from nbgrader.api import Gradebook

from autograder.classroom import StudentRule, read_roster
from conftest import run_cli, solution_cell

STUDENT_WORK = {  # student -> (file in the zip, edit of the solution notebook or None, expected)
    "alice": ("alice/00_fixture.ipynb", {}, (6, "ok")),
    "bob": ("bob/Copy of 00_fixture (2).ipynb", "release", (0, "ok")),
    "carol": ("carol/homework.ipynb", {"scale": "def scale(x, k):\n    return k * x + 1\n"}, (4, "ok")),
    "dave": ("dave/x.ipynb", {"add": "def add(a, b)\n    return a + b\n"}, (5, "ok")),
    "erin": ("erin/loop.ipynb", {"scale": "def scale(x, k):\n    while True:\n        pass\n"},
             (4, "timeout in exercise 2 (scale)")),
    "frank": ("frank/dies.ipynb", {"scale": "import os\nos._exit(1)\n"}, (4, "kernel died in exercise 2 (scale)")),
    "grace": ("grace/final.ipynb", b"%PDF-1.4 not a notebook", (0, "not a notebook")),
    "heidi": ("heidi/big.ipynb", {"count_positive": "import torch\ndef count_positive(x):\n"
                                  "    waste = torch.ones(2**31)  # 8 GB\n    return int((x > 0).sum())\n"}, (3, "ok")),
    "ivan": ("ivan/noisy.ipynb", {"add": "import sys\ndef add(a, b):\n    print('50%|#####', file=sys.stderr)\n"
                                  "    return a + b\n"}, (6, "ok")),
    "judy": ("judy/cheat.ipynb", {"scale": "import mechlab.checks\nmechlab.checks.compare_function = "
                                  "lambda *a, **k: None\ndef scale(x, k):\n    return x\n"}, (4, "ok")),
    "ken": ("ken/Colab download.ipynb", "colab", (6, "ok")),
}


def make_class(fixture_course, folder: Path) -> Path:
    zip_path = folder / "class_export.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for student, (name, edit, _) in STUDENT_WORK.items():
            if isinstance(edit, bytes):
                archive.writestr(name, edit)
                continue
            source = fixture_course.release_notebook if edit == "release" else fixture_course.solution_notebook
            nb = nbformat.read(source, as_version=4)
            if edit == "colab":
                nb.metadata["colab"] = {"provenance": []}
                for cell in nb.cells:
                    cell.metadata["colab"] = {"base_uri": "https://localhost:8080/"}
            elif isinstance(edit, dict):
                for exercise, code in edit.items():
                    solution_cell(nb, exercise).source = code
            archive.writestr(name, nbformat.writes(nb))
        # a second, worse hand-in of the same chapter by alice, and platform clutter
        archive.writestr("alice/old/00_fixture.ipynb", fixture_course.release_notebook.read_text())
        archive.writestr("__MACOSX/alice/._00_fixture.ipynb", b"\x00\x05")
        archive.writestr("readme.txt", "not a submission")
    return zip_path


def read_grades(out: Path) -> dict[str, dict]:
    with open(out / "grades.csv", newline="") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="session")
def graded_class(fixture_course, tmp_path_factory, worker_id):
    """(the class's zip, its output folder, `grade`'s stdout): the class graded once (80 s) for
    every test that reads it, by whichever pytest-xdist worker needs it first while the other
    waits (xdist's `--dist loadgroup` no longer groups tests under pytest 9.2). Tests only
    read the folder; one that changes it works on a copy."""
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    folder = shared / "graded_class"
    zip_path, out, stdout = folder / "class_export.zip", folder / "grades", folder / "stdout.txt"
    with FileLock(str(shared / "graded_class.lock")):
        if not stdout.exists():
            folder.mkdir()
            make_class(fixture_course, folder)
            proc = run_cli("grade", str(zip_path), "--out", str(out), "--jobs", "2", "--memory-gb", "3",
                           root=fixture_course.root)
            assert proc.returncode == 0, proc.stderr
            stdout.write_text(proc.stdout)
    return zip_path, out, stdout.read_text()


def test_every_student_gets_exactly_the_expected_points(graded_class):
    _, out, stdout = graded_class
    grades = read_grades(out)
    assert set(grades) == set(STUDENT_WORK)
    for student, (_, _, (points, status)) in STUDENT_WORK.items():
        row = grades[student]
        assert float(row["score"]) == points, (student, row)
        assert row["max_score"] == "6" and row["chapter"] == "00_fixture"
        assert row["status"].startswith(status), (student, row["status"])
    assert grades["carol"]["scale"] == "0" and grades["carol"]["count_positive"] == "3"
    assert "also handed in alice/old/00_fixture.ipynb (0)" in grades["alice"]["status"]
    assert grades["heidi"]["count_positive"] == "0"  # the 8 GB allocation hit the 3 GB limit
    assert "11 row(s), 12 submission(s) graded in this run" in stdout


def test_gradebook_and_feedback_for_everyone(graded_class):
    _, out, _ = graded_class
    grades = read_grades(out)
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}", "mechlab") as gb:
        for student, row in grades.items():
            assert gb.find_submission("00_fixture", student).score == float(row["score"])
    for student in STUDENT_WORK:
        html = (out / "feedback" / student / "00_fixture.html").read_text()
        assert "BEGIN HIDDEN TESTS" not in html and "own_work" not in html


def test_rerun_is_idempotent_and_resumes(graded_class, fixture_course, tmp_path):
    zip_path, graded, _ = graded_class
    out = Path(shutil.copytree(graded, tmp_path / "grades"))  # (the other tests read the original)
    before = (out / "grades.csv").read_text()
    results = sorted((out / "results").glob("*.json"))
    results[0].unlink()  # as if the run had been interrupted before this one
    proc = run_cli("grade", str(zip_path), "--out", str(out), "--jobs", "2", root=fixture_course.root)
    assert proc.returncode == 0, proc.stderr
    assert "1 submission(s) graded in this run" in proc.stdout
    assert (out / "grades.csv").read_text() == before
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}", "mechlab") as gb:
        assert len(gb.students) == len(STUDENT_WORK)


def test_student_ids_from_paths_patterns_and_rosters(tmp_path):
    rule = StudentRule(("00_fixture",))
    assert rule("alice/hw.ipynb") == "alice"
    assert rule("smith_00_fixture.ipynb") == "smith"
    assert rule("Copy of 00_fixture (2).ipynb") == "Copy of 00_fixture (2)"  # nothing better to go on
    pattern = StudentRule(("00_fixture",), re.compile(r"_(?P<student>\d{6})_"))
    assert pattern("Jane Doe_123456_assignsubmission_file_/00_fixture.ipynb") == "123456"
    roster_file = tmp_path / "roster.csv"
    roster_file.write_text("student_id,aliases\ns001,Jane Doe;jdoe@uni.edu\ns002,John Roe\n")
    roster = StudentRule(("00_fixture",), roster=read_roster(roster_file))
    assert roster("Jane Doe_123456_assignsubmission_file_/x.ipynb") == "s001"
    assert roster("jdoe@uni.edu/00_fixture.ipynb") == "s001"
    assert roster("john roe/00_fixture.ipynb") == "s002"


def test_an_output_folder_inside_the_input_is_not_graded_as_submissions(tmp_path):
    from autograder.classroom import collect
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "00_fixture.ipynb").write_text("{}")
    out = tmp_path / "grades"
    (out / "nbgrader" / "release").mkdir(parents=True)
    (out / "nbgrader" / "release" / "00_fixture.ipynb").write_text("{}")
    found = collect(tmp_path, out, StudentRule(("00_fixture",)))
    assert [s.where for s in found] == ["alice/00_fixture.ipynb"]


def test_a_single_file_still_prints_one_json_object(fixture_course, tmp_path):
    proc = run_cli("grade", str(fixture_course.solution_notebook), "--json", "--feedback", str(tmp_path),
                   root=fixture_course.root)
    assert json.loads(proc.stdout)["score"] == 6.0


def test_zip_clutter_windows_paths_and_look_alike_names(tmp_path):
    from autograder.classroom import collect, folder_name
    zip_path = tmp_path / "export.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name in ["anne marie/00_fixture.ipynb", "anne_marie/00_fixture.ipynb", "bob\\00_fixture.ipynb",
                     "bob/.ipynb_checkpoints/00_fixture-checkpoint.ipynb", "carol/._00_fixture.ipynb"]:
            archive.writestr(name, "{}")
    out = tmp_path / "out"
    (out / "submissions" / "stale").mkdir(parents=True)  # left by an earlier zip: not this class
    (out / "submissions" / "stale" / "00_fixture.ipynb").write_text("{}")
    found = collect(zip_path, out, StudentRule(("00_fixture",)))
    assert sorted((s.student, s.where) for s in found) == [
        ("anne marie", "anne marie/00_fixture.ipynb"), ("anne_marie", "anne_marie/00_fixture.ipynb"),
        ("bob", "bob/00_fixture.ipynb")]
    folders = {folder_name(s.student) for s in found}
    assert len(folders) == 3 and "bob" in folders and "anne_marie" in folders


def test_a_tampered_release_cache_is_never_used(fixture_course, tmp_path):
    from autograder.grade import ReleaseCache
    from autograder.source import read_source
    cache = ReleaseCache.build([fixture_course], tmp_path / "cache")
    source = read_source(fixture_course)
    assert cache.copy_to(fixture_course, source, tmp_path / "a")
    template = tmp_path / "cache" / ReleaseCache.template_name(fixture_course, source)
    (template / "gradebook.db").write_bytes(b"rewritten by a submission")
    assert not cache.copy_to(fixture_course, source, tmp_path / "b")
    assert ReleaseCache.from_json(cache.to_json()) == cache


def test_class_grading_stops_when_a_submission_changes_the_course(fixture_course, tmp_path):
    root = tmp_path / "course"
    shutil.copytree(fixture_course.root, root)
    target = root / "solutions" / "00_fixture.py"
    honest = nbformat.read(fixture_course.solution_notebook, as_version=4)
    cheat = nbformat.read(fixture_course.solution_notebook, as_version=4)
    solution_cell(cheat, "add").source = (f"def add(a, b):\n    return a + b\n"
                                          f"open({str(target)!r}, 'a').write('# changed\\n')\n")
    folder = tmp_path / "class"
    for student, nb in [("a_mallory", cheat), ("b_trent", honest)]:
        (folder / student).mkdir(parents=True)
        nbformat.write(nb, folder / student / "00_fixture.ipynb")
    out = tmp_path / "out"
    proc = run_cli("grade", str(folder), "--out", str(out), "--jobs", "1", "--sandbox", "off", root=root)
    assert proc.returncode == 3 and "STOPPED" in proc.stderr and "a_mallory/00_fixture.ipynb" in proc.stderr
    stored = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
    assert [(r["student"], r["score"]) for r in stored] == [("a_mallory", 0.0)]
    assert stored[0]["status"].startswith("changed the course's own files")


# ---------------------------------------------------------------- a class zip as instructors make it


def _class_folder(fixture_course, folder: Path) -> Path:
    """class/alice/Copy of 00_fixture (2).ipynb (the solution), class/bob/00_fixture.ipynb
    (the untouched release), class/carol/00_fixture.ipynb (a text file)."""
    for student in ("alice", "bob", "carol"):
        (folder / "class" / student).mkdir(parents=True)
    shutil.copy(fixture_course.solution_notebook, folder / "class" / "alice" / "Copy of 00_fixture (2).ipynb")
    shutil.copy(fixture_course.release_notebook, folder / "class" / "bob" / "00_fixture.ipynb")
    (folder / "class" / "carol" / "00_fixture.ipynb").write_text("my answers are in the pdf\n")
    return folder / "class"


@pytest.mark.skipif(shutil.which("zip") is None, reason="needs the zip program")
def test_a_zip_of_a_class_folder_made_with_zip_r_is_read_student_by_student(fixture_course, tmp_path):
    """Zipping the folder you collected into is the commonest class zip: its shared top
    folder is not a student. --list says who is who before anything is graded."""
    _class_folder(fixture_course, tmp_path)
    subprocess.run(["zip", "-qr", "class.zip", "class/"], cwd=tmp_path, check=True)
    listing = run_cli("grade", str(tmp_path / "class.zip"), "--list", root=fixture_course.root)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert any(re.match(r"alice\s+00_fixture\s+alice/Copy of 00_fixture \(2\)\.ipynb$", line) for line in lines)
    assert any(re.match(r"bob\s+00_fixture\s+bob/00_fixture\.ipynb$", line) for line in lines)
    assert any(re.match(r"carol\s+\? \(not a notebook", line) for line in lines)
    assert "3 student(s), 3 file(s)" in listing.stdout and not (tmp_path / "class-grades").exists()
    out = tmp_path / "grades"
    proc = run_cli("grade", str(tmp_path / "class.zip"), "--out", str(out), "--jobs", "2", root=fixture_course.root)
    assert proc.returncode == 0, proc.stderr
    grades = read_grades(out)
    assert {s: float(r["score"]) for s, r in grades.items()} == {"alice": 6.0, "bob": 0.0, "carol": 0.0}
    assert grades["carol"]["status"].startswith("not a notebook")


def test_files_of_different_folders_under_one_student_are_said_loudly(fixture_course, tmp_path):
    folder = _class_folder(fixture_course, tmp_path)
    listing = run_cli("grade", str(folder), "--list", "--student-pattern", r"(00_fixture)", root=fixture_course.root)
    assert listing.returncode == 0
    assert "LOOK: '00_fixture' is made of files from 3 different folders" in listing.stdout
    from autograder.classroom import collect
    rule = StudentRule(("00_fixture",))
    one = tmp_path / "alice.zip"  # a zip of one student's own folder: that folder names her
    with zipfile.ZipFile(one, "w") as archive:
        archive.write(folder / "alice" / "Copy of 00_fixture (2).ipynb", "alice/Copy of 00_fixture (2).ipynb")
        archive.write(folder / "bob" / "00_fixture.ipynb", "alice/old/00_fixture.ipynb")
    assert [s.student for s in collect(one, tmp_path / "out", rule)] == ["alice", "alice"]
    assert [s.student for s in collect(folder, tmp_path / "out2", rule)] == ["alice", "bob", "carol"]


def test_integrity_report_flags_copies_and_near_identical_pairs_for_a_person(fixture_course, tmp_path):
    """Copies of the reference and near-identical pairs are listed (with a score); no grade
    changes, and different honest solutions are not flagged."""
    loop = ("def count_positive(x, combine=add):\n    {total} = 0\n    for {value} in combine(x, x).flatten():\n"
            "        if {value} > 0:\n            {total} += 1\n    return int({total})\n")
    work = {
        "alice": None,  # the solution notebook: every exercise is the reference's code
        "bob": loop.format(total="total", value="v"),
        "carol": loop.format(total="n", value="entry") + "# my own, honestly\n",  # bob's, renamed
        "dave": "def count_positive(x, combine=add):\n    return int(sum(1 for e in combine(x, x).tolist() if e > 0))\n",
    }
    folder = tmp_path / "class"
    for student, code in work.items():
        nb = nbformat.read(fixture_course.solution_notebook, as_version=4)
        for exercise in ("add", "scale"):  # not copies: written differently from the reference
            if student != "alice":
                solution_cell(nb, exercise).source = {"add": "def add(a, b):\n    return b + a\n",
                                                      "scale": "def scale(x, k):\n    return x * k\n"}[exercise]
        if code:
            solution_cell(nb, "count_positive").source = code
        (folder / student).mkdir(parents=True)
        nbformat.write(nb, folder / student / "00_fixture.ipynb")
    out = tmp_path / "out"
    proc = run_cli("grade", str(folder), "--out", str(out), "--jobs", "2", root=fixture_course.root)
    assert proc.returncode == 0, proc.stderr
    assert {s: float(r["score"]) for s, r in read_grades(out).items()} == {s: 6.0 for s in work}
    with open(out / "integrity.csv", newline="") as f:
        flags = [(r["exercise"], r["kind"], r["students"]) for r in csv.DictReader(f)]
    assert flags == [("add", "copy of the reference", "alice"),
                     ("count_positive", "copy of the reference", "alice"),
                     ("count_positive", "near-identical pair", "bob; carol"),
                     ("scale", "copy of the reference", "alice")], flags
    assert f"integrity: {len(flags)} flag(s) for a person to read" in proc.stdout
