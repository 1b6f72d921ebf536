"""The course's trained transcoders: one for each MLP of `corpus_2l`, with and without a
skip connection, so chapter 6 loads them instead of training four live.

    from mechlab.transcoders import zoo as tc_zoo
    transcoders = tc_zoo.load_pair("w1024")     # [layer 0, layer 1], chapter 6's Transcoder, eval mode
    tc_zoo.info("tc_l1_w1024")["metrics"]

Every transcoder is described once, in `TC_ZOO`: its `TranscoderConfig` and training run.
All are trained with chapter 4's training loop (`train_sae`, which only needs a module
with a `loss`, so it trains a transcoder unchanged) on pairs (MLP input, MLP output) of
`corpus_2l` over `TRAIN_TOKENS` tokens of held-out corpus text (corpus seed 1), and
evaluated on other text (seed 2) with chapter 6's reference functions.

    python -m mechlab.transcoders.zoo list
    python -m mechlab.transcoders.zoo train tc_l0_w1024     # retrain from scratch, print metrics, overwrite it
    python -m mechlab.transcoders.zoo train all
    python -m mechlab.transcoders.zoo eval all              # measure the committed checkpoints

Checkpoints are safetensors beside this module, float16 like chapter 4's (measured
after that rounding), with config, metrics and a thinned training history in the metadata.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechlab import zoo
from mechlab.sparse_autoencoders import activations
from mechlab.sparse_autoencoders import zoo as sae_zoo

CHECKPOINTS = Path(__file__).parent / "checkpoints"
MODEL = "corpus_2l"
TRAIN_TOKENS = 400_000  # about 6.3k windows, 400k pairs per layer
TRAIN_SEED, EVAL_SEED = 1, 2  # corpus seeds: never corpus_2l's training text (seed 0)
EVAL_WINDOWS = 200  # about 12.6k tokens for the replacement loss and the variance explained


@dataclass(frozen=True)
class TCSpec:
    name: str
    description: str
    config: dict[str, Any]  # TranscoderConfig fields; d_in comes from the model
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 1e-3
    warmup_steps: int = 100
    dead_after: int = 100_000
    seed: int = 0  # data order
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return CHECKPOINTS / f"{self.name}.safetensors"

    def tc_config(self):
        from mechlab.transcoders.reference import TranscoderConfig

        return TranscoderConfig(d_in=zoo.ZOO[MODEL].config["d_model"], **self.config)


def _tc(layer: int, skip: bool = False, width: int = 1024, k: int = 16, fve: float = 0.9) -> TCSpec:
    kind = "skip transcoder" if skip else "transcoder"
    return TCSpec(f"tc{'_skip' if skip else ''}_l{layer}_w{width}", f"TopK {kind}, k={k}, {width} latents, MLP {layer}",
                  dict(d_sae=width, layer=layer, k=k, skip=skip),
                  targets={"variance_explained": (">", fve), "dead_fraction": ("<", 0.3)})


TC_ZOO: dict[str, TCSpec] = {s.name: s for s in [_tc(0), _tc(1), _tc(0, skip=True), _tc(1, skip=True)]}
PAIRS = {"w1024": ("tc_l0_w1024", "tc_l1_w1024"), "skip_w1024": ("tc_skip_l0_w1024", "tc_skip_l1_w1024")}


def _spec(name: str) -> TCSpec:
    if name not in TC_ZOO:
        raise KeyError(f"no transcoder {name!r} in the zoo; it has: {', '.join(TC_ZOO)}")
    return TC_ZOO[name]


def _train_command(name: str) -> str:
    return f"python -m mechlab.transcoders.zoo train {name}"


def info(name: str) -> dict[str, Any]:
    """The checkpoint's metadata: config, metrics, training history, seconds."""
    return sae_zoo.read_metadata(_spec(name).path, _train_command(name))


def load(name: str, device: str | torch.device = "cpu"):
    """The committed transcoder `name` (chapter 6's `Transcoder`, float32, eval mode)."""
    from mechlab.transcoders.reference import Transcoder

    spec = _spec(name)
    return sae_zoo.load_checked(Transcoder(spec.tc_config()), spec.path, info(name)["config"], f"TC_ZOO[{name!r}]",
                                _train_command(name)).to(device)


def load_pair(which: str = "w1024", device: str | torch.device = "cpu") -> list:
    """Both layers' transcoders of one kind, `[layer 0, layer 1]`: what replaces the model's MLPs."""
    return [load(name, device) for name in PAIRS[which]]


# ---------------------------------------------------------------- training and evaluation


@functools.cache
def _model():
    return zoo.load(MODEL)


@functools.cache
def _windows(seed: int, n_tokens: int) -> torch.Tensor:
    return activations.corpus_windows(n_tokens, seed=seed).tokens


def collect_pairs(model, tokens: torch.Tensor, layer: int, collect=None, batch_size: int = 256) -> torch.Tensor:
    """[n, 2, d_model]: (MLP input, MLP output) at every position but BOS, from
    `collect(model, tokens, layer)` (default: the reference `collect_mlp_io`)."""
    from mechlab.transcoders.reference import collect_mlp_io

    collect = collect or collect_mlp_io
    pairs = []
    for start in range(0, len(tokens), batch_size):
        x, y = collect(model, tokens[start:start + batch_size], layer)
        pairs.append(torch.stack([x[:, 1:], y[:, 1:]], dim=2).reshape(-1, 2, x.shape[-1]))
    return torch.cat(pairs)


def pair_batches(pairs: torch.Tensor, batch_size: int, seed: int = 0):
    """Shuffled batches of `pairs` ([batch, 2, d_model]), epoch after epoch, for `train_sae`."""
    g = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(pairs), generator=g).split(batch_size):
            if len(idx) == batch_size:
                yield pairs[idx]


def fit_scales(tc, pairs: torch.Tensor) -> None:
    """Set the transcoder's input and output normalisation (chapter 4's `normalisation_scale`
    of each, from the first 200k pairs)."""
    from mechlab.sparse_autoencoders.reference import normalisation_scale

    sample = pairs[: activations.SCALE_SAMPLE]
    tc.in_scale.fill_(normalisation_scale(sample[:, 0]))
    tc.out_scale.fill_(normalisation_scale(sample[:, 1]))


def fit_metrics(model, tokens: torch.Tensor, tc, fve=None) -> dict[str, float]:
    """Variance explained (default: the reference `variance_explained`), L0 and dead
    fraction of one transcoder on the (input, output) pairs of `tokens`."""
    from mechlab.transcoders import reference as ref

    pairs = collect_pairs(model, tokens, tc.cfg.layer)
    with torch.no_grad():
        x = pairs[:, 0].to(tc.W_dec.device)
        pred, z = tc(x).cpu(), tc.encode(x).cpu()
    return {"variance_explained": round((fve or ref.variance_explained)(pred, pairs[:, 1]), 4),
            "l0": round(float((z > 0).sum(-1).float().mean()), 2),
            "dead_fraction": round(float(((z > 0).sum(0) == 0).float().mean()), 4)}


def clean_loss(model, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        return round(float(model(tokens, return_type="loss")), 4)


def replaced_losses(model, tokens: torch.Tensor, transcoders: list, replacement=None) -> dict[str, float]:
    """The model's loss with every given MLP replaced (default: the reference
    `replacement_loss`), and with those MLPs' outputs zeroed, for scale."""
    from mechlab.transcoders import reference as ref

    zero = [(f"blocks.{tc.cfg.layer}.hook_mlp_out", lambda t, hook: torch.zeros_like(t)) for tc in transcoders]
    with torch.no_grad():
        zeroed = float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=zero))
    return {"zero_ablated_loss": round(zeroed, 4),
            "replacement_loss": round(float((replacement or ref.replacement_loss)(model, tokens, transcoders)), 4)}


def eval_tokens() -> torch.Tensor:
    """The held-out windows the zoo's metrics are measured on (corpus seed 2)."""
    return _windows(EVAL_SEED, 40_000)[:EVAL_WINDOWS]


def evaluate(tc) -> dict[str, Any]:
    """One transcoder's metrics on the held-out windows, its MLP replaced alone."""
    model, tokens = _model(), eval_tokens()
    return {**fit_metrics(model, tokens, tc), "clean_loss": clean_loss(model, tokens),
            **replaced_losses(model, tokens, [tc])}


def table(sets: dict[str, list], model, tokens: torch.Tensor, *, fve=None, replacement=None):
    """One row per set of transcoders: each one's variance explained, L0 and dead
    fraction, the loss with each MLP replaced alone and with all of the set's MLPs
    replaced, and the clean and zero-ablated losses for scale."""
    import pandas as pd

    clean = clean_loss(model, tokens)
    rows = {}
    for name, transcoders in sets.items():
        row = {}
        for tc in transcoders:
            fit, l = fit_metrics(model, tokens, tc, fve), tc.cfg.layer
            row.update({f"FVE {l}": fit["variance_explained"], f"L0 {l}": fit["l0"], f"dead {l}": fit["dead_fraction"],
                        f"loss, MLP {l} replaced": replaced_losses(model, tokens, [tc], replacement)["replacement_loss"]})
        if len(transcoders) > 1:
            both = replaced_losses(model, tokens, transcoders, replacement)
            row.update({"loss, all replaced": both["replacement_loss"], "loss, all zeroed": both["zero_ablated_loss"]})
        row["clean loss"] = clean
        rows[name] = row
    return pd.DataFrame(rows).T


def train(name: str, collect=None, train_loop=None, stop_after: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Train `name` from scratch with its fixed seeds; returns the transcoder (float16-rounded,
    as it will be saved) and its metadata. `stop_after` stops after that many steps, as the
    SAE zoo's `train` does (a prefix of the full run's history, no metrics)."""
    from mechlab.sparse_autoencoders.reference import train_sae
    from mechlab.transcoders.reference import Transcoder

    spec = _spec(name)
    cfg = spec.tc_config()
    pairs = collect_pairs(_model(), _windows(TRAIN_SEED, TRAIN_TOKENS), cfg.layer, collect)
    tc = Transcoder(cfg)
    fit_scales(tc, pairs)
    steps = spec.steps if stop_after is None else min(stop_after, spec.steps)
    start = time.perf_counter()
    history = (train_loop or train_sae)(tc, pair_batches(pairs, spec.batch_size, spec.seed), steps=steps,
                                        lr=spec.lr, warmup_steps=spec.warmup_steps, dead_after=spec.dead_after)
    return sae_zoo.finish(tc, spec, history, time.perf_counter() - start, steps, evaluate=evaluate)


def missed_targets(name: str, metrics: dict[str, float]) -> list[str]:
    return zoo.missed_targets(_spec(name), metrics)


def main(argv: list[str] | None = None) -> int:
    return sae_zoo.cli(argv, prog="python -m mechlab.transcoders.zoo", description=__doc__.split("\n\n")[0],
                       specs=TC_ZOO, train=train, measure=lambda name: evaluate(load(name)), save_to=sae_zoo.save,
                       missed=missed_targets)


if __name__ == "__main__":
    sys.exit(main())
