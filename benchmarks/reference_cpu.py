"""What each chapter's reference solution uses per cell under grading, against its limit.

Grades each chapter's solution notebook as the grader does, reads the CPU and wall-clock
seconds the executor recorded for every cell (`mechlab.cpu_seconds`, `wall_seconds`), and
writes:

- `autograder/reference_cpu.json`: each test cell's CPU seconds, by chapter and grade id,
  which the grader quotes when a learner's test cell is stopped ("the reference solution's
  test needs about N s");
- a section of `benchmarks/RESULTS.md`: per chapter, its CPU limit per cell, the reference's
  most expensive cell and its headroom (limit / CPU), and the score.

    .venv/bin/python benchmarks/reference_cpu.py [--chapters 01_superposition ...] [--busy N]

`--busy N` runs N CPU-bound processes (each in its own session, ended by this script) while
grading, to show that the grade does not depend on how busy the machine is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from autograder.chapters import discover  # noqa: E402
from autograder.grade import REFERENCE_CPU, grade_file  # noqa: E402
from autograder.source import read_source  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")


def busy(n: int, seconds: float) -> list[subprocess.Popen]:
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code], start_new_session=True) for _ in range(n)]


def measure(chapter) -> tuple[dict, str]:
    """Grade the chapter's solution; (per-cell usage by grade id or cell number, result line)."""
    with tempfile.TemporaryDirectory() as tmp:
        graded = Path(tmp) / "graded.ipynb"
        start = time.monotonic()
        result = grade_file(chapter.solution_notebook, [chapter], Path(tmp), graded_copy=graded)
        wall = time.monotonic() - start
        nb = nbformat.read(graded, as_version=4)
    usage = {}
    for i, cell in enumerate(nb.cells):
        used = cell.get("metadata", {}).get("mechlab")
        if used:
            usage[cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {i + 1}"] = used
    return usage, f"{result.score:g} / {result.max_score:g} ({result.status}), graded in {wall:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="*", help="chapter names (default: all)")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes to run beside the grading")
    parser.add_argument("--label", default=f"{os.cpu_count()}-core {platform.machine()} CPU")
    args = parser.parse_args()
    recorded = json.loads(REFERENCE_CPU.read_text()) if REFERENCE_CPU.exists() else {}
    rows = []
    hogs = busy(args.busy, 3600) if args.busy else []
    try:
        for chapter in discover():
            if args.chapters and chapter.name not in args.chapters:
                continue
            limit = read_source(chapter).meta.cpu_limit
            usage, summary = measure(chapter)
            recorded[chapter.name] = {k: v["cpu_seconds"] for k, v in usage.items() if k.endswith("_test")}
            name, worst = max(usage.items(), key=lambda kv: kv[1]["cpu_seconds"])
            tests = sum(recorded[chapter.name].values())
            rows.append(f"| {chapter.name} | {limit} | {name}: {worst['cpu_seconds']:.1f} CPU s, "
                        f"{worst['wall_seconds']:.1f} wall s | {limit / max(worst['cpu_seconds'], 0.01):.1f}x | "
                        f"{tests:.1f} | {summary} |")
            print(rows[-1], flush=True)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    REFERENCE_CPU.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    section = [f"\n## {date.today().isoformat()}: CPU per cell under grading, {args.label}"
               + (f", beside {args.busy} busy processes" if args.busy else "") + "\n",
               "| chapter | CPU limit per cell (s) | reference's most expensive cell | headroom | "
               "its test cells in all (CPU s) | grade |", "|---|---|---|---|---|---|", *rows, ""]
    with RESULTS.open("a") as f:
        f.write("\n".join(section))
    print(f"wrote {REFERENCE_CPU} and appended to {RESULTS}")


if __name__ == "__main__":
    main()
