"""Chapter 1's graded investigation: toy models trained on data whose recipe is a secret.

Each `MysteryRecipe` fixes a toy model's sizes and its data: every feature's importance,
its probability of being active, and pairs of features that are never active together
(*anticorrelated*: when both are drawn active, one of them, chosen by a fair coin, is
switched off). `train_recipes` trains the ReLU output model of chapter 1 on each recipe,
on the CPU from a fixed seed; the trained weights are committed
(`checkpoints/mystery_models.safetensors`, with a digest of the recipes and no recipe), so
`mystery_model(i)` loads them in milliseconds and no grading ever trains. The learner sees
recipe 0's model; the hidden test runs the learner's `investigate_toy_model` on all of
them, each with its features permuted and its hidden space rotated at random (the same
model up to a symmetry: the truth, measured on those weights, is permuted with it), so an
answer looked up by recipe or by shape is wrong.

    python -m mechlab.superposition.investigation train   # retrain all four, overwrite the checkpoint
    python -m mechlab.superposition.investigation check   # retrain in memory, compare with the committed one

The truth is measured on the trained weights, never taken from the recipe: a feature is
represented when its column has norm near 1 rather than near 0, two represented features
form an antipodal pair when their directions are opposite (cosine near -1), and an
antipodal pair is never active together when its biases are about 0: an independent pair
whose features fire together cancels out (x_i - x_j), and the model guards against that by
raising the pair's ReLU threshold, a pair that never co-occurs needs no guard (a signal
measured over the recipes' sparsities by training variants: at p >= 0.4 the two kinds lie
0.00 and 0.03-0.11 apart; at p <= 0.2 they overlap, so no recipe here has such pairs). The
recipes are chosen so that every measured value lies far from those boundaries
(`MARGINS`; tests/test_superposition_checks.py checks it, and that the measured exclusive
pairs are the recipe's), so any sensible threshold gives the same answer, and `judge`
accepts every answer that a threshold inside the margins gives.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
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
    # 0, the one the learner investigates: a dense important feature with a dimension of its own, a dense
    # unimportant one dropped, and sparse features paired on the last dimension: one pair never active
    # together, the others independent
    MysteryRecipe(7, 3, (1.0, 0.8, 0.9, 0.2, 0.85, 0.7, 0.75), (1.0, 0.4, 0.4, 1.0, 0.4, 0.4, 0.4), ((1, 4),)),
    # 1: five sparse features on a pentagon; a sixth, unimportant, dropped
    MysteryRecipe(6, 2, (1.0, 0.9, 0.95, 0.05, 0.85, 0.92), (0.03,) * 6),
    # 2: three pairs never active together, a dense important feature, a dense unimportant one
    MysteryRecipe(8, 4, (0.6, 0.9, 0.5, 0.2, 0.8, 1.0, 0.7, 0.4), (0.3, 0.3, 0.3, 1.0, 0.3, 1.0, 0.3, 0.3),
                  ((1, 6), (2, 4), (0, 7))),
    # 3: dense features, no superposition: the three most important keep a dimension each
    MysteryRecipe(6, 3, (0.5, 0.9, 0.3, 1.0, 0.7, 0.8), (1.0,) * 6),
    # 4: three antipodal pairs in three dimensions, one of them never active together
    MysteryRecipe(6, 3, (0.9, 1.0, 0.8, 0.85, 0.95, 0.7), (0.5,) * 6, ((2, 4),)),
    # 5: three antipodal pairs in three dimensions, none of them exclusive: every pair is independent
    MysteryRecipe(6, 3, (1.0, 0.9, 0.8, 0.95, 0.85, 1.0), (0.4,) * 6),
)

SEED = 0
STEPS = 2000  # Adam steps, batch 1024, lr 1e-2: about 5 seconds on one CPU core for all recipes together
RESTARTS = 4  # starts per recipe; the one with the lowest loss is kept (some starts end in a worse optimum)

REPRESENTED_NORM = 0.5  # a represented feature's column has norm about 1, a dropped one about 0
ANTIPODAL_COSINE = -0.9  # an antipodal pair's directions have cosine about -1
PAIR_BIAS = 0.01  # an antipodal pair's mean bias: about 0 when its features are never active together, above
# 0.02 when they are independent (the model raises the ReLU threshold against the two cancelling out)
# Every measured norm, every cosine between represented features and every antipodal pair's mean bias
# lies outside these bands, so a threshold anywhere inside them gives the same answer (and `judge`
# accepts any such answer).
MARGINS = {"norm": (0.3, 0.7), "cosine": (-0.97, -0.85), "pair bias": (0.005, 0.02)}


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


CHECKPOINT = Path(__file__).parent / "checkpoints" / "mystery_models.safetensors"


def recipes_digest() -> str:
    """What the checkpoint was trained from (the recipes and the training settings), as a
    digest: the checkpoint names no recipe a learner could read."""
    return hashlib.sha256(repr((RECIPES, SEED, STEPS, RESTARTS)).encode()).hexdigest()


@functools.cache
def _trained() -> tuple[tuple[Tensor, Tensor], ...]:
    """The committed weights; a checkpoint trained from other recipes is refused."""
    with safe_open(str(CHECKPOINT), framework="pt") as f:
        digest = (f.metadata() or {}).get("recipes_sha256")
        if digest != recipes_digest():
            raise RuntimeError(f"{CHECKPOINT.name} was trained from other recipes than RECIPES: retrain it with "
                               "`python -m mechlab.superposition.investigation train`")
        return tuple((f.get_tensor(f"W_{k}"), f.get_tensor(f"b_{k}")) for k in range(len(RECIPES)))


def train_and_save(path: Path = CHECKPOINT) -> float:
    """Train every recipe and write the checkpoint; returns the CPU seconds it took."""
    start = time.process_time()
    models = train_recipes(RECIPES)
    seconds = time.process_time() - start
    tensors = {f"{kind}_{k}": t.contiguous() for k, model in enumerate(models) for kind, t in zip("Wb", model)}
    save_file(tensors, str(path), metadata={"recipes_sha256": recipes_digest(), "torch": torch.__version__,
                                            "cpu_seconds": f"{seconds:.1f}"})
    return seconds


def same_findings(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor], atol: float = 0.05) -> list[str]:
    """How two trainings of one recipe differ in what matters: the judged findings, and the
    norms and cosines within `atol` (empty: they agree)."""
    problems = []
    if judge(*a) != judge(*b):
        problems.append("the judged features or pairs differ")
    for what, x, y in zip(("norms", "cosines"), geometry(a[0]), geometry(b[0])):
        if not torch.allclose(x, y, atol=atol):
            problems.append(f"{what} differ by up to {(x - y).abs().max():.3f}")
    return problems


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


def disguised(W: Float[Tensor, "hidden feature"], b: Float[Tensor, "feature"], generator: torch.Generator
              ) -> tuple[Tensor, Tensor, Tensor]:
    """The same model up to its symmetries: features permuted, hidden space rotated
    (W' = Q W P, b' = P b; x -> ReLU(W'ᵀW' x + b') is the model on permuted features).
    Returns (W', b', perm), feature i of the new model being feature perm[i] of the old."""
    n_hidden, n_features = W.shape
    perm = torch.randperm(n_features, generator=generator)
    Q, _ = torch.linalg.qr(torch.randn(n_hidden, n_hidden, generator=generator, dtype=torch.float64))
    return (Q.to(W.dtype) @ W[:, perm]).contiguous(), b[perm].clone(), perm


def geometry(W: Float[Tensor, "hidden feature"]) -> tuple[Tensor, Tensor]:
    """Each feature's norm ‖W_i‖ and the cosines cos(W_i, W_j) between all features."""
    norms = W.norm(dim=0)
    W_hat = W / norms.clamp_min(1e-8)
    return norms, W_hat.T @ W_hat


def pair_bias(b: Float[Tensor, "feature"], i: int, j: int) -> float:
    """The mean of a pair's two biases, (b_i + b_j) / 2."""
    return float(b[i] + b[j]) / 2


def judge(W: Float[Tensor, "hidden feature"], b: Float[Tensor, "feature"]) -> dict[str, dict]:
    """What the measurement says, with the margins: for features, {i: True (represented: norm
    above the band), False (dropped: below), None (inside the band: either answer)}; for
    pairs of represented features, {(i, j): True (cosine below the band), False (above),
    None (inside)}, pairs with a dropped feature never antipodal; and for pairs, whether
    they are never active together, {(i, j): True (antipodal, mean bias below the band),
    False (not antipodal, or mean bias above it), None (inside either band)}."""
    norms, cos = geometry(W)
    lo, hi = MARGINS["norm"]
    features = {i: True if v > hi else False if v < lo else None for i, v in enumerate(norms.tolist())}
    c_lo, c_hi = MARGINS["cosine"]
    b_lo, b_hi = MARGINS["pair bias"]
    pairs, exclusive = {}, {}
    for i in range(W.shape[1]):
        for j in range(i + 1, W.shape[1]):
            if features[i] is False or features[j] is False:
                pairs[(i, j)] = False
            else:
                c = float(cos[i, j])
                pairs[(i, j)] = True if c < c_lo else False if c > c_hi else None
            s = pair_bias(b, i, j)
            exclusive[(i, j)] = pairs[(i, j)] and (True if s < b_lo else False if s > b_hi else None)
    return {"features": features, "pairs": pairs, "exclusive": exclusive}


def main() -> None:
    parser = argparse.ArgumentParser(description="chapter 1's mystery models")
    parser.add_argument("command", choices=["train", "check"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # the committed checkpoint was trained on one thread
    if args.command == "train":
        seconds = train_and_save()
        _trained.cache_clear()
        print(f"trained {len(RECIPES)} mystery models in {seconds:.1f} s of CPU time: {CHECKPOINT}")
        return
    retrained = train_recipes(RECIPES)
    for k, (model, committed) in enumerate(zip(retrained, _trained())):
        problems = same_findings(model, committed)
        print(f"mystery model {k}: {'as committed' if not problems else '; '.join(problems)}")
        if problems:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
