"""The course's trained sparse autoencoders: chapter 4 loads them instead of training a
sweep live, and chapter 5 steers with one.

    from mechlab.sparse_autoencoders import zoo as sae_zoo
    sae = sae_zoo.load("topk_k8_w1024")   # chapter 4's SAE class, eval mode
    sae_zoo.info("topk_k8_w1024")["scale"]  # the normalisation factor it was trained with

Every SAE is described once, in `SAE_ZOO` below: its `SAEConfig`, the training run
(steps, batch, learning rate, warm-up, dead-latent window) and the metrics it must
reach. All are trained on `corpus_2l`'s activations at their hook over
`TRAIN_TOKENS` tokens of held-out corpus text (corpus seed 1), with chapter 4's
reference code (`mechlab.sparse_autoencoders.reference`: the same `train_sae` and
`SAE` a learner writes), and evaluated on other text (corpus seed 2).

    python -m mechlab.sparse_autoencoders.zoo list
    python -m mechlab.sparse_autoencoders.zoo train topk_k8_w1024   # retrain from scratch, print metrics, overwrite it
    python -m mechlab.sparse_autoencoders.zoo train all
    python -m mechlab.sparse_autoencoders.zoo eval topk_k8_w1024    # measure the committed checkpoint

Checkpoints are safetensors in `checkpoints/` beside this module, weights stored as float16 (half the
size; the metrics are measured after that rounding) and loaded as float32, with the
config, normalisation scale, metrics and a thinned training history in the metadata.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechlab import zoo
from mechlab.sparse_autoencoders import activations, metrics

CHECKPOINTS = Path(__file__).parent / "checkpoints"
MODEL = "corpus_2l"
TRAIN_TOKENS = 1_000_000  # about 15.8k windows, 990k activations
TRAIN_SEED, EVAL_SEED = 1, 2  # corpus seeds: never corpus_2l's training text (seed 0)
EVAL_TOKENS = 40_000
RESID_PRE, RESID_POST = "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"


@dataclass(frozen=True)
class SAESpec:
    name: str
    description: str
    config: dict[str, Any]  # SAEConfig fields; d_in comes from the model
    steps: int
    batch_size: int = 1024
    lr: float = 1e-3
    warmup_steps: int = 100
    dead_after: int = 100_000  # activations without firing before a latent counts as dead
    seed: int = 0  # data order
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)  # metric -> ("<" or ">", bound)

    @property
    def path(self) -> Path:
        return CHECKPOINTS / f"{self.name}.safetensors"

    def sae_config(self):
        from mechlab.sparse_autoencoders.reference import SAEConfig

        return SAEConfig(d_in=zoo.ZOO[MODEL].config["d_model"], **self.config)


def _topk(width: int, k: int = 8, hook: str = RESID_PRE, steps: int = 3000, **targets) -> SAESpec:
    suffix = "_post" if hook == RESID_POST else ""
    return SAESpec(f"topk_k{k}_w{width}{suffix}", f"TopK SAE, k={k}, {width} latents, at {hook}",
                   dict(d_sae=width, architecture="topk", k=k, hook_name=hook), steps=steps,
                   targets={"explained_variance": (">", targets.get("ev", 0.9)),
                            "dead_fraction": ("<", targets.get("dead", 0.1))})


def _relu(l1: float, name: str, ev: float = 0.8) -> SAESpec:
    return SAESpec(f"relu_{name}_w1024", f"ReLU SAE, L1 coefficient {l1}, 1024 latents",
                   dict(d_sae=1024, architecture="relu", l1_coeff=l1), steps=3000,
                   targets={"explained_variance": (">", ev)})


def _jumprelu(l0: float, name: str) -> SAESpec:
    return SAESpec(f"jumprelu_{name}_w1024", f"JumpReLU SAE, L0 coefficient {l0}, 1024 latents",
                   dict(d_sae=1024, architecture="jumprelu", l0_coeff=l0), steps=3000,
                   targets={"explained_variance": (">", 0.8)})


SAE_ZOO: dict[str, SAESpec] = {s.name: s for s in [
    _relu(2.0, "l1_2"), _relu(5.0, "l1_5"), _relu(10.0, "l1_10", ev=0.55),  # a strong L1: shrinkage at its worst
    _topk(1024, k=4, ev=0.85, dead=0.35), _topk(1024, k=8), _topk(1024, k=16),  # k=4 leaves many latents dead
    _jumprelu(0.3, "l0_0.3"), _jumprelu(1.0, "l0_1"), _jumprelu(3.0, "l0_3"),
    # wider than the corpus has features for: beyond 1024 latents, more and more of them never fire
    _topk(256, ev=0.85), _topk(512), _topk(2048, dead=0.25), _topk(4096, steps=2000, dead=0.55),
    _topk(1024, hook=RESID_POST),
]}
FRONTIER = [n for n in SAE_ZOO if n.endswith("_w1024") and not n.endswith("_post")]  # three of each architecture
WIDTHS = ["topk_k8_w256", "topk_k8_w512", "topk_k8_w1024", "topk_k8_w2048", "topk_k8_w4096"]


def _spec(name: str) -> SAESpec:
    if name not in SAE_ZOO:
        raise KeyError(f"no SAE {name!r} in the SAE zoo; it has: {', '.join(SAE_ZOO)}")
    return SAE_ZOO[name]


# ---------------------------------------------------------------- loading


def read_metadata(path: Path, train_command: str) -> dict[str, Any]:
    """A dictionary checkpoint's metadata (config, metrics, training history, seconds...)."""
    from safetensors import safe_open

    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; train it with `{train_command}`")
    with safe_open(str(path), framework="pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def load_checked(module, path: Path, stored_config: dict[str, Any], where: str, train_command: str):
    """`module` (built from the zoo's config) with the checkpoint's weights as float32, in eval
    mode, after checking that the config the checkpoint was trained with is the zoo's
    (`where` names the zoo's entry in the message)."""
    from safetensors.torch import load_file

    wanted = asdict(module.cfg)
    if stored_config != wanted:
        diffs = [f"{k}: checkpoint {stored_config.get(k)!r}, zoo {v!r}" for k, v in wanted.items()
                 if stored_config.get(k) != v]
        raise zoo.CheckpointMismatch(f"{path.name} does not match {where}:\n  " + "\n  ".join(diffs)
                                     + f"\nRetrain it with `{train_command}`.")
    module.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    return module.eval()


def _train_command(name: str) -> str:
    return f"python -m mechlab.sparse_autoencoders.zoo train {name}"


def info(name: str) -> dict[str, Any]:
    """The checkpoint's metadata: config, scale, metrics, training history, seconds."""
    return read_metadata(_spec(name).path, _train_command(name))


def load(name: str, device: str | torch.device = "cpu"):
    """The committed SAE `name` (chapter 4's `SAE`, float32, eval mode) on `device`.
    Its normalisation scale is `info(name)["scale"]`, also kept as `sae.scale`."""
    from mechlab.sparse_autoencoders.reference import SAE

    spec = _spec(name)
    meta = info(name)
    sae = load_checked(SAE(spec.sae_config()), spec.path, meta["config"], f"SAE_ZOO[{name!r}]", _train_command(name))
    sae.scale = float(meta["scale"])
    return sae.to(device)


def untrained(name: str, device: str | torch.device = "cpu"):
    """The committed SAE `name` as it was before training: the same architecture, size and
    seeded initialisation, with the trained one's `scale`. The control for anything a
    trained SAE's latents are credited with."""
    from mechlab.sparse_autoencoders.reference import SAE

    sae = SAE(_spec(name).sae_config()).eval()
    sae.scale = float(info(name)["scale"])
    return sae.to(device)


# ---------------------------------------------------------------- training and evaluation


@functools.cache
def _model():
    return zoo.load(MODEL)


@functools.cache
def _train_store(hook_name: str) -> activations.ActivationStore:
    windows = activations.corpus_windows(TRAIN_TOKENS, seed=TRAIN_SEED)
    return activations.ActivationStore.collect(_model(), hook_name, windows.tokens)


@functools.cache
def _eval_data(hook_name: str) -> tuple[activations.Windows, activations.ActivationStore]:
    windows = activations.corpus_windows(EVAL_TOKENS, seed=EVAL_SEED)
    return windows, activations.ActivationStore.collect(_model(), hook_name, windows.tokens, desc="evaluation set")


def evaluate(sae, scale: float) -> dict[str, float]:
    """The chapter's metrics on the held-out evaluation set (corpus seed 2), measured by the
    chapter's own table code (`metrics.measure`) with the reference functions; `scale` is
    the normalisation the SAE was trained with."""
    from mechlab.sparse_autoencoders.reference import (
        ce_loss_recovered, reconstruction_metrics, relative_reconstruction_bias,
    )

    windows, store = _eval_data(sae.cfg.hook_name)
    sae.scale = scale
    return metrics.measure(sae, _model(), store, windows.tokens, metrics=reconstruction_metrics,
                             ce=ce_loss_recovered, bias=relative_reconstruction_bias)


def train(name: str, stop_after: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Train `name` from scratch with its fixed seeds; returns the SAE (float16-rounded, as it
    will be saved) and its metadata. `stop_after` stops after that many steps (the schedule,
    a warm-up, does not depend on the run's length, so its history is a prefix of the full
    run's; `metrics` is then empty): what a test replays to show a checkpoint comes from its
    recipe."""
    from mechlab.sparse_autoencoders.reference import SAE, train_sae

    spec = _spec(name)
    cfg = spec.sae_config()
    store = _train_store(cfg.hook_name)
    sae = SAE(cfg)
    steps = spec.steps if stop_after is None else min(stop_after, spec.steps)
    start = time.perf_counter()
    history = train_sae(sae, store.batches(spec.batch_size, seed=spec.seed), steps=steps, lr=spec.lr,
                        warmup_steps=spec.warmup_steps, dead_after=spec.dead_after)
    return finish(sae, spec, history, time.perf_counter() - start, steps,
                  evaluate=lambda sae: evaluate(sae, store.scale), scale=store.scale)


def finish(module, spec, history: dict[str, Tensor], seconds: float, steps: int, evaluate, **extra
           ) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """A trained dictionary (this zoo's or chapter 6's) rounded to float16 as its checkpoint
    holds it, and its metadata: config, metrics (none for a run stopped before
    `spec.steps`), the history thinned to every `spec.steps // 100` steps, seconds."""
    with torch.no_grad():
        for t in module.state_dict().values():  # parameters (and buffers: a transcoder's scales)
            t.copy_(t.half().float())
    module.eval()
    every = max(1, spec.steps // 100)
    meta = {"config": asdict(module.cfg), **extra, "metrics": evaluate(module) if steps == spec.steps else {},
            "history": {k: [round(float(v), 4) for v in t[::every]] for k, t in history.items()},
            "history_every": every, "seconds": round(seconds, 1), "steps": steps,
            "activations_per_second": round(steps * spec.batch_size / seconds), "torch": torch.__version__}
    return module, meta


def save(sae, meta: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().half().contiguous() for k, v in sae.state_dict().items()}, str(path),
              metadata={k: json.dumps(v) for k, v in meta.items()})


def missed_targets(name: str, metrics: dict[str, float]) -> list[str]:
    return zoo.missed_targets(_spec(name), metrics)


def report(name: str, metrics: dict[str, float], missed: list[str]) -> str:
    return (f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            + f"\n  targets: {'all met' if not missed else 'MISSED ' + '; '.join(missed)}")


def cli(argv: list[str] | None, *, prog: str, description: str, specs: dict, train, measure, save_to,
        missed) -> int:
    """The command line of a zoo of trained dictionaries (this one, chapter 6's transcoders):
    `list`, `train NAME... [--out DIR]` (or `all`) and `eval NAME...`. `train(name)` gives
    (module, metadata), `measure(name)` the committed checkpoint's metrics, `save_to(module,
    metadata, path)` writes one, `missed(name, metrics)` lists the targets it misses."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the zoo's checkpoints")
    t = sub.add_parser("train", help="retrain from scratch (fixed seeds) and write the checkpoints")
    t.add_argument("names", nargs="+", help="names, or 'all'")
    t.add_argument("--out", type=Path, help="folder to write checkpoints to (default: the committed ones)")
    e = sub.add_parser("eval", help="measure committed checkpoints")
    e.add_argument("names", nargs="+", help="names, or 'all'")
    args = parser.parse_args(argv)
    if args.command == "list":
        for spec in specs.values():
            print(f"{spec.name}: {spec.description}")
        return 0
    names = list(specs) if args.names == ["all"] else args.names
    failed = 0
    for name in names:
        if args.command == "eval":
            metrics = measure(name)
        else:
            module, meta = train(name)
            out = (args.out / f"{name}.safetensors") if args.out else specs[name].path
            save_to(module, meta, out)
            metrics = meta["metrics"]
        print(report(name, metrics, missed(name, metrics)), flush=True)
        if args.command == "train":
            speed = f" ({meta['activations_per_second']} activations/s)" if "activations_per_second" in meta else ""
            print(f"  trained in {meta['seconds']} s{speed}; wrote {out}", flush=True)
        failed += bool(missed(name, metrics))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return cli(argv, prog="python -m mechlab.sparse_autoencoders.zoo", description=__doc__.split("\n\n")[0],
               specs=SAE_ZOO, train=train, measure=lambda name: evaluate(sae := load(name), sae.scale),
               save_to=save, missed=missed_targets)


if __name__ == "__main__":
    sys.exit(main())
