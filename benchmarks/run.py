"""Time each chapter: executing its solution notebook in a fresh kernel (nbclient), and
grading that notebook with the autograder. Appends a dated section to RESULTS.md.

    .venv/bin/python benchmarks/run.py [--chapters 01_superposition ...] [--label "2-core CPU"]

Targets (DESIGN.md, issue 2): a chapter executes in under 2 minutes on a 2-core CPU,
and grading one submission takes under twice that. Measured, not asserted: timings
on a shared machine are noisy, so they are recorded here rather than tested.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import nbformat
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from autograder.chapters import discover  # noqa: E402
from autograder.execute import PromptClient  # noqa: E402
from autograder.source import read_source  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")


def execute_seconds(notebook: Path, timeout: int) -> float:
    nb = nbformat.read(notebook, as_version=4)
    client = PromptClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def grade_seconds(notebook: Path) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "autograder", "grade", str(notebook),
                               "--feedback", tmp], capture_output=True, text=True, check=True)
        return time.perf_counter() - start, proc.stdout.splitlines()[0]


def zoo_rows(label: str, device: str) -> list[str]:
    """Load time of each zoo model (fresh process: imports included), and the training
    time its checkpoint recorded when it was trained."""
    from mechlab import zoo

    rows = ["| zoo model | machine | load in a fresh process (s) | training time recorded in the checkpoint |",
            "|---|---|---|---|"]
    for name in zoo.ZOO:
        code = (f"import time; t = time.perf_counter(); from mechlab import zoo; zoo.load({name!r}, {device!r}); "
                "print(time.perf_counter() - t)")
        seconds = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout.split()[-1])
        meta = zoo.info(name)
        rows.append(f"| {name} | {label} | {seconds:.1f} | {meta['seconds']} s, {meta['steps']} steps, "
                    f"torch {meta['torch']} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="*", help="chapter names (default: all)")
    parser.add_argument("--label", default=f"{os.cpu_count()}-core {platform.machine()} CPU",
                        help="where this ran, for the table")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for chapter in discover():
        if args.chapters and chapter.name not in args.chapters:
            continue
        timeout = int(read_source(chapter).meta.limits.wall)
        run = execute_seconds(chapter.solution_notebook, timeout)
        graded, summary = grade_seconds(chapter.solution_notebook)
        rows.append(f"| {chapter.name} | {args.label} | {device} | {run:.1f} | {graded:.1f} | {summary} |")
        print(rows[-1], flush=True)
    section = [f"\n## {date.today().isoformat()}: {args.label}, torch {torch.__version__}, "
               f"Python {platform.python_version()}\n",
               "| chapter | machine | device | execute solution (s) | grade solution (s) | grade result |",
               "|---|---|---|---|---|---|", *rows, "", *zoo_rows(args.label, device), ""]
    with RESULTS.open("a") as f:
        f.write("\n".join(section))
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
