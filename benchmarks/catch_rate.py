"""Do the visible checks catch what the hidden tests catch? A learner who sees ✓ under
an exercise should not lose its points at grading (issue 16).

Every chapter's `tests/test_<topic>_checks.py` lists `MUTANTS`: plausible wrong answers,
each of which that chapter's hidden test rejects (the test suite proves it). Here each
mutant is handed to the exercise's *visible* check; the rate is the share it rejects.
A miss is a ✓ that grading takes back. `--hidden` also runs each hidden test, to confirm.
A chapter's graded investigation (its last exercise) is listed but left out of the rates:
its visible check says only whether the answer is well formed, by design, so a wrong
finding gets ✓ there and is caught only by the hidden measurement.

    .venv/bin/python benchmarks/catch_rate.py [--chapters 01_superposition ...] [--hidden] [--record]

Prints a table per exercise and per chapter; `--record` appends it to RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from autograder.chapters import discover  # noqa: E402
from autograder.source import read_source  # noqa: E402
from conftest import as_learner  # noqa: E402
from mechlab.checks import CheckFailed  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")


def rejects(check, mutant) -> bool:
    """True when `check` fails `mutant` (its printed ✓ or message is swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            check(as_learner(mutant))
        except CheckFailed:
            return True
    return False


def chapter_rates(topic: str, hidden: bool) -> list[tuple[str, int, int, list[str]]]:
    """(exercise, mutants, caught by the visible check, names of those missed) per exercise."""
    tests = importlib.import_module(f"test_{topic}_checks")
    checks = importlib.import_module(f"mechlab.{topic}.checks")
    rows: dict[str, list] = defaultdict(lambda: [0, 0, []])
    for name, mutant, _ in tests.MUTANTS:
        if hidden and not rejects(getattr(checks, f"grade_{name}"), mutant):
            raise AssertionError(f"{topic}: the hidden test of {name} accepts the mutant {mutant.__name__}")
        row = rows[name]
        row[0] += 1
        if rejects(getattr(checks, f"check_{name}"), mutant):
            row[1] += 1
        else:
            row[2].append(mutant.__name__)
    return [(name, *rows[name]) for name in tests.EXERCISES if name in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="*", default=None)
    parser.add_argument("--hidden", action="store_true", help="also confirm that each hidden test rejects each mutant")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    start = time.perf_counter()
    lines = ["| chapter | exercise | mutants | caught by the visible check | missed (✓ that grading takes back) |",
             "|---|---|---|---|---|"]
    totals = [0, 0]
    for chapter in discover(ROOT):
        if args.chapters and chapter.name not in args.chapters:
            continue
        topic = chapter.name.split("_", 1)[1]
        rows = chapter_rates(topic, args.hidden)
        investigation = read_source(chapter).exercises[-1].id  # every chapter ends with one (DESIGN.md)
        counted = [r for r in rows if r[0] != investigation]
        n, caught = sum(r[1] for r in counted), sum(r[2] for r in counted)
        totals[0] += n
        totals[1] += caught
        for name, count, hit, missed in rows:
            by_design = " (the investigation: by design, not counted)" if name == investigation else ""
            lines.append(f"| {chapter.name} | {name} | {count} | {hit}{by_design} | {', '.join(missed) or '-'} |")
        lines.append(f"| **{chapter.name}** | all | {n} | {caught} ({caught / n:.0%}) | |")
    lines.append(f"| **course** | all | {totals[0]} | {totals[1]} ({totals[1] / max(totals[0], 1):.0%}) | |")
    table = "\n".join(lines)
    print(table)
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if args.record:
        with RESULTS.open("a") as f:
            f.write(f"\n## Visible checks against hidden tests ({date.today()}, benchmarks/catch_rate.py)\n\n"
                    f"{table}\n")


if __name__ == "__main__":
    main()
