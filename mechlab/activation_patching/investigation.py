"""Chapter 3's graded investigation: which components of `corpus_2l` recall a person's city?

The corpus's world (`mechlab.corpus.build_world`) has known people, each with a city
stated the same way every time ("mary smith lives in paris ."). A clean prompt names
one known person, its corrupted twin another one with another city, in the same
template, so the positions line up and the two answers are the two cities. Which names
the twin changes is the batch's `vary`: both names, only the last (the twin shares the
first name) or only the first. The learner's function is handed a batch that varies
only the last name and is graded on batches of the same clean prompts that vary both
names and only the first: patching on what it is handed cannot see the route that
carries the first name, which it must reason its way to.

A learner's answer is a *circuit*: at most `BUDGET` components, each a head's output
at one position, `("head", layer, head, position)`, or an MLP's output at one
position, `("mlp", layer, position)`. Its faithfulness is measured by keeping it and
corrupting the rest: run the clean prompts with every component outside the circuit
(every head and MLP output at every position) replaced by its value on the corrupted
prompts, and read the normalised logit difference (1: the clean answer as strongly as
the clean run, 0: the corrupted run's answer). Keeping everything gives exactly 1,
keeping nothing exactly 0, so the number says how much of the recall the circuit
carries on its own.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from mechlab import corpus, zoo
from mechlab.activation_patching import reference as ref
from mechlab.checks import CheckFailed
from mechlab.pristine import type_ as _type

BUDGET = 8  # components a circuit may name: fewer than the 10 outputs at the final position alone
BAR = 0.75  # the faithfulness a circuit must reach on every graded batch
VARY = ("both", "last", "first")  # which of the clean person's names the corrupted twin changes
HANDED, GRADED = "last", ("both", "first")  # what the learner's function is given, and what it is graded on
TEMPLATES = tuple(t.replace(" {v} .", "") for t in corpus.FACT_TEMPLATES["city"])  # "{p} lives in", ...


@dataclass(frozen=True)
class FactBatch:
    """Clean prompts about known people and corrupted twins about other known people."""

    clean: Int[Tensor, "batch pos"]  # <eot> + "mary smith lives in"
    corrupted: Int[Tensor, "batch pos"]  # the same template, another person
    correct: Int[Tensor, "batch"]  # the clean person's city
    distractor: Int[Tensor, "batch"]  # the corrupted person's city
    labels: tuple[str, ...]  # one per position
    template: str
    vary: str = "both"  # which names the twin changes (VARY)

    def describe(self) -> str:
        changed = {"both": "both names", "last": "only the last name", "first": "only the first name"}[self.vary]
        return f"{len(self.clean)} prompts '{self.template.format(p='FIRST LAST')}', {changed} corrupted"


def _twin(p, q, vary: str) -> bool:
    """Whether known person q can be p's corrupted twin when the batch varies `vary`."""
    first = q.first == p.first if vary == "last" else q.first != p.first
    last = q.last == p.last if vary == "first" else q.last != p.last
    return q.city != p.city and first and last


@functools.cache
def fact_batch(template: int = 0, seed: int = 0, vary: str = "both") -> FactBatch:
    """Known people in template `template` (an index into TEMPLATES), each paired (by `seed`)
    with another known person with another city who differs in both names (`vary="both"`:
    every known person), or only in the last or only in the first name (`"last"`, `"first"`:
    the known people that have such a twin)."""
    if vary not in VARY:
        raise ValueError(f"vary must be one of {VARY}, not {vary!r}")
    known = corpus.build_world().known
    rng = random.Random(f"fact-recall-{seed}" if vary == "both" else f"fact-recall-{vary}-{seed}")
    people = [p for p in known if any(_twin(p, q, vary) for q in known)]
    twins = [rng.choice([q for q in known if _twin(p, q, vary)]) for p in people]
    text = TEMPLATES[template]

    def tokens(persons) -> Tensor:
        return torch.tensor([[zoo.BOS_ID, *zoo.token_ids(text.format(p=p.name).split())] for p in persons])

    words = text.replace("{p}", "FIRST LAST").split()
    labels = ("<eot>", *[{"FIRST": "first name", "LAST": "last name"}.get(w, w) for w in words])
    labels = (*labels[:-1], f"{labels[-1]} (end)")
    return FactBatch(tokens(people), tokens(twins), torch.tensor(zoo.token_ids([p.city for p in people])),
                     torch.tensor(zoo.token_ids([q.city for q in twins])), labels, text, vary)


def fact_metric(model, batch: FactBatch):
    """The normalised logit difference (exercise 3) on `batch`, with its clean and corrupted values."""
    with torch.no_grad():
        clean_diff = ref.logit_diff(model(batch.clean.to(model.cfg.device)), batch.correct, batch.distractor).item()
        corrupted_diff = ref.logit_diff(model(batch.corrupted.to(model.cfg.device)), batch.correct,
                                        batch.distractor).item()
    metric = functools.partial(ref.patching_metric, correct=batch.correct.to(model.cfg.device),
                               distractor=batch.distractor.to(model.cfg.device), clean_diff=clean_diff,
                               corrupted_diff=corrupted_diff)
    return metric, clean_diff, corrupted_diff


def _as_int(value, what: str) -> int:
    if _type(value) is not int:
        raise CheckFailed(f"{what} should be a Python int, got {value!r} (a {_type(value).__name__})")
    return value


def normalise_circuit(circuit, model, n_pos: int) -> list[tuple]:
    """The circuit as a list of distinct components with positions in 0..n_pos-1 (a negative
    position counts from the end, as in Python); CheckFailed naming the first malformed entry."""
    if _type(circuit) not in (list, tuple, set):
        raise CheckFailed(f"the answer should be a list of components, got a {_type(circuit).__name__}")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out: list[tuple] = []
    for entry in list(circuit):
        if _type(entry) is not tuple or not entry or _type(entry[0]) is not str or entry[0] not in ("head", "mlp"):
            raise CheckFailed(f"component {entry!r}: write ('head', layer, head, position) or "
                              "('mlp', layer, position), as a tuple")
        if len(entry) != (4 if entry[0] == "head" else 3):
            raise CheckFailed(f"component {entry!r}: a head is ('head', layer, head, position), "
                              "an MLP ('mlp', layer, position)")
        numbers = [_as_int(v, f"in component {entry!r}, {v!r}") for v in entry[1:]]
        layer, position = numbers[0], numbers[-1]
        if not 0 <= layer < n_layers:
            raise CheckFailed(f"component {entry!r}: layer {layer} is not in 0..{n_layers - 1}")
        if entry[0] == "head" and not 0 <= numbers[1] < n_heads:
            raise CheckFailed(f"component {entry!r}: head {numbers[1]} is not in 0..{n_heads - 1}")
        if not -n_pos <= position < n_pos:
            raise CheckFailed(f"component {entry!r}: position {position} is not in 0..{n_pos - 1} "
                              f"(or -{n_pos}..-1 from the end)")
        component = (entry[0], *numbers[:-1], position % n_pos)
        if component in out:
            raise CheckFailed(f"component {entry!r} is named twice (positions count from the end when negative)")
        out.append(component)
    if len(out) > BUDGET:
        raise CheckFailed(f"the circuit names {len(out)} components; the budget is {BUDGET}")
    return out


def faithfulness(model, batch: FactBatch, circuit) -> float:
    """The normalised logit difference of the clean prompts with every head and MLP output
    outside `circuit`, at every position, set to its value on the corrupted prompts."""
    components = normalise_circuit(circuit, model, batch.clean.shape[1])
    return _keep_only(model, batch, components, *_corrupted_run(model, batch))


def _corrupted_run(model, batch: FactBatch):
    metric, _, _ = fact_metric(model, batch)
    with torch.no_grad():
        _, corrupted_cache = model.run_with_cache(batch.corrupted.to(model.cfg.device))
    return metric, corrupted_cache


def _keep_only(model, batch: FactBatch, components: list[tuple], metric, corrupted_cache) -> float:
    n_pos, device = batch.clean.shape[1], model.cfg.device
    hooks = []
    for layer in range(model.cfg.n_layers):
        keep_heads = torch.zeros(n_pos, model.cfg.n_heads, dtype=torch.bool, device=device)
        keep_mlp = torch.zeros(n_pos, dtype=torch.bool, device=device)
        for c in components:
            if c[0] == "head" and c[1] == layer:
                keep_heads[c[3], c[2]] = True
            elif c[0] == "mlp" and c[1] == layer:
                keep_mlp[c[2]] = True
        z_name, mlp_name = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"
        hooks.append((z_name, lambda z, hook, keep=keep_heads, name=z_name:
                      torch.where(keep[None, :, :, None], z, corrupted_cache[name])))
        if not model.cfg.attn_only:
            hooks.append((mlp_name, lambda out, hook, keep=keep_mlp, name=mlp_name:
                          torch.where(keep[None, :, None], out, corrupted_cache[name])))
    with torch.no_grad():
        return metric(model.run_with_hooks(batch.clean.to(device), fwd_hooks=hooks)).item()

