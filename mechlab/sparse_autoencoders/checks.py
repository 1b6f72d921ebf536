"""Checks for chapter 4 (training sparse autoencoders): `check_x` visible, `grade_x` hidden.

Every exercise is compared with `mechlab.sparse_autoencoders.reference` on inputs built
here: seeded random tensors (with hand-computable cases among them), the course model
`corpus_2l` on held-out corpus windows and, for the model-taking exercises, untrained
models of other shapes (so hard-coded sizes fail). Losses and activations that feed
training are also compared through their *gradients* (the same random upstream
gradient backpropagated through both), since a wrong backward pass (a straight-through
estimator, above all) can hide behind a right forward one. Training loops are run on
the same SAE from the same start on the same seeded batches as the reference loop and
must retrace its history.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from mechlab.sparse_autoencoders import activations
from mechlab.checks import (
    call_learner, Case, check_and_grade, checked_array, CheckFailed, compare_function, compare_gradients, CountedCalls,
    compare_on_models, course_model, other_models, passed, randn, seeded, Truth,
)
from mechlab.pristine import isinstance_ as _isinstance, Parameter as _Parameter, Tensor as _Tensor, type_ as _type
from mechlab.sparse_autoencoders import reference as ref
from mechlab.runtime import quiet

def _values_and_gradients(fn: Callable, reference: Callable, cases: Sequence[Case], gradient_cases: Sequence[Case],
                          wrt: Sequence[int], name: str, mistakes=(), hint: str | None = None, **tolerance) -> None:
    """Outputs on every case, then gradients on `gradient_cases`; one ✓ line for both."""
    compare_function(fn, reference, cases, name=name, mistakes=mistakes, hint=hint, report=False, **tolerance)
    for i, case in enumerate(gradient_cases):
        compare_gradients(fn, reference, case, wrt=wrt, name=name, mistakes=mistakes, seed=i, **tolerance)
    passed(f"{name} matches the reference on {len(cases)} cases, and its gradients on {len(gradient_cases)}")


# ---------------------------------------------------------------- models and windows


@functools.cache
def _windows(n: int, seed: int) -> torch.Tensor:
    """`n` windows of held-out corpus text (BOS first), seed >= 3: never the chapter's own."""
    return activations.corpus_windows(n * 64, seed=seed).tokens[:n]


def _model_cases(hidden: bool, hooks: Sequence[str], extra_hooks: Sequence[str]) -> list[tuple[str, object, str]]:
    cases = [("course model corpus_2l", course_model("corpus_2l"), h) for h in hooks]
    if hidden:
        desc, deep = other_models(41)[0]
        cases += [(desc, deep, h) for h in extra_hooks]
        desc, attn_only = other_models(41)[1]
        cases += [(desc, attn_only, "blocks.1.hook_resid_pre")]
    return cases


# ---------------------------------------------------------------- 1. collect_activations


def _detached_output(fn: Callable, name: str, args: tuple) -> None:
    out = call_learner(fn, name, "the course model", args)
    if _type(out) in (_Tensor, _Parameter) and out.requires_grad:
        raise CheckFailed(f"{name} returned a tensor that still requires grad: run the model under torch.no_grad() "
                          "(or .detach() the result), or every batch keeps its whole computation graph in memory")


def _collect_cases(hidden: bool) -> list[Case]:
    cases = []
    hooks = ["blocks.1.hook_resid_pre"] + (["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"] if hidden else [])
    for i, (desc, model, hook) in enumerate(_model_cases(hidden, hooks, ["blocks.2.hook_resid_pre",
                                                                         "blocks.0.attn.hook_z"])):
        tokens = _windows(6, 3)[:, :24] if hidden else _windows(2, 3)[:, :16]
        cases.append(Case(f"{desc}, hook {hook!r}, tokens {tuple(tokens.shape)}", (model, tokens, hook)))
    return cases


def _collect_last_layer(model, tokens, hook_name):
    return ref.collect_activations(model, tokens, f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")


_COLLECT_MISTAKES = [("return the activations at the hook you are given (`hook_name`), not a fixed one.",
                      _collect_last_layer)]


def _check_collect(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.collect_activations, _collect_cases(hidden), "collect_activations", _COLLECT_MISTAKES)
    _detached_output(fn, "collect_activations", (course_model("corpus_2l"), _windows(2, 3)[:, :8], "blocks.1.hook_resid_pre"))


check_collect_activations, grade_collect_activations = check_and_grade("collect_activations", _check_collect)


# ---------------------------------------------------------------- 2. normalisation_scale

_SCALE_HAND = Case("hand case: one activation (3, 4), d_model=2 -> sqrt(2 / 25) = 0.2828", (torch.tensor([[3.0, 4.0]]),))


def _scale_cases(specs: Sequence[tuple[int, tuple[int, ...], float]]) -> list[Case]:
    return [Case(f"random activations of shape {shape}, typical norm {scale * shape[-1] ** 0.5:.3g}, seed={seed}",
                 (randn(seed, *shape) * scale + 0.3 * scale,)) for seed, shape, scale in specs]


_SCALE_MISTAKES = [
    ("the target is a mean squared norm of d_model, so s = sqrt(d_model / E‖x‖²); you dropped the d_model.",
     lambda a: (1 / a.pow(2).sum(-1).mean()).sqrt().item()),
    ("use the mean of the *squared* norms, E‖x‖², not the square of the mean norm.",
     lambda a: a.shape[-1] ** 0.5 / a.norm(dim=-1).mean().item()),
    ("s multiplies the activations: s = sqrt(d_model / E‖x‖²), not its inverse.",
     lambda a: 1 / ref.normalisation_scale(a)),
]


def _check_scale(fn: Callable, hidden: bool) -> None:
    specs = [(1, (500, 128), 0.1), (2, (4, 16, 32), 25.0), (3, (1, 1, 1, 8), 1.0)] if hidden else [(0, (64, 16), 3.0)]
    compare_function(fn, ref.normalisation_scale, [_SCALE_HAND, *_scale_cases(specs)], name="normalisation_scale",
                     mistakes=_SCALE_MISTAKES, hint="return a Python float (.item()).")


check_normalisation_scale, grade_normalisation_scale = check_and_grade("normalisation_scale", _check_scale)


# ---------------------------------------------------------------- 3. relu_sae_loss


def _relu_loss_cases(specs: Sequence[tuple[int, int, int, int, float]], positive: bool = False) -> list[Case]:
    """`positive`: strictly positive latents, for gradients (at an exact 0, `z` and `|z|`
    have different derivatives, and both are right: the ReLU before zeroes that gradient)."""
    cases = []
    for seed, batch, d_in, d_sae, l1 in specs:
        x = randn(seed, batch, d_in)
        latents = torch.relu(randn(seed + 1, batch, d_sae) - 1)  # sparse, non-negative
        latents = latents + 0.05 if positive else latents
        W_dec = randn(seed + 2, d_sae, d_in) * (0.2 + torch.rand(d_sae, 1, generator=seeded(seed + 3)))  # unequal norms
        reconstruction = latents @ W_dec + 0.1 * randn(seed + 4, batch, d_in)
        cases.append(Case(f"seed={seed}, batch={batch}, d_in={d_in}, d_sae={d_sae}, l1_coeff={l1}",
                          (x, latents, reconstruction, W_dec, l1)))
    return cases


_RELU_HAND = Case("hand case: x=(1, 0), x̂=(0, 0), z=(2, 0, 1), decoder rows of norm 3, 1, 2, λ=0.5 -> 1 + 0.5·(6 + 2) = 5",
                  (torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0]]),
                   torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 2.0]]), 0.5))

_RELU_MISTAKES = [
    ("weight each latent's penalty by the norm of its decoder row, ‖W_dec[i]‖ (W_dec.norm(dim=-1)).",
     lambda x, z, r, W, l1: ((r - x).pow(2).sum(-1) + l1 * z.abs().sum(-1)).mean()),
    ("the decoder rows are W_dec[i] (shape [d_sae, d_in]): take their norms with W_dec.norm(dim=-1).",
     lambda x, z, r, W, l1: ((r - x).pow(2).sum(-1) + l1 * (z * W.norm(dim=0)[: z.shape[-1]]).sum(-1)).mean()),
    ("sum the squared error over d_in (a squared norm) and average over the batch, not over every entry.",
     lambda x, z, r, W, l1: (r - x).pow(2).mean() + l1 * (z * W.norm(dim=-1)).sum(-1).mean()),
    ("average over the batch (mean), not sum.", lambda x, z, r, W, l1: ref.relu_sae_loss(x, z, r, W, l1) * x.shape[0]),
    ("the L1 term is multiplied by l1_coeff; the squared error is not.",
     lambda x, z, r, W, l1: ((r - x).pow(2).sum(-1) * l1 + (z * W.norm(dim=-1)).sum(-1)).mean()),
]


def _check_relu_loss(fn: Callable, hidden: bool) -> None:
    specs = [(1, 64, 16, 40, 5.0), (2, 1, 3, 7, 0.0), (3, 256, 128, 512, 1.5)] if hidden else [(0, 8, 6, 10, 0.3)]
    wrt, tolerance = ((0, 1, 2, 3), {"rtol": 1e-4, "atol": 1e-4}) if hidden else ((1, 2, 3), {})
    _values_and_gradients(fn, ref.relu_sae_loss, [_RELU_HAND, *_relu_loss_cases(specs)],
                          _relu_loss_cases(specs[:1], positive=True), wrt, "relu_sae_loss", _RELU_MISTAKES,
                          hint="return a 0-dimensional tensor.", **tolerance)


check_relu_sae_loss, grade_relu_sae_loss = check_and_grade("relu_sae_loss", _check_relu_loss)


# ---------------------------------------------------------------- 4. topk_activation


def _topk_cases(specs: Sequence[tuple[int, int, int, int]]) -> list[Case]:
    return [Case(f"random pre-activations, seed={seed}, batch={batch}, d_sae={d_sae}, k={k}",
                 (randn(seed, batch, d_sae) - 0.5, k)) for seed, batch, d_sae, k in specs]


_TOPK_HAND = Case("hand case: [[3, -1, 2, 5], [-1, -2, 0.5, -3]], k=2 -> [[3, 0, 0, 5], [0, 0, 0.5, 0]]",
                  (torch.tensor([[3.0, -1.0, 2.0, 5.0], [-1.0, -2.0, 0.5, -3.0]]), 2))
_TOPK_ALL = Case("k larger than d_sae: [[1, -2, 3]], k=5 -> [[1, 0, 3]]", (torch.tensor([[1.0, -2.0, 3.0]]), 5))

_TOPK_MISTAKES = [
    ("pass the kept values through a ReLU: a kept pre-activation that is negative becomes 0.",
     lambda pre, k: torch.zeros_like(pre).scatter(-1, pre.topk(min(k, pre.shape[-1]), -1).indices,
                                                  pre.topk(min(k, pre.shape[-1]), -1).values)),
    ("keep the k largest of each *row* (dim=-1), not of each column.",
     lambda pre, k: torch.relu(pre) * (pre >= pre.topk(min(k, pre.shape[0]), 0).values[-1:])),
]


def _check_topk(fn: Callable, hidden: bool) -> None:
    if hidden:
        cases = [_TOPK_HAND, _TOPK_ALL,
                 *_topk_cases([(1, 64, 512, 8), (2, 1, 7, 1), (3, 16, 40, 40), (4, 100, 256, 32)])]
        gradient_cases = cases[2:4]
    else:
        cases = [_TOPK_HAND, _TOPK_ALL, *_topk_cases([(0, 5, 12, 3)])]
        gradient_cases = cases[2:]
    _values_and_gradients(fn, ref.topk_activation, cases, gradient_cases, (0,), "topk_activation", _TOPK_MISTAKES)


check_topk_activation, grade_topk_activation = check_and_grade("topk_activation", _check_topk)


# ---------------------------------------------------------------- 5. auxk_loss


def _auxk_cases(specs: Sequence[tuple[int, int, int, int, int, int]]) -> list[Case]:
    cases = []
    for seed, batch, d_in, d_sae, n_dead, k_aux in specs:
        dead = torch.zeros(d_sae, dtype=torch.bool)
        dead[torch.randperm(d_sae, generator=seeded(seed))[:n_dead]] = True
        W_dec = randn(seed + 1, d_sae, d_in)
        W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
        cases.append(Case(f"seed={seed}, batch={batch}, d_in={d_in}, d_sae={d_sae}, {n_dead} dead latents, "
                          f"k_aux={k_aux}", (randn(seed + 2, batch, d_in), randn(seed + 3, batch, d_sae), W_dec,
                                             dead, k_aux)))
    return cases


_AUXK_HAND = Case(
    "hand case: e=(1, 2), pre=(5, 2, -1), latents 0 and 2 dead, k_aux=1, W_dec rows (1,0), (0,1), (0,1) -> "
    "only latent 0 (value 5) counts: ê=(5, 0), ‖e - ê‖² = 16 + 4 = 20",
    (torch.tensor([[1.0, 2.0]]), torch.tensor([[5.0, 2.0, -1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]),
     torch.tensor([True, False, True]), 1))
_AUXK_NONE = Case("no dead latents -> 0", (randn(9, 4, 3), randn(10, 4, 6), randn(11, 6, 3),
                                           torch.zeros(6, dtype=torch.bool), 2))

def _auxk_topk_then_mask(e, pre, W, dead, k):
    k = min(k, int(dead.sum()))
    if k == 0:
        return pre.new_zeros(())
    return (e - (ref.topk_activation(pre, k) * dead) @ W).pow(2).sum(-1).mean()


_AUXK_MISTAKES = [
    ("use only the dead latents: set the live latents' pre-activations to -inf before the TopK.",
     lambda e, pre, W, dead, k: (e - ref.topk_activation(pre, k) @ W).pow(2).sum(-1).mean()),
    ("ReLU the kept pre-activations, as in topk_activation (a negative one contributes 0).",
     lambda e, pre, W, dead, k: (e - torch.zeros_like(pre).scatter(
         -1, torch.where(dead, pre, -torch.inf).topk(min(k, int(dead.sum())), -1).indices,
         torch.where(dead, pre, -torch.inf).topk(min(k, int(dead.sum())), -1).values).nan_to_num(0.0, 0.0, 0.0)
         @ W).pow(2).sum(-1).mean() if dead.any() else pre.new_zeros(())),
    ("sum the squared error over d_in and average over the batch.",
     lambda e, pre, W, dead, k: ref.auxk_loss(e, pre, W, dead, k) / e.shape[-1]),
    ("take the top k_aux *among the dead latents*: set the live ones to -inf before the TopK. Taking the TopK "
     "of all latents and then zeroing the live ones keeps only the dead latents that happened to make the "
     "overall top k_aux, usually fewer than k_aux.", _auxk_topk_then_mask),
]


def _check_auxk(fn: Callable, hidden: bool) -> None:
    specs = [(1, 32, 16, 128, 40, 8), (2, 8, 8, 64, 3, 16), (3, 64, 128, 1024, 700, 64), (4, 1, 4, 10, 10, 10)] \
        if hidden else [(0, 6, 5, 16, 6, 3)]
    cases = [_AUXK_HAND, _AUXK_NONE, *_auxk_cases(specs)]
    _values_and_gradients(fn, ref.auxk_loss, cases, cases[2:4] if hidden else cases[2:], (1, 2), "auxk_loss",
                          _AUXK_MISTAKES, hint="return a 0-dimensional tensor (also when no latent is dead).",
                          **({"atol": 1e-4} if hidden else {}))


check_auxk_loss, grade_auxk_loss = check_and_grade("auxk_loss", _check_auxk)


# ---------------------------------------------------------------- 6-7. jumprelu, jumprelu_l0


def _jump_cases(specs: Sequence[tuple[int, int, int, float]]) -> list[Case]:
    """Pre-activations scattered around each latent's threshold, many inside the window."""
    cases = []
    for seed, batch, d_sae, bandwidth in specs:
        threshold = 0.2 + torch.rand(d_sae, generator=seeded(seed))
        pre = threshold + bandwidth * 1.5 * randn(seed + 1, batch, d_sae)
        cases.append(Case(f"pre-activations near the thresholds, seed={seed}, batch={batch}, d_sae={d_sae}, "
                          f"bandwidth={bandwidth}", (pre, threshold, bandwidth)))
    return cases


# exact binary fractions: one entry on the threshold (H(0) = 0), two on the window's edges (K(±1/2) = 0)
_JUMP_INPUTS = (torch.tensor([[1.0, 1.25, 0.75, 1.125, 2.0]]), torch.ones(5), 0.5)
_JUMP_HAND = Case(
    "hand case: θ=(1, 1, 1, 1, 1), ε=0.5, π=(1, 1.25, 0.75, 1.125, 2) -> forward (0, 1.25, 0, 1.125, 2); "
    "threshold gradient for an upstream gradient of 1: (-2, 0, 0, -2, 0) (π=1 and π=1.125 are inside the window)",
    _JUMP_INPUTS)
_L0_HAND = Case(
    "hand case: θ=(1, 1, 1, 1, 1), ε=0.5, π=(1, 1.25, 0.75, 1.125, 2) -> L0 = 3 (π=1 is not above θ); "
    "threshold gradient for an upstream gradient of 1: (-2, 0, 0, -2, 0) (π=1 and π=1.125 are inside the window)",
    _JUMP_INPUTS)


def _jump_wrong_backward(scale_by_threshold: bool, pre_gets: str, sum_batch: bool = True) -> Callable:
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, pre, threshold, bandwidth):
            ctx.save_for_backward(pre, threshold)
            ctx.bandwidth = bandwidth
            return pre * (pre > threshold)

        @staticmethod
        def backward(ctx, g):
            pre, threshold = ctx.saved_tensors
            window = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype)
            factor = threshold if scale_by_threshold else 1.0
            g_threshold = g * -(factor / ctx.bandwidth) * window
            g_pre = {"step": g * (pre > threshold), "relu": g * (pre > 0), "all": g}[pre_gets]
            return g_pre, g_threshold.sum(0) if sum_batch else g_threshold.mean(0), None

    return lambda pre, threshold, bandwidth: Wrong.apply(pre, threshold, bandwidth)


_JUMPRELU_MISTAKES = [
    ("the threshold's pseudo-derivative is -(θ/ε)·K((π-θ)/ε): multiply by the threshold θ (it is the size of "
     "the jump).", _jump_wrong_backward(False, "step")),
    ("the gradient to `pre` is grad_output · H(π - θ): zero below the threshold, not below 0.",
     _jump_wrong_backward(True, "relu")),
    ("the gradient to `pre` is grad_output · H(π - θ), not grad_output everywhere.", _jump_wrong_backward(True, "all")),
    ("sum the threshold's gradient over the batch (.sum(0)), not average it.",
     _jump_wrong_backward(True, "step", sum_batch=False)),
]


def _step_wrong_backward(scale_by_threshold: bool, sum_batch: bool = True, mean_output: bool = True) -> Callable:
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, pre, threshold, bandwidth):
            ctx.save_for_backward(pre, threshold)
            ctx.bandwidth = bandwidth
            return (pre > threshold).to(pre.dtype)

        @staticmethod
        def backward(ctx, g):
            pre, threshold = ctx.saved_tensors
            window = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype)
            g_threshold = g * -((threshold if scale_by_threshold else 1.0) / ctx.bandwidth) * window
            return torch.zeros_like(pre), g_threshold.sum(0) if sum_batch else g_threshold.mean(0), None

    def l0(pre, threshold, bandwidth):
        counts = Wrong.apply(pre, threshold, bandwidth).sum(-1)
        return counts.mean() if mean_output else counts.sum()
    return l0


_L0_MISTAKES = [
    ("the step's pseudo-derivative is -(1/ε)·K((π-θ)/ε), without the θ factor of the JumpReLU's.",
     _step_wrong_backward(True)),
    ("average the count over the batch (mean), not sum.", _step_wrong_backward(False, mean_output=False)),
    ("sum the threshold's gradient over the batch in backward (.sum(0)).", _step_wrong_backward(False, sum_batch=False)),
]


def _jump_check(fn: Callable, reference: Callable, name: str, hand: Case, hidden: bool, mistakes,
                hint=None) -> None:  # fmt: skip
    cases = [hand, *_jump_cases([(1, 64, 32, 0.1), (2, 1, 3, 1.0), (3, 256, 128, 0.05)] if hidden
                                else [(0, 6, 5, 0.2)])]
    _values_and_gradients(fn, reference, cases, cases, (0, 1), name, mistakes, hint=hint)


def _check_jumprelu(fn: Callable, hidden: bool) -> None:
    _jump_check(fn, ref.jumprelu, "jumprelu", _JUMP_HAND, hidden, _JUMPRELU_MISTAKES)


check_jumprelu, grade_jumprelu = check_and_grade("jumprelu", _check_jumprelu)


_L0_HINT = "return a 0-dimensional tensor: the mean over the batch of the number of latents above threshold."


def _bool_step_output(fn: Callable) -> bool:
    """Whether the learner's `StepFunction` (in the notebook beside `fn`) returns a bool tensor."""
    step = getattr(getattr(fn, "__wrapped__", fn), "__globals__", {}).get("StepFunction")
    if not (_isinstance(step, type) and issubclass(step, torch.autograd.Function)):
        return False
    try:
        pre, threshold, bandwidth = copy.deepcopy(_JUMP_INPUTS)
        return step.apply(pre, threshold.requires_grad_(), bandwidth).dtype == torch.bool
    except Exception:
        return False


def _check_jumprelu_l0(fn: Callable, hidden: bool) -> None:
    try:
        _jump_check(fn, ref.jumprelu_l0, "jumprelu_l0", _L0_HAND, hidden, _L0_MISTAKES, _L0_HINT)
    except CheckFailed as failure:
        if "does not depend differentiably" not in str(failure):
            raise
        cause = ("your StepFunction.forward returns a bool tensor (pre > threshold): autograd treats a Function's "
                 "bool output as not differentiable and never calls its backward. Return "
                 "(pre > threshold).to(pre.dtype).") if _bool_step_output(fn) else (
                 "if StepFunction.forward returns a bool tensor (pre > threshold), autograd treats it as not "
                 "differentiable and never calls backward: return (pre > threshold).to(pre.dtype).")
        raise CheckFailed(f"{failure}\nHint: {cause}") from None


check_jumprelu_l0, grade_jumprelu_l0 = check_and_grade("jumprelu_l0", _check_jumprelu_l0)


# ---------------------------------------------------------------- 8. train_sae

# (architecture, seed, d_in, d_sae, steps, batch, lr, warmup, dead_after)
_TRAIN_CHECK = [("topk", 0, 16, 64, 60, 32, 3e-3, 10, 64)]
_TRAIN_GRADE = [("topk", 1, 16, 96, 80, 32, 3e-3, 10, 64), ("relu", 2, 12, 48, 60, 64, 1e-3, 20, 128),
                ("jumprelu", 3, 16, 64, 60, 32, 3e-3, 5, 96)]
_HISTORY_KEYS = ("loss", "mse", "l0", "dead_fraction")
_EARLY_STEPS = 15


def _sparse_data(seed: int, d_in: int, batch: int) -> Iterator[torch.Tensor]:
    """Endless seeded batches: sparse non-negative features through a fixed random dictionary."""
    n_features = 3 * d_in
    dictionary = randn(seed, n_features, d_in)
    dictionary = dictionary / dictionary.norm(dim=-1, keepdim=True)
    g = seeded(seed + 1)
    while True:
        features = torch.rand(batch, n_features, generator=g) * (torch.rand(batch, n_features, generator=g) < 0.05)
        yield 3 * features @ dictionary + 0.05 * torch.randn(batch, d_in, generator=g)


class _CountedBatches:
    def __init__(self, it: Iterator[torch.Tensor]) -> None:
        self.it, self.calls = it, 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        self.calls += 1
        return next(self.it)


def _train_setup(config: tuple):
    arch, seed, d_in, d_sae, *_ = config
    kwargs = dict(k=4, k_aux=16) if arch == "topk" else dict(l1_coeff=1.0) if arch == "relu" else \
        dict(l0_coeff=0.1, init_threshold=0.5, bandwidth=0.2)
    return ref.SAE(ref.SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, seed=seed, **kwargs))


@functools.cache
def _reference_run(config: tuple) -> tuple[dict[str, np.ndarray], float]:
    arch, seed, d_in, d_sae, steps, batch, lr, warmup, dead_after = config
    sae = _train_setup(config)
    with quiet():
        history = ref.train_sae(sae, _sparse_data(seed, d_in, batch), steps=steps, lr=lr, warmup_steps=warmup,
                                dead_after=dead_after)
    return {k: v.double().numpy() for k, v in history.items()}, _eval_loss(sae, config)


def _eval_loss(sae, config: tuple) -> float:
    _, seed, d_in, *_ = config
    with torch.no_grad():
        x = next(_sparse_data(seed + 100, d_in, 2048))
        return float(ref.SAE.loss(sae, x).mse)


def _first_difference(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], n: int):
    for step in range(n):
        for key in _HISTORY_KEYS:
            g, e = got[key][step], expected[key][step]
            if not abs(g - e) <= 1e-5 + 2e-4 * abs(e):
                return step, key, g, e
    return None


_TRAIN_HINTS = {
    "dead_fraction": "a latent is dead when it has not fired on any of the last `dead_after` *activations*: "
                     "since_fired is reset to 0 where a latent fired on at least one input of the batch and grows "
                     "by the batch size elsewhere; record the fraction after this step's update.",
    "l0": "l0 is the mean over the batch of the number of non-zero latents (out.latents), recorded every step.",
    "mse": "record out.mse, the loss object's squared error, every step.",
    "loss": "make the optimiser once, before the loop; step s uses lr * min(1, (s + 1) / warmup_steps); pass "
            "the dead mask (since_fired >= dead_after, before this step's update) to sae.loss; call "
            "sae.normalise_decoder() after every optimiser step.",
}


def _check_train(fn: Callable, config: tuple) -> None:
    name = "train_sae"
    arch, seed, d_in, d_sae, steps, batch, lr, warmup, dead_after = config
    desc = f"{arch} SAE, d_in={d_in}, d_sae={d_sae}, steps={steps}, batch {batch}, lr={lr}, " \
           f"warmup_steps={warmup}, dead_after={dead_after}"
    sae = _train_setup(config)
    initial = copy.deepcopy(sae.state_dict())
    batches = _CountedBatches(_sparse_data(seed, d_in, batch))
    with quiet():  # a toy run: the learner's progress bar would only be clutter here
        history = call_learner(fn, name, desc, (sae, batches),
                               dict(steps=steps, lr=lr, warmup_steps=warmup, dead_after=dead_after))
    label = f"{name}({desc})"
    if _type(history) is not dict or set(history) != set(_HISTORY_KEYS):
        raise CheckFailed(f"{label} returned {_type(history).__name__}"
                          + (f" with keys {sorted(history)}" if _type(history) is dict else "")
                          + f"; return a dict with the keys {list(_HISTORY_KEYS)}")
    got = {}
    for key in _HISTORY_KEYS:
        value = history[key]
        got[key] = checked_array(value, f"{label} history[{key!r}]", (steps,), detached=True)
        if value.device.type != "cpu":
            raise CheckFailed(f"{label} history[{key!r}] is on {value.device}; return it on the CPU")
    if batches.calls != steps:
        raise CheckFailed(f"{label} drew {batches.calls} batches from `batches` in {steps} steps; draw exactly one "
                          "per step (next(batches)), from the iterator you are given"
                          + (" (zip(batches, range(steps)) draws one more before it stops: put the range first)"
                             if batches.calls == steps + 1 else ""))
    unchanged = [k for k, v in sae.state_dict().items() if torch.equal(v, initial[k])]
    if unchanged:
        raise CheckFailed(f"{label}: {', '.join(unchanged)} did not change: train the SAE you are given, in place, "
                          "with one Adam over sae.parameters()")
    if arch != "relu":
        norms = sae.W_dec.detach().norm(dim=-1)
        if (norms - 1).abs().max() > 1e-4:
            raise CheckFailed(f"{label}: after training the decoder rows' norms range from {norms.min():.4f} to "
                              f"{norms.max():.4f}\nHint: call sae.normalise_decoder() after every optimiser step.")
    expected, reference_loss = _reference_run(config)
    diff = _first_difference(got, expected, min(_EARLY_STEPS, steps))
    if diff:
        step, key, g, e = diff
        raise CheckFailed(f"{label}: history[{key!r}] at step {step} is {g:.6g}, but the reference loop, run on the "
                          f"same SAE from the same start with the same batches, has {e:.6g} (the first "
                          f"{_EARLY_STEPS} steps must agree to 0.02%)\nHint: {_TRAIN_HINTS[key]}")
    trained = _eval_loss(sae, config)
    if trained > 1.05 * reference_loss + 1e-3:
        raise CheckFailed(f"{label}: after training the SAE's squared error on fresh data is {trained:.4f}; the "
                          f"reference loop reaches {reference_loss:.4f} (allowed: 5% more)\nHint: {_TRAIN_HINTS['loss']}")


def _check_train_sae(fn: Callable, hidden: bool) -> None:
    for config in _TRAIN_GRADE if hidden else _TRAIN_CHECK:
        _check_train(fn, config)
    if hidden:
        passed(f"train_sae retraces the reference loop on {len(_TRAIN_GRADE)} SAEs (TopK, ReLU, JumpReLU)")
    else:
        passed("train_sae retraces the reference loop (loss, mse, l0, dead fraction) and trains as well")


check_train_sae, grade_train_sae = check_and_grade("train_sae", _check_train_sae)


# ---------------------------------------------------------------- 9. reconstruction_metrics


def _metric_cases(specs: Sequence[tuple[int, int, int, int, float]]) -> list[Case]:
    cases = []
    for seed, batch, d_in, d_sae, noise in specs:
        x = randn(seed, batch, d_in) + 2.0  # a mean far from 0: explained variance must subtract it
        latents = torch.relu(randn(seed + 1, batch, d_sae) - 1.2)
        cases.append(Case(f"seed={seed}, batch={batch}, d_in={d_in}, d_sae={d_sae}, reconstruction noise {noise}",
                          (x, x + noise * randn(seed + 2, batch, d_in), latents)))
    return cases


_METRICS_HAND = Case(
    "hand case: x = (1, 0), (3, 0); x̂ = (1, 1), (3, 0); z = (0, 2, 0), (1, 1, 1) -> L0 2, MSE 0.5, "
    "explained variance 1 - 0.5 / 1 = 0.5",
    (torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([[1.0, 1.0], [3.0, 0.0]]),
     torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])))

_METRICS_MISTAKES = [
    ("explained variance divides by E‖x - E[x]‖², the variance around the batch mean (x - x.mean(0)), not E‖x‖².",
     lambda x, r, z: (*ref.reconstruction_metrics(x, r, z)[:2],
                      (1 - (x - r).pow(2).sum(-1).mean() / x.pow(2).sum(-1).mean()).item())),
    ("MSE is the mean over the batch of the squared *norm* of the error (sum over d_in), not the mean over entries.",
     lambda x, r, z: (ref.reconstruction_metrics(x, r, z)[0], (x - r).pow(2).mean().item(),
                      ref.reconstruction_metrics(x, r, z)[2])),
    ("L0 is the mean over inputs of the number of non-zero latents; not the sum, not the fraction.",
     lambda x, r, z: ((z != 0).float().mean().item(), *ref.reconstruction_metrics(x, r, z)[1:])),
]


def _check_metrics(fn: Callable, hidden: bool) -> None:
    specs = [(1, 512, 128, 1024, 0.5), (2, 3, 2, 5, 2.0), (3, 64, 16, 64, 0.0)] if hidden else [(0, 16, 4, 10, 0.3)]
    compare_function(fn, ref.reconstruction_metrics, [_METRICS_HAND, *_metric_cases(specs)],
                     name="reconstruction_metrics", mistakes=_METRICS_MISTAKES,
                     hint="return a tuple of three Python floats (l0, mse, explained_variance).")


check_reconstruction_metrics, grade_reconstruction_metrics = check_and_grade("reconstruction_metrics",
                                                                             _check_metrics)


# ---------------------------------------------------------------- 10. ce_loss_recovered


def _halve(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * a


def _noisy(a: torch.Tensor) -> torch.Tensor:
    """A deterministic 'reconstruction' with an error that depends on the input."""
    return a + 0.3 * torch.sin(7 * a)


@functools.cache
def _small_sae():
    """A tiny TopK SAE on corpus_2l's resid_pre, trained here (seconds), for a realistic case."""
    with quiet():
        store = activations.ActivationStore.collect(course_model("corpus_2l"), "blocks.1.hook_resid_pre", _windows(64, 4),
                                                    collect=ref.collect_activations)
    sae = ref.SAE(ref.SAEConfig(d_in=128, d_sae=256, architecture="topk", k=8, seed=7))
    with quiet():
        ref.train_sae(sae, store.batches(256, seed=0), steps=60, lr=3e-3, warmup_steps=10, dead_after=10_000)
    sae.eval()
    return sae, store.scale


def _sae_reconstruct(a: torch.Tensor) -> torch.Tensor:
    sae, scale = _small_sae()
    with torch.no_grad():
        return sae(a * scale) / scale


def _ce_cases(hidden: bool) -> list[Case]:
    cases = [Case("course model corpus_2l, 4 windows, hook 'blocks.1.hook_resid_pre', reconstruct: halve",
                  (course_model("corpus_2l"), _windows(4, 5), "blocks.1.hook_resid_pre", _halve))]
    if hidden:
        _small_sae()  # trained now, not lazily inside a hook of the same model
        cases += [
            Case("course model, 8 windows, hook 'blocks.1.hook_resid_pre', reconstruct: a small trained TopK SAE",
                 (course_model("corpus_2l"), _windows(8, 6), "blocks.1.hook_resid_pre", _sae_reconstruct)),
            Case("course model, 6 windows, hook 'blocks.0.hook_resid_post', reconstruct: input-dependent noise",
                 (course_model("corpus_2l"), _windows(6, 7)[:, :40], "blocks.0.hook_resid_post", _noisy)),
        ]
        for desc, model in other_models(41):
            cases.append(Case(f"{desc}, 4 windows, hook 'blocks.1.hook_resid_pre', reconstruct: input-dependent noise",
                              (model, _windows(4, 8)[:, :32], "blocks.1.hook_resid_pre", _noisy)))
    return cases


def _ce_with_bos(model, tokens, hook_name, reconstruct):
    def ce(logits):
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).item()

    with torch.no_grad():
        clean = ce(model(tokens))
        sae = ce(model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda a, hook: reconstruct(a))]))
        zero = ce(model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda a, hook: torch.zeros_like(a))]))
    return clean, sae, zero, (zero - sae) / (zero - clean)


_CE_MISTAKES = [
    ("leave position 0 (BOS) as it is in both runs: replace and zero positions 1: only.", _ce_with_bos),
    ("CE loss recovered is (CE_zero - CE_SAE) / (CE_zero - CE_clean): 1 when the SAE costs nothing.",
     lambda *a: (*ref.ce_loss_recovered(*a)[:3], 1 - ref.ce_loss_recovered(*a)[3])),
]


def _check_ce(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.ce_loss_recovered, _ce_cases(hidden), "ce_loss_recovered", _CE_MISTAKES,
                      atol=1e-4, rtol=1e-4)


check_ce_loss_recovered, grade_ce_loss_recovered = check_and_grade("ce_loss_recovered", _check_ce)


# ---------------------------------------------------------------- 11. relative_reconstruction_bias

_BIAS_HAND = Case("hand case: x̂ = 0.8 x -> γ = 0.8", (torch.tensor([[3.0, 4.0], [1.0, -2.0]]),
                                                       0.8 * torch.tensor([[3.0, 4.0], [1.0, -2.0]])))


def _bias_cases(specs: Sequence[tuple[int, int, int, float]]) -> list[Case]:
    return [Case(f"seed={seed}, batch={batch}, d_in={d_in}, x̂ = {shrink}·x + noise",
                 (randn(seed, batch, d_in), shrink * randn(seed, batch, d_in) + 0.2 * randn(seed + 1, batch, d_in)))
            for seed, batch, d_in, shrink in specs]


_BIAS_MISTAKES = [("γ = E[x̂·x̂] / E[x̂·x] (you have its inverse): below 1 when x̂ is shrunk.",
                   lambda x, r: 1 / ref.relative_reconstruction_bias(x, r)),
                  ("γ is a ratio of two means, E[x̂·x̂] / E[x̂·x], not the mean of each input's ratio "
                   "(x̂·x̂) / (x̂·x): average the numerator and the denominator over the batch first, then divide.",
                   lambda x, r: ((r * r).sum(-1) / (r * x).sum(-1)).mean().item())]


def _check_bias(fn: Callable, hidden: bool) -> None:
    specs = [(1, 512, 128, 0.9), (2, 1, 3, 1.3), (3, 100, 16, 0.5)] if hidden else [(0, 32, 8, 0.7)]
    compare_function(fn, ref.relative_reconstruction_bias, [_BIAS_HAND, *_bias_cases(specs)],
                     name="relative_reconstruction_bias", mistakes=_BIAS_MISTAKES, hint="return a Python float.")


check_relative_reconstruction_bias, grade_relative_reconstruction_bias = check_and_grade(
    "relative_reconstruction_bias", _check_bias)


# ---------------------------------------------------------------- 12. top_activations

_TOP_HAND = Case("hand case: [[0, 5, 1], [7, 0, 2]], k=3 -> values (7, 5, 2), rows (1, 0, 1), positions (0, 1, 2)",
                 (torch.tensor([[0.0, 5.0, 1.0], [7.0, 0.0, 2.0]]), 3))


def _top_cases(specs: Sequence[tuple[int, int, int, int]]) -> list[Case]:
    return [Case(f"random activations, seed={seed}, batch={batch}, pos={pos}, k={k}",
                 (torch.relu(randn(seed, batch, pos)) + torch.rand(batch, pos, generator=seeded(seed + 1)), k))
            for seed, batch, pos, k in specs]


_TOP_MISTAKES = [
    ("a flat index i is row i // pos and position i % pos (pos = acts.shape[1]).",
     lambda a, k: (a.flatten().topk(k).values, a.flatten().topk(k).indices % a.shape[0],
                   a.flatten().topk(k).indices // a.shape[0])),
    ("return (values, rows, positions) in that order.",
     lambda a, k: (ref.top_activations(a, k)[0], ref.top_activations(a, k)[2], ref.top_activations(a, k)[1])),
]


def _check_top(fn: Callable, hidden: bool) -> None:
    specs = [(1, 100, 63, 20), (2, 1, 9, 9), (3, 30, 5, 1), (4, 7, 200, 50)] if hidden else [(0, 4, 7, 5)]
    compare_function(fn, ref.top_activations, [_TOP_HAND, *_top_cases(specs)], name="top_activations",
                     mistakes=_TOP_MISTAKES, hint="return a tuple of three tensors (values, rows, positions).")


check_top_activations, grade_top_activations = check_and_grade("top_activations", _check_top)


# ---------------------------------------------------------------- 13. detection_scores

_DETECT_HAND = Case(
    "hand case: labels (1, 1, 0, 0); latent 0 fires on (1, 0, 1, 0), latent 1 never, latent 2 on all -> "
    "precision (0.5, 0, 0.5), recall (0.5, 0, 1), F1 (0.5, 0, 0.667)",
    (torch.tensor([[True, False, True], [False, False, True], [True, False, True], [False, False, True]]),
     torch.tensor([True, True, False, False])))
_DETECT_NO_POSITIVES = Case("no position has the label -> recall and F1 0 everywhere",
                            (torch.tensor([[True, False], [True, True]]), torch.tensor([False, False])))


def _detect_cases(specs: Sequence[tuple[int, int, int]]) -> list[Case]:
    cases = []
    for seed, n, d_sae in specs:
        g = seeded(seed)
        labels = torch.rand(n, generator=g) < 0.2
        rates = torch.rand(d_sae, generator=g) * 0.3
        fires = torch.rand(n, d_sae, generator=g) < rates
        fires[:, 0] = labels  # a perfect detector
        fires[:, 1] = False  # a dead latent
        fires[:, 2] = labels | (torch.rand(n, generator=g) < 0.1)  # high recall, lower precision
        cases.append(Case(f"seed={seed}, n={n}, d_sae={d_sae} (latent 0 perfect, latent 1 never fires)",
                          (fires, labels)))
    return cases


_DETECT_MISTAKES = [
    ("precision = TP / (times the latent fired), recall = TP / (positions with the label); you swapped them.",
     lambda f, l: (ref.detection_scores(f, l)[1], ref.detection_scores(f, l)[0], ref.detection_scores(f, l)[2])),
]


def _check_detection(fn: Callable, hidden: bool) -> None:
    cases = [_DETECT_HAND, _DETECT_NO_POSITIVES, *_detect_cases([(1, 2000, 256), (2, 7, 3), (3, 500, 1024)])] \
        if hidden else [_DETECT_HAND, *_detect_cases([(0, 50, 6)])]
    compare_function(fn, ref.detection_scores, cases, name="detection_scores", mistakes=_DETECT_MISTAKES,
                     hint="return (precision, recall, f1): float32 tensors [d_sae], 0 where a denominator is 0.")


check_detection_scores, grade_detection_scores = check_and_grade("detection_scores", _check_detection)


# ---------------------------------------------------------------- 14. held_out_f1

_F1_TRUTH_SPLITS = 64  # the grader's own splits, whose mean and spread a learner's are read against
_F1_SIGMAS = 3.0  # standard errors of the mean, for the learner's n_splits
_F1_SLACK = 0.01
_SD_FACTOR = 2.0


@functools.cache
def _labelled_store(hook_name: str):
    """320 held-out windows (corpus seed 5: not the chapter's text) and their activations."""
    windows = activations.corpus_windows(320 * 64, seed=5)
    with quiet():
        return windows, activations.ActivationStore.collect(course_model("corpus_2l"), hook_name, windows.tokens)


@functools.cache
def _label_latents(trained: bool) -> dict:
    """Latents of the committed topk_k8_w1024 (or its untrained self) at every label of the
    held-out windows."""
    from mechlab.sparse_autoencoders import plots, zoo as sae_zoo

    name = "topk_k8_w1024"
    sae = sae_zoo.load(name) if trained else sae_zoo.untrained(name)
    windows, store = _labelled_store(sae.cfg.hook_name)
    return plots.label_latents(sae, store, windows)


def _f1_inputs(trained: bool, group: str, label: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = _label_latents(trained)[group]
    return data.z, data.truth(label), data.rows


@functools.cache
def _f1_truth(trained: bool, group: str, label: str) -> tuple[float, float, int, float]:
    """The grader's mean and sd of the held-out F1 over its own splits, its latent, and the
    best F1 of any latent on all positions (what choosing and scoring on the same data reports)."""
    z, truth, rows = _f1_inputs(trained, group, label)
    mean, sd, latent = ref.held_out_f1(z, truth, rows, n_splits=_F1_TRUTH_SPLITS, seed=1000,
                                       detection_scores=ref.detection_scores)
    in_sample = float(ref.detection_scores(z > 0, truth)[2].max())
    return mean, sd, latent, in_sample


def _f1_cases(hidden: bool) -> list[Case]:
    cases = [Case("the trained SAE, topic 'sport', n_splits=16, seed=3", (True, "topic", "sport"),
                  {"n_splits": 16, "seed": 3}),
             Case("the untrained SAE, subtopic 'football', n_splits=16, seed=3", (False, "subtopic", "football"),
                  {"n_splits": 16, "seed": 3})]
    if hidden:
        cases = [Case("the trained SAE, subtopic 'tennis', n_splits=12, seed=9", (True, "subtopic", "tennis"),
                      {"n_splits": 12, "seed": 9}),
                 Case("the untrained SAE, 'known person', n_splits=12, seed=9", (False, "known person", "known person"),
                      {"n_splits": 12, "seed": 9}),
                 Case("the untrained SAE, subtopic 'football', n_splits=24, seed=4", (False, "subtopic", "football"),
                      {"n_splits": 24, "seed": 4})]
    return cases


def _check_held_out_f1(fn: Callable, hidden: bool) -> None:
    for case in _f1_cases(hidden):
        trained, group, label = case.args
        n_splits = case.kwargs["n_splits"]
        z, truth, rows = _f1_inputs(trained, group, label)
        name = f"held_out_f1({case.description})"
        counted = CountedCalls(ref.detection_scores)
        out = call_learner(fn, "held_out_f1", case.description, (z.clone(), truth.clone(), rows.clone()),
                           {**case.kwargs, "detection_scores": counted})
        if _type(out) is not tuple or len(out) != 3:
            raise CheckFailed(f"{name} should return a tuple (mean, sd, latent), not a {_type(out).__name__}")
        counted.expect("detection_scores", 1, "held_out_f1")
        if not all(_isinstance(v, (float, int)) and not _isinstance(v, bool) for v in out):
            raise CheckFailed(f"{name} should return Python numbers (mean, sd, latent), got "
                              f"{tuple(_type(v).__name__ for v in out)}: use .item() and int()")
        mean, sd, latent = float(out[0]), float(out[1]), int(out[2])
        want_mean, want_sd, want_latent, in_sample = _f1_truth(trained, group, label)
        allowed = _F1_SIGMAS * want_sd / n_splits ** 0.5 + _F1_SLACK
        p = float(truth.float().mean())
        always_on = 2 * p / (1 + p)
        if abs(mean - want_mean) > allowed:
            why = ""
            if abs(mean - always_on) < 0.01:
                why = (f" That is the F1 of a detector that always fires ({always_on:.3f}): a latent fires where its "
                       "activation is > 0.")
            elif abs(mean - in_sample) < abs(mean - want_mean):
                why = (f" Choosing the latent and scoring it on all positions gives {in_sample:.3f}: score the "
                       "latent on the half it was not chosen on.")
            raise CheckFailed(f"{name}: your mean held-out F1 is {mean:.4f}, but over {_F1_TRUTH_SPLITS} splits of "
                              f"the windows the grader's is {want_mean:.4f} (sd {want_sd:.4f} per split, so within "
                              f"{allowed:.4f} is accepted for {n_splits} splits).{why}")
        if not want_sd / _SD_FACTOR <= sd <= want_sd * _SD_FACTOR:
            raise CheckFailed(f"{name}: your sd is {sd:.4f}, but the held-out F1 varies from split to split with sd "
                              f"{want_sd:.4f} (within a factor of {_SD_FACTOR:g} is accepted): the error bar is the "
                              "standard deviation of the F1 over your splits, each a fresh random half of the windows")
        if trained and latent != want_latent:
            raise CheckFailed(f"{name}: the latent chosen most often should be {want_latent}, the best on the grader's "
                              f"splits, not {latent}")
    passed(f"held_out_f1 finds the grader's held-out F1 and its spread, for the trained SAE and its untrained control "
           f"({len(_f1_cases(hidden))} labels)")


check_held_out_f1, grade_held_out_f1 = check_and_grade("held_out_f1", _check_held_out_f1)


# ---------------------------------------------------------------- 15. investigate_facts (the graded investigation)
#
# The question: at the token before a fact's value ("mary smith lives in" | "paris"), the
# model must predict a city (a job, a pet). Which latent of an SAE signals that one is
# coming? The truth is measured here, never taken from the learner: each latent's F1 as a
# detector of "the next token is a <kind>", over every store position that has a next
# token in its window, on held-out windows (corpus seed 4) the learner's function never
# sees. Its answer passes when each latent reaches FACT_BAR of the best latent's F1, on
# two SAEs of different widths (a list of ids copied from one SAE fails on the other).
# The measurement lives in this module, which the grader reloads before every test cell.

FACT_KINDS = ("city", "job", "pet")
FACT_BAR = 0.9  # a latent passes with at least this fraction of the best latent's held-out F1
FACT_SAES = ("topk_k8_w1024", "topk_k8_w2048")  # the chapter's SAE, and one twice as wide
_FACT_TOKENS = 40_000  # held-out text per data set: about 200 positives per kind


@functools.cache
def _fact_data(seed: int, n_tokens: int):
    """(windows, store at blocks.1.hook_resid_pre) of held-out corpus text."""
    windows = activations.corpus_windows(n_tokens=n_tokens, seed=seed)
    with quiet():
        store = activations.ActivationStore.collect(course_model("corpus_2l"), "blocks.1.hook_resid_pre",
                                                    windows.tokens, collect=ref.collect_activations,
                                                    normalise=ref.normalisation_scale)
    return windows, store


def fact_labels(windows) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Over store positions [n, pos - 1] (store position p is token p + 1): which have a
    next token inside the window (`valid`), and, per kind, where that next token is a
    value of that kind (`next_is[kind]`); also `is_[kind]`, where the token itself is one."""
    from mechlab import corpus

    word_class = windows.labels["word_class"][:, 1:]  # store positions
    valid = np.ones(word_class.shape, dtype=bool)
    valid[:, -1] = False
    nxt = np.full_like(word_class, -1)
    nxt[:, :-1] = word_class[:, 1:]
    labels = {}
    for kind in FACT_KINDS:
        c = corpus.WORD_CLASSES.index(kind)
        labels[f"next_is_{kind}"] = nxt == c
        labels[f"is_{kind}"] = word_class == c
    return valid, labels


@torch.no_grad()
def fact_scores(sae, store, windows) -> dict[str, dict[str, torch.Tensor]]:
    """Per kind: every latent's precision, recall and F1 [d_sae] as a detector of "the next
    token is a <kind>", and `on_value`, the fraction of its firings on a value itself."""
    from mechlab.sparse_autoencoders.metrics import encode, sae_scale

    valid, labels = fact_labels(windows)
    x = store.window(slice(None)).reshape(-1, store.d_model) * sae_scale(sae, store)
    z, _ = encode(sae, x, decode=False)
    flat_valid = torch.from_numpy(valid.reshape(-1))
    fires = (z > 0)[flat_valid].float()
    fired = fires.sum(0)
    out = {}
    for kind in FACT_KINDS:
        truth = torch.from_numpy(labels[f"next_is_{kind}"].reshape(-1))[flat_valid].float()
        on_value = torch.from_numpy(labels[f"is_{kind}"].reshape(-1))[flat_valid].float()
        tp = truth @ fires
        precision = torch.where(fired > 0, tp / fired.clamp_min(1), 0.0)
        recall = tp / truth.sum().clamp_min(1)
        f1 = torch.where(fired + truth.sum() > 0, 2 * tp / (fired + truth.sum()).clamp_min(1), 0.0)
        out[kind] = {"precision": precision, "recall": recall, "f1": f1,
                     "on_value": torch.where(fired > 0, (on_value @ fires) / fired.clamp_min(1), 0.0)}
    return out


def _fact_answer(answer, d_sae: int, where: str) -> dict[str, int]:
    """The learner's answer as {kind: latent}, or a CheckFailed saying how it is malformed."""
    if not _isinstance(answer, dict):
        raise CheckFailed(f"investigate_facts({where}) should return a dict {{'city': latent, 'job': latent, "
                          f"'pet': latent}}, but it returned a {_type(answer).__name__}")
    keys = list(answer)
    if sorted(map(repr, keys)) != sorted(map(repr, FACT_KINDS)):
        raise CheckFailed(f"investigate_facts({where}) should return a dict with exactly the keys "
                          f"{list(FACT_KINDS)}, but its keys are {keys}")
    out = {}
    for kind in FACT_KINDS:
        value = answer[kind]
        if _type(value) in (_Tensor, _Parameter) and value.ndim == 0 and not value.is_floating_point() \
                and value.dtype != torch.bool:
            value = int(value.item())
        elif _isinstance(value, np.integer):
            value = int(value)
        if _type(value) is not int:
            raise CheckFailed(f"investigate_facts({where})[{kind!r}] should be a latent id (a Python int), "
                              f"but it is a {_type(value).__name__}: {value!r}")
        if not 0 <= value < d_sae:
            raise CheckFailed(f"investigate_facts({where})[{kind!r}] = {value} is not a latent of this SAE "
                              f"(ids 0 to {d_sae - 1})")
        out[kind] = value
    return out


def _fact_call(fn: Callable, sae_name: str, seed: int, n_tokens: int) -> dict[str, int]:
    from mechlab.sparse_autoencoders import zoo as sae_zoo

    windows, store = _fact_data(seed, n_tokens)
    sae = sae_zoo.load(sae_name)  # the learner's own copy: what it does to it changes no measurement
    where = f"{sae_name}, a store and windows of {n_tokens:,} tokens of held-out text"
    return _fact_answer(call_learner(fn, "investigate_facts", where, (sae, store, windows)), sae.cfg.d_sae, where)


def _fact_verdict(sae_name: str, kind: str, latent: int, scores: dict) -> tuple[bool, str, float]:
    s = scores[kind]
    best = float(s["f1"].max())
    f1, p, r = float(s["f1"][latent]), float(s["precision"][latent]), float(s["recall"][latent])
    ok = f1 >= FACT_BAR * best
    if ok:
        return ok, f"{sae_name} {kind}: latent {latent}, F1 {f1:.2f} >= {FACT_BAR * best:.2f}", 0.0
    line = (f"{sae_name}, {kind}: latent {latent} has F1 {f1:.2f} (precision {p:.2f}, recall {r:.2f}) "
            f"against the bar {FACT_BAR * best:.2f} ({FACT_BAR:.0%} of the best latent's {best:.2f})")
    return ok, line, float(s["on_value"][latent])


def _check_investigate_facts(fn: Callable, hidden: bool) -> None:
    if not hidden:  # visible: only whether the answer is well formed, nothing about whether it is right
        answer = _fact_call(fn, FACT_SAES[0], 3, 6_000)
        passed(f"investigate_facts returns a latent id for each of {', '.join(FACT_KINDS)} ({answer}); "
               "whether they are the right ones is measured by the hidden test, on held-out text")
        return
    held_out = _fact_data(4, _FACT_TOKENS)
    from mechlab.sparse_autoencoders import zoo as sae_zoo

    failures, lines = [], []
    for sae_name in FACT_SAES:
        answer = _fact_call(fn, sae_name, 3, _FACT_TOKENS)
        scores = fact_scores(sae_zoo.load(sae_name), held_out[1], held_out[0])
        for kind in FACT_KINDS:
            ok, line, on_value = _fact_verdict(sae_name, kind, answer[kind], scores)
            lines.append(line)
            if not ok:
                why = (f"; {on_value:.0%} of its firings are on a {kind} itself: label the position *before* "
                       "the value (store position p is token p + 1)") if on_value > 0.3 else ""
                failures.append(line + why)
    if failures:
        raise CheckFailed("measured on held-out text, the latent does not signal that this kind of fact comes "
                          "next:\n  " + "\n  ".join(failures))
    passed("investigate_facts: measured on held-out text, every latent reaches its bar (" + "; ".join(lines) + ")")


# off limits inside the learner's function: this module's fact labels, scores and held-out data
check_investigate_facts, grade_investigate_facts = check_and_grade("investigate_facts", _check_investigate_facts,
                                                                   Truth())


def fact_comparison(fn: Callable):
    """Your answer against the measurement (for the chapter's text, after the exercise): for
    each SAE the hidden test uses and each kind, your latent and the best one, with their
    held-out F1, the runner-up's and the bar. Prints the best latents' numbers, one a line."""
    import pandas as pd

    from mechlab.sparse_autoencoders import zoo as sae_zoo

    windows, store = _fact_data(4, _FACT_TOKENS)
    rows = []
    for sae_name in FACT_SAES:
        answer = _fact_call(fn, sae_name, 3, _FACT_TOKENS)
        scores = fact_scores(sae_zoo.load(sae_name), store, windows)
        for kind in FACT_KINDS:
            s = scores[kind]
            top = s["f1"].topk(2)
            best, yours = int(top.indices[0]), answer[kind]
            rows.append({"sae": sae_name, "kind": kind, "your latent": yours, "your F1": float(s["f1"][yours]),
                         "best latent": best, "best F1": float(top.values[0]), "runner-up F1": float(top.values[1]),
                         "bar": FACT_BAR * float(top.values[0]), "best precision": float(s["precision"][best]),
                         "best recall": float(s["recall"][best]), "passes": float(s["f1"][yours]) >= FACT_BAR * float(top.values[0])})
            tag = f"{sae_name.split('_')[-1]} {kind}"  # distinct labels for the numbers the text quotes
            print(f"{tag}: latent {best} | {tag} F1 {float(top.values[0]):.3f} | {tag} runner-up "
                  f"{float(top.values[1]):.3f} | {tag} precision {float(s['precision'][best]):.3f} | "
                  f"{tag} recall {float(s['recall'][best]):.3f}")
    return pd.DataFrame(rows).round(3)
