"""The course's command line.

    python -m autograder build [--check]         regenerate chapters/ and the reference modules
    python -m autograder grade FILE [--json]     grade one submitted notebook
    python -m autograder grade FOLDER|ZIP        grade a class into --out (grades.csv, gradebook, feedback)

Logs go to standard error; standard output carries only the result (with
--json, exactly one JSON object).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from autograder.build import build
from autograder.chapters import REPO_ROOT, discover
from autograder.classroom import CourseFilesChanged, StudentRule, grade_class, read_roster
from autograder.grade import TAMPERED, ReleaseCache, grade_file, limit_memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO_ROOT,
                        help="course root holding solutions/ and chapters/ (default: this repository)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show nbgrader's log")
    sub = parser.add_subparsers(dest="command", required=True)

    p_build = sub.add_parser("build", help="regenerate everything derived from solutions/*.py")
    p_build.add_argument("--check", action="store_true",
                         help="write nothing; exit 1 and name every generated file that is stale")

    p_grade = sub.add_parser("grade", help="autograde one notebook, or a class (a folder or a .zip)")
    p_grade.add_argument("submission", type=Path, help="a submitted .ipynb (any file name), a folder or a .zip")
    p_grade.add_argument("--json", action="store_true", help="one file: print one JSON object on stdout")
    p_grade.add_argument("--feedback", type=Path, default=None,
                         help="one file: folder for the feedback HTML (default: next to the submission)")
    p_grade.add_argument("--out", type=Path, default=None,
                         help="a class: output folder (default: NAME-grades beside the input)")
    p_grade.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                         help="a class: submissions graded at once (default: the number of cores)")
    p_grade.add_argument("--student-pattern", type=re.compile, default=None,
                         help="a class: regex on each file's path; its group 'student' (or first group) is the id")
    p_grade.add_argument("--roster", type=Path, default=None,
                         help="a class: roster.csv with student_id (and optional ';'-separated aliases)")
    p_grade.add_argument("--memory-gb", type=float, default=6.0,
                         help="memory limit of each submission's grading, kernel included (0: none)")
    p_grade.add_argument("--release-cache", default=None, help=argparse.SUPPRESS)  # set by class grading
    p_grade.add_argument("--force", action="store_true", help="a class: regrade submissions already graded")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:  # nbgrader's apps reset their loggers to INFO: filter at the handler
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: record.levelno >= logging.WARNING)
    chapters = discover(args.root.resolve())

    if args.command == "build":
        stale = build(chapters, check=args.check)
        if args.check:
            for path in stale:
                print(f"stale: {path.relative_to(args.root.resolve())} "
                      "(run `python -m autograder build`, never edit it by hand)", file=sys.stderr)
            return 1 if stale else 0
        print(f"build: {len(stale)} file(s) written, {len(chapters)} chapter(s)", file=sys.stderr)
        return 0

    path = args.submission.resolve()
    if not path.exists():
        parser.error(f"no such file or folder: {args.submission}")
    # Grading runs on the CPU: the same device as CI and as every learner's laptop, and an
    # address-space limit (below) would stop CUDA from starting. MECHLAB_DEVICE overrides.
    os.environ.setdefault("MECHLAB_DEVICE", "cpu")
    if path.is_file() and path.suffix.lower() != ".zip":
        limit_memory(args.memory_gb)
        releases = ReleaseCache.from_json(args.release_cache) if args.release_cache else None
        result = grade_file(path, chapters, args.feedback, releases)
        print(result.to_json() if args.json else result.table())
        return 3 if result.status.startswith(TAMPERED) else 0
    out = (args.out or path.parent / f"{path.stem}-grades").resolve()
    rule = StudentRule(tuple(c.name for c in chapters), args.student_pattern,
                       read_roster(args.roster) if args.roster else None)
    try:
        graded = grade_class(path, chapters, out, rule, jobs=max(1, args.jobs), memory_gb=args.memory_gb,
                             force=args.force)
    except CourseFilesChanged as e:
        print(f"STOPPED: {e}", file=sys.stderr)
        return 3
    print(class_table(graded.rows))
    print(f"{len(graded.rows)} row(s), {graded.graded} submission(s) graded in this run; "
          f"grades: {out / 'grades.csv'}, gradebook: {out / 'gradebook.db'}, feedback: {out / 'feedback'}")
    return 0


def class_table(rows: list[dict]) -> str:
    width = max([len(r["student"]) for r in rows] + [7])
    return "\n".join(f"{r['student']:<{width}}  {r['chapter'] or '?':<24} {r['score']:>5g} / {r['max_score']:<5g} "
                     f"{r['status']}" for r in rows)


if __name__ == "__main__":
    sys.exit(main())
