"""Chapter 6's speed targets, measured: each committed transcoder's training time (as its
checkpoint recorded it, and optionally retrained now), and the time to build one
attribution graph (local replacement model, one backward pass per active latent and
the target, influence) for 12-token prompts. Appends a dated section to RESULTS.md.

    .venv/bin/python benchmarks/transcoders.py [--retrain] [--label "2-core CPU"]

Targets (issue 17): each transcoder trains in under 2 minutes on the 2-core CPU; a graph
of a 12-token prompt builds in under 5 seconds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mechlab import corpus, zoo  # noqa: E402
from mechlab.transcoders import graph as ag  # noqa: E402
from mechlab.transcoders import zoo as tc_zoo  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")


def graph_seconds(n: int = 10, length: int = 12) -> tuple[list[float], list[int]]:
    model = zoo.load("corpus_2l")
    for p in model.parameters():
        p.requires_grad_(False)
    tcs = tc_zoo.load_pair("w1024")
    prompts = [p for p in corpus.ioi_prompts(4 * n, seed=3) if len(p.tokens) + 1 >= length][:n]
    seconds, latents = [], []
    for prompt in prompts:
        tokens = model.to_tokens(prompt.text)[0][:length]
        target = ag.logit_diff_target(*(int(t) for t in zoo.token_ids([prompt.correct, prompt.distractor])))
        start = time.perf_counter()
        g = ag.attribution_graph(model, tcs, tokens, target)
        seconds.append(time.perf_counter() - start)
        latents.append(g.n_latents)
    return seconds, latents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retrain", action="store_true", help="also retrain every transcoder (to a scratch folder)")
    parser.add_argument("--label", default=f"{torch.get_num_threads()}-thread {platform.machine()} CPU")
    args = parser.parse_args()
    lines = [f"## {date.today()}: chapter 6's transcoders and graphs, {args.label}, torch {torch.__version__}", "",
             "| transcoder | training seconds recorded in the checkpoint | retrained now (s) | variance explained | "
             "dead fraction | loss with its MLP replaced |", "|---|---|---|---|---|---|"]
    for name in tc_zoo.TC_ZOO:
        meta = tc_zoo.info(name)
        now = ""
        if args.retrain:
            start = time.perf_counter()
            tc_zoo.train(name)
            now = f"{time.perf_counter() - start:.1f} (with collection and evaluation)"
        m = meta["metrics"]
        lines.append(f"| `{name}` | {meta['seconds']} | {now} | {m['variance_explained']:.4f} | {m['dead_fraction']:.3f} "
                     f"| {m['replacement_loss']:.3f} (clean {m['clean_loss']:.3f}) |")
    seconds, latents = graph_seconds()
    lines += ["", f"Attribution graph of a 12-token IOI prompt, {len(seconds)} prompts: median "
                  f"{statistics.median(seconds):.2f} s, slowest {max(seconds):.2f} s; {statistics.mean(latents):.0f} "
                  "active latents per graph on average (one backward pass each). Target: under 5 s.", ""]
    text = "\n".join(lines)
    print(text)
    with RESULTS.open("a") as f:
        f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
