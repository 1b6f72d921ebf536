"""Chapter 2's graded investigation: which heads of a model form its induction circuit?

The learner writes `find_induction_circuit(model)`, returning
`{"previous_token": [(layer, head), ...], "induction": [(layer, head), ...]}`. The
hidden test runs it on the zoo's second induction model (`INVESTIGATION_MODEL`, a shape
and seed the chapter never shows) and on the chapter's own `attn_only_2l`, and checks
each answer against measurements made here, on held-out sequences no notebook cell
draws (`HELD_OUT_SEED`, the zoo's held-out repeat lengths):

- a head is **clearly** a previous-token head when its attention to the token just
  before is at least `MUST[previous_token]` on average, and clearly not one below
  `MUST_NOT[previous_token]`; the same for the induction score. An answer must name
  every clear head and no clear non-head; heads in between may go either way, so
  several answers pass and a guess does not.
- the named heads must carry the circuit: mean-ablating all named heads of one kind at
  once must undo at least `CARRIES` of what the second copy gains over the first
  (its loss must rise that far back towards the first copy's).

Everything here is measured with the course's own code (`mechlab.zoo`), never with a
learner's exercise, so the standard is the same for every submission; results leave
torch through `mechlab.pristine` and are compared as NumPy arrays and Python floats.
The grader imports this module afresh from disk before every test cell, so a learner
cell that edits it changes nothing (tests/test_grader.py plants such an edit).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mechlab import zoo
from mechlab.pristine import detach as _detach, numpy as _numpy, to as _to

INVESTIGATION_MODEL = "attn_only_3l"
GRADED_MODELS = (INVESTIGATION_MODEL, "attn_only_2l")
KINDS = ("previous_token", "induction")
HELD_OUT_SEED = 20_261_204  # no notebook cell draws with this seed
BATCH = 32
MUST = {"previous_token": 0.8, "induction": 0.7}  # a head at or above this must be named
MUST_NOT = {"previous_token": 0.3, "induction": 0.2}  # a head below this must not be named
CARRIES = 0.5  # ablating the named heads of one kind must undo this share of the induction gain

Head = tuple[int, int]


def _array(t: torch.Tensor) -> np.ndarray:
    return _numpy(_to(_detach(t), "cpu", torch.float64))


@dataclass(frozen=True)
class Measurement:
    """One model on the held-out sequences: per-head scores ([layer, head]) and losses."""

    name: str
    previous_token: np.ndarray  # [layer, head]
    induction: np.ndarray  # [layer, head]
    duplicate: np.ndarray  # [layer, head]
    first_loss: float
    second_loss: float

    def score(self, kind: str) -> np.ndarray:
        return getattr(self, kind)

    def heads(self, kind: str, above: float) -> list[Head]:
        """Heads whose `kind` score is at least `above`, strongest first."""
        s = self.score(kind)
        found = [(int(layer), int(head)) for layer, head in np.argwhere(s >= above)]
        return sorted(found, key=lambda lh: -float(s[lh]))


def _half_losses(logits: torch.Tensor, tokens: torch.Tensor, n: int) -> tuple[float, float]:
    """Mean loss on each copy (as `zoo.half_losses`), averaged in NumPy."""
    logp = _array(logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0])
    return float(-logp[:, :n].mean()), float(-logp[:, n:].mean())


def held_out_batches() -> list[tuple[torch.Tensor, int]]:
    """[(tokens [BATCH, 1 + 2 n], n)] for the zoo's held-out repeat lengths, seeded here."""
    rng = np.random.default_rng(HELD_OUT_SEED)
    return [(zoo.repeated_batch(BATCH, n, rng), n) for n in zoo.HELD_OUT_LENGTHS]


@functools.cache
def _model(name: str):
    return zoo.load(name)


def _duplicate_scores(pattern: torch.Tensor, n: int) -> torch.Tensor:
    q = torch.arange(n + 1, 2 * n + 1)
    return pattern[:, :, q, q - n].mean(dim=(0, -1))


@functools.cache
def measure(name: str) -> Measurement:
    """Previous-token, induction and duplicate-token scores of every head of zoo model
    `name`, and its loss on each copy, averaged over the held-out batches."""
    model = _model(name)
    prev, ind, dup, first, second = [], [], [], [], []
    with torch.no_grad():
        for tokens, n in held_out_batches():
            logits, cache = model.run_with_cache(tokens)
            f, s = _half_losses(logits, tokens, n)
            first.append(f)
            second.append(s)
            everywhere = torch.arange(1, tokens.shape[1])
            second_copy = torch.arange(n + 1, 2 * n + 1)
            layers = range(model.cfg.n_layers)
            prev.append(torch.stack([zoo.attention_back(cache["pattern", l], everywhere, 1) for l in layers]))
            ind.append(torch.stack([zoo.attention_back(cache["pattern", l], second_copy, n - 1) for l in layers]))
            dup.append(torch.stack([_duplicate_scores(cache["pattern", l], n) for l in layers]))
    mean = lambda xs: _array(torch.stack(xs)).mean(0)  # noqa: E731
    return Measurement(name, mean(prev), mean(ind), mean(dup), float(np.mean(first)), float(np.mean(second)))


def ablated_second_loss(name: str, heads: Sequence[Head]) -> float:
    """Second-copy loss on the held-out batches with all `heads` mean-ablated at once
    (each head's z replaced by its mean over the batch, position by position)."""
    model = _model(name)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def hook_for(chosen: list[int]):
        def ablate(z, hook):
            z = z.clone()
            z[:, :, chosen] = z[:, :, chosen].mean(dim=0, keepdim=True)
            return z
        return ablate

    losses = []
    with torch.no_grad():
        for tokens, n in held_out_batches():
            hooks = [(f"blocks.{layer}.attn.hook_z", hook_for(chosen)) for layer, chosen in by_layer.items()]
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
            losses.append(_half_losses(logits, tokens, n)[1])
    return float(np.mean(losses))


def share_undone(name: str, heads: Sequence[Head]) -> float:
    """How much of the second copy's gain over the first the ablation of `heads` undoes:
    0 = no effect, 1 = the second copy is as hard as the first."""
    m = measure(name)
    return (ablated_second_loss(name, heads) - m.second_loss) / (m.first_loss - m.second_loss)


def _name(head: Head) -> str:
    return f"{head[0]}.{head[1]}"


def problems(name: str, answer: dict[str, list[Head]]) -> list[str]:
    """What the measurements on model `name` contradict in a well-formed answer (empty: it passes)."""
    m = measure(name)
    found = []
    for kind in KINDS:
        label = kind.replace("_", "-")
        article = "an" if label[0] in "aeiou" else "a"
        named = set(answer[kind])
        for head in m.heads(kind, MUST[kind]):
            if head not in named:
                found.append(f"missed {_name(head)}: on held-out sequences its {label} score is "
                             f"{float(m.score(kind)[head]):.2f} ({article} clear {label} head: at least {MUST[kind]})")
        for head in sorted(named):
            score = float(m.score(kind)[head])
            if score < MUST_NOT[kind]:
                found.append(f"{_name(head)} is not {article} {label} head: on held-out sequences its {label} score is "
                             f"{score:.2f} (clearly not one: below {MUST_NOT[kind]})")
        if named and not found:
            undone = share_undone(name, sorted(named))
            if undone < CARRIES:
                found.append(f"mean-ablating all your {label} heads together undoes only {undone:.0%} of what the "
                             f"second copy gains over the first (the circuit's heads undo at least {CARRIES:.0%})")
    return found


def truth_table(name: str) -> str:
    """The measurements, as the chapter prints them after the investigation."""
    m = measure(name)
    lines = [f"{name}, held-out sequences: loss {m.first_loss:.2f} on the first copy, {m.second_loss:.2f} on the second",
             "head   previous-token   induction   duplicate"]
    n_layers, n_heads = m.induction.shape
    for layer in range(n_layers):
        for head in range(n_heads):
            lines.append(f"{layer}.{head}    {m.previous_token[layer, head]:.2f}             "
                         f"{m.induction[layer, head]:.2f}        {m.duplicate[layer, head]:.2f}")
    return "\n".join(lines)
