"""Checks for chapter 1 (toy models of superposition): `check_x` visible, `grade_x` hidden.

Every exercise is tested on inputs this module builds itself (seeded CPU
generators), against `mechlab.superposition.reference`. Deterministic functions
are compared entry by entry (float32, atol 1e-5, rtol 1e-4 unless stated); a
wrong answer is also compared with the outputs of the known mistakes, so the
message can say which one it looks like. Random and trained outputs are graded
by properties with stated tolerances: binomial bounds on sparsity, the final
loss of the learner's loop against the reference loop's from the same start.

Statistics of a learner's tensors are computed in NumPy on a copy taken with
functions bound at import, so rebinding torch methods in the kernel changes
nothing here (see `mechlab.checks`).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mechlab.checks import (
    Case, CheckFailed, CountedCalls, call_learner, check_and_grade, checked_array,
    compare_function, passed, randn, seeded, Truth,
)
from mechlab.runtime import quiet
from mechlab.superposition import investigation, reference as ref, toy_models as sp

from mechlab.pristine import Parameter as _Parameter, Tensor as _Tensor, clone as _clone, detach as _detach
from mechlab.pristine import numpy as _numpy, to as _to, type_ as _type


# ---------------------------------------------------------------- 1. toy_forward


def _toy_cases(specs: Sequence[tuple[int, int, int, int, int]]) -> list[Case]:
    cases = []
    for seed, batch, inst, hidden, feat in specs:
        W = randn(seed, inst, hidden, feat) / math.sqrt(hidden)
        b = 0.3 * randn(seed + 100, inst, feat)
        x = torch.rand(batch, inst, feat, generator=seeded(seed + 200))
        cases.append(Case(f"seed={seed}, batch={batch}, instance={inst}, hidden={hidden}, feature={feat}", (W, b, x)))
    return cases


_TOY_HAND = Case("hand case: W=[[1,-1]], b=[0,0.2], x=[1,0.5] -> [0.5, 0]",
                 (torch.tensor([[[1.0, -1.0]]]), torch.tensor([[0.0, 0.2]]), torch.tensor([[[1.0, 0.5]]])))

_TOY_MISTAKES = [
    ("the output needs the ReLU: torch.relu(Wᵀ W x + b).",
     lambda W, b, x: torch.einsum("khf,bkh->bkf", W, torch.einsum("khf,bkf->bkh", W, x)) + b),
    ("the bias b is added inside the ReLU, after mapping back up with Wᵀ.",
     lambda W, b, x: torch.relu(torch.einsum("khf,bkh->bkf", W, torch.einsum("khf,bkf->bkh", W, x)))),
    ("add b before the ReLU, not after.",
     lambda W, b, x: torch.relu(torch.einsum("khf,bkh->bkf", W, torch.einsum("khf,bkf->bkh", W, x))) + b),
    ("W is [instance, hidden, feature]: h = W x sums over `feature`; it looks like you used Wᵀ first.",
     lambda W, b, x: torch.relu(torch.einsum("kfh,bkh->bkf", W, torch.einsum("kfh,bkf->bkh", W, x)) + b)),
]


def _check_toy_forward(fn: Callable, hidden: bool) -> None:
    specs = [(1, 16, 3, 2, 5), (2, 8, 4, 3, 3), (3, 1, 1, 1, 1), (4, 32, 2, 6, 4)] if hidden else [(0, 4, 2, 2, 5)]
    cases = [_TOY_HAND, *_toy_cases(specs)]
    if hidden:
        W, b, _ = cases[1].args
        cases.append(Case("all-zero input (output should be ReLU(b))", (W, b, torch.zeros(5, 3, 5))))
    compare_function(fn, ref.toy_forward, cases, name="toy_forward", mistakes=_TOY_MISTAKES)


check_toy_forward, grade_toy_forward = check_and_grade("toy_forward", _check_toy_forward)


# ---------------------------------------------------------------- 2. generate_batch


def _generate_properties(fn: Callable, batch: int, p: list[float], n_features: int, seed: int) -> None:
    name = "generate_batch"
    desc = f"batch_size={batch}, feature_probability={p}, n_features={n_features}"
    prob = torch.tensor(p)
    out = call_learner(fn, name, desc, (batch, prob.clone(), n_features, seeded(seed)))
    x = checked_array(out, f"{name}({desc})", (batch, len(p), n_features))
    if out.device != prob.device:
        raise CheckFailed(f"{name}({desc}): output on {out.device}, expected feature_probability's device {prob.device}")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() >= 1:
        raise CheckFailed(f"{name}({desc}): values must lie in [0, 1); got min {x.min():.3g}, max {x.max():.3g}")
    active = x > 0
    for k, pk in enumerate(p):
        n = active[:, k].size
        frac = active[:, k].mean()
        tol = 5 * math.sqrt(pk * (1 - pk) / n) + 2e-3  # 5 binomial standard deviations
        if abs(frac - pk) > tol:
            hint = ("a feature should be active when its uniform draw is *below* p."
                    if abs(frac - (1 - pk)) <= tol else "each entry is active with probability p of its instance.")
            raise CheckFailed(f"{name}({desc}): instance {k} has {frac:.4f} of its entries non-zero, "
                              f"expected {pk} ± {tol:.4f}\nHint: {hint}")
        if pk > 0 and active[:, k].sum() >= 200:
            nonzero = x[:, k][active[:, k]]
            mean_tol = 5 * math.sqrt(1 / 12 / nonzero.size)
            if abs(nonzero.mean() - 0.5) > mean_tol:
                raise CheckFailed(f"{name}({desc}): instance {k}: the non-zero values have mean {nonzero.mean():.4f}, "
                                  f"expected 0.5 ± {mean_tol:.4f} (uniform on [0, 1))\nHint: draw the values and "
                                  "the active/inactive decision from two separate uniform tensors.")
        if 0.2 <= pk <= 0.8 and n_features > 1 and batch >= 500:
            # independence: across batch elements and across features
            per_column = active[:, k].mean(axis=0)  # [feature]
            col_tol = 6 * math.sqrt(pk * (1 - pk) / batch)
            if np.abs(per_column - pk).max() > col_tol:
                raise CheckFailed(f"{name}({desc}): instance {k}: feature {int(np.abs(per_column - pk).argmax())} is "
                                  f"active in {per_column[np.abs(per_column - pk).argmax()]:.3f} of the batch, expected "
                                  f"{pk} ± {col_tol:.3f}\nHint: draw a separate decision for every batch element.")
            both = (active[:, k, 0] & active[:, k, 1]).mean()
            if abs(both - pk * pk) > 6 * math.sqrt(pk * pk / batch):
                raise CheckFailed(f"{name}({desc}): instance {k}: features 0 and 1 are both active in {both:.3f} of "
                                  f"the batch, expected about {pk * pk:.3f}\nHint: features are active independently.")
    again = call_learner(fn, name, desc, (batch, prob.clone(), n_features, seeded(seed)))
    if _type(again) not in (_Tensor, _Parameter) or not np.array_equal(checked_array(again, name, x.shape), x):
        raise CheckFailed(f"{name}({desc}): two calls with generators seeded alike gave different batches\n"
                          "Hint: draw all randomness from `generator` (torch.rand(..., generator=generator)).")


# (batch_size, feature_probability, n_features, seed)
_GENERATE_CHECK = [(2000, [1.0, 0.5, 0.0], 8, 0)]
_GENERATE_GRADE = [
    (4000, [0.05, 0.3, 1.0, 0.0, 0.7], 10, 1),
    (3000, [0.5], 1, 2),  # one instance, one feature
    (1, [0.0, 1.0], 3, 3),  # batch of one
    (20000, [0.02], 4, 4),  # very sparse
]


def _check_generate_batch(fn: Callable, hidden: bool) -> None:
    for batch, p, n_features, seed in _GENERATE_GRADE if hidden else _GENERATE_CHECK:
        _generate_properties(fn, batch, p, n_features, seed=seed)
    if not hidden:
        passed("generate_batch has the right shape, range, sparsity and mean (statistical check)")
        return
    desc = "two different seeds"
    a = call_learner(fn, "generate_batch", desc, (64, torch.tensor([0.5, 0.5]), 4, seeded(5)))
    b = call_learner(fn, "generate_batch", desc, (64, torch.tensor([0.5, 0.5]), 4, seeded(6)))
    if np.array_equal(checked_array(a, "generate_batch", (64, 2, 4)), checked_array(b, "generate_batch", (64, 2, 4))):
        raise CheckFailed("generate_batch gave the same batch for generators with different seeds\n"
                          "Hint: draw all randomness from `generator`.")
    passed(f"generate_batch passes the statistical tests on {len(_GENERATE_GRADE)} configurations")


check_generate_batch, grade_generate_batch = check_and_grade("generate_batch", _check_generate_batch)


# ---------------------------------------------------------------- 3. importance_weighted_loss


def _loss_cases(specs: Sequence[tuple[int, int, int, int]]) -> list[Case]:
    cases = []
    for seed, batch, inst, feat in specs:
        x = torch.rand(batch, inst, feat, generator=seeded(seed))
        x_hat = torch.rand(batch, inst, feat, generator=seeded(seed + 1))
        importance = 0.9 ** torch.arange(feat, dtype=torch.float32) * torch.rand(inst, 1, generator=seeded(seed + 2))
        cases.append(Case(f"seed={seed}, batch={batch}, instance={inst}, feature={feat}", (x, x_hat, importance)))
    return cases


_LOSS_HAND = Case("hand case: x=[1,0], x_hat=[0.5,1], importance=[1,0.5] -> 0.75",
                  (torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.5, 1.0]]]), torch.tensor([[1.0, 0.5]])))

_LOSS_MISTAKES = [
    ("weight each feature's squared error by its importance.", lambda x, xh, I: ((x - xh) ** 2).sum(-1).mean(0)),
    ("sum over features (the loss is Σ_i I_i (x_i - x'_i)²), then take the mean over the batch.",
     lambda x, xh, I: (I * (x - xh) ** 2).mean(-1).mean(0)),
    ("take the mean over the batch, not the sum.", lambda x, xh, I: (I * (x - xh) ** 2).sum(-1).sum(0)),
    ("the error is squared: (x - x_hat)**2.", lambda x, xh, I: (I * (x - xh).abs()).sum(-1).mean(0)),
]


def _check_importance_weighted_loss(fn: Callable, hidden: bool) -> None:
    specs = [(1, 32, 3, 5), (2, 1, 1, 1), (3, 7, 5, 2), (4, 64, 1, 20)] if hidden else [(0, 4, 2, 3)]
    cases = [_LOSS_HAND, *_loss_cases(specs)]
    if hidden:
        x = torch.rand(8, 2, 4, generator=seeded(9))
        cases.append(Case("perfect reconstruction (loss 0)", (x, x.clone(), torch.ones(2, 4))))
    compare_function(fn, ref.importance_weighted_loss, cases, name="importance_weighted_loss", mistakes=_LOSS_MISTAKES)


check_importance_weighted_loss, grade_importance_weighted_loss = check_and_grade("importance_weighted_loss",
                                                                                 _check_importance_weighted_loss)


# ---------------------------------------------------------------- 4. train_toy_models

# (seed, instances, features, hidden, steps, batch_size, lr)
_TRAIN_CHECK = (0, 3, 5, 2, 150, 128, 1e-2)
_TRAIN_GRADE = [(1, 4, 5, 2, 250, 256, 1e-2), (2, 2, 6, 3, 200, 128, 3e-3)]
_reference_runs: dict[tuple, tuple] = {}
_EARLY_STEPS = 10  # how many of a loop's first losses must follow the reference loop's


def _loss_history(history, label: str, shape: tuple) -> np.ndarray:
    """A training loop's returned history, checked: a detached, finite CPU tensor of `shape`."""
    h = checked_array(history, label, shape, detached=True)
    if history.device.type != "cpu":
        raise CheckFailed(f"{label} is on {history.device}; return it on the CPU (`.cpu()`)")
    if not np.isfinite(h).all():
        raise CheckFailed(f"{label} contains NaN or inf")
    return h


def _follows_reference(history: np.ndarray, reference: np.ndarray, label: str,
                       known: Sequence[tuple[str, Callable[[], np.ndarray]]] = ()) -> None:
    """The exercise fixes the loop exactly (one optimiser for the whole run, one batch per
    step, the loss recorded before the step), and the inputs here are seeded CPU draws, so
    a correct loop retraces the reference loop's first losses up to float rounding
    (rtol 2e-4). This catches what the final loss can hide, such as a new optimiser made
    every step, which forgets Adam's running averages and still trains."""
    n = min(_EARLY_STEPS, len(reference))
    got, expected = history[:n].reshape(n, -1), reference[:n].reshape(n, -1)
    off = ~(np.abs(got - expected) <= 1e-6 + 2e-4 * np.abs(expected))
    if off.any():
        step = int(np.argwhere(off)[0][0])
        cause = _known_loop_mistake(history, known)
        if cause:
            raise CheckFailed(
                f"{label}: the loss at step {step} is {np.round(got[step], 5).tolist()}, but the reference loop, "
                f"run from the same start with the same random draws, has {np.round(expected[step], 5).tolist()}; "
                f"your first {n} losses are exactly those of a loop that {cause}")
        raise CheckFailed(
            f"{label}: the loss at step {step} is {np.round(got[step], 5).tolist()}, but the reference loop, run "
            f"from the same start with the same random draws, has {np.round(expected[step], 5).tolist()} (the "
            f"first {n} steps must agree to 0.02%)\nHint: make the optimiser once, before the loop (a new Adam "
            "each step forgets its running averages); draw exactly one batch per step; record the loss "
            "computed before the step.")


def _toy_setup(config: tuple):
    seed, inst, feat, hidden, *_ = config
    W = randn(seed, inst, hidden, feat) * math.sqrt(2 / (hidden + feat))
    b = torch.zeros(inst, feat)
    p = torch.logspace(0, -1, inst)  # dense to p = 0.1
    importance = (0.9 ** torch.arange(feat, dtype=torch.float32)).expand(inst, feat).clone()
    return W, b, p, importance


def _toy_eval(W, b, p, importance, seed: int = 12345) -> np.ndarray:
    with torch.no_grad():
        x = ref.generate_batch(8192, p, W.shape[-1], seeded(seed))
        return _numpy(ref.importance_weighted_loss(x, ref.toy_forward(W, b, x), importance)).astype(np.float64)


def _reference_toy_run(config: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(loss per instance after training, loss history) of the reference loop."""
    if config not in _reference_runs:
        seed, _, _, _, steps, batch, lr = config
        W, b, p, importance = _toy_setup(config)
        history = ref.train_toy_models(W, b, p, importance, steps=steps, batch_size=batch, lr=lr,
                                       generator=seeded(seed + 1))
        _reference_runs[config] = (_toy_eval(W.detach(), b.detach(), p, importance),
                                   _numpy(history).astype(np.float64))
    return _reference_runs[config]


def _known_loop_mistake(history: np.ndarray, known: Sequence[tuple[str, Callable[[], np.ndarray]]]) -> str | None:
    """The known mistake whose loop, replayed from the same start, has the same first losses."""
    for cause, early_losses in known:
        mistaken = early_losses()
        n = len(mistaken)
        got, mistaken = history[:n].reshape(n, -1), mistaken.reshape(n, -1)
        if len(history) >= n and (np.abs(got - mistaken) <= 1e-6 + 2e-4 * np.abs(mistaken)).all():
            return cause
    return None


def _toy_early_losses(config: tuple, *, zero_grad: bool = True, adam_once: bool = True) -> np.ndarray:
    """The first _EARLY_STEPS losses of the reference loop from the config's start, or of the
    loop with a known mistake: no optimizer.zero_grad() (gradients pile up), or a new Adam
    every step (its running averages forgotten)."""
    seed, _, _, _, steps, batch, lr = config
    W, b, p, importance = _toy_setup(config)
    W.requires_grad_(True), b.requires_grad_(True)
    generator, optimizer, losses = seeded(seed + 1), torch.optim.Adam([W, b], lr=lr), []
    for _ in range(min(_EARLY_STEPS, steps)):
        if not adam_once:
            optimizer = torch.optim.Adam([W, b], lr=lr)
        x = ref.generate_batch(batch, p, W.shape[-1], generator)
        loss = ref.importance_weighted_loss(x, ref.toy_forward(W, b, x), importance)
        if zero_grad:
            optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        losses.append(_numpy(_detach(loss)))
    return np.stack(losses).astype(np.float64)


def _toy_known_loop_mistakes(config: tuple) -> list[tuple[str, Callable[[], np.ndarray]]]:
    return [("never calls optimizer.zero_grad(): PyTorch adds each backward()'s gradients to the last ones, so "
             "from the second step on every update uses the sum of all gradients so far.\nHint: "
             "optimizer.zero_grad() before loss.sum().backward(), every step.",
             lambda: _toy_early_losses(config, zero_grad=False)),
            ("makes a new Adam every step, which forgets its running averages.\nHint: make the optimiser once, "
             "before the loop.", lambda: _toy_early_losses(config, adam_once=False))]


def _check_toy_run(fn: Callable, config: tuple) -> None:
    name = "train_toy_models"
    seed, inst, feat, hidden, steps, batch, lr = config
    desc = f"instance={inst}, feature={feat}, hidden={hidden}, steps={steps}, batch_size={batch}, lr={lr}"
    W, b, p, importance = _toy_setup(config)
    W0, b0 = _clone(W), _clone(b)
    forward, generate, loss_fn = CountedCalls(ref.toy_forward), CountedCalls(ref.generate_batch), CountedCalls(ref.importance_weighted_loss)
    history = call_learner(fn, name, desc, (W, b, p, importance),
                           dict(steps=steps, batch_size=batch, lr=lr, generator=seeded(seed + 1),
                                forward=forward, generate=generate, loss_fn=loss_fn))
    label = f"{name}({desc}) history"
    h = _loss_history(history, label, (steps, inst))
    for piece, arg in ((generate, "generate"), (forward, "forward"), (loss_fn, "loss_fn")):
        piece.expect(arg, steps, name)
    if np.array_equal(_numpy(_detach(W)), _numpy(W0)) or np.array_equal(_numpy(_detach(b)), _numpy(b0)):
        which = "W" if np.array_equal(_numpy(_detach(W)), _numpy(W0)) else "b"
        raise CheckFailed(f"{name}({desc}): {which} did not change: train the tensors you are given, in place\n"
                          "Hint: torch.optim.Adam([W, b], lr=lr) and optimizer.step() every step.")
    trained, initial = _toy_eval(_detach(W), _detach(b), p, importance), _toy_eval(W0, b0, p, importance)
    ref_trained, ref_history = _reference_toy_run(config)
    start = h[0].mean()  # one batch of >= 128: within 30% of the loss on 8192 inputs
    if not 0.7 * initial.mean() <= start <= 1.3 * initial.mean():
        raise CheckFailed(f"{label}: the first step's loss (mean over instances) is {start:.4g}, but the model's "
                          f"loss at the start is "
                          f"about {initial.mean():.4g}\nHint: record loss_fn(x, forward(W, b, x), importance) "
                          "(one value per instance) at every step.")
    # Tolerance: 10% (+0.002) on the mean over instances, 30% (+0.005) per instance, of the
    # reference loop's loss from the same start, both measured on the same 8192 fresh inputs.
    if trained.mean() > 1.10 * ref_trained.mean() + 2e-3 or (trained > 1.3 * ref_trained + 5e-3).any():
        cause = _known_loop_mistake(h, _toy_known_loop_mistakes(config))
        if cause:
            raise CheckFailed(f"{name}({desc}): after training, the loss per instance is "
                              f"{np.round(trained, 4).tolist()}; the reference loop reaches "
                              f"{np.round(ref_trained, 4).tolist()} from the same start. Your first {_EARLY_STEPS} "
                              f"losses are exactly those of a loop that {cause}")
        raise CheckFailed(f"{name}({desc}): after training, the loss per instance is {np.round(trained, 4).tolist()}; "
                          f"the reference loop reaches {np.round(ref_trained, 4).tolist()} from the same start "
                          f"(allowed: 10% more on average, 30% per instance)\nHint: one optimiser step per batch "
                          "on loss.sum(), optimizer.zero_grad() before backward(), and the lr you are given.")
    _follows_reference(h, ref_history, label, _toy_known_loop_mistakes(config))


def _check_train_toy_models(fn: Callable, hidden: bool) -> None:
    for config in _TRAIN_GRADE if hidden else [_TRAIN_CHECK]:
        _check_toy_run(fn, config)
    if hidden:
        passed(f"train_toy_models reaches the reference loop's loss on {len(_TRAIN_GRADE)} configurations")
    else:
        passed("train_toy_models trains: its loss comes within tolerance of the reference loop's")


check_train_toy_models, grade_train_toy_models = check_and_grade("train_toy_models", _check_train_toy_models)


# ---------------------------------------------------------------- 5. feature_norms_and_interference

_GEOMETRY_HAND = Case("hand case: columns (1,0), (0,2), (1,0) -> norms [1,2,1], interference [1,0,1]",
                      (torch.tensor([[[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]]]),))
_ZERO_COLUMN = Case("a zero column: W=[[1,0],[0,0]]", (torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]),))
_UNEQUAL = Case("hand case, unequal norms: columns (2,0), (-1,0), (0,0.5) -> norms [2,1,0.5], "
                "interference [1,4,0], dimensionality [0.8,0.2,1]",
                (torch.tensor([[[2.0, -1.0, 0.0], [0.0, 0.0, 0.5]]]),))


def _geometry_cases(specs: Sequence[tuple[int, int, int, int]]) -> list[Case]:
    cases = []
    for seed, inst, hidden, feat in specs:
        W = randn(seed, inst, hidden, feat) * (0.5 + torch.rand(inst, 1, feat, generator=seeded(seed + 1)))
        cases.append(Case(f"seed={seed}, instance={inst}, hidden={hidden}, feature={feat}", (W,)))
    W = randn(7, 3, 4, 6)
    W[1, :, 2] = 0.0
    W[2, :, :] = 0.0
    cases.append(Case("random W with zero columns (a dead feature, a dead instance)", (W,)))
    return cases


def _gram(W: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    norms = W.norm(dim=1)
    W_hat = W / norms.clamp_min(1e-8)[:, None, :] if normalise else W
    return torch.einsum("khi,khj->kij", W_hat, W)


_NORM_MISTAKES = [
    ("leave out the j = i term: Σ over j ≠ i (the diagonal of the dot products is ‖W_i‖²).",
     lambda W: (W.norm(dim=1), (_gram(W) ** 2).sum(-1))),
    ("normalise feature i's column first: Ŵ_i = W_i / ‖W_i‖ (only the first factor of the dot product).",
     lambda W: (W.norm(dim=1), (_gram(W, normalise=False) ** 2).sum(-1)
                - torch.diagonal(_gram(W, normalise=False), dim1=-2, dim2=-1) ** 2)),
    ("square the dot products before summing.",
     lambda W: (W.norm(dim=1), _gram(W).sum(-1) - torch.diagonal(_gram(W), dim1=-2, dim2=-1))),
]


def _check_feature_norms_and_interference(fn: Callable, hidden: bool) -> None:
    cases = [_GEOMETRY_HAND, _UNEQUAL, _ZERO_COLUMN]
    if hidden:
        cases += _geometry_cases([(1, 4, 2, 5), (2, 1, 1, 1), (3, 2, 5, 3), (4, 3, 8, 20)])
    compare_function(fn, ref.feature_norms_and_interference, cases, name="feature_norms_and_interference",
                     mistakes=_NORM_MISTAKES,
                     hint="norms and interference are both [instance, feature]: the norm is taken over the "
                          "`hidden` axis (dim 1). For a zero column, divide by max(‖W_i‖, 1e-8) so its direction "
                          "is 0, not NaN.")


check_feature_norms_and_interference, grade_feature_norms_and_interference = check_and_grade(
    "feature_norms_and_interference", _check_feature_norms_and_interference)


# ---------------------------------------------------------------- 6. feature_dimensionality

_DIM_HAND = Case("hand case: antipodal pair + a dedicated feature -> [0.5, 0.5, 1]",
                 (torch.tensor([[[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]]),))
_angles = torch.arange(5) * 2 * math.pi / 5
_PENTAGON = Case("a pentagon: 5 unit features in 2 dimensions -> 2/5 each",
                 (torch.stack([_angles.cos(), _angles.sin()])[None],))

_DIM_MISTAKES = [
    ("the sum in the denominator includes j = i.", lambda W: W.norm(dim=1) ** 2 / (
        (_gram(W) ** 2).sum(-1) - W.norm(dim=1) ** 2)),
    ("normalise the first factor: Ŵ_i · W_j with Ŵ_i = W_i / ‖W_i‖.",
     lambda W: W.norm(dim=1) ** 2 / (_gram(W, normalise=False) ** 2).sum(-1)),
    ("square the dot products in the denominator.", lambda W: W.norm(dim=1) ** 2 / _gram(W).sum(-1)),
]


def _check_feature_dimensionality(fn: Callable, hidden: bool) -> None:
    cases = [_DIM_HAND, _UNEQUAL, _PENTAGON, _ZERO_COLUMN]
    if hidden:
        cases += _geometry_cases([(11, 4, 2, 5), (12, 1, 1, 1), (13, 2, 6, 3), (14, 3, 10, 40)])
    compare_function(fn, ref.feature_dimensionality, cases, name="feature_dimensionality", mistakes=_DIM_MISTAKES,
                     hint="D is [instance, feature], with norms over the `hidden` axis (dim 1); a zero column "
                          "has dimensionality 0 (use torch.where on the norm), never NaN.")


check_feature_dimensionality, grade_feature_dimensionality = check_and_grade("feature_dimensionality",
                                                                             _check_feature_dimensionality)


# ---------------------------------------------------------------- 7. feature_phase

# instance 0: feature 1 dropped; 1: feature 1 dedicated (feature 0 dropped); 2: antipodal pair
_PHASE_HAND = Case("hand case: 2 features in 1 dimension, one instance per phase -> [0, 1, 2]",
                   (torch.tensor([[[1.0, 0.01]], [[0.02, 1.0]], [[1.0, -0.9]]]), 1))


# feature 0 is tiny (norm 0.1) and alone on its axis: 0, whatever its interference; the norm is tested first
_PHASE_ORDER = Case("hand case: a tiny feature alone on its axis, W=[[0.1, 0], [0, 1]] -> [0] (not represented)",
                    (torch.tensor([[[0.1, 0.0], [0.0, 1.0]]]), 0))


def _phase_cases(specs: Sequence[tuple[int, int, int, int, int, dict]]) -> list[Case]:
    """Random W whose norms and interferences stay at least 0.01 away from the thresholds."""
    cases = []
    for seed, inst, hidden, feat, feature, kwargs in specs:
        W = randn(seed, 4 * inst, hidden, feat) * torch.rand(4 * inst, 1, feat, generator=seeded(seed + 1)) * 1.5
        w = W[:, :, feature]
        norm = w.norm(dim=-1)
        dots = torch.einsum("kh,khf->kf", w / norm.clamp_min(1e-8)[:, None], W)
        dots[:, feature] = 0
        interference = (dots**2).sum(-1)
        nt, it = kwargs.get("norm_threshold", 0.5), kwargs.get("interference_threshold", 0.25)
        keep = ((norm - nt).abs() > 0.01) & ((interference - it).abs() > 0.01)
        cases.append(Case(f"seed={seed}, instance={inst}, hidden={hidden}, feature={feat}, index {feature}, {kwargs}",
                          (W[keep][:inst], feature), kwargs))
    return cases


def _norm_and_interference(W: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    norms, interference = ref.feature_norms_and_interference(W)
    return norms[:, i], interference[:, i]


def _phase_order_swapped(W, i, norm_threshold=0.5, interference_threshold=0.25):
    norm, interference = _norm_and_interference(W, i)
    return torch.where(interference < interference_threshold, 1, torch.where(norm < norm_threshold, 0, 2)).long()


def _phase_self_included(W, i, norm_threshold=0.5, interference_threshold=0.25):
    norm, interference = _norm_and_interference(W, i)
    interference = interference + norm**2
    return torch.where(norm < norm_threshold, 0, torch.where(interference < interference_threshold, 1, 2)).long()


_PHASE_MISTAKES = [
    ("check the norm first: a feature below norm_threshold is 0 (not represented), whatever its interference.",
     _phase_order_swapped),
    ("use the thresholds you are given (norm_threshold, interference_threshold), not fixed numbers.",
     lambda W, i, **k: ref.feature_phase(W, i)),
    ("leave the feature itself out of its interference (j ≠ i).", _phase_self_included),
]


def _check_feature_phase(fn: Callable, hidden: bool) -> None:
    cases = [_PHASE_HAND, *_phase_cases([
        (1, 40, 1, 2, 1, {}), (2, 40, 2, 5, 3, {}), (3, 30, 3, 4, 0, {"norm_threshold": 0.8}),
        (4, 30, 2, 3, 2, {"norm_threshold": 0.3, "interference_threshold": 0.1}), (5, 1, 1, 1, 0, {}),
    ] if hidden else [(0, 6, 2, 3, 0, {}), (6, 12, 2, 3, 1, {"norm_threshold": 0.3, "interference_threshold": 0.1})])]
    cases.append(_PHASE_ORDER)
    if hidden:
        cases.append(Case("an all-zero W: nothing is represented", (torch.zeros(3, 2, 4), 2)))
    compare_function(fn, ref.feature_phase, cases, name="feature_phase", mistakes=_PHASE_MISTAKES,
                     hint="return a torch.long tensor with one phase (0, 1 or 2) per instance.")


check_feature_phase, grade_feature_phase = check_and_grade("feature_phase", _check_feature_phase)


# ---------------------------------------------------------------- 8. phase_diagram

# The grader's experiment: a 6 x 6 grid around both boundaries (p from 1 to 0.1, r from 0.1
# to 10), 8 runs per cell, 500 steps. Its best-of-8 diagram is the truth a learner's is
# compared with; its 8 runs also measure what each flawed design would have cost.
_PHASE_GRID = {"n_probabilities": 6, "n_importances": 6, "lowest_probability": 0.1}
_PHASE_STEPS = 500
_PHASE_RUNS = 8
_PHASE_MAX_DIFFERENT = 2  # cells of 36; at 500 steps a sound best-of-4 measured 0 to 1 in 3 seeds, one run per cell 8 to 12
_AGREEMENT_TOLERANCE = 0.12  # on the mean agreement; best-of-4 measured 0.75 to 0.79


@dataclass(frozen=True)
class _PhaseRuns:
    p: torch.Tensor
    r: torch.Tensor
    final_loss: np.ndarray  # [cell, run]
    phases: np.ndarray  # feature 1's phase, [cell, run]
    phases_feature_0: np.ndarray

    @property
    def truth(self) -> np.ndarray:
        return self.phases[np.arange(len(self.phases)), self.final_loss.argmin(1)]

    def cost(self, diagram: np.ndarray) -> int:
        return int((diagram != self.truth).sum())

    def flaws(self, restarts: int) -> str:
        """What each flawed design costs on these runs, in cells."""
        cells = np.arange(len(self.phases))
        single = [self.cost(self.phases[:, k]) for k in range(_PHASE_RUNS)]
        groups = [slice(k, k + restarts) for k in range(0, _PHASE_RUNS - restarts + 1, restarts)]
        votes = [self.cost(np.array([np.bincount(row, minlength=3).argmax() for row in self.phases[:, g]]))
                 for g in groups]
        worst = self.cost(self.phases[cells, self.final_loss.argmax(1)])
        other = self.cost(self.phases_feature_0[cells, self.final_loss.argmin(1)])
        def span(values: list[int]) -> str:
            return f"{min(values)}" if min(values) == max(values) else f"{min(values)} to {max(values)}"

        return (f"On the grader's {_PHASE_RUNS} runs, one run per cell differs from the best in {span(single)} "
                f"cells, a majority vote of {restarts} runs in {span(votes)}, the run with the highest final loss in "
                f"{worst}, and the best run's feature 0 in {other}.")

    def agreement(self) -> float:
        return float((self.phases == self.truth[:, None]).mean())


@functools.cache
def _phase_runs() -> _PhaseRuns:
    p, r = sp.phase_grid(**_PHASE_GRID)
    cells = len(p)
    p_runs, r_runs = p.repeat_interleave(_PHASE_RUNS), r.repeat_interleave(_PHASE_RUNS)
    generator = seeded(100)
    W, b = sp.init_toy_weights(sp.ToyConfig(n_features=2, n_hidden=1, n_instances=len(p_runs)), generator)
    with quiet():
        history = ref.train_toy_models(W, b, p_runs, torch.stack([torch.ones_like(r_runs), r_runs], dim=-1),
                                       steps=_PHASE_STEPS, batch_size=256, lr=1e-2, generator=generator)
    W = _detach(W)
    return _PhaseRuns(p, r, _numpy(history[-_PHASE_STEPS // 10:].mean(0)).reshape(cells, _PHASE_RUNS),
                      _numpy(ref.feature_phase(W, 1)).reshape(cells, _PHASE_RUNS),
                      _numpy(ref.feature_phase(W, 0)).reshape(cells, _PHASE_RUNS))


def _check_phase_diagram(fn: Callable, hidden: bool) -> None:
    runs = _phase_runs()
    restarts, seed = (5, 2) if hidden else (4, 1)
    cells = len(runs.p)
    description = f"the grader's grid of {cells} cells, restarts={restarts}, steps={_PHASE_STEPS}"
    label = f"phase_diagram({description})"
    train, classify = CountedCalls(ref.train_toy_models), CountedCalls(ref.feature_phase)
    out = call_learner(fn, "phase_diagram", description, (runs.p.clone(), runs.r.clone()),
                       {"restarts": restarts, "steps": _PHASE_STEPS, "generator": seeded(seed),
                        "train": train, "classify": classify})
    if _type(out) is not tuple or len(out) != 2:
        raise CheckFailed(f"{label} should return a tuple (phases, agreement), not a {_type(out).__name__}")
    train.expect("train", 1, "phase_diagram")
    classify.expect("classify", 1, "phase_diagram")
    phases = checked_array(out[0], f"{label}'s phases", (cells,), torch.long).astype(int)
    agreement = checked_array(out[1], f"{label}'s agreement", (cells,))
    if not np.isin(phases, [0, 1, 2]).all():
        raise CheckFailed(f"{label}'s phases should be 0, 1 or 2, not {sorted(set(phases.tolist()) - {0, 1, 2})}")
    shares = agreement * restarts
    if (agreement < 1 / restarts - 1e-6).any() or (agreement > 1 + 1e-6).any() or \
            (np.abs(shares - shares.round()) > 1e-4).any():
        raise CheckFailed(f"{label}'s agreement should be a share of the {restarts} runs of each cell, a multiple of "
                          f"1/{restarts} from 1/{restarts} (the chosen run agrees with itself) to 1; got values "
                          f"from {agreement.min():.3f} to {agreement.max():.3f}")
    truth = runs.truth
    differ = np.flatnonzero(phases != truth)
    if len(differ) > _PHASE_MAX_DIFFERENT:
        k = differ[0]
        raise CheckFailed(
            f"{label}: your diagram differs from the best of the grader's {_PHASE_RUNS} runs per cell in "
            f"{len(differ)} of {cells} cells (at most {_PHASE_MAX_DIFFERENT} may); the first is p = "
            f"{float(runs.p[k]):.2g}, r = {float(runs.r[k]):.2g}, where you give {phases[k]} and the best run is "
            f"{truth[k]}. {runs.flaws(restarts)} Keep each cell's run with the lowest loss at the end of "
            "training, and classify feature 1.")
    want = runs.agreement()
    if abs(agreement.mean() - want) > _AGREEMENT_TOLERANCE:
        why = (f" Your agreement is 1 in every cell, but the grader's runs disagree with their best in "
               f"{int((runs.phases != truth[:, None]).any(1).sum())} cells: count, in each cell, the runs whose "
               "phase is the chosen one." if (agreement == 1).all() else "")
        raise CheckFailed(f"{label}: the mean agreement is {agreement.mean():.3f}, but on the grader's "
                          f"{_PHASE_RUNS} runs a run reaches its cell's best phase {want:.3f} of the time (within "
                          f"{_AGREEMENT_TOLERANCE} is accepted).{why}")
    passed(f"phase_diagram finds the grader's diagram ({cells - len(differ)} of {cells} cells agree with the best of "
           f"{_PHASE_RUNS} runs) with its error bar (mean agreement {agreement.mean():.2f}, grader's runs {want:.2f})")


check_phase_diagram, grade_phase_diagram = check_and_grade("phase_diagram", _check_phase_diagram)


# ---------------------------------------------------------------- 8. sae_forward


def _sae_params(seed: int, hidden: int, latent: int, bias_scale: float = 0.2):
    W_enc = randn(seed, hidden, latent) / math.sqrt(hidden)
    b_enc = bias_scale * randn(seed + 1, latent)
    W_dec = randn(seed + 2, hidden, latent)
    W_dec = W_dec / W_dec.norm(dim=0, keepdim=True)
    b_dec = bias_scale * randn(seed + 3, hidden)
    return W_enc, b_enc, W_dec, b_dec


def _sae_cases(specs: Sequence[tuple[int, int, int, int]]) -> list[Case]:
    return [Case(f"seed={seed}, batch={batch}, hidden={hidden}, latent={latent}",
                 (randn(seed + 9, batch, hidden), *_sae_params(seed, hidden, latent)))
            for seed, batch, hidden, latent in specs]


_SAE_HAND = Case("hand case: h=[1,2], W_enc=[[1,-1,0],[0,0,1]], b_enc=[0,0,-1], W_dec=[[1,0,0],[0,0,1]], "
                 "b_dec=[0.5,0] -> latents [0.5,0,1], reconstruction [1,1]",
                 (torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]),
                  torch.tensor([0.0, 0.0, -1.0]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
                  torch.tensor([0.5, 0.0])))


def _sae_variant(relu: bool = True, subtract: bool = True, enc_bias: bool = True):
    def forward(h, W_enc, b_enc, W_dec, b_dec):
        pre = (h - b_dec if subtract else h) @ W_enc + (b_enc if enc_bias else 0)
        z = torch.relu(pre) if relu else pre
        return z, z @ W_dec.T + b_dec
    return forward


_SAE_MISTAKES = [
    ("the latents need a ReLU.", _sae_variant(relu=False)),
    ("subtract the decoder bias b_dec from h before encoding.", _sae_variant(subtract=False)),
    ("add the encoder bias b_enc before the ReLU.", _sae_variant(enc_bias=False)),
]


def _check_sae_forward(fn: Callable, hidden: bool) -> None:
    specs = [(1, 16, 4, 8), (2, 1, 1, 1), (3, 32, 6, 3), (4, 8, 10, 40)] if hidden else [(0, 4, 3, 6)]
    cases = [_SAE_HAND, *_sae_cases(specs)]
    if hidden:
        args = _sae_cases([(5, 5, 4, 8)])[0].args
        cases.append(Case("all-zero h", (torch.zeros(5, 4), *args[1:])))
    compare_function(fn, ref.sae_forward, cases, name="sae_forward", mistakes=_SAE_MISTAKES,
                     hint="return the tuple (latents, reconstruction).")


check_sae_forward, grade_sae_forward = check_and_grade("sae_forward", _check_sae_forward)


# ---------------------------------------------------------------- 9. sae_loss

_SAE_LOSS_HAND = Case("hand case: h=[1,0], reconstruction=[0.5,0.5], latents=[1,0,2], l1_coeff=0.1 -> 0.8",
                      (torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 0.5]]), 0.1))


def _sae_loss_cases(specs: Sequence[tuple[int, int, int, int, float]]) -> list[Case]:
    return [Case(f"seed={seed}, batch={batch}, hidden={hidden}, latent={latent}, l1_coeff={l1}",
                 (randn(seed, batch, hidden), torch.relu(randn(seed + 1, batch, latent)),
                  randn(seed + 2, batch, hidden), l1))
            for seed, batch, hidden, latent, l1 in specs]


_SAE_LOSS_MISTAKES = [
    ("sum the squared error over the hidden dimensions (not the mean), then average over the batch.",
     lambda h, z, r, c: (((r - h) ** 2).mean(-1) + c * z.abs().sum(-1)).mean()),
    ("add the sparsity penalty l1_coeff · Σ|latents|.", lambda h, z, r, c: ((r - h) ** 2).sum(-1).mean()),
    ("the L1 penalty sums |latents| over latents (not the mean).",
     lambda h, z, r, c: (((r - h) ** 2).sum(-1) + c * z.abs().mean(-1)).mean()),
    ("average over the batch, don't sum.", lambda h, z, r, c: (((r - h) ** 2).sum(-1) + c * z.abs().sum(-1)).sum()),
    ("a .mean() over every entry divides the squared error by batch × hidden and the L1 term by batch × latent: "
     "sum over hidden and over latent first, then average over the batch only.",
     lambda h, z, r, c: ((r - h) ** 2).mean() + c * z.abs().mean()),
    ("the L1 term is averaged over every entry (batch × latent); sum it over the latents, then average over "
     "the batch.", lambda h, z, r, c: ((r - h) ** 2).sum(-1).mean() + c * z.abs().mean()),
]


def _check_sae_loss(fn: Callable, hidden: bool) -> None:
    cases = [_SAE_LOSS_HAND, *_sae_loss_cases([(1, 16, 4, 8, 0.1), (2, 1, 1, 1, 1.0), (3, 32, 6, 20, 0.0),
                                               (4, 8, 10, 5, 3.0)] if hidden else [(0, 4, 3, 6, 0.5)])]
    if hidden:
        h = randn(5, 6, 3)
        cases.append(Case("perfect reconstruction, all latents zero (loss 0)", (h, torch.zeros(6, 4), h.clone(), 0.5)))
    compare_function(fn, ref.sae_loss, cases, name="sae_loss", mistakes=_SAE_LOSS_MISTAKES,
                     hint="return a 0-dimensional tensor (a scalar), not a Python float.")


check_sae_loss, grade_sae_loss = check_and_grade("sae_loss", _check_sae_loss)


# ---------------------------------------------------------------- 10. train_sae

# (seed, features, hidden, latents, steps, batch_size, lr, l1_coeff)
_SAE_CHECK = (0, 8, 4, 16, 150, 256, 1e-2, 0.05)
_SAE_GRADE = [(1, 8, 4, 16, 250, 256, 1e-2, 0.05), (2, 12, 5, 24, 200, 128, 5e-3, 0.1)]
_reference_sae_runs: dict[tuple, tuple[float, np.ndarray]] = {}


def _sae_setup(config: tuple):
    seed, feat, hidden, latent, *_ = config
    W_toy = randn(seed, 1, hidden, feat)
    W_toy = W_toy / W_toy.norm(dim=1, keepdim=True)
    p = torch.tensor([0.1])

    generator = seeded(seed + 1)

    def sample_hidden(batch_size: int) -> torch.Tensor:
        return ref.generate_batch(batch_size, p, feat, generator)[:, 0] @ W_toy[0].T

    W_dec = randn(seed + 2, hidden, latent)
    W_dec = W_dec / W_dec.norm(dim=0, keepdim=True)
    return sample_hidden, [_clone(W_dec), torch.zeros(latent), W_dec, torch.zeros(hidden)], W_toy, p


def _sae_eval(config: tuple, params: Sequence[torch.Tensor]) -> float:
    seed, feat, hidden, latent, *_, l1 = config
    _, _, W_toy, p = _sae_setup(config)
    with torch.no_grad():
        h = ref.generate_batch(8192, p, feat, seeded(999))[:, 0] @ W_toy[0].T
        z, r = ref.sae_forward(h, *params)
        return float(ref.sae_loss(h, z, r, l1))


def _reference_sae_run(config: tuple) -> tuple[float, np.ndarray]:
    """(loss after training, loss history) of the reference loop."""
    if config not in _reference_sae_runs:
        sample_hidden, params, *_ = _sae_setup(config)
        _, _, _, _, steps, batch, lr, l1 = config
        history = ref.train_sae(sample_hidden, *params, steps=steps, batch_size=batch, lr=lr, l1_coeff=l1)
        _reference_sae_runs[config] = (_sae_eval(config, [_detach(t) for t in params]),
                                       _numpy(history).astype(np.float64))
    return _reference_sae_runs[config]


def _check_sae_run(fn: Callable, config: tuple) -> None:
    name = "train_sae"
    seed, feat, hidden, latent, steps, batch, lr, l1 = config
    desc = f"hidden={hidden}, latent={latent}, steps={steps}, batch_size={batch}, lr={lr}, l1_coeff={l1}"
    sample_hidden, params, *_ = _sae_setup(config)
    initial = [_clone(t) for t in params]
    sampler, forward, loss_fn = CountedCalls(sample_hidden), CountedCalls(ref.sae_forward), CountedCalls(ref.sae_loss)
    history = call_learner(fn, name, desc, (sampler, *params),
                    dict(steps=steps, batch_size=batch, lr=lr, l1_coeff=l1, forward=forward, loss_fn=loss_fn))
    label = f"{name}({desc}) history"
    h = _loss_history(history, label, (steps,))
    for piece, arg in ((sampler, "sample_hidden"), (forward, "forward"), (loss_fn, "loss_fn")):
        piece.expect(arg, steps, name)
    for param_name, before, after in zip(("W_enc", "b_enc", "W_dec", "b_dec"), initial, params):
        if np.array_equal(_numpy(before), _numpy(_detach(after))):
            raise CheckFailed(f"{name}({desc}): {param_name} did not change: train the four tensors you are "
                              "given, in place, with one optimizer over all of them")
    column_norms = np.linalg.norm(_numpy(_to(_detach(params[2]), "cpu", torch.float64)), axis=0)
    if np.abs(column_norms - 1).max() > 1e-3:
        raise CheckFailed(f"{name}({desc}): after training, the decoder's column norms range from "
                          f"{column_norms.min():.4f} to {column_norms.max():.4f}; every column should have norm 1\n"
                          "Hint: after each optimizer.step(), under torch.no_grad(): "
                          "W_dec /= W_dec.norm(dim=0, keepdim=True) (columns, dim=0, in place).")
    start = _sae_eval(config, initial)
    if not 0.6 * start <= h[0] <= 1.4 * start:  # one batch of >= 128 against 8192 inputs
        raise CheckFailed(f"{label}: the first step's loss is {h[0]:.4g}, but the "
                          f"SAE's loss at the start is about {start:.4g}\nHint: record each step's loss (a scalar).")
    # Tolerance: 15% (+0.002) above the reference loop's loss from the same start, on 8192 fresh inputs.
    trained = _sae_eval(config, [_detach(t) for t in params])
    reference, ref_history = _reference_sae_run(config)
    if trained > 1.15 * reference + 2e-3:
        raise CheckFailed(f"{name}({desc}): after training the SAE's loss is {trained:.4f}; the reference loop "
                          f"reaches {reference:.4f} from the same start (allowed: 15% more)\nHint: "
                          "optimizer.zero_grad(), loss.backward(), optimizer.step(), then renormalise W_dec.")
    _follows_reference(h, ref_history, label)


def _check_train_sae(fn: Callable, hidden: bool) -> None:
    for config in _SAE_GRADE if hidden else [_SAE_CHECK]:
        _check_sae_run(fn, config)
    if hidden:
        passed(f"train_sae reaches the reference loop's loss with unit-norm decoder columns on {len(_SAE_GRADE)} "
               "configurations")
    else:
        passed("train_sae trains, keeps decoder columns at unit norm, and reaches the reference loop's loss")


check_train_sae, grade_train_sae = check_and_grade("train_sae", _check_train_sae)


# ---------------------------------------------------------------- 11. feature_recovery_score

_RECOVERY_HAND = Case("hand case: W_true=I (2 features), W_dec columns (1,0), (0,0), (0.6,0.8) -> (1 + 0.8)/2 = 0.9",
                      (torch.tensor([[1.0, 0.0, 0.6], [0.0, 0.0, 0.8]]), torch.eye(2)))
_RECOVERY_SCALED = Case("hand case, unnormalised features: W_true=2I, W_dec columns (1,0), (0.6,0.8) -> (1 + 0.8)/2 = 0.9",
                        (torch.tensor([[1.0, 0.6], [0.0, 0.8]]), 2 * torch.eye(2)))
_RECOVERY_OPPOSITE = Case("decoder pointing exactly away from the features: W_dec = -W_true -> 0",
                          (-torch.eye(2), torch.eye(2)))


def _recovery_cases(specs: Sequence[tuple[int, int, int, int]]) -> list[Case]:
    cases = []
    for seed, hidden, feat, latent in specs:
        W_true = randn(seed, hidden, feat) * (0.5 + torch.rand(1, feat, generator=seeded(seed + 1)))
        noise = 0.3 * randn(seed + 2, hidden, feat)
        W_dec = torch.cat([W_true + noise, randn(seed + 3, hidden, max(0, latent - feat))], dim=1)[:, :latent] * 2
        cases.append(Case(f"seed={seed}, hidden={hidden}, feature={feat}, latent={latent}", (W_dec, W_true)))
    return cases


def _cos(W_dec, W_true):
    d = W_dec / W_dec.norm(dim=0, keepdim=True).clamp_min(1e-8)
    t = W_true / W_true.norm(dim=0, keepdim=True).clamp_min(1e-8)
    return t.T @ d  # [feature, latent]


_RECOVERY_MISTAKES = [
    ("the cosine is signed: a direction pointing away from a feature does not recover it (no abs).",
     lambda W_dec, W_true: _cos(W_dec, W_true).abs().max(dim=-1).values.mean().item()),
    ("for each *true feature*, take the best latent (max over latents), then average over features.",
     lambda W_dec, W_true: _cos(W_dec, W_true).max(dim=0).values.mean().item()),
    ("normalise both sets of columns to unit length before the dot products.",
     lambda W_dec, W_true: (W_true.T @ W_dec).max(dim=-1).values.mean().item()),
]


def _check_feature_recovery_score(fn: Callable, hidden: bool) -> None:
    cases = [_RECOVERY_HAND, _RECOVERY_SCALED, _RECOVERY_OPPOSITE]
    if hidden:
        random_cases = _recovery_cases([(1, 4, 6, 12), (2, 1, 1, 1), (3, 10, 20, 40), (4, 6, 8, 5)])
        W_true = random_cases[0].args[1]  # 6 features
        perfect = Case("a perfect dictionary (the true features, rescaled and shuffled) -> 1",
                       (W_true[:, [3, 1, 0, 5, 2, 4]] * 3.0, W_true))
        cases += [*random_cases, perfect]
    compare_function(fn, ref.feature_recovery_score, cases, name="feature_recovery_score", mistakes=_RECOVERY_MISTAKES,
                     hint="return a Python float (`.item()`).")


check_feature_recovery_score, grade_feature_recovery_score = check_and_grade("feature_recovery_score",
                                                                             _check_feature_recovery_score)


# ---------------------------------------------------------------- 12. investigate_toy_model (the investigation)


def _investigation_answer(answer, n_features: int, label: str
                          ) -> tuple[set[int], set[tuple[int, int]], set[tuple[int, int]]]:  # fmt: skip
    """The answer's three findings, checked for form only (a dict with the three keys, feature
    ids in range, pairs of two different features): (represented, antipodal pairs, pairs
    never active together), pairs as (i, j) with i < j."""
    form = ('return a dict {"represented": [feature ids], "antipodal_pairs": [(i, j), ...], "exclusive_pairs": '
            '[(i, j), ...]} of Python ints, e.g. {"represented": [0, 2, 3], "antipodal_pairs": [(0, 3)], '
            '"exclusive_pairs": []}.')
    if _type(answer) is not dict or set(answer) != {"represented", "antipodal_pairs", "exclusive_pairs"}:
        keys = sorted(map(str, answer)) if _type(answer) is dict else None
        raise CheckFailed(f"{label}: got {'a dict with keys ' + str(keys) if keys is not None else 'a ' + _type(answer).__name__}"
                          f"\nHint: {form}")

    def feature_id(value, where: str) -> int:
        if _type(value) is not int:
            raise CheckFailed(f"{label}: {where} contains {value!r} (a {_type(value).__name__}); feature ids are "
                              f"Python ints\nHint: `.tolist()` turns a tensor of indices into a list of ints.")
        if not 0 <= value < n_features:
            raise CheckFailed(f"{label}: {where} contains feature {value}, but the model has features 0 to "
                              f"{n_features - 1}")
        return value

    represented = answer["represented"]
    if _type(represented) not in (list, tuple, set):
        raise CheckFailed(f'{label}: "represented" is a {_type(represented).__name__}\nHint: {form}')
    found = [feature_id(i, '"represented"') for i in represented]
    if len(set(found)) != len(found):
        raise CheckFailed(f'{label}: "represented" lists a feature twice: {sorted(found)}')
    def pair_set(key: str) -> set[tuple[int, int]]:
        pairs = answer[key]
        if _type(pairs) not in (list, tuple, set):
            raise CheckFailed(f'{label}: "{key}" is a {_type(pairs).__name__}\nHint: {form}')
        out = set()
        for pair in pairs:
            if _type(pair) not in (list, tuple) or len(pair) != 2:
                raise CheckFailed(f'{label}: "{key}" contains {pair!r}; each pair is two feature ids (i, j)')
            i, j = (feature_id(v, f'"{key}"') for v in pair)
            if i == j:
                raise CheckFailed(f'{label}: "{key}" pairs feature {i} with itself')
            out.add((min(i, j), max(i, j)))
        return out

    return set(found), pair_set("antipodal_pairs"), pair_set("exclusive_pairs")


def _judge_investigation(represented: set[int], pairs: set[tuple[int, int]], exclusive: set[tuple[int, int]],
                         W: torch.Tensor, b: torch.Tensor, label: str) -> None:  # fmt: skip
    """Fail unless the findings agree with what the weights show (within the margins)."""
    truth = investigation.judge(W, b)
    norms, cos = investigation.geometry(W)
    lo, hi = investigation.MARGINS["norm"]
    for i, verdict in truth["features"].items():
        if verdict is True and i not in represented:
            raise CheckFailed(f"{label}: you leave out feature {i}, but its column has norm {norms[i]:.2f} "
                              f"(a dropped feature's is about 0): the model represents it")
        if verdict is False and i in represented:
            raise CheckFailed(f"{label}: you list feature {i} as represented, but its column has norm "
                              f"{norms[i]:.2f}: the model dropped it")
    for (i, j), verdict in truth["pairs"].items():
        if verdict is True and (i, j) not in pairs:
            raise CheckFailed(f"{label}: you miss the antipodal pair ({i}, {j}): both are represented (norms "
                              f"{norms[i]:.2f}, {norms[j]:.2f}) and their directions have cosine {cos[i, j]:.2f}")
        if verdict is False and (i, j) in pairs:
            dropped = [k for k in (i, j) if truth["features"][k] is False]
            why = (f"feature {dropped[0]} is not represented (norm {norms[dropped[0]]:.2f}), so its direction "
                   "means nothing" if dropped else
                   f"their directions have cosine {cos[i, j]:.2f}, not about -1 (an angle of "
                   f"{math.degrees(math.acos(max(-1.0, min(1.0, float(cos[i, j]))))):.0f}°, not 180°)")
            raise CheckFailed(f"{label}: you list ({i}, {j}) as an antipodal pair, but {why}")
    for (i, j), verdict in truth["exclusive"].items():
        s = investigation.pair_bias(b, i, j)
        if verdict is True and (i, j) not in exclusive:
            raise CheckFailed(f"{label}: you miss ({i}, {j}) among the pairs never active together: it is an "
                              f"antipodal pair (cosine {cos[i, j]:.2f}) whose biases are {b[i]:+.3f} and {b[j]:+.3f} "
                              f"(mean {s:+.3f}), where the model keeps those of the pairs whose features do fire "
                              "together above 0.02")
        if verdict is False and (i, j) in exclusive:
            why = (f"the model does not treat them as a pair (cosine {cos[i, j]:.2f}, norms {norms[i]:.2f} and "
                   f"{norms[j]:.2f}): what it learned of the data shows where two represented features share a line"
                   if not truth["pairs"][(i, j)] else
                   f"its biases are {b[i]:+.3f} and {b[j]:+.3f} (mean {s:+.3f}): the model raised the pair's threshold "
                   "against both firing at once, which costs it nothing only if they never do. An antipodal pair is "
                   "not by itself a pair that is never active together: independent sparse features pair up too")
            raise CheckFailed(f"{label}: you list ({i}, {j}) as never active together, but {why}")


def _check_investigate_toy_model(fn: Callable, hidden: bool) -> None:
    """Visible: mystery model 0, as the notebook shows it. Hidden: all of them, each disguised by
    a random symmetry drawn afresh at every grading (features permuted, hidden space rotated),
    judged on the weights the function was given."""
    name = "investigate_toy_model"
    models = range(len(investigation.RECIPES)) if hidden else [0]
    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    for index in models:
        W, b = investigation.mystery_model(index)
        if hidden:
            W, b, _ = investigation.disguised(W, b, generator)
        label = f"{name} on mystery model {index} ({W.shape[1]} features in {W.shape[0]} dimensions)"
        answer = call_learner(fn, name, f"mystery model {index}", (_clone(W), _clone(b)))
        represented, pairs, exclusive = _investigation_answer(answer, W.shape[1], label)
        if hidden:
            _judge_investigation(represented, pairs, exclusive, W, b, label)
    if hidden:
        passed(f"{name}: your findings agree with the measurement on all {len(models)} mystery models")
    else:
        passed(f"{name} returns a well-formed answer on mystery model 0 (this check says nothing about whether "
               "it is right: the grader measures that, on this model and on others trained the same way)")


# off limits inside the learner's function: the judge, the recipes' training (this module is too)
check_investigate_toy_model, grade_investigate_toy_model = check_and_grade(
    "investigate_toy_model", _check_investigate_toy_model,
    Truth(modules=(investigation,), public=("mystery_model", "MysteryRecipe")))
