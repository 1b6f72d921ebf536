"""SAE training throughput: the course's trainer against SAELens, on the same activations.

    .venv/bin/python benchmarks/sae_throughput.py [--tokens 1000000] [--d-sae 1024] [--label "2-core CPU"]

Saves corpus_2l's normalised activations at blocks.1.hook_resid_pre to one float32
.npy file, then, for each architecture, trains on the same number of activations
from it, in the same order, with the same batch size, width and learning rate:

- ours: chapter 4's reference `train_sae` and `SAE` (what a learner writes), fed by
  batches read in order from the memory-mapped file;
- SAELens: `benchmarks/saelens_train.py` in its own virtual environment
  (`benchmarks/saelens_env.sh` makes it; SAELens pins transformer-lens < 4), which
  runs SAELens's own `SAETrainer.fit`.

Both run in this one script, one after the other, with the same torch threads, so the
ratio compares like with like on the same machine at the same time. Results (activations
per second, and the ratio ours / SAELens) are appended to RESULTS.md. A GPU, when
there is one, is used by both (`--device cuda`); SAELens's script runs on the CPU only.
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mechlab import zoo  # noqa: E402
from mechlab.sparse_autoencoders import activations  # noqa: E402
from mechlab.sparse_autoencoders.reference import SAE, SAEConfig, train_sae  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
SAELENS_PYTHON = Path(__file__).with_name(".venv-saelens") / "bin" / "python"
# the same sparsity settings in both libraries (SAELens: l1_coefficient / l0_coefficient)
SPARSITY = {"relu": 5.0, "topk": None, "jumprelu": 1.0}


def save_activations(path: Path, n_tokens: int) -> int:
    model = zoo.load("corpus_2l")
    windows = activations.corpus_windows(n_tokens, seed=1)
    store = activations.ActivationStore.collect(model, "blocks.1.hook_resid_pre", windows.tokens)
    flat = store.flat().numpy()
    np.save(path, flat)
    return len(flat)


def in_order(path: Path, batch_size: int, device: str):
    acts = np.load(path, mmap_mode="r")
    start = 0
    while True:
        if start + batch_size > len(acts):
            start = 0
        yield torch.from_numpy(np.array(acts[start:start + batch_size])).to(device)
        start += batch_size


def ours(path: Path, architecture: str, d_sae: int, k: int, batch_size: int, tokens: int, lr: float,
         device: str) -> dict:  # fmt: skip
    steps = -(-tokens // batch_size)
    extra = {"l1_coeff": SPARSITY["relu"]} if architecture == "relu" else \
        {"l0_coeff": SPARSITY["jumprelu"]} if architecture == "jumprelu" else {"k": k}
    sae = SAE(SAEConfig(d_in=128, d_sae=d_sae, architecture=architecture, **extra)).to(device)
    batches = in_order(path, batch_size, device)
    start = time.perf_counter()
    history = train_sae(sae, batches, steps=steps, lr=lr, warmup_steps=1, dead_after=10**9)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"library": "mechlab", "architecture": architecture, "tokens": steps * batch_size, "seconds": seconds,
            "activations_per_second": steps * batch_size / seconds, "final_mse": float(history["mse"][-1]) / 128}


def saelens(path: Path, architecture: str, d_sae: int, k: int, batch_size: int, tokens: int, lr: float) -> dict:
    cmd = [str(SAELENS_PYTHON), str(Path(__file__).with_name("saelens_train.py")), "--activations", str(path),
           "--architecture", architecture, "--d-sae", str(d_sae), "--k", str(k), "--batch-size", str(batch_size),
           "--tokens", str(tokens), "--lr", str(lr)]
    if SPARSITY[architecture] is not None:
        cmd += ["--l1-coeff", str(SPARSITY[architecture])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--architectures", nargs="*", default=["relu", "topk", "jumprelu"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--label", default=f"{os.cpu_count()}-core {platform.machine()} CPU")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; medians are reported")
    parser.add_argument("--skip-saelens", action="store_true", help="only time ours (no SAELens venv here)")
    args = parser.parse_args()
    if not args.skip_saelens and not SAELENS_PYTHON.exists():
        subprocess.run(["bash", str(Path(__file__).with_name("saelens_env.sh"))], check=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts.npy"
        n = save_activations(path, int(args.tokens * 1.05))
        print(f"saved {n:,} activations to {path}", flush=True)
        for arch in args.architectures:
            mine, theirs, version = [], [], "-"
            for _ in range(args.repeats):  # alternating, so a slow spell of a shared machine hits both
                mine.append(ours(path, arch, args.d_sae, args.k, args.batch_size, args.tokens, args.lr,
                                 args.device)["activations_per_second"])
                if not args.skip_saelens:
                    b = saelens(path, arch, args.d_sae, args.k, args.batch_size, args.tokens, args.lr)
                    theirs.append(b["activations_per_second"])
                    version = b["version"]
            a = float(np.median(mine))
            theirs_cell, ratio = "-", "-"
            if theirs:
                b = float(np.median(theirs))
                theirs_cell = f"{b:,.0f} ({min(theirs):,.0f}-{max(theirs):,.0f}, sae-lens {version})"
                ratio = f"{a / b:.2f}"
            rows.append(f"| {arch} | {args.label} | {args.device} | {a:,.0f} ({min(mine):,.0f}-{max(mine):,.0f}) | "
                        f"{theirs_cell} | {ratio} |")
            print(rows[-1], flush=True)
    section = [f"\n## {date.today().isoformat()}: SAE training throughput, {args.label}, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads\n",
               f"Same {args.tokens:,} activations of corpus_2l (blocks.1.hook_resid_pre), same order, batch "
               f"{args.batch_size}, d_sae {args.d_sae}, lr {args.lr}; ours = chapter 4's `train_sae`, SAELens = "
               "its `SAETrainer.fit` (benchmarks/saelens_train.py).\n",
               f"Median of {args.repeats} alternating runs each (range in brackets).\n",
               "| architecture | machine | device | ours (activations/s) | SAELens (activations/s) | ours / SAELens |",
               "|---|---|---|---|---|---|", *rows, ""]
    with RESULTS.open("a") as f:
        f.write("\n".join(section))
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
