"""Grade a class: a folder or a .zip of submissions, in parallel, into one output folder.

    out/grades.csv                  one row per student and chapter
    out/gradebook.db                nbgrader's gradebook (assignments, students, scores)
    out/feedback/STUDENT/NN_topic.html
    out/integrity.csv               copies of the reference and near-identical pairs, for a person
    out/results/KEY.json, KEY.html  one result and its feedback per submission (KEY: student,
                                    path and content hash), so a re-run grades only what is new

Each submission is graded by its own `python -m autograder grade` process, under a
memory limit that its kernel inherits (--memory-gb), a wall-clock limit, and in a
process group that is killed when it ends, so nothing one submission does (an endless
loop, a memory blow-up, a crash, a leftover process) reaches the others or the run.
Results are kept per submission: re-running the same class regrades nothing that is
already graded, an interrupted run resumes where it stopped, and a re-run with
--force regrades everything, updating rows, never adding them.

A learner's code runs as the instructor's user and could write to the course's own
files (the checks it is graded with). The run takes a digest of them before it starts
and checks it after every submission: if they changed, that submission gets 0, the
run stops, and the instructor is told what to restore.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import nbformat
from nbgrader.api import Gradebook
from tqdm import tqdm

from autograder import integrity
from autograder.chapters import Chapter
from autograder.course import COURSE_ID, ThrowawayCourse
from autograder.execute import CellLimits
from autograder.grade import COURSE_CODE, TAMPERED, ReleaseCache, changed_files, course_digests, failure_cause
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
        digest = hashlib.sha256(self.where.encode() + b"\0" + self.path.read_bytes()).hexdigest()[:16]
        return f"{folder_name(self.student)}-{digest}"


def folder_name(student: str) -> str:
    """A file-system-safe folder name for a student id, distinct for distinct ids
    ("anne marie" and "anne_marie" must not share a feedback folder)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", student).strip("_.") or "student"
    return safe if safe == student else f"{safe}-{hashlib.sha256(student.encode()).hexdigest()[:6]}"


def _is_submission(parts: tuple[str, ...]) -> bool:
    """An .ipynb that a learner handed in, not an editor's or a platform's copy of one."""
    return (bool(parts) and parts[-1].lower().endswith(".ipynb") and ".ipynb_checkpoints" not in parts
            and "__MACOSX" not in parts and not parts[-1].startswith("._"))


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
        return self.named(where) or PurePosixPath(where).stem

    def named(self, where: str) -> str | None:
        """The student id, or None when the path names no one (a file called just like its
        chapter, at the top)."""
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
        return stem.strip(" _-.") or None


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


MAX_NOTEBOOK_BYTES = 200 * 2**20  # a zip entry larger than this is not extracted (a zip bomb, a dataset)


def _extract(path: Path, root: Path) -> None:
    """The zip's notebooks into `root`, which is emptied first (it holds this zip only)."""
    shutil.rmtree(root, ignore_errors=True)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = PurePosixPath(info.filename.replace("\\", "/"))  # zips made on Windows
            if info.is_dir() or not _is_submission(name.parts):
                continue
            if name.is_absolute() or ".." in name.parts:
                log.warning("skipping %s: a path that leaves the archive", info.filename)
                continue
            if info.file_size > MAX_NOTEBOOK_BYTES:
                log.warning("skipping %s: %d bytes, more than any notebook should be", info.filename, info.file_size)
                continue
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _shared_top_folder(wheres: list[str], rule: StudentRule) -> str | None:
    """The folder every file sits in (`zip -r class.zip class/`, an LMS export wrapped in
    one folder), when leaving it out tells more than one student apart; a zip of one
    student's own folder keeps it, since it names that student."""
    parts = [PurePosixPath(w).parts for w in wheres]
    if not parts or any(len(p) < 2 for p in parts) or len({p[0] for p in parts}) != 1:
        return None
    inner = [PurePosixPath(*p[1:]).as_posix() for p in parts]
    return parts[0][0] if len({rule.named(w) for w in inner} - {None}) > 1 else None


def collect(path: Path, workdir: Path, rule: StudentRule) -> list[Submission]:
    """Every .ipynb under a folder or in a zip (extracted safely into workdir), with its
    path as the instructor knows it, less the folders every file shares."""
    if path.suffix.lower() == ".zip":
        root = workdir / "submissions"
        _extract(path, root)
        files = sorted(root.rglob("*.ipynb")) if root.exists() else []
    elif path.is_dir():
        root = path
        files = sorted(p for p in path.rglob("*.ipynb")
                       if _is_submission(p.relative_to(path).parts) and not p.is_relative_to(workdir))  # --out inside
    else:
        root, files = path.parent, [path]
    wheres = [f.relative_to(root).as_posix() for f in files]
    while (top := _shared_top_folder(wheres, rule)) is not None:
        log.info("every file is in %s/: the student is read from the path inside it", top)
        wheres = [PurePosixPath(w).relative_to(top).as_posix() for w in wheres]
    submissions = [Submission(f, w, rule(w)) for f, w in zip(files, wheres)]
    for student, folders in mixed_folders(submissions).items():
        log.warning("LOOK: student %r is made of files from %d different folders (%s): if these are different "
                    "students, pass --student-pattern or --roster (check with --list)",
                    student, len(folders), ", ".join(sorted(folders)))
    return submissions


def mixed_folders(submissions: list[Submission]) -> dict[str, set[str]]:
    """Students whose files come from more than one top folder: the rule may have merged
    several students into one."""
    folders: dict[str, set[str]] = {}
    for sub in submissions:
        parts = PurePosixPath(sub.where).parts
        folders.setdefault(sub.student, set()).add(parts[0] + "/" if len(parts) > 1 else "(top level)")
    return {student: f for student, f in folders.items() if len(f) > 1}


def who_is_who(path: Path, rule: StudentRule, chapters: list[Chapter]) -> str:
    """`--list`: one line per file (student, chapter read from its content, path), and the
    warnings a grading run would give, before anything is graded."""
    from autograder.grade import identify_chapter

    with tempfile.TemporaryDirectory(prefix="mechlab-list-") as tmp:
        submissions = collect(path, Path(tmp), rule)
        lines = []
        for sub in submissions:
            try:
                nb = nbformat.read(sub.path, as_version=4)
                chapter = identify_chapter(nb, sub.path.name, chapters)
                what = chapter.name if chapter else "? (no chapter of this course)"
            except Exception as e:  # noqa: BLE001 (whatever the file is, --list shows it)
                what = f"? (not a notebook: {type(e).__name__})"
            lines.append((sub.student, what, sub.where))
    width = max([len(s) for s, _, _ in lines] + [7])
    table = [f"{'student':<{width}}  {'chapter':<32} file"]
    table += [f"{s:<{width}}  {c:<32} {w}" for s, c, w in lines]
    students = len({s for s, _, _ in lines})
    table.append(f"{students} student(s), {len(lines)} file(s)")
    for student, folders in mixed_folders(submissions).items():
        table.append(f"LOOK: {student!r} is made of files from {len(folders)} different folders: "
                     f"{', '.join(sorted(folders))}")
    return "\n".join(table)


# ------------------------------------------------------------------ grading


def _no_result(status: str) -> dict:
    return {"chapter": None, "score": 0.0, "max_score": 0.0, "exercises": [], "feedback": None,
            "status": status, "cell_errors": []}


def grade_one(sub: Submission, root: Path, results_dir: Path, releases: ReleaseCache, *, memory_gb: float,
              wall_seconds: float, threads: int, sandbox: str = "auto", hidden: tuple[Path, ...] = ()) -> dict:
    """Grade one submission in its own process; a result dict whatever happens. Its
    feedback goes to results_dir/KEY.html, its log (when it failed) to KEY.log."""
    workdir = results_dir / f"{sub.key}.tmp"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "autograder", "--root", str(root), "grade", str(sub.path), "--json",
           "--feedback", str(workdir), "--memory-gb", str(memory_gb), "--release-cache", releases.to_json(),
           "--sandbox", sandbox, *(arg for folder in hidden for arg in ("--hide", str(folder)))]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "MECHLAB_THREADS": str(threads)}  # the kernel's share of the cores (mechlab.runtime.torch_threads)
    # its own session (process group), so that killing the group takes its kernel, and
    # whatever the learner's code started, with it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=wall_seconds)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if timed_out:
        proc.communicate()
        result = _no_result(f"grading stopped after {wall_seconds:g} s")
    else:
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            (results_dir / f"{sub.key}.log").write_text(err)
            result = _no_result(f"grader failed: {failure_cause(err)} (log: results/{sub.key}.log)")
    feedback = Path(result["feedback"]) if result.get("feedback") else None
    if feedback is not None and feedback.is_file() and feedback.is_relative_to(workdir):
        feedback.replace(results_dir / f"{sub.key}.html")
        result["feedback"] = f"results/{sub.key}.html"
    else:
        result["feedback"] = None
    shutil.rmtree(workdir, ignore_errors=True)
    return result


@dataclass
class ClassResult:
    rows: list[dict]
    graded: int  # submissions graded in this run (the rest were already graded)
    flagged: int = 0  # rows of integrity.csv


class CourseFilesChanged(RuntimeError):
    """A submission wrote into the course's own files; the run stopped (see the message)."""


def grade_class(path: Path, chapters: list[Chapter], out: Path, rule: StudentRule, *, jobs: int,
                memory_gb: float = 6.0, wall_seconds: float = 3600, force: bool = False,
                progress: bool = True, sandbox: str = "auto", scheduler: str | None = None,
                retries: int = 2) -> ClassResult:
    """Grade every submission not graded yet: here, `jobs` at a time, or on the Dask
    cluster at `scheduler` (cluster.py). A submission the cluster could not grade is
    reported, not stored, so that the same command grades it next time."""
    out.mkdir(parents=True, exist_ok=True)
    results_dir = out / "results"
    results_dir.mkdir(exist_ok=True)
    submissions = collect(path, out, rule)
    if not submissions:
        raise FileNotFoundError(f"no .ipynb files in {path}")
    todo = [s for s in submissions if force or not (results_dir / f"{s.key}.json").exists()]
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    root = chapters[0].root
    trusted = course_digests(root)
    results: dict[str, dict] = {}  # this run's results, as graded (never re-read from disk)
    cluster = None
    if scheduler and todo:
        from autograder.cluster import Cluster

        cluster = Cluster(scheduler, retries)
        cluster.check_workers(root)
    with tempfile.TemporaryDirectory(prefix="mechlab-releases-") as cache, \
            ThreadPoolExecutor(max_workers=jobs) as pool:
        if cluster is not None:
            futures = cluster.submit_all(todo, root, memory_gb=memory_gb, wall_seconds=wall_seconds,
                                         sandbox=sandbox)
            finished = cluster.completed(futures)
        else:
            releases = ReleaseCache.build(chapters, Path(cache)) if todo else None
            # a kernel sees neither the class's hand-ins nor its grades (see sandbox.py)
            hidden = (path.resolve(), out.resolve()) if path.is_dir() else (out.resolve(),)
            futures = {pool.submit(grade_one, s, root, results_dir, releases, memory_gb=memory_gb,
                                   wall_seconds=wall_seconds, threads=threads, sandbox=sandbox, hidden=hidden): s
                       for s in todo}
            finished = as_completed(futures)
        bar = tqdm(finished, total=len(futures), desc="grading", unit="notebook",
                   disable=not progress or not futures, file=sys.stderr)
        try:
            for future in bar:
                sub = futures[future]
                graded = cluster.outcome(future, sub, results_dir) if cluster else future.result()
                result = {**graded, "student": sub.student, "file": sub.where}
                changed = changed_files(trusted, course_digests(root))
                if changed:
                    if cluster is not None:
                        cluster.cancel(futures)
                    _stop_on_changed_course(pool, futures, future, sub, result, changed, results_dir,
                                            jobs if cluster is None else 2)
                results[sub.key] = result
                if not result.get("not_graded"):
                    (results_dir / f"{sub.key}.json").write_text(json.dumps(result, indent=1))
                bar.set_postfix_str(f"{sub.student}: {result['score']:g}/{result['max_score']:g}")
        finally:
            if cluster is not None:
                cluster.close()
    stored = [results.get(s.key) or json.loads((results_dir / f"{s.key}.json").read_text()) for s in submissions]
    rows = _one_row_per_student_and_chapter(_attribute_unknown(stored, chapters))
    publish_feedback(rows, out)
    write_csv(rows, chapters, out / "grades.csv")
    record_in_gradebook(rows, chapters, out)
    try:
        flagged = integrity_report(submissions, stored, chapters, out / "integrity.csv")
    except Exception:  # a report for a person: it never costs the grades that are written
        log.exception("could not write %s", out / "integrity.csv")
        flagged = 0
    return ClassResult(rows, len(todo), flagged)


def integrity_report(submissions: list[Submission], results: list[dict], chapters: list[Chapter],
                     path: Path) -> int:
    """integrity.csv (see integrity.py): flags for a person to read; returns how many."""
    rows = []
    for chapter in chapters:
        handins = []
        for sub, result in zip(submissions, results):
            if result.get("chapter") != chapter.name:
                continue
            try:
                handins.append(integrity.Handin(sub.student, sub.where, nbformat.read(sub.path, as_version=4)))
            except Exception:  # noqa: BLE001 (graded as not a notebook already)
                continue
        if handins:
            release = nbformat.read(chapter.release_notebook, as_version=4)
            rows += integrity.flags(chapter.name, read_source(chapter), release, handins)
    integrity.write(rows, path)
    return len(rows)


def _stop_on_changed_course(pool, futures, done, sub: Submission, result: dict, changed: list[str],
                            results_dir: Path, jobs: int) -> None:
    """A submission changed the course's files: record it (when it was graded alone, it
    gets 0), grade nothing more, and tell the instructor what to restore."""
    running = [] if jobs == 1 else [s for f, s in futures.items() if f is not done and (
        f.running() if hasattr(f, "running") else f.status == "pending")]  # a local or a Dask future
    for f in futures:
        f.cancel()
    status = f"{TAMPERED}: {', '.join(changed)[:300]}"
    if not running:  # certainly this one: its 0 is kept, and a re-run goes on past it
        result.update(score=0.0, status=status, exercises=[{**e, "score": 0.0} for e in result["exercises"]])
        (results_dir / f"{sub.key}.json").write_text(json.dumps(result, indent=1))
    pool.shutdown(wait=True, cancel_futures=True)
    suspects = ", ".join(s.where for s in [sub, *running])
    raise CourseFilesChanged(
        f"the course's own files changed while grading {suspects}: {', '.join(changed)}.\n"
        f"Restore them (e.g. `git checkout -- {' '.join(COURSE_CODE)}`), then run the same command again "
        "to grade the rest" + ("" if not running else "; with --jobs 1 to find which submission did it") + ".")


def _attribute_unknown(results: list[dict], chapters: list[Chapter]) -> list[dict]:
    """A file no chapter could be read from (not a notebook, say) counts as a zero for the
    chapter the rest of the class handed in, when that is a single one."""
    known = {r["chapter"] for r in results} - {None}
    if len(known) != 1:
        return results
    name = known.pop()
    exercises = read_source(next(c for c in chapters if c.name == name)).exercises
    attributed = []
    for r in results:
        if r["chapter"] is None and not r.get("not_graded"):  # (the cluster could not grade it: no 0)
            r = {**r, "chapter": name, "max_score": float(sum(e.points for e in exercises)),
                 "exercises": [{"id": e.id, "score": 0.0, "max_score": float(e.points), "message": r["status"]}
                               for e in exercises]}
        attributed.append(r)
    return attributed


def publish_feedback(rows: list[dict], out: Path) -> None:
    """out/feedback/STUDENT/CHAPTER.html for every row (made anew on every run), and
    CHAPTER.also-N.html for the other hand-ins of that chapter the row names."""
    feedback = out / "feedback"
    shutil.rmtree(feedback, ignore_errors=True)
    for r in rows:
        folder = feedback / folder_name(r["student"])
        name = r["chapter"] or folder_name(PurePosixPath(r["file"]).stem)
        for n, result in enumerate([r, *r.get("others", [])]):
            source = out / result["feedback"] if result.get("feedback") else None
            if source is None or not source.is_file():
                continue
            target = folder / (f"{name}.html" if n == 0 else f"{name}.also-{n}.html")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            result["feedback"] = target.relative_to(out).as_posix()
        r.pop("others", None)


def _one_row_per_student_and_chapter(results: list[dict]) -> list[dict]:
    """A student who handed in one chapter twice gets the better of the two, and says so."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["student"], r["chapter"] or f"? {r['file']}"), []).append(r)
    rows = []
    for group in groups.values():
        keep, *others = sorted(group, key=lambda x: (-x["score"], x["file"]))
        also = "".join(f"; also handed in {o['file']} ({o['score']:g})" for o in others)
        rows.append({**keep, "status": keep["status"] + also, "others": [dict(o) for o in others]})
    return sorted(rows, key=lambda r: (r["student"], r["chapter"] or ""))


def write_csv(rows: list[dict], chapters: list[Chapter], path: Path) -> None:
    exercise_columns = [ex.id for ch in chapters if any(r["chapter"] == ch.name for r in rows)
                        for ex in read_source(ch).exercises]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "chapter", "file", "status", "score", "max_score", *exercise_columns])
        for r in rows:
            points = {e["id"]: e["score"] for e in r["exercises"]}
            score, max_score = ("", "") if r.get("not_graded") else (f"{r['score']:g}", f"{r['max_score']:g}")
            writer.writerow([r["student"], r["chapter"] or "", r["file"], r["status"], score, max_score,
                             *(f"{points[c]:g}" if c in points else "" for c in exercise_columns)])


def record_in_gradebook(rows: list[dict], chapters: list[Chapter], out: Path) -> None:
    """The scores in nbgrader's own gradebook, so nbgrader's tools (export, formgrader) work on it."""
    by_name = {ch.name: ch for ch in chapters}
    db = out / "gradebook.db"
    for name in sorted({r["chapter"] for r in rows if r["chapter"]}):
        course = ThrowawayCourse(by_name[name], out / "nbgrader", CellLimits.for_cpu(60), db=db)
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
