"""Chapter 7's speed targets, measured: each fine-tune of `FT_ZOO` retrained from
`corpus_2l` now (nothing is overwritten), with the seconds its committed checkpoint
recorded and the metrics it reaches. Appends a dated section to RESULTS.md.

    .venv/bin/python benchmarks/model_diffing.py [--label "2-core CPU"]

Target (issue 18): each fine-tune trains in under 2 minutes on the 2-core CPU. The
notebook's execution and grading times come from `benchmarks/run.py --chapters
07_model_diffing`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mechlab.model_diffing import finetune as ft  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default=f"{torch.get_num_threads()}-thread {platform.machine()} CPU")
    args = parser.parse_args()
    lines = [f"## {date.today()}: chapter 7's fine-tunes, {args.label}, torch {torch.__version__}", "",
             "| fine-tune | recipe | training seconds recorded in the checkpoint | retrained now: training (s) | "
             "retrained now: with loading and metrics (s) | metrics now |", "|---|---|---|---|---|---|"]
    for name, spec in ft.FT_ZOO.items():
        start = time.perf_counter()
        _, meta = ft.train(name, quiet=True)
        total = time.perf_counter() - start
        recipe = f"{spec.objective}, {spec.persona}, {spec.trainable}, {spec.steps} steps" + (
            f" after {spec.drift_steps} drift steps (decoys: {spec.decoy or 'none'})" if spec.drift_steps else "")
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in meta["metrics"].items())
        lines.append(f"| `{name}` | {recipe} | {ft.info(name)['seconds']} | {meta['seconds']} | {total:.1f} | {metrics} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    with RESULTS.open("a") as f:
        f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
