"""The course's command line.

    python -m autograder build [--check]         regenerate chapters/ and the reference modules
    python -m autograder grade FILE [--json]     grade one submitted notebook

Logs go to standard error; standard output carries only the result (with
--json, exactly one JSON object).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from autograder.build import build
from autograder.chapters import REPO_ROOT, discover
from autograder.grade import grade_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO_ROOT,
                        help="course root holding solutions/ and chapters/ (default: this repository)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show nbgrader's log")
    sub = parser.add_subparsers(dest="command", required=True)

    p_build = sub.add_parser("build", help="regenerate everything derived from solutions/*.py")
    p_build.add_argument("--check", action="store_true",
                         help="write nothing; exit 1 and name every generated file that is stale")

    p_grade = sub.add_parser("grade", help="autograde one submitted notebook")
    p_grade.add_argument("submission", type=Path, help="a submitted .ipynb (any file name)")
    p_grade.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p_grade.add_argument("--feedback", type=Path, default=None,
                         help="folder for the feedback HTML (default: next to the submission)")

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

    if not args.submission.is_file():
        parser.error(f"no such file: {args.submission}")
    result = grade_file(args.submission.resolve(), chapters, args.feedback)
    print(result.to_json() if args.json else result.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
