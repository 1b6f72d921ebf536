"""The course's model zoo: small TransformerLens 4.x models, trained by the course's own
code, committed as safetensors checkpoints, loaded offline in a second or two.

    from mechlab import zoo
    model = zoo.load("attn_only_2l")          # a TransformerBridge, eval mode
    model.to_str_tokens("mary smith lives in paris .")

Every model is described once, in `ZOO` below: its architecture (the
`TransformerBridgeConfig` fields), how it is trained (task, steps, batch, optimiser,
seed) and what it must reach (`targets`). `python -m mechlab.zoo train NAME` retrains
a model from scratch with those fixed seeds, prints its metrics and writes the
checkpoint; `python -m mechlab.zoo eval NAME` measures the committed one. The
checkpoint keeps its config, metrics and training history in the safetensors
metadata, so `load` can say exactly which setting differs when code and checkpoint
disagree, and chapters can plot how the model learned.

Models use the course's word-level tokenizer (`tokenizer()`), built from
`mechlab.corpus.vocabulary()` with the `tokenizers` library: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechlab import corpus
from mechlab.runtime import progress

CHECKPOINTS = Path(__file__).parent / "checkpoints"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo: architecture, training recipe, and the quality it must reach."""

    name: str
    description: str
    config: dict[str, Any]  # TransformerBridgeConfig fields; d_vocab comes from the tokenizer
    task: str  # a key of TASKS: what data the model is trained on
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.01
    warmup_steps: int = 100
    cosine: bool = False  # after warm-up: constant learning rate, or cosine decay to 0 at the last step
    seed: int = 0
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)  # metric -> ("<" or ">", bound)

    @property
    def path(self) -> Path:
        return CHECKPOINTS / f"{self.name}.safetensors"

    def full_config(self) -> dict[str, Any]:
        return {**self.config, "d_vocab": len(corpus.vocabulary()), "seed": self.seed}


# ---------------------------------------------------------------- induction task

# Repeat lengths the induction model never trains on; it is evaluated on them, so a
# model that learned "copy from a fixed offset" instead of induction fails its targets.
HELD_OUT_LENGTHS = (11, 19, 27)
TRAIN_LENGTHS = tuple(n for n in range(6, 32) if n not in HELD_OUT_LENGTHS)
BOS_ID = corpus.SPECIAL_TOKENS.index(corpus.EOT)  # "<eot>" doubles as beginning-of-sequence
FIRST_WORD_ID = len(corpus.SPECIAL_TOKENS)


def repeated_batch(batch: int, length: int, rng: np.random.Generator) -> torch.Tensor:
    """int64 [batch, 1 + 2 * length]: BOS, `length` random words, the same words again."""
    words = corpus.repeated_random_tokens(batch, length, len(corpus.vocabulary()), rng, low=FIRST_WORD_ID)
    return torch.from_numpy(np.concatenate([np.full((batch, 1), BOS_ID), words], axis=1))


def half_losses(logits: torch.Tensor, tokens: torch.Tensor, length: int) -> tuple[float, float]:
    """Mean next-token loss on the first copy and on the second copy of repeated sequences."""
    logp = logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    return float(-logp[:, :length].mean()), float(-logp[:, length:].mean())


def _induction_data(spec: ModelSpec) -> Callable[[int], torch.Tensor]:
    """Training batches of n_ctx tokens: BOS, a random number of random words, a random
    segment of `TRAIN_LENGTHS` words twice, then random words to the end. Where the
    repeat starts and how long it is vary independently from row to row, so no rule
    based on position alone predicts the second copy: only induction does. (A model
    trained on [BOS, A, A] alone, even with varied lengths, learns positional tricks
    for the later positions: see chapter 2.)"""
    rng = np.random.default_rng(spec.seed)
    n_ctx, d_vocab = spec.config["n_ctx"], len(corpus.vocabulary())

    def batch(step: int) -> torch.Tensor:
        rows = rng.integers(FIRST_WORD_ID, d_vocab, size=(spec.batch_size, n_ctx), dtype=np.int64)
        rows[:, 0] = BOS_ID
        for row in rows:
            n = int(rng.choice(TRAIN_LENGTHS))
            start = 1 + int(rng.integers(0, n_ctx - 2 * n))  # the repeat fits before n_ctx
            row[start + n:start + 2 * n] = row[start:start + n]
        return torch.from_numpy(rows)

    return batch


def attention_back(pattern: torch.Tensor, queries: torch.Tensor, offset: int) -> torch.Tensor:
    """Mean attention, per head, from each of the `queries` positions to the key `offset`
    positions before it ([batch, head, query, key] -> [head])."""
    return pattern[:, :, queries, queries - offset].mean(dim=(0, -1))


@torch.no_grad()
def induction_metrics(model, lengths: tuple[int, ...] = HELD_OUT_LENGTHS, batch: int = 64, seed: int = 1234
                      ) -> dict[str, Any]:  # fmt: skip
    """Loss on each copy, and each head's previous-token score (attention to the token
    just before, from every position) and induction score (attention to the token after
    the previous copy of the current one, over the second copy), averaged over repeated
    sequences of the given lengths. Chapter 2's learners define the same two scores; the
    zoo measures its targets with its own code, so the standard a model is held to never
    depends on an exercise."""
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    first, second, prev, induction = [], [], [], []
    for length in lengths:
        tokens = repeated_batch(batch, length, rng).to(device)
        logits, cache = model.run_with_cache(tokens)
        f, s = half_losses(logits, tokens, length)
        first.append(f)
        second.append(s)
        everywhere = torch.arange(1, tokens.shape[1], device=device)
        second_copy = torch.arange(length + 1, 2 * length + 1, device=device)
        layers = range(model.cfg.n_layers)
        prev.append(torch.stack([attention_back(cache["pattern", layer], everywhere, 1) for layer in layers]))
        induction.append(torch.stack([attention_back(cache["pattern", layer], second_copy, length - 1)
                                      for layer in layers]))
    prev_scores = torch.stack(prev).mean(0).cpu()
    induction_scores = torch.stack(induction).mean(0).cpu()
    return {
        "first_half_loss": float(np.mean(first)),
        "second_half_loss": float(np.mean(second)),
        "best_previous_token_score": float(prev_scores.max()),
        "best_induction_score": float(induction_scores.max()),
        "previous_token_scores": prev_scores.tolist(),
        "induction_scores": induction_scores.tolist(),
    }


# ---------------------------------------------------------------- corpus task

TRAIN_TOKENS = 3_000_000  # training text drawn once per run (about 2 s), sampled in windows
VALIDATION_SEED = 10_000  # corpus seed of the held-out validation text


def token_ids(words: list[str] | tuple[str, ...]) -> np.ndarray:
    """Word-level token ids (no BOS), with the course vocabulary's indices."""
    index = _word_index()
    return np.array([index[w] for w in words], dtype=np.int64)


@functools.cache
def _word_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(corpus.vocabulary())}


def _corpus_stream(seed: int, n_tokens: int) -> np.ndarray:
    tokens, _ = corpus.concatenate(corpus.generate(corpus.CorpusConfig(seed=seed), n_tokens=n_tokens))
    return token_ids(tokens)


def _corpus_data(spec: ModelSpec) -> Callable[[int], torch.Tensor]:
    """Training batches: BOS followed by a window of n_ctx - 1 tokens of the corpus, at a
    random offset (documents are separated by "<eot>", so windows also cross them)."""
    rng = np.random.default_rng(spec.seed)
    stream = _corpus_stream(spec.seed, TRAIN_TOKENS)
    width = spec.config["n_ctx"] - 1

    def batch(step: int) -> torch.Tensor:
        starts = rng.integers(0, len(stream) - width, size=spec.batch_size)
        rows = np.stack([stream[s:s + width] for s in starts])
        return torch.from_numpy(np.concatenate([np.full((spec.batch_size, 1), BOS_ID), rows], axis=1))

    return batch


def ioi_batches(prompts) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """IOI prompts grouped by length: (tokens [n, BOS + prompt], correct ids [n], distractor ids [n])."""
    groups: dict[int, list] = {}
    for p in prompts:
        groups.setdefault(len(p.tokens), []).append(p)
    out = []
    for group in groups.values():
        toks = np.stack([np.concatenate([[BOS_ID], token_ids(p.tokens)]) for p in group])
        out.append((torch.from_numpy(toks), torch.from_numpy(token_ids([p.correct for p in group])),
                    torch.from_numpy(token_ids([p.distractor for p in group]))))
    return out


@torch.no_grad()
def ioi_logit_diffs(model, prompts) -> torch.Tensor:
    """logit(correct) - logit(distractor) at the last position of each IOI prompt (grouped order)."""
    device = next(model.parameters()).device
    diffs = []
    for tokens, correct, distractor in ioi_batches(prompts):
        last = model(tokens.to(device))[:, -1].cpu()
        diffs.append(last.gather(1, correct[:, None])[:, 0] - last.gather(1, distractor[:, None])[:, 0])
    return torch.cat(diffs)


@torch.no_grad()
def corpus_metrics(model, batch: int = 64) -> dict[str, Any]:
    """Loss on held-out corpus text, and the IOI task on held-out and training templates."""
    device = next(model.parameters()).device
    width = model.cfg.n_ctx - 1
    stream = _corpus_stream(VALIDATION_SEED, batch * width)
    rows = torch.from_numpy(stream[: batch * width].reshape(batch, width))
    tokens = torch.cat([torch.full((batch, 1), BOS_ID), rows], dim=1).to(device)
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    n_prompts = 4 * batch  # 256 by default: one prompt moves the accuracy by 0.4%
    held_out = ioi_logit_diffs(model, corpus.ioi_prompts(n_prompts, seed=1, held_out=True))
    train = ioi_logit_diffs(model, corpus.ioi_prompts(n_prompts, seed=1))
    return {
        "validation_loss": float(loss),
        "ioi_held_out_accuracy": float((held_out > 0).float().mean()),
        "ioi_held_out_logit_diff": float(held_out.mean()),
        "ioi_train_templates_accuracy": float((train > 0).float().mean()),
    }


TASKS: dict[str, tuple[Callable, Callable]] = {
    # task -> (make_data(spec) -> (step -> token batch), metrics(model) -> dict)
    "induction": (_induction_data, induction_metrics),
    "corpus": (_corpus_data, corpus_metrics),
}

_ATTN_ONLY_2L = ModelSpec(
    name="attn_only_2l",
    description="2-layer attention-only transformer trained on random words repeated twice "
                "(chapter 2: induction heads)",
    config=dict(d_model=64, d_head=16, n_heads=4, n_layers=2, n_ctx=64, attn_only=True,
                normalization_type="LNPre"),
    task="induction", steps=4000, batch_size=32, lr=2e-3,
    targets={"second_half_loss": ("<", 1.2), "first_half_loss": (">", 5.0),
             "best_previous_token_score": (">", 0.8), "best_induction_score": (">", 0.8)},
)

ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        _ATTN_ONLY_2L,
        # the same recipe with a third layer and another seed
        replace(
            _ATTN_ONLY_2L, name="attn_only_3l",
            description="3-layer attention-only transformer trained on random words repeated twice, another "
                        "seed and shape (chapter 2's graded investigation: which heads form the circuit?)",
            config={**_ATTN_ONLY_2L.config, "n_layers": 3}, seed=2,
        ),
        ModelSpec(
            name="corpus_2l",
            description="2-layer transformer with MLPs trained on the course's synthetic corpus "
                        "(chapters 3-5: activation patching, SAEs, steering)",
            config=dict(d_model=128, d_head=32, n_heads=4, n_layers=2, n_ctx=64, d_mlp=512, act_fn="gelu",
                        normalization_type="LN"),
            task="corpus", steps=4000, batch_size=32, lr=2e-3, cosine=True,
            targets={"validation_loss": ("<", 1.3), "ioi_held_out_accuracy": (">", 0.95),
                     "ioi_held_out_logit_diff": (">", 3.0)},
        ),
    ]
}


# ---------------------------------------------------------------- tokenizer and models


TOKENIZER_DIR = CHECKPOINTS / "tokenizer"


@functools.cache
def tokenizer():
    """The course's word-level tokenizer, a `transformers` fast tokenizer read from the
    committed `checkpoints/tokenizer/` (TransformerLens reloads a tokenizer from its
    `name_or_path`, so it must live in a folder that stays). Words are split on
    whitespace, as `mechlab.corpus.to_text` writes them; "<eot>" is both the beginning-
    and the end-of-sequence token, so `model.to_tokens` prepends it and generation
    stops at it."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)  # never the hub


def make_tokenizer():
    """Build the tokenizer from `mechlab.corpus.vocabulary()` (what
    `python -m mechlab.zoo tokenizer` writes to `checkpoints/tokenizer/`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(corpus.vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=corpus.EOT, eos_token=corpus.EOT,
                                   unk_token="<unk>", pad_token="<pad>")


def build(config: dict[str, Any], device: str | torch.device = "cpu"):
    """A freshly initialised TransformerBridge (random weights, seeded by config["seed"])."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    import transformer_lens.model_bridge.sources  # noqa: F401  attaches TransformerBridge.boot_native

    # seeded on a forked RNG: building a model must not reseed the caller's (a learner's, or the grader's
    # between hidden tests)
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):  # TL prints "Moving model"
        torch.manual_seed(config.get("seed", 0))
        model = TransformerBridge.boot_native(TransformerBridgeConfig(**config), tokenizer=tokenizer())
    return _move(model, device)


def _move(model, device: str | torch.device):
    with contextlib.redirect_stdout(io.StringIO()):
        return model.to(device)


def random_model(seed: int = 0, device: str | torch.device = "cpu", **config: Any):
    """An untrained model of any shape, for tests and for baselines ("what does a random
    model score?"). Defaults: the shape of `attn_only_2l`; override any field."""
    return build({**ZOO["attn_only_2l"].full_config(), "seed": seed, **config}, device).eval()


def other_shapes(seed: int) -> tuple[tuple[str, Any], ...]:
    """Two untrained models shaped unlike the corpus models, with descriptions, for hidden
    tests: code that hard-codes a layer count, a head count, d_model or MLPs fails on them.
    `seed` and `seed + 1` initialise them."""
    return (
        ("untrained 3 layers x 2 heads with MLPs, d_model 32", random_model(
            seed=seed, n_layers=3, n_heads=2, d_model=32, d_head=8, attn_only=False, d_mlp=64, act_fn="gelu",
            normalization_type="LN")),
        ("untrained 2 layers x 3 heads, attention only, d_model 48",
         random_model(seed=seed + 1, n_heads=3, d_model=48, d_head=16)),
    )


class CheckpointMismatch(ValueError):
    """The checkpoint on disk was trained with another config than `ZOO` now describes."""


def _checkpoint(path: Path):
    """The open safetensors file (weights are read only when asked for)."""
    from safetensors import safe_open

    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; train it with `python -m mechlab.zoo train {path.stem}`")
    return safe_open(str(path), framework="pt")


def _metadata(f) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def load(name: str, device: str | torch.device = "cpu"):
    """The committed model `name`, in eval mode, on `device`."""
    spec = _spec(name)
    with _checkpoint(spec.path) as f:
        meta = _metadata(f)
        weights = {k: f.get_tensor(k) for k in f.keys()}
    expected = spec.full_config()
    saved = meta.get("config", {})
    if saved != expected:
        diffs = [f"{k}: checkpoint {saved.get(k, '(missing)')!r}, zoo {expected.get(k, '(missing)')!r}"
                 for k in sorted(set(saved) | set(expected)) if saved.get(k) != expected.get(k)]
        raise CheckpointMismatch(f"{spec.path.name} does not match ZOO[{name!r}]:\n  " + "\n  ".join(diffs)
                                 + f"\nRetrain it with `python -m mechlab.zoo train {name}`.")
    model = build(expected)
    model.load_state_dict(weights, strict=True)
    return _move(model, device).eval()


def info(name: str) -> dict[str, Any]:
    """The checkpoint's metadata: config, metrics at save time, training history, seconds."""
    with _checkpoint(_spec(name).path) as f:
        return _metadata(f)


def _spec(name: str) -> ModelSpec:
    if name not in ZOO:
        raise KeyError(f"no model {name!r} in the zoo; it has: {', '.join(ZOO)}")
    return ZOO[name]


# ---------------------------------------------------------------- training


def missed_targets(spec: ModelSpec, metrics: dict[str, Any]) -> list[str]:
    """The targets in `spec.targets` that `metrics` misses, as readable lines."""
    missed = []
    for metric, (op, bound) in spec.targets.items():
        value = metrics[metric]
        if not (value < bound if op == "<" else value > bound):
            missed.append(f"{metric} = {value:.3f}, target {op} {bound}")
    return missed


def train(name: str, *, steps: int | None = None, eval_every: int = 100, device: str | torch.device = "cpu",
          quiet: bool = False, stop_after: int | None = None) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Train `name` from scratch with its fixed seeds. Returns the model and its metadata
    (config, metrics, history: the training loss and the task's metrics every
    `eval_every` steps, seconds). `steps` shortens the run, for experiments (the learning
    rate schedule shortens with it); `stop_after` stops the full run after that many steps,
    on the same schedule, so its history is a prefix of the full run's (then `metrics` is
    empty): what a test replays to show a checkpoint comes from its recipe."""
    spec = _spec(name)
    make_data, metrics_fn = TASKS[spec.task]
    model = build(spec.full_config(), device).train()
    data = make_data(spec)
    steps = steps or spec.steps
    optimiser = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    def lr_factor(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        if not spec.cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - spec.warmup_steps) / max(1, steps - spec.warmup_steps)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = progress(range(steps), desc=f"training {name}", disable=quiet)
    for step in bar:
        if stop_after is not None and step >= stop_after:
            break
        tokens = data(step).to(device)
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % eval_every == 0 or step == steps - 1:  # the history chapters plot: how the model learned
            model.eval()
            scalars = {k: round(v, 4) for k, v in metrics_fn(model, batch=16).items() if isinstance(v, float)}
            model.train()
            history.append({"step": step, "train_loss": round(loss.item(), 4), **scalars})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    stopped = stop_after is not None and stop_after < steps
    meta = {"config": spec.full_config(), "metrics": {} if stopped else metrics_fn(model), "history": history,
            "seconds": round(seconds, 1), "steps": stop_after if stopped else steps, "torch": torch.__version__}
    return model, meta


def save(model, meta: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})


def _report(name: str, metrics: dict[str, Any]) -> str:
    lines = [f"{name}:"]
    for key, value in metrics.items():
        shown = (f"{value:.4f}" if isinstance(value, float) else
                 json.dumps(value, default=lambda x: round(x, 3)) if isinstance(value, list) else str(value))
        lines.append(f"  {key}: {shown}")
    missed = missed_targets(_spec(name), metrics)
    lines.append("  targets: " + ("all met" if not missed else "MISSED " + "; ".join(missed)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mechlab.zoo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the zoo's models")
    sub.add_parser("tokenizer", help="rebuild checkpoints/tokenizer/ from mechlab.corpus.vocabulary()")
    t = sub.add_parser("train", help="retrain a model from scratch (fixed seeds) and write its checkpoint")
    t.add_argument("name")
    t.add_argument("--out", type=Path, help="where to write the checkpoint (default: the committed one)")
    t.add_argument("--steps", type=int, help="shorter run, for experiments")
    e = sub.add_parser("eval", help="measure the committed checkpoint")
    e.add_argument("name")
    args = parser.parse_args(argv)
    if args.command == "list":
        for spec in ZOO.values():
            print(f"{spec.name}: {spec.description}")
        return 0
    if args.command == "tokenizer":
        make_tokenizer().save_pretrained(str(TOKENIZER_DIR))
        print(f"wrote {TOKENIZER_DIR} ({len(corpus.vocabulary())} words)")
        return 0
    if args.command == "eval":
        model = load(args.name)
        print(_report(args.name, TASKS[_spec(args.name).task][1](model)))
        return 0
    model, meta = train(args.name, steps=args.steps)
    out = args.out or _spec(args.name).path
    save(model, meta, out)
    print(_report(args.name, meta["metrics"]))
    print(f"  trained in {meta['seconds']} s ({meta['steps']} steps, torch {meta['torch']}); wrote {out}")
    return 1 if missed_targets(_spec(args.name), meta["metrics"]) else 0


if __name__ == "__main__":
    sys.exit(main())
