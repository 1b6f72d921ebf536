"""Chapter 6's graded investigation: which transcoder latents carry a person's city?

The corpus's world (`mechlab.corpus.build_world`) has 30 known people, each with one
city, stated the same way every time. On a prompt such as `mary brown lives in`, the
model prefers the person's city to the other eleven; the *target* is that preference
(`graph.city_target`: the city's logit minus the mean city logit).

A learner's answer is a list of at most `BUDGET` latents `(layer, position, latent)`
of the prompt. It is measured in the real model, not in the graph: with each MLP
replaced by its transcoder and the prompt's error vectors kept (so with nothing
ablated the logits are the model's exactly), the listed latents are set to zero
after TopK, attention and LayerNorm recompute, and the share of the target that
disappears is read off (`removed_share`). The truth the share is measured against is
the world's: the person's real city.

Graded on every known person in all three city templates (90 prompts the function
has not been shown); the mean share must reach `BAR`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mechlab import corpus
from mechlab.checks import CheckFailed
from mechlab.pristine import type_ as _type
from mechlab.transcoders import graph as ag
from mechlab.transcoders import reference as ref

BUDGET = 6  # latents an answer may name
BAR = 0.50  # the mean share of the target the answer's ablation must remove: above the graph's own
# ranking (the six largest total effects remove 0.453), which predicts the ablations it is judged by poorly
VISIBLE_PEOPLE = ("mary brown", "kate wright", "alice taylor")  # the visible check's prompts ("lives in")


def prompts(hidden: bool) -> list[tuple[corpus.Person, str]]:
    """(person, template) pairs: three for the visible check, all 90 for the hidden test."""
    known = corpus.build_world().known
    if not hidden:
        return [(p, ag.TEMPLATES[0]) for p in known if p.name in VISIBLE_PEOPLE]
    return [(p, t) for p in known for t in ag.TEMPLATES]


def normalise(answer, replacement: ag.LocalReplacement) -> list[tuple[int, int, int]]:
    """The answer as a list of (layer, position, latent) Python ints, or CheckFailed saying what is wrong."""
    if _type(answer) not in (list, tuple):
        raise CheckFailed(f"return a list of (layer, position, latent) tuples, not a {_type(answer).__name__}")
    if len(answer) > BUDGET:
        raise CheckFailed(f"{len(answer)} latents; the budget is {BUDGET}")
    n_layers, pos = replacement.model.cfg.n_layers, len(replacement.tokens)
    out = []
    for item in answer:
        if _type(item) not in (list, tuple) or len(item) != 3 or any(_type(v) is not int for v in item):
            raise CheckFailed(f"{item!r} is not a (layer, position, latent) triple of Python ints")
        layer, position, latent = item
        d_sae = replacement.transcoders[layer].cfg.d_sae if 0 <= layer < n_layers else 0
        if not (0 <= layer < n_layers and 0 <= position < pos and 0 <= latent < d_sae):
            raise CheckFailed(f"{item!r} is out of range: layers 0..{n_layers - 1}, positions 0..{pos - 1}, "
                              f"latents 0..{d_sae - 1}")
        out.append((layer, position, latent))
    if len(set(out)) != len(out):
        raise CheckFailed("a latent is listed twice")
    return out


def replacement(model, transcoders, person: corpus.Person, template: str) -> ag.LocalReplacement:
    """The local replacement model of the person's recall prompt: what an answer is checked
    against (its active latents) and measured with (its error vectors)."""
    return ag.LocalReplacement(model, transcoders, ag.recall_prompt(model, person, template))


def removed_share(replacement: ag.LocalReplacement, city: str, nodes: Sequence[tuple[int, int, int]]) -> float:
    """The share of the preference for `city` on the replacement's prompt that ablating
    `nodes` removes in the real model (errors frozen, attention and LayerNorm live)."""
    target = ag.city_target(city)
    base = float(target(replacement.clean_logits))
    ablated = float(target(ref.ablate_latents(replacement.model, replacement.transcoders, replacement.tokens,
                                              replacement.errors, list(nodes))))
    return (base - ablated) / base


def mean_share(shares: Sequence[float]) -> float:
    return float(np.mean(shares))
