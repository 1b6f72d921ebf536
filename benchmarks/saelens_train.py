"""Train a SAELens SAE on saved activations and time it (chapter-4 benchmark).

The SAELens side of the comparison with the course's own SAE trainer: same
activations, same batch order, same number of activations. It uses SAELens's
own training code (``SAETrainer.fit``: its Adam, LR scheduler, gradient
clipping, dead-latent bookkeeping and per-architecture losses); this script
only builds the SAE and feeds it batches. No LLM, no wandb, no checkpoints.

Run it with the separate venv that ``benchmarks/saelens_env.sh`` makes
(SAELens pins transformer-lens < 4, the course's .venv has 4):

    bash benchmarks/saelens_env.sh
    benchmarks/.venv-saelens/bin/python benchmarks/saelens_train.py \\
        --activations acts.npy --architecture topk --d-sae 1024 --k 8 \\
        --batch-size 4096 --tokens 1000000 --lr 3e-4

It prints one JSON line on stdout. ``seconds`` covers ``SAETrainer.fit()``
only (which includes reading each batch from the memory-mapped array), not
imports, loading or building the SAE and trainer. ``fit`` steps until it has
seen at least ``--tokens`` activations, so it trains on
ceil(tokens / batch_size) full batches; ``tokens`` in the output is that
number, ``tokens_requested`` the one asked for.

``final_mse`` is the mean over batch and features of (sae_out - sae_in)**2 on
the last training batch, as computed in that step's forward pass (before its
update). SAELens's own ``mse_loss`` sums over features instead
(``final_mse_loss`` = final_mse * d_in).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

# Before sae_lens (and so tqdm and wandb) is imported: tqdm reads TQDM_* at
# import time, and nothing here should ever reach wandb.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--activations", required=True, help="float32 .npy of shape [n, d_in]")
    p.add_argument("--architecture", required=True, choices=["relu", "topk", "jumprelu"])
    p.add_argument("--d-sae", type=int, required=True)
    p.add_argument("--k", type=int, default=8, help="TopK: active latents per token")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--tokens", type=int, required=True, help="activations to train on")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument(
        "--l1-coeff",
        type=float,
        default=None,
        help="sparsity coefficient: l1_coefficient for relu, l0_coefficient for "
        "jumprelu (SAELens default for both: 1.0); ignored for topk",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="JumpReLU initial threshold (SAELens default: 0.01)",
    )
    p.add_argument(
        "--bandwidth",
        type=float,
        default=None,
        help="JumpReLU straight-through bandwidth (SAELens default: 0.05)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads(N); default: leave torch's own choice",
    )
    p.add_argument("--progress", action="store_true", help="show SAELens's tqdm bar on stderr")
    return p.parse_args(argv)


def batches(acts: Any, batch_size: int) -> Iterator["torch.Tensor"]:
    """Yield [batch_size, d_in] float32 tensors from `acts` in order, wrapping around."""
    import numpy as np
    import torch

    n = acts.shape[0]
    start = 0
    while True:
        stop = start + batch_size
        if stop <= n:
            chunk = np.array(acts[start:stop], dtype=np.float32)  # copy: the memmap is read-only
        else:  # wrap around (possibly several times for a tiny array)
            chunk = np.array(acts[np.arange(start, stop) % n], dtype=np.float32)
        start = stop % n
        yield torch.from_numpy(chunk)


def build_sae(args: argparse.Namespace, d_in: int):
    """The SAELens training SAE for --architecture, SAELens defaults otherwise."""
    from sae_lens import (
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    common: dict[str, Any] = dict(d_in=d_in, d_sae=args.d_sae, dtype="float32", device="cpu")
    if args.architecture == "relu":
        kw = dict(common)
        if args.l1_coeff is not None:
            kw["l1_coefficient"] = args.l1_coeff
        return StandardTrainingSAE(StandardTrainingSAEConfig(**kw))
    if args.architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=args.k, **common))
    kw = dict(common)
    if args.l1_coeff is not None:
        kw["l0_coefficient"] = args.l1_coeff
    if args.threshold is not None:
        kw["jumprelu_init_threshold"] = args.threshold
    if args.bandwidth is not None:
        kw["jumprelu_bandwidth"] = args.bandwidth
    return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**kw))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.progress:
        os.environ["TQDM_DISABLE"] = "1"

    import numpy as np
    import torch
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    acts = np.load(args.activations, mmap_mode="r")
    if acts.ndim != 2:
        raise SystemExit(f"{args.activations}: expected a 2-D array [n, d_in], got shape {acts.shape}")
    if acts.dtype != np.float32:
        print(f"warning: activations are {acts.dtype}, converting batches to float32", file=sys.stderr)
    d_in = int(acts.shape[1])

    sae = build_sae(args, d_in)

    trainer_cfg = SAETrainerConfig(
        total_training_samples=args.tokens,
        train_batch_size_samples=args.batch_size,
        lr=args.lr,
        lr_end=args.lr,  # constant schedule; SAETrainer asserts lr_end is set
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        lr_decay_steps=0,
        device="cpu",
        autocast=False,
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        # as SAELens's own synthetic-data trainer does: no wandb, evals never due
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
    )

    class _Trainer(SAETrainer):  # type: ignore[misc,type-arg]
        """SAETrainer that keeps the last step's output (for final_mse); nothing else changes."""

        last_output = None

        def step(self, batch: torch.Tensor):  # type: ignore[override]
            out = super().step(batch)
            self.last_output = out
            return out

    trainer = _Trainer(
        cfg=trainer_cfg,
        sae=sae,
        data_provider=batches(acts, args.batch_size),
        evaluator=None,
        save_checkpoint_fn=None,
    )

    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0

    result: dict[str, Any] = {
        "library": "sae-lens",
        "version": version("sae-lens"),
        "architecture": args.architecture,
        "d_in": d_in,
        "d_sae": args.d_sae,
        "batch_size": args.batch_size,
        "tokens": trainer.n_training_samples,
        "tokens_requested": args.tokens,
        "steps": trainer.n_training_steps,
        "seconds": round(seconds, 4),
        "activations_per_second": round(trainer.n_training_samples / seconds, 1),
    }
    out = trainer.last_output
    if out is not None:
        with torch.no_grad():
            sq = (out.sae_out.float() - out.sae_in.float()).pow(2)
            fa = out.feature_acts.to_dense() if out.feature_acts.is_sparse else out.feature_acts
            result["final_mse"] = sq.mean().item()
            result["final_mse_loss"] = out.losses["mse_loss"].item()
            result["final_l0"] = (fa != 0).float().sum(-1).mean().item()
    if args.architecture == "topk":
        result["k"] = args.k
    result["dead_latents"] = int(trainer.dead_neurons.sum().item())
    result["threads"] = torch.get_num_threads()
    result["torch"] = torch.__version__
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
