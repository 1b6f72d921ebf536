"""Chapter 1's graded investigation: toy models trained on data whose recipe is a secret.

Each `MysteryRecipe` fixes a toy model's sizes and its data: every feature's importance,
its probability of being active, and pairs of features that are never active together
(*anticorrelated*: when both are drawn active, one of them, chosen by a fair coin, is
switched off). `mystery_model(i)` trains the ReLU output model of chapter 1 on recipe
`i`, on the CPU from a fixed seed, and returns its weights; the learner sees recipe 0's
model, and the hidden test runs the learner's `investigate_toy_model` on all of them.

The truth is measured on the trained weights, never taken from the recipe: a feature is
represented when its column has norm near 1 rather than near 0, and two represented
features form an antipodal pair when their directions are opposite (cosine near -1). The
recipes are chosen so that every measured value lies far from those boundaries
(`MARGINS`; tests/test_superposition_checks.py checks it), so any sensible threshold gives
the same answer, and `judge` accepts every answer that a threshold inside the margins gives.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class MysteryRecipe:
    """The secret data of one mystery model."""

    n_features: int
    n_hidden: int
    importance: tuple[float, ...]  # I_i, one per feature
    feature_probability: tuple[float, ...]  # p_i, one per feature
    exclusive_pairs: tuple[tuple[int, int], ...] = ()  # never active together
    correlated_pairs: tuple[tuple[int, int], ...] = ()  # always active together: (i, j): j is on exactly when i is


RECIPES: tuple[MysteryRecipe, ...] = (
    # 0, the one the learner investigates: three anticorrelated pairs, a dense important feature, a dense unimportant one
    MysteryRecipe(8, 4, (0.6, 0.9, 0.5, 0.2, 0.8, 1.0, 0.7, 0.4), (0.3, 0.3, 0.3, 1.0, 0.3, 1.0, 0.3, 0.3),
                  ((1, 6), (2, 4), (0, 7))),
    # 1: five sparse features on a pentagon; a sixth, unimportant, dropped
    MysteryRecipe(6, 2, (1.0, 0.9, 0.95, 0.05, 0.85, 0.92), (0.03,) * 6),
    # 2: two anticorrelated pairs and three dense features, of which only the most important fits
    MysteryRecipe(7, 3, (0.4, 1.0, 0.9, 0.3, 0.8, 0.6, 0.5), (0.3, 1.0, 0.3, 1.0, 0.3, 0.3, 1.0),
                  ((0, 5), (2, 4))),
    # 3: dense features, no superposition: the three most important keep a dimension each
    MysteryRecipe(6, 3, (0.5, 0.9, 0.3, 1.0, 0.7, 0.8), (1.0,) * 6),
)

SEED = 0
STEPS = 2000  # Adam steps, batch 1024, lr 1e-2: about 5 seconds on one CPU core for all recipes together
RESTARTS = 4  # starts per recipe; the one with the lowest loss is kept (some starts end in a worse optimum)

REPRESENTED_NORM = 0.5  # a represented feature's column has norm about 1, a dropped one about 0
ANTIPODAL_COSINE = -0.9  # an antipodal pair's directions have cosine about -1
# Every measured norm and every cosine between represented features lies outside these bands, so a
# threshold anywhere inside them gives the same answer (and `judge` accepts any such answer).
MARGINS = {"norm": (0.3, 0.7), "cosine": (-0.97, -0.85)}


def sample_features(batch_size: int, recipes: tuple[MysteryRecipe, ...], generator: torch.Generator,
                    n_features: int) -> Float[Tensor, "batch recipe feature"]:
    """Sparse features for every recipe (padded with zeros to `n_features`): U[0, 1) with the
    feature's probability, else 0; in each exclusive pair at most one active, and in each
    correlated pair (i, j) feature j active exactly when i is (their values stay independent)."""
    p = torch.zeros(len(recipes), n_features)
    for k, recipe in enumerate(recipes):
        p[k, : recipe.n_features] = torch.tensor(recipe.feature_probability)
    shape = (batch_size, len(recipes), n_features)
    values = torch.rand(shape, generator=generator)
    active = torch.rand(shape, generator=generator) < p
    coin = torch.rand(batch_size, len(recipes), generator=generator) < 0.5
    for k, recipe in enumerate(recipes):
        for i, j in recipe.exclusive_pairs:
            both = active[:, k, i] & active[:, k, j]
            active[:, k, i] &= ~(both & coin[:, k])
            active[:, k, j] &= ~(both & ~coin[:, k])
        for i, j in recipe.correlated_pairs:
            active[:, k, j] = active[:, k, i]
    return torch.where(active, values, 0.0)


@functools.cache
def _trained() -> tuple[tuple[Tensor, Tensor], ...]:
    return train_recipes(RECIPES)


def train_recipes(recipes: tuple[MysteryRecipe, ...], seed: int = SEED) -> tuple[tuple[Tensor, Tensor], ...]:
    """Train a toy model on each recipe (RESTARTS starts each, in one batch, padded to the
    largest sizes with masked weights), on the CPU, and keep each recipe's best start:
    ((W [hidden, feature], b [feature]), ...), one per recipe."""
    n, m, r = max(x.n_features for x in recipes), max(x.n_hidden for x in recipes), RESTARTS
    instances = tuple(x for x in recipes for _ in range(r))
    mask = torch.zeros(len(instances), m, n)
    importance = torch.zeros(len(instances), n)
    for k, recipe in enumerate(instances):
        mask[k, : recipe.n_hidden, : recipe.n_features] = 1.0
        importance[k, : recipe.n_features] = torch.tensor(recipe.importance)
    generator = torch.Generator().manual_seed(seed)
    W = (torch.randn(len(instances), m, n, generator=generator) * mask
         * math.sqrt(2 / (m + n))).requires_grad_(True)
    b = torch.zeros(len(instances), n, requires_grad=True)

    def loss(x: Tensor) -> Tensor:
        Wm = W * mask
        h = torch.einsum("khf,bkf->bkh", Wm, x)
        x_hat = torch.relu(torch.einsum("khf,bkh->bkf", Wm, h) + b * mask[:, 0])
        return (importance * (x - x_hat) ** 2).sum(-1).mean(0)

    optimizer = torch.optim.Adam([W, b], lr=1e-2)
    for _ in range(STEPS):
        total = loss(sample_features(1024, instances, generator, n)).sum()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    with torch.no_grad():
        final = loss(sample_features(8192, instances, torch.Generator().manual_seed(seed + 1), n))
    best = final.reshape(len(recipes), r).argmin(-1)
    W, b = (W * mask).detach(), b.detach()
    return tuple((W[k * r + int(best[k]), : x.n_hidden, : x.n_features].clone(),
                  b[k * r + int(best[k]), : x.n_features].clone()) for k, x in enumerate(recipes))


def mystery_model(index: int = 0) -> tuple[Float[Tensor, "hidden feature"], Float[Tensor, "feature"]]:
    """The trained weights (W, b) of mystery model `index` (fresh copies, on the CPU)."""
    W, b = _trained()[index]
    return W.clone(), b.clone()


def geometry(W: Float[Tensor, "hidden feature"]) -> tuple[Tensor, Tensor]:
    """Each feature's norm ‖W_i‖ and the cosines cos(W_i, W_j) between all features."""
    norms = W.norm(dim=0)
    W_hat = W / norms.clamp_min(1e-8)
    return norms, W_hat.T @ W_hat


def judge(W: Float[Tensor, "hidden feature"]) -> dict[str, dict]:
    """What the measurement says, with the margins: for features, {i: True (represented: norm
    above the band), False (dropped: below), None (inside the band: either answer)}; for
    pairs of represented features, {(i, j): True (cosine below the band), False (above),
    None (inside)}. Pairs with a dropped feature are never antipodal pairs."""
    norms, cos = geometry(W)
    lo, hi = MARGINS["norm"]
    features = {i: True if v > hi else False if v < lo else None for i, v in enumerate(norms.tolist())}
    c_lo, c_hi = MARGINS["cosine"]
    pairs = {}
    for i in range(W.shape[1]):
        for j in range(i + 1, W.shape[1]):
            if features[i] is False or features[j] is False:
                pairs[(i, j)] = False
            else:
                c = float(cos[i, j])
                pairs[(i, j)] = True if c < c_lo else False if c > c_hi else None
    return {"features": features, "pairs": pairs}
