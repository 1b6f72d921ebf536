"""Grade a class: a folder or a .zip of submissions, in parallel, into one output folder.

    out/grades.csv                  one row per student and chapter
    out/gradebook.db                nbgrader's gradebook (assignments, students, scores)
    out/feedback/STUDENT/NN_topic.html
    out/results/*.json              one result per submission, keyed by the file's hash

Each submission is graded by its own `python -m autograder grade` process, under a
memory limit that its kernel inherits ($MECHLAB_GRADER_MEMORY_GB, applied by the
process itself at start-up) and a wall-clock limit, so nothing one
submission does (an endless loop, a memory blow-up, a crash) reaches the others
or the run. Results are kept per file hash: re-running the same class regrades
nothing that is already graded, an interrupted run resumes where it stopped,
and a re-run with --force regrades everything, updating rows, never adding them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nbgrader.api import Gradebook
from tqdm import tqdm

from autograder.chapters import Chapter
from autograder.course import COURSE_ID, ThrowawayCourse
from autograder.grade import MEMORY_LIMIT, RELEASE_CACHE
from autograder.source import read_source

log = logging.getLogger("autograder")
COLAB_COPY = re.compile(r"^(copy of )+|\s*\(\d+\)$", re.IGNORECASE)  # "Copy of x (2)" -> "x"


@dataclass(frozen=True)
class Submission:
    path: Path  # the file to grade (extracted, when it came in a zip)
    where: str  # its path as the instructor knows it, relative to the input
    student: str

    @property
    def key(self) -> str:
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        return f"{_safe(self.student)}-{digest}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "student"


# ------------------------------------------------------------------ who submitted what


@dataclass(frozen=True)
class StudentRule:
    """How a student id is read from a submission's path.

    Default: the top folder when the file sits in one (LMS exports put each student
    in a folder), else the file name with Colab's "Copy of" / " (2)" and chapter
    names removed, else the file name. `pattern` (a regex with a group named
    `student`, or a first group) replaces the default; a roster maps ids and their
    aliases (names, emails) found anywhere in the path to the roster's id.
    """

    chapters: tuple[str, ...]
    pattern: re.Pattern | None = None
    roster: dict[str, str] | None = None  # lower-cased alias -> student id

    def __call__(self, where: str) -> str:
        if self.roster:
            lowered = where.lower()
            hits = [(len(alias), sid) for alias, sid in self.roster.items() if alias and alias in lowered]
            if hits:
                return max(hits)[1]
        if self.pattern:
            match = self.pattern.search(where)
            if match:
                named = match.groupdict().get("student")
                return (named or (match.group(1) if match.groups() else match.group(0))).strip()
        parts = PurePosixPath(where).parts
        if len(parts) > 1:
            return parts[0]
        stem = COLAB_COPY.sub("", PurePosixPath(where).stem)
        for name in self.chapters:
            stem = re.sub(re.escape(name), "", stem, flags=re.IGNORECASE)
        stem = stem.strip(" _-.")
        return stem or PurePosixPath(where).stem


def read_roster(path: Path) -> dict[str, str]:
    """roster.csv: a `student_id` column, and optionally `aliases` (separated by ';')."""
    aliases: dict[str, str] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            sid = (row.get("student_id") or "").strip()
            if not sid:
                raise ValueError(f"{path}: every row needs a student_id")
            for alias in [sid, *(row.get("aliases") or "").split(";")]:
                if alias.strip():
                    aliases[alias.strip().lower()] = sid
    return aliases


def collect(path: Path, workdir: Path, rule: StudentRule) -> list[Submission]:
    """Every .ipynb under a folder or in a zip (extracted safely into workdir)."""
    if path.suffix.lower() == ".zip":
        root = workdir / "submissions"
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = PurePosixPath(info.filename)
                if info.is_dir() or name.suffix.lower() != ".ipynb" or "__MACOSX" in name.parts:
                    continue
                if name.is_absolute() or ".." in name.parts:
                    log.warning("skipping %s: a path that leaves the archive", info.filename)
                    continue
                target = root / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    dst.write(src.read())
        files = sorted(root.rglob("*.ipynb")) if root.exists() else []
    elif path.is_dir():
        root = path
        files = sorted(p for p in path.rglob("*.ipynb")
                       if ".ipynb_checkpoints" not in p.parts and not p.is_relative_to(workdir))  # --out inside
    else:
        root, files = path.parent, [path]
    return [Submission(f, f.relative_to(root).as_posix(), rule(f.relative_to(root).as_posix())) for f in files]


# ------------------------------------------------------------------ grading


def grade_one(sub: Submission, root: Path, feedback_dir: Path, cache: Path, *, memory_gb: float,
              wall_seconds: float, threads: int) -> dict:
    """Grade one submission in its own process; a result dict whatever happens."""
    feedback_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "autograder", "--root", str(root), "grade", str(sub.path),
           "--json", "--feedback", str(feedback_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           RELEASE_CACHE: str(cache), MEMORY_LIMIT: str(memory_gb)}
    # its own session (process group), so that a wall-clock kill takes its kernel too
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=wall_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        return {"chapter": None, "score": 0.0, "max_score": 0.0, "exercises": [], "feedback": None,
                "status": f"grading stopped after {wall_seconds:g} s", "cell_errors": []}
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (err.strip().splitlines() or ["no output"])[-1][:300]
        return {"chapter": None, "score": 0.0, "max_score": 0.0, "exercises": [], "feedback": None,
                "status": f"grader failed: {tail}", "cell_errors": []}


@dataclass
class ClassResult:
    rows: list[dict]
    graded: int  # submissions graded in this run (the rest were already graded)


def grade_class(path: Path, chapters: list[Chapter], out: Path, rule: StudentRule, *, jobs: int,
                memory_gb: float = 6.0, wall_seconds: float = 1800, force: bool = False,
                progress: bool = True) -> ClassResult:
    out.mkdir(parents=True, exist_ok=True)
    results_dir = out / "results"
    results_dir.mkdir(exist_ok=True)
    submissions = collect(path, out, rule)
    if not submissions:
        raise FileNotFoundError(f"no .ipynb files in {path}")
    todo = [s for s in submissions if force or not (results_dir / f"{s.key}.json").exists()]
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    root = chapters[0].root
    cache = out / "nbgrader" / "releases"
    cache.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(grade_one, s, root, out / "feedback" / _safe(s.student), cache,
                               memory_gb=memory_gb, wall_seconds=wall_seconds, threads=threads): s for s in todo}
        bar = tqdm(as_completed(futures), total=len(futures), desc="grading", unit="notebook",
                   disable=not progress or not futures, file=sys.stderr)
        for future in bar:
            sub = futures[future]
            result = {**future.result(), "student": sub.student, "file": sub.where}
            _move_feedback(result, out, result["chapter"] or _safe(PurePosixPath(sub.where).stem))
            (results_dir / f"{sub.key}.json").write_text(json.dumps(result, indent=1))
            bar.set_postfix_str(f"{sub.student}: {result['score']:g}/{result['max_score']:g}")
    stored = [json.loads((results_dir / f"{s.key}.json").read_text()) for s in submissions]
    rows = _one_row_per_student_and_chapter(_attribute_unknown(stored, chapters, out))
    write_csv(rows, chapters, out / "grades.csv")
    record_in_gradebook(rows, chapters, out)
    return ClassResult(rows, len(todo))


def _move_feedback(result: dict, out: Path, name: str) -> None:
    """Move the result's feedback file to out/feedback/STUDENT/NAME.html and point to it."""
    current = out / result["feedback"] if result.get("feedback") else None  # absolute paths stay absolute
    if current is None or not current.exists():
        return
    target = out / "feedback" / _safe(result["student"]) / f"{name}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    current.replace(target)
    result["feedback"] = str(target.relative_to(out))


def _attribute_unknown(results: list[dict], chapters: list[Chapter], out: Path) -> list[dict]:
    """A file no chapter could be read from (not a notebook, say) counts as a zero for the
    chapter the rest of the class handed in, when that is a single one."""
    known = {r["chapter"] for r in results} - {None}
    if len(known) != 1:
        return results
    name = known.pop()
    exercises = read_source(next(c for c in chapters if c.name == name)).exercises
    attributed = []
    for r in results:
        if r["chapter"] is None:
            r = {**r, "chapter": name, "max_score": float(sum(e.points for e in exercises)),
                 "exercises": [{"id": e.id, "score": 0.0, "max_score": float(e.points), "message": r["status"]}
                               for e in exercises]}
            _move_feedback(r, out, name)
        attributed.append(r)
    return attributed


def _one_row_per_student_and_chapter(results: list[dict]) -> list[dict]:
    """A student who handed in one chapter twice gets the better of the two, and says so."""
    best: dict[tuple[str, str], dict] = {}
    for r in results:
        key = (r["student"], r["chapter"] or f"? {r['file']}")
        if key in best:
            keep, other = sorted([best[key], r], key=lambda x: (x["score"], x["file"]), reverse=True)
            keep = {**keep, "status": f"{keep['status']}; also handed in {other['file']} ({other['score']:g})"}
            best[key] = keep
        else:
            best[key] = r
    return sorted(best.values(), key=lambda r: (r["student"], r["chapter"] or ""))


def write_csv(rows: list[dict], chapters: list[Chapter], path: Path) -> None:
    exercise_columns = [ex.id for ch in chapters if any(r["chapter"] == ch.name for r in rows)
                        for ex in read_source(ch).exercises]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "chapter", "file", "status", "score", "max_score", *exercise_columns])
        for r in rows:
            points = {e["id"]: e["score"] for e in r["exercises"]}
            writer.writerow([r["student"], r["chapter"] or "", r["file"], r["status"], f"{r['score']:g}",
                             f"{r['max_score']:g}", *(f"{points[c]:g}" if c in points else "" for c in exercise_columns)])


def record_in_gradebook(rows: list[dict], chapters: list[Chapter], out: Path) -> None:
    """The scores in nbgrader's own gradebook, so nbgrader's tools (export, formgrader) work on it."""
    by_name = {ch.name: ch for ch in chapters}
    db = out / "gradebook.db"
    for name in sorted({r["chapter"] for r in rows if r["chapter"]}):
        course = ThrowawayCourse(by_name[name], out / "nbgrader", timeout=60, db=db)
        course.generate_assignment(by_name[name].solution_notebook.read_text())  # idempotent: updates it
    with Gradebook(f"sqlite:///{db}", COURSE_ID) as gb:
        for r in rows:
            if not r["chapter"]:
                continue
            gb.update_or_create_student(r["student"])
            gb.update_or_create_submission(r["chapter"], r["student"])
            for e in r["exercises"]:
                grade = gb.find_grade(f"{e['id']}_test", r["chapter"], r["chapter"], r["student"])
                grade.auto_score = e["score"]
                grade.needs_manual_grade = False
        gb.db.commit()
