"""What the bubblewrap sandbox costs per submission: the same file graded with
`--sandbox required` and `--sandbox off`, alternately, on the fixture chapter (where the
kernel's start dominates) and on chapter 1. Appends a section to RESULTS.md.

    .venv/bin/python benchmarks/sandbox_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from autograder.chapters import REPO_ROOT, Chapter  # noqa: E402
from autograder.sandbox import unavailable  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "00_fixture.py"


def grade_seconds(notebook: Path, root: Path, sandbox: str, feedback: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "autograder", "--root", str(root), "grade", str(notebook), "--json",
                           "--sandbox", sandbox, "--feedback", str(feedback)], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    result = json.loads(proc.stdout)
    assert result["score"] == result["max_score"], result
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if unavailable():
        sys.exit(f"no sandbox here: {unavailable()}")
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        fixture_root = Path(tmp) / "fixture"
        (fixture_root / "solutions").mkdir(parents=True)
        shutil.copy(FIXTURE, fixture_root / "solutions")
        subprocess.run([sys.executable, "-m", "autograder", "--root", str(fixture_root), "build"], check=True,
                       capture_output=True)
        cases = [("fixture chapter (3 exercises)", Chapter("00_fixture", fixture_root), args.repeats),
                 ("chapter 1 (11 exercises)", Chapter("01_superposition", REPO_ROOT), max(1, args.repeats // 2))]
        for label, chapter, repeats in cases:
            times = {"required": [], "off": []}
            for _ in range(repeats):
                for mode in times:  # alternate, so drift on a shared machine hits both alike
                    times[mode].append(grade_seconds(chapter.solution_notebook, chapter.root, mode, Path(tmp)))
            on, off = statistics.median(times["required"]), statistics.median(times["off"])
            lines.append(f"| {label} | {repeats} | {on:.1f} s | {off:.1f} s | {on - off:+.1f} s |")
            print(lines[-1], flush=True)
    section = [f"\n## {date.today()}: the sandbox's cost per submission (bubblewrap), 2-core x86_64 CPU\n",
               "Medians of `python -m autograder grade SOLUTION --sandbox required|off`, run alternately; the",
               "whole command (process start, nbgrader, the kernel, feedback).\n",
               "| submission | runs | sandboxed | unsandboxed | cost |", "|---|---|---|---|---|", *lines]
    with open(RESULTS, "a") as f:
        f.write("\n".join(section) + "\n")


if __name__ == "__main__":
    main()
