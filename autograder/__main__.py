"""The course's command line.

    python -m autograder build [--check]         regenerate chapters/ and the reference modules
    python -m autograder grade FILE [--json]     grade one submitted notebook
    python -m autograder grade FOLDER|ZIP        grade a class into --out (grades.csv, gradebook, feedback)
    python -m autograder grade FOLDER|ZIP --list show who is who, file by file, and grade nothing

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
from autograder.classroom import CourseFilesChanged, StudentRule, grade_class, read_roster, who_is_who
from autograder.cluster import InfrastructureError
from autograder.grade import TAMPERED, Execution, ReleaseCache, grade_file, limit_memory
from autograder.sandbox import MODES, unavailable


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
    p_grade.add_argument("--sandbox", choices=MODES, default="auto",
                         help="run each kernel under bubblewrap: auto (when it can run here, else warn), "
                              "required (an error where it cannot), off")
    p_grade.add_argument("--list", action="store_true",
                         help="a class: print which file is whose (student, chapter) and grade nothing")
    p_grade.add_argument("--release-cache", default=None, help=argparse.SUPPRESS)  # set by class grading
    p_grade.add_argument("--hide", type=Path, action="append", default=[], help=argparse.SUPPRESS)  # ditto
    p_grade.add_argument("--graded-notebook", type=Path, default=None,
                         help="one file: also write the executed notebook there, with its outputs and the hidden "
                              "tests (for you, never for the learner)")
    p_grade.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                         help="a class: grade on this Dask cluster's workers instead of --jobs here (README: large classes)")
    p_grade.add_argument("--retries", type=int, default=2,
                         help="with --scheduler: lost workers a submission may cost before it is reported as not graded")
    p_grade.add_argument("--force", action="store_true", help="a class: regrade submissions already graded")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:  # nbgrader's apps reset their loggers to INFO: filter at the handler.
        # Quiet by default: the course's own warnings only. nbgrader's, nbclient's and nbconvert's
        # ("Alternative text is missing", "Kernel died while waiting") describe what the result's
        # status already says, and read as errors of the grading run; -v shows them.
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: record.levelno >= (
                logging.WARNING if record.name.split(".")[0] == "autograder" else logging.CRITICAL))
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
    if args.list and (path.is_dir() or path.suffix.lower() == ".zip"):
        print(who_is_who(path, rule_from(args, chapters), chapters))
        return 0
    why_not = unavailable() if args.sandbox != "off" else None
    if why_not and args.sandbox == "required":
        print(f"error: --sandbox required, but {why_not}", file=sys.stderr)
        return 2
    sandbox = args.sandbox != "off" and why_not is None
    if why_not and not args.release_cache:  # once per run (a class run's children say nothing)
        print(f"WARNING: grading without a sandbox: {why_not}. Submissions' code runs as you, "
              "with your network; --sandbox required makes this an error.", file=sys.stderr)
    execution = Execution(sandbox, tuple(args.hide), args.verbose)
    if path.is_file() and path.suffix.lower() != ".zip":
        limit_memory(args.memory_gb)
        releases = ReleaseCache.from_json(args.release_cache) if args.release_cache else None
        result = grade_file(path, chapters, args.feedback, releases, execution, args.graded_notebook)
        print(result.to_json() if args.json else result.table())
        return 3 if result.status.startswith(TAMPERED) else 0
    out = (args.out or path.parent / f"{path.stem}-grades").resolve()
    rule = rule_from(args, chapters)
    try:
        graded = grade_class(path, chapters, out, rule, jobs=max(1, args.jobs), memory_gb=args.memory_gb,
                             force=args.force, sandbox="required" if sandbox else "off",
                             scheduler=args.scheduler, retries=args.retries)
    except CourseFilesChanged as e:
        print(f"STOPPED: {e}", file=sys.stderr)
        return 3
    except InfrastructureError as e:
        print(f"STOPPED: {e}", file=sys.stderr)
        return 4
    print(class_table(graded.rows))
    print(f"{len(graded.rows)} row(s), {graded.graded} submission(s) graded in this run; "
          f"grades: {out / 'grades.csv'}, gradebook: {out / 'gradebook.db'}, feedback: {out / 'feedback'}")
    not_graded = [r for r in graded.rows if r.get("not_graded")]
    if not_graded:
        print(f"NOT GRADED: {len(not_graded)} submission(s) the cluster could not grade (their rows say why; no "
              "grade was recorded for them): run the same command again to grade them", file=sys.stderr)
    print(f"integrity: {graded.flagged} flag(s) for a person to read (they change no grade): "
          f"{out / 'integrity.csv'}")
    return 0


def rule_from(args: argparse.Namespace, chapters) -> StudentRule:
    return StudentRule(tuple(c.name for c in chapters), args.student_pattern,
                       read_roster(args.roster) if args.roster else None)


def class_table(rows: list[dict]) -> str:
    width = max([len(r["student"]) for r in rows] + [7])
    return "\n".join(f"{r['student']:<{width}}  {r['chapter'] or '?':<24} {r['score']:>5g} / {r['max_score']:<5g} "
                     f"{r['status']}" for r in rows)


if __name__ == "__main__":
    sys.exit(main())
