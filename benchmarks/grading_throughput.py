"""Submissions graded per minute: the course's grader against plain `nbgrader autograde`
on the same class of chapter-1 submissions. Appends a section to RESULTS.md.

    .venv/bin/python benchmarks/grading_throughput.py [--submissions 4] [--workers 2]

Plain nbgrader (`autograde`, then `generate_feedback`) grades one submission after
another in one course directory, with nbgrader's defaults except the per-cell
timeout (its 30 s default cannot run the chapter). The course's grader is run with --jobs 1 (the same work, to measure the
hardening's overhead: its own process, memory limit, fresh check modules,
feedback) and with --jobs equal to the number of cores; with --workers N, also through
a Dask scheduler and N local workers (`--scheduler`, autograder/cluster.py), which on
the same machine measures what going through the cluster costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from autograder.chapters import REPO_ROOT, Chapter  # noqa: E402
from autograder.cluster import LocalCluster  # noqa: E402
from autograder.course import ThrowawayCourse  # noqa: E402
from autograder.source import read_source  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
CHAPTER = Chapter("01_superposition", REPO_ROOT)


def make_class(folder: Path, n: int) -> list[Path]:
    """n submissions: the solution, with one exercise broken in every other one."""
    source = nbformat.read(CHAPTER.solution_notebook, as_version=4)
    exercises = read_source(CHAPTER).exercises
    paths = []
    for i in range(n):
        nb = nbformat.reads(nbformat.writes(source), as_version=4)
        if i % 2:
            ex = exercises[i % len(exercises)]
            cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == f"{ex.id}_solution")
            cell.source += f"\n{ex.id} = None  # broken\n"
        path = folder / f"student{i:02d}" / f"{CHAPTER.name}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
        paths.append(path)
    return paths


def plain_nbgrader(paths: list[Path], timeout: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        course = ThrowawayCourse(CHAPTER, Path(tmp), read_source(CHAPTER).meta.limits)  # (for its release and gradebook)
        course.generate_assignment(CHAPTER.solution_notebook.read_text())
        for path in paths:
            course.submit(path, path.parent.name)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        start = time.perf_counter()
        for step in ("autograde", "generate_feedback"):  # feedback: ours writes it too
            subprocess.run([str(Path(sys.executable).parent / "nbgrader"), step, CHAPTER.name,
                            f"--CourseDirectory.root={tmp}", f"--Execute.timeout={timeout}",
                            "--CourseDirectory.course_id=mechlab", "--log-level=ERROR"],
                           check=True, cwd=tmp, env=env, capture_output=True)
        return time.perf_counter() - start


def ours(folder: Path, jobs: int, scheduler: str | None = None) -> float:
    out = folder.parent / f"out-{jobs}-{bool(scheduler)}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "autograder", "grade", str(folder), "--out", str(out),
                    "--jobs", str(jobs), *(["--scheduler", scheduler] if scheduler else [])],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0, help="also grade through a local Dask cluster of N workers")
    args = parser.parse_args()
    timeout = int(read_source(CHAPTER).meta.limits.wall)  # plain nbgrader has only a wall-clock timeout
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "class"
        paths = make_class(folder, args.submissions)
        plain = plain_nbgrader(paths, timeout)
        one = ours(folder, 1)
        many = ours(folder, cores)
        if args.workers:
            with LocalCluster(Path(tmp), workers=args.workers) as cluster:
                remote = ours(folder, cores, cluster.address)
    n = args.submissions
    rows = [("plain `nbgrader autograde` + `generate_feedback` (serial)", plain), ("ours, --jobs 1", one), (f"ours, --jobs {cores}", many)]
    if args.workers:
        rows.append((f"ours, --scheduler with {args.workers} local Dask workers", remote))
    lines = [f"\n## {date.today().isoformat()}: grading throughput, {n} chapter-1 submissions, {cores} cores\n",
             "| grader | seconds | submissions per minute |", "|---|---|---|"]
    lines += [f"| {name} | {secs:.1f} | {60 * n / secs:.2f} |" for name, secs in rows]
    lines += ["", f"Overhead of the hardening (ours --jobs 1 against plain nbgrader): {100 * (one / plain - 1):+.0f}%. "
              f"Speed-up of --jobs {cores} over plain nbgrader: {plain / many:.2f}x.", ""]
    print("\n".join(lines))
    with RESULTS.open("a") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
