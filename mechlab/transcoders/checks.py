"""Chapter 6's visible checks and hidden tests, one `check_x` / `grade_x` pair per exercise.

The hidden tests run the same comparisons as the visible checks on more and other
inputs: other prompts (IOI sentences, the other city templates), the skip transcoders,
an untrained model of another shape, random graphs. The investigation's hidden test
measures the answer in the real model against the corpus's world
(`mechlab.transcoders.investigation`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from mechlab import corpus, zoo
from mechlab.checks import (
    Case, CheckFailed, CountedCalls, assert_tensor_close, call_learner, check_and_grade, compare_function,
    compare_on_models, checked_table,
    course_model, guard_model, other_models, passed, randn, seeded, Truth,
)
from mechlab.pristine import Parameter as _Parameter, Tensor as _Tensor, type_ as _type
from mechlab.sparse_autoencoders import activations
from mechlab.sparse_autoencoders.reference import topk_activation
from mechlab.transcoders import graph as ag
from mechlab.transcoders import investigation
from mechlab.transcoders import reference as ref
from mechlab.transcoders import zoo as tc_zoo


@functools.cache
def _windows(n: int, seed: int, length: int) -> torch.Tensor:
    """`n` windows of held-out corpus text (BOS first), seed >= 3: never the chapter's own."""
    return activations.corpus_windows(n * 64, seed=seed).tokens[:n, :length]


@functools.cache
def _transcoders(which: str) -> tuple:
    return tuple(tc_zoo.load_pair(which))


def _tcs(which: str = "w1024") -> list:
    return list(_transcoders(which))


# ---------------------------------------------------------------- 1. collect_mlp_io


def _collect_cases(hidden: bool) -> list[Case]:
    model = course_model("corpus_2l")
    cases = [Case("corpus_2l, layer 1, 2 windows of 16 tokens", (model, _windows(2, 3, 16), 1))]
    if hidden:
        cases.append(Case("corpus_2l, layer 0, 5 windows of 24 tokens", (model, _windows(5, 4, 24), 0)))
        desc, deep = other_models(61)[0]
        cases.append(Case(f"{desc}, layer 2, 3 windows of 12 tokens", (deep, _windows(3, 5, 12) % deep.cfg.d_vocab, 2)))
    return cases


def _collect_hooks(*names: str) -> Callable:
    def collect(model, tokens, layer):
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=[n.format(layer) for n in names])
        return tuple(cache[n.format(layer)].float().cpu() for n in names)
    return collect


_COLLECT_MISTAKES = [
    ("the MLP reads the residual stream after the second LayerNorm, scale *and* bias applied: "
     "`blocks.ℓ.ln2.hook_out`, not `ln2.hook_normalized` (before the LayerNorm's weight and bias).",
     _collect_hooks("blocks.{}.ln2.hook_normalized", "blocks.{}.hook_mlp_out")),
    ("that input is the residual stream before the LayerNorm (`hook_resid_mid` or `hook_mlp_in`); the MLP reads "
     "`blocks.ℓ.ln2.hook_out`, after it.", _collect_hooks("blocks.{}.hook_resid_mid", "blocks.{}.hook_mlp_out")),
    ("the output is what the MLP writes into the residual stream, `blocks.ℓ.hook_mlp_out`, not its hidden "
     "neurons.", _collect_hooks("blocks.{}.ln2.hook_out", "blocks.{}.mlp.hook_post")),
]


def _check_collect(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.collect_mlp_io, _collect_cases(hidden), "collect_mlp_io", _COLLECT_MISTAKES)
    out = call_learner(guard_model(fn, "collect_mlp_io"), "collect_mlp_io", "the course model",
                       (course_model("corpus_2l"), _windows(1, 3, 8), 0))
    if any(_type(t) in (_Tensor, _Parameter) and (t.requires_grad or t.device.type != "cpu") for t in out):
        raise CheckFailed("collect_mlp_io returned a tensor that requires grad or is not on the CPU: run the model "
                          "under torch.no_grad() and return `.cpu()` copies")


check_collect_mlp_io, grade_collect_mlp_io = check_and_grade("collect_mlp_io", _check_collect)


# ---------------------------------------------------------------- 2. transcode


def _transcode_case(seed: int, batch: int, d_in: int, d_sae: int, d_out: int, k: int, skip: bool) -> Case:
    args = (randn(seed, batch, d_in), randn(seed + 1, d_in, d_sae), randn(seed + 2, d_sae) * 0.5,
            randn(seed + 3, d_sae, d_out), randn(seed + 4, d_out), k, randn(seed + 5, d_in, d_out) if skip else None)
    return Case(f"batch {batch}, d_in {d_in}, d_sae {d_sae}, d_out {d_out}, k={k}, {'with' if skip else 'no'} skip",
                args)


_TRANSCODE_HAND = Case(
    "hand case: x=(1, 2), W_enc=I, b_enc=0, k=1, W_dec rows (1, 1), (0, 3), b_dec=(0.5, 0), no skip -> "
    "z=(0, 2), y_hat=(0.5, 6)",
    (torch.tensor([[1.0, 2.0]]), torch.eye(2), torch.zeros(2), torch.tensor([[1.0, 1.0], [0.0, 3.0]]),
     torch.tensor([0.5, 0.0]), 1, None))


def _transcode_sae_habit(x, W_enc, b_enc, W_dec, b_dec, k, W_skip=None):
    return ref.transcode(x - b_dec if x.shape[-1] == b_dec.shape[-1] else x, W_enc, b_enc, W_dec, b_dec, k, W_skip)


def _transcode_no_skip(x, W_enc, b_enc, W_dec, b_dec, k, W_skip=None):
    return ref.transcode(x, W_enc, b_enc, W_dec, b_dec, k)


def _transcode_relu(x, W_enc, b_enc, W_dec, b_dec, k, W_skip=None):
    z = torch.relu(x @ W_enc + b_enc)
    y = z @ W_dec + b_dec + (x @ W_skip if W_skip is not None else 0)
    return y, z


def _transcode_topk_no_relu(x, W_enc, b_enc, W_dec, b_dec, k, W_skip=None):
    pre = x @ W_enc + b_enc
    top = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    y = z @ W_dec + b_dec + (x @ W_skip if W_skip is not None else 0)
    return y, z


_TRANSCODE_MISTAKES = [
    ("a transcoder's input and output live in different places: don't subtract b_dec from the input (an SAE's "
     "habit); b_dec is added to the output only.", _transcode_sae_habit),
    ("add the skip term x @ W_skip when W_skip is given.", _transcode_no_skip),
    ("keep only the k largest pre-activations (chapter 4's topk_activation), not every positive one.",
     _transcode_relu),
    ("TopK keeps the k largest pre-activations *and* zeroes the negative ones among them: use chapter 4's "
     "topk_activation.", _transcode_topk_no_relu),
]


def _check_transcode(fn: Callable, hidden: bool) -> None:
    specs = [(0, 4, 6, 10, 6, 3, False), (10, 5, 6, 12, 6, 4, True)]
    if hidden:
        specs += [(20, 16, 8, 32, 5, 6, True), (30, 7, 4, 9, 4, 9, False), (40, 3, 5, 20, 7, 1, True)]
    compare_function(fn, ref.transcode, [_TRANSCODE_HAND] + [_transcode_case(*s) for s in specs], name="transcode",
                     mistakes=_TRANSCODE_MISTAKES)


check_transcode, grade_transcode = check_and_grade("transcode", _check_transcode)


# ---------------------------------------------------------------- 3. variance_explained


_FVE_HAND = Case("hand case: targets (0, 0), (2, 2), predictions (0, 1), (2, 1) -> 1 - 2 / 4 = 0.5",
                 (torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([[0.0, 0.0], [2.0, 2.0]])))


def _fve_case(seed: int, batch: int, d: int, noise: float, offset: float) -> Case:
    y = randn(seed, batch, d) + offset
    return Case(f"{batch} targets of size {d}, offset {offset}, noise {noise}",
                (y + noise * randn(seed + 1, batch, d), y))


def _fve_uncentred(prediction, target):
    return float(1 - (target - prediction).pow(2).sum() / target.pow(2).sum())


def _fve_per_dimension(prediction, target):
    return float((1 - (target - prediction).pow(2).sum(0) / (target - target.mean(0)).pow(2).sum(0)).mean())


def _fve_per_example(prediction, target):
    return float((1 - (target - prediction).pow(2).sum(-1) / (target - target.mean(0)).pow(2).sum(-1)).mean())


def _fve_swapped(prediction, target):
    return ref.variance_explained(target, prediction)


_FVE_MISTAKES = [
    ("the denominator is the target's squared deviation from its *mean* (per dimension, over the batch), not its "
     "squared norm: predicting a constant mean output should score 0.", _fve_uncentred),
    ("one ratio over everything: sum the errors and the deviations over the batch *and* the dimensions first, "
     "then divide (a mean of per-dimension ratios weights quiet dimensions like loud ones).", _fve_per_dimension),
    ("one ratio over everything, not a mean of per-example ratios.", _fve_per_example),
    ("the spread in the denominator is the *target's*, not the prediction's: check the argument order.",
     _fve_swapped),
]


def _check_fve(fn: Callable, hidden: bool) -> None:
    specs = [(0, 64, 8, 0.3, 2.0)]
    if hidden:
        specs += [(10, 200, 16, 0.5, -3.0), (20, 50, 4, 2.0, 0.0), (30, 7, 32, 0.05, 10.0)]
    compare_function(fn, ref.variance_explained, [_FVE_HAND] + [_fve_case(*s) for s in specs],
                     name="variance_explained", mistakes=_FVE_MISTAKES,
                     hint="return a Python float (`float(...)`), not a tensor.")


check_variance_explained, grade_variance_explained = check_and_grade("variance_explained", _check_fve)


# ---------------------------------------------------------------- 4. replacement_loss


def _replacement_cases(hidden: bool) -> list[Case]:
    model = course_model("corpus_2l")
    tcs, skip = _tcs("w1024"), _tcs("skip_w1024")
    cases = [Case("corpus_2l, both transcoders, 4 windows of 32 tokens", (model, _windows(4, 3, 32), tcs)),
             Case("corpus_2l, layer 1's transcoder alone", (model, _windows(4, 3, 32), tcs[1:]))]
    if hidden:
        cases += [Case("corpus_2l, layer 0's skip transcoder alone", (model, _windows(6, 4, 40), skip[:1])),
                  Case("corpus_2l, both skip transcoders", (model, _windows(6, 4, 40), skip)),
                  Case("corpus_2l, both, 8 windows of 64 tokens", (model, _windows(8, 5, 64), tcs))]
    return cases


def _replacement_from_clean_run(model, tokens, transcoders):
    """Every transcoder reads its input from the *clean* run, not from the replaced one."""
    inputs = {tc.cfg.layer: ref.collect_mlp_io(model, tokens, tc.cfg.layer)[0] for tc in transcoders}
    hooks = [(f"blocks.{tc.cfg.layer}.hook_mlp_out", lambda t, hook, tc=tc: tc(inputs[tc.cfg.layer].to(t.device)))
             for tc in transcoders]
    with torch.no_grad():
        return float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks))


def _replacement_first_only(model, tokens, transcoders):
    return ref.replacement_loss(model, tokens, list(transcoders)[:1])


def _replacement_reads_resid(model, tokens, transcoders):
    inputs = {}
    hooks = []
    for tc in transcoders:
        l = tc.cfg.layer
        hooks += [(f"blocks.{l}.hook_resid_mid", lambda t, hook, l=l: inputs.__setitem__(l, t)),
                  (f"blocks.{l}.hook_mlp_out", lambda t, hook, tc=tc, l=l: tc(inputs[l]))]
    with torch.no_grad():
        return float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks))


_REPLACEMENT_MISTAKES = [
    ("each transcoder must read the MLP's input in the *replaced* run: layer 1's transcoder sees what layer 0's "
     "transcoder wrote, not the clean model's input (hook the input in the same run).",
     _replacement_from_clean_run),
    ("replace the MLP of every transcoder in the list, each at its own layer (`tc.cfg.layer`).",
     _replacement_first_only),
    ("the transcoder reads what the MLP reads, after the second LayerNorm (`blocks.ℓ.ln2.hook_out`), not the "
     "residual stream before it.", _replacement_reads_resid),
]


def _check_replacement(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.replacement_loss, _replacement_cases(hidden), "replacement_loss", _REPLACEMENT_MISTAKES,
                      atol=1e-5, rtol=1e-5)  # reading layer 1's input from the clean run moves the loss by 2e-4 here


check_replacement_loss, grade_replacement_loss = check_and_grade("replacement_loss", _check_replacement)


# ---------------------------------------------------------------- 5. freeze_hooks


def _prompts(hidden: bool) -> list[tuple[str, torch.Tensor, ag.Target]]:
    """(description, tokens, target) of the prompts the graph exercises are checked on."""
    model = course_model("corpus_2l")
    world = corpus.build_world()
    people = [world.known[3], world.known[11]] + ([world.known[20], world.known[27]] if hidden else [])
    out = [(f"{p.name!r}, template {t!r}", ag.recall_prompt(model, p, t), ag.city_target(p.city))
           for p, t in zip(people, ag.TEMPLATES * 2)]
    if hidden:
        prompt = corpus.ioi_prompts(1, seed=7, template=2)[0]
        io, s = (int(t) for t in zoo.token_ids([prompt.correct, prompt.distractor]))
        out.append((f"IOI prompt {prompt.text!r}", model.to_tokens(prompt.text)[0], ag.logit_diff_target(io, s)))
    return out


def _missing(hooks: list) -> str:
    names = {name for name, _ in hooks}
    expected = [name for name, _ in ref.freeze_hooks({}, course_model("corpus_2l").cfg.n_layers)]
    missing = [n for n in expected if n not in names]
    return f" Not frozen by your hooks: {', '.join(missing)}." if missing else ""


def _check_freeze(fn: Callable, hidden: bool) -> None:
    model, tcs = course_model("corpus_2l"), _tcs()
    for description, tokens, target in _prompts(hidden):
        made = []

        def freeze(cache, n_layers, description=description):
            hooks = call_learner(fn, "freeze_hooks", f"the cache of {description}", (cache, n_layers))
            if _type(hooks) not in (list, tuple) or not all(
                    _type(h) in (list, tuple) and len(h) == 2 and _type(h[0]) is str and callable(h[1]) for h in hooks):
                raise CheckFailed("freeze_hooks should return a list of (hook_name, function) pairs")
            made.append(list(hooks))
            return hooks

        try:
            lr = ag.LocalReplacement(model, tcs, tokens, freeze=freeze)
            with torch.no_grad():
                runs = [lr.run(torch.full_like(lr.coefficients, c)) for c in (0.0, 1.0, 2.0)]
        except CheckFailed:
            raise
        except Exception as e:
            raise CheckFailed(f"the local replacement model of {description}, run with your hooks, raised "
                              f"{_type(e).__name__}: {e}\nHint: each hook must return the cached value *of its own "
                              "name* (a lambda in a loop sees the loop's last name unless you bind it: "
                              "`lambda t, hook, name=name: cache[name]`).") from None
        finally:
            model.reset_hooks()
        (_, zero), (pre_one, one), (pre_two, two) = runs
        assert_tensor_close(one, lr.clean_logits, name=f"logits of the local replacement model on {description} "
                            "with every coefficient 1", atol=1e-4,
                            hint="at coefficients one nothing has changed, so frozen values equal live ones: "
                                 "freeze with the cache's values, unchanged.")
        try:
            assert_tensor_close(two - one, one - zero, name=f"logits(c=2) - logits(c=1) on {description}", atol=2e-3,
                                rtol=1e-3)
        except CheckFailed as e:
            raise CheckFailed(f"{e}\nThe run is not linear in the coefficients: a nonlinearity is still live."
                              + _missing(made[0])) from None
        expected = ref.adjacency_matrix(ag.LocalReplacement(model, tcs, tokens), target)
        try:
            got = ref.adjacency_matrix(lr, target)
        except RuntimeError as e:  # an output that depends on no coefficient at all
            raise CheckFailed(f"with your hooks, the graph of {description} cannot be built ({e}): some output no "
                              "longer depends on any node.\nHint: freeze only the LayerNorm scales and the attention "
                              "patterns; everything else must follow the nodes.") from None
        assert_tensor_close(got, expected, name=f"the edges of {description}'s graph with your frozen hooks",
                            atol=1e-3, rtol=1e-3,
                            hint="linear, but not the local replacement model: freeze only the LayerNorm scales and "
                                 "the attention patterns, everything else must follow the nodes.")
    passed(f"freeze_hooks: the local replacement model is exact at coefficients one and linear, and its edges match "
           f"the reference's, on {len(_prompts(hidden))} prompts")


check_freeze_hooks, grade_freeze_hooks = check_and_grade("freeze_hooks", _check_freeze)


# ---------------------------------------------------------------- 6. adjacency_matrix


def _graph_cases(hidden: bool, transcoders: str = "w1024") -> list[Case]:
    model = course_model("corpus_2l")
    cases = [Case(description, (ag.LocalReplacement(model, _tcs(transcoders), tokens), target))
             for description, tokens, target in _prompts(hidden)]
    if hidden:
        description, tokens, target = _prompts(False)[0]
        cases.append(Case(f"{description}, skip transcoders",
                          (ag.LocalReplacement(model, _tcs("skip_w1024"), tokens), target)))
    return cases


def _adjacency_total(replacement, target):
    pre, logits = replacement.run(propagate=True)
    return torch.stack([torch.autograd.grad(o, replacement.coefficients, retain_graph=True)[0]
                        for o in [*pre, target(logits)]])


def _adjacency_times_value(replacement, target):
    values = torch.tensor([n.value for n in replacement.nodes])
    return ref.adjacency_matrix(replacement, target) * values


def _adjacency_no_target(replacement, target):
    return ref.adjacency_matrix(replacement, target)[:-1]


_ADJACENCY_MISTAKES = [
    ("use `replacement.run()` as it is: with `propagate=True` the rows are total effects through downstream "
     "latents, not edges.", _adjacency_total),
    ("the derivative with respect to a node's coefficient already includes its activation (the coefficient "
     "multiplies it): don't multiply by the activation again.", _adjacency_times_value),
    ("the last row is the target's: n_latents + 1 rows in all.", _adjacency_no_target),
]


def _check_adjacency(fn: Callable, hidden: bool) -> None:
    cases = _graph_cases(hidden)
    compare_function(fn, ref.adjacency_matrix, cases, name="adjacency_matrix", mistakes=_ADJACENCY_MISTAKES,
                     copy_inputs=False, atol=1e-4, rtol=1e-3, report=False)
    lr, target = cases[0].args
    rows = call_learner(fn, "adjacency_matrix", cases[0].description, (lr, target)).detach()
    with torch.no_grad():
        pre, logits = lr.run()
    assert_tensor_close(rows.sum(-1) + ag.bias_constant(lr, target), torch.cat([pre, target(logits)[None]]),
                        name="each row's sum plus the biases' constant against the value it differentiates", atol=1e-3)
    passed(f"adjacency_matrix matches the reference on {len(cases)} prompts, and every row adds up to its "
           "pre-activation (or target) with the biases' constant")


check_adjacency_matrix, grade_adjacency_matrix = check_and_grade("adjacency_matrix", _check_adjacency)


# ---------------------------------------------------------------- 7. node_influence


def _dag(seed: int, n: int, density: float, negative: bool = True) -> torch.Tensor:
    """A random graph in topological order (edges from lower to higher index: row > column),
    some rows without inputs, signed weights."""
    g = seeded(seed)
    a = torch.randn(n, n, generator=g) if negative else torch.rand(n, n, generator=g)
    a = a * (torch.rand(n, n, generator=g) < density)
    a = torch.tril(a, diagonal=-1)
    a[: max(1, n // 4)] = 0  # the first nodes are inputs
    return a


def _influence_case(seed: int, n: int, density: float, outputs: int) -> Case:
    w = torch.zeros(n)
    w[-outputs:] = torch.rand(outputs, generator=seeded(seed + 1))
    return Case(f"random graph of {n} nodes (density {density}), {outputs} weighted output(s)",
                (_dag(seed, n, density), w))


_INFLUENCE_HAND = Case(
    "hand case: chain 0 -> 1 -> 2 with weights 2 and -3, node 2 the output -> influence (1, 1, 0)",
    (torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [0, -3.0, 0]]), torch.tensor([0.0, 0.0, 1.0])))


def _normalise(a):
    a = a.abs()
    return a / a.sum(-1, keepdim=True).clamp_min(1e-10)


def _influence_direct(adjacency, weights):
    return weights @ _normalise(adjacency)


def _influence_with_identity(adjacency, weights):
    return weights @ torch.linalg.inv(torch.eye(len(adjacency)) - _normalise(adjacency))


def _influence_columns(adjacency, weights):
    a = adjacency.abs()
    a = a / a.sum(0, keepdim=True).clamp_min(1e-10)
    return weights @ torch.linalg.inv(torch.eye(len(a)) - a) - weights


def _influence_signed(adjacency, weights):
    a = adjacency / adjacency.abs().sum(-1, keepdim=True).clamp_min(1e-10)
    return weights @ torch.linalg.inv(torch.eye(len(a)) - a) - weights


def _influence_transposed(adjacency, weights):
    return torch.linalg.inv(torch.eye(len(adjacency)) - _normalise(adjacency)) @ weights - weights


_INFLUENCE_MISTAKES = [
    ("that is the direct influence only (paths of length 1): sum over every length, (I - Â)^-1 - I.",
     _influence_direct),
    ("subtract the identity: (I - Â)^-1 - I, so an output does not count as influencing itself.",
     _influence_with_identity),
    ("normalise each *row* (a target's inputs add up to 1), not each column.", _influence_columns),
    ("take absolute values before normalising: influence counts what a node contributes, whatever its sign.",
     _influence_signed),
    ("rows are targets: multiply the weights from the left, w^T (I - Â)^-1, not (I - Â)^-1 w.",
     _influence_transposed),
]


def _check_influence(fn: Callable, hidden: bool) -> None:
    specs = [(0, 8, 0.5, 1)]
    if hidden:
        specs += [(10, 30, 0.3, 1), (20, 50, 0.2, 3), (30, 12, 0.9, 2)]
    compare_function(fn, ref.node_influence, [_INFLUENCE_HAND] + [_influence_case(*s) for s in specs],
                     name="node_influence", mistakes=_INFLUENCE_MISTAKES, atol=1e-5)


check_node_influence, grade_node_influence = check_and_grade("node_influence", _check_influence)


# ---------------------------------------------------------------- 8. prune_nodes


_PRUNE_HANDS = [
    Case("hand case: (6, 2, 1, 1), share 0.5 -> 6 alone is half of 12: keep (T, F, F, F)",
         (torch.tensor([6.0, 2.0, 1.0, 1.0]), 0.5)),
    Case("hand case: (1, 5, 3, 1), share 0.8 -> 5 + 3 = 8 of 10: keep (F, T, T, F)",
         (torch.tensor([1.0, 5.0, 3.0, 1.0]), 0.8)),
    Case("tie at the cut-off: (2, 4, 2, 2), share 0.6 -> 4 + 2 = 6 of 10; both other 2s tie with the last kept",
         (torch.tensor([2.0, 4.0, 2.0, 2.0]), 0.6)),
    Case("all zeros -> keep nothing", (torch.zeros(5), 0.8)),
    Case("share exactly reached: (6, 4), share 0.6 -> keep (T, F)", (torch.tensor([6.0, 4.0]), 0.6)),
]


def _prune_case(seed: int, n: int, share: float) -> Case:
    return Case(f"{n} random scores, share {share}", (torch.rand(n, generator=seeded(seed)) ** 3, share))


def _prune_strict(scores, share):
    total = scores.sum()
    if total <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    ordered = scores.sort(descending=True).values
    reached = (ordered.cumsum(0) > share * total).nonzero()
    return scores >= (ordered[reached[0, 0]] if len(reached) else ordered[-1])


def _prune_one_short(scores, share):
    total = scores.sum()
    ordered = scores.sort(descending=True).values
    return scores > ordered[(ordered.cumsum(0) < share * total).sum().clamp_max(len(scores) - 1)]


def _prune_by_count(scores, share):
    k = max(1, round(share * len(scores)))
    return scores >= scores.sort(descending=True).values[k - 1]


def _prune_each(scores, share):
    return scores >= (1 - share) * scores.max()


_PRUNE_MISTAKES = [
    ("stop at the first entry where the running sum *reaches* the share (>=), not where it exceeds it.",
     _prune_strict),
    ("keep the entry that makes the running sum reach the share, not only the ones before it.", _prune_one_short),
    ("the share is of the total *score*, not of the number of entries.", _prune_by_count),
    ("sort the scores and add them up, largest first: compare the running sum with the share of the total.",
     _prune_each),
]


def _check_prune(fn: Callable, hidden: bool) -> None:
    cases = list(_PRUNE_HANDS) + [_prune_case(0, 20, 0.8)]
    if hidden:
        cases += [_prune_case(10, 200, 0.9), _prune_case(20, 50, 0.5), _prune_case(30, 7, 0.99),
                  Case("one score", (torch.tensor([3.0]), 0.8))]
    compare_function(fn, ref.prune_nodes, cases, name="prune_nodes", mistakes=_PRUNE_MISTAKES,
                     hint="return a boolean tensor of the scores' shape.")


check_prune_nodes, grade_prune_nodes = check_and_grade("prune_nodes", _check_prune)


# ---------------------------------------------------------------- 9. ablate_latents


def _ablate_cases(hidden: bool) -> list[Case]:
    model = course_model("corpus_2l")
    cases = []
    for k, (description, tokens, target) in enumerate(_prompts(hidden)):
        for which in (("w1024", "skip_w1024") if hidden and k == 0 else ("w1024",)):
            lr = ag.LocalReplacement(model, _tcs(which), tokens)
            effects = ag.total_effects(lr, target)[: lr.n_latents]
            nodes = ag.latent_triples(lr.nodes, effects.abs().argsort(descending=True)[: 3 + k].tolist())
            cases.append(Case(f"{description}, {which}, ablating {nodes}",
                              (model, _tcs(which), lr.tokens, lr.errors, nodes)))
    cases.append(Case(f"{_prompts(False)[0][0]}, nothing ablated",
                      (model, _tcs(), cases[0].args[2], cases[0].args[3], [])))
    return cases


def _ablate_recomputed_errors(model, transcoders, tokens, errors, nodes):
    return ref.ablate_latents(model, transcoders, tokens, [torch.zeros_like(e) for e in errors], nodes)


def _ablate_pre_topk(model, transcoders, tokens, errors, nodes):
    def removed_before_topk(layer, tc):
        def fn(x, out):
            pre = tc.pre_acts(x).clone()
            for l, p, i in nodes:
                if l == layer:
                    pre[p, i] = -torch.inf
            return tc.decode(topk_activation(pre, tc.cfg.k).nan_to_num(0.0), x) + errors[layer]
        return fn

    return ag.run_with_mlps(model, tokens, {layer: removed_before_topk(layer, tc)
                                            for layer, tc in enumerate(transcoders)})


def _ablate_every_position(model, transcoders, tokens, errors, nodes):
    every = [(l, p, i) for l, _, i in nodes for p in range(len(tokens))]
    return ref.ablate_latents(model, transcoders, tokens, errors, every)


_ABLATE_MISTAKES = [
    ("add the frozen error vectors (`errors[layer]`) to each transcoder's output: without them the replacement is "
     "not the model, and the change you measure mixes the ablation with the transcoders' errors.",
     _ablate_recomputed_errors),
    ("zero the latent's activation *after* TopK: removing it before TopK lets another latent into the top k in its "
     "place.", _ablate_pre_topk),
    ("ablate each latent only at its own position, not at every position.", _ablate_every_position),
]


def _check_ablate(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.ablate_latents, _ablate_cases(hidden), "ablate_latents", _ABLATE_MISTAKES, atol=1e-4)


check_ablate_latents, grade_ablate_latents = check_and_grade("ablate_latents", _check_ablate)


# ---------------------------------------------------------------- 10. intervention_test

_INTERVENTION_COLUMNS = ["prompt", "kind", "layer", "position", "latent", "predicted", "real"]


def _intervention_cases(hidden: bool) -> list[Case]:
    prompts = _prompts(hidden)
    if hidden:
        return [Case(f"{len(prompts)} prompts ({'; '.join(d for d, *_ in prompts)}), k=6, n_random=5, seed=9",
                     ([(t, target) for _, t, target in prompts],), {"k": 6, "n_random": 5, "seed": 9})]
    return [Case(f"{len(prompts)} prompts ({'; '.join(d for d, *_ in prompts)}), k=3, n_random=3, seed=1",
                 ([(t, target) for _, t, target in prompts],), {"k": 3, "n_random": 3, "seed": 1})]


def _intervention_table(out, label: str):
    return checked_table(out, label, _INTERVENTION_COLUMNS)


def _check_intervention_test(fn: Callable, hidden: bool) -> None:
    model, tcs = course_model("corpus_2l"), _tcs()
    for case in _intervention_cases(hidden):
        (prompts,) = case.args
        k, n_random = case.kwargs["k"], case.kwargs["n_random"]
        label = f"intervention_test({case.description})"
        calls = CountedCalls(ref.ablate_latents)

        def run():
            return _intervention_table(call_learner(fn, "intervention_test", case.description, (model, tcs, prompts),
                                                    {**case.kwargs, "ablate": calls,
                                                     "replacement": ag.LocalReplacement}), label)

        table = run()
        if calls.calls < len(table):
            raise CheckFailed(f"{label} called the `ablate` it was given {calls.calls} times for {len(table)} rows; "
                              "ablate with the `ablate` argument (the grader hands in its own)")
        for p, (tokens, target) in enumerate(prompts):
            rows = table[table["prompt"] == p]
            where = f"{label}, prompt {p}"
            lr = ag.LocalReplacement(model, tcs, tokens)
            effects = ag.total_effects(lr, target)[: lr.n_latents]
            base = float(target(lr.clean_logits))
            index = {(n.layer, n.position, n.latent): i for i, n in enumerate(lr.nodes[: lr.n_latents])}
            order = effects.abs().argsort(descending=True).tolist()
            top = {tuple(ag.latent_triples(lr.nodes, [i])[0]) for i in order[:k]}
            kinds = {str(kind): {(int(r.layer), int(r.position), int(r.latent)) for r in group.itertuples()}
                     for kind, group in rows.groupby("kind")}
            counts = {str(kind): len(group) for kind, group in rows.groupby("kind")}
            if counts != {"top": k, "random": n_random}:
                raise CheckFailed(f"{where}: expected {k} rows of kind 'top' and {n_random} of kind 'random', got "
                                  f"{counts or 'none'}")
            if kinds["top"] != top:
                by_sign = {tuple(ag.latent_triples(lr.nodes, [i])[0])
                           for i in effects.argsort(descending=True)[:k].tolist()}
                by_activation = {tuple(ag.latent_triples(lr.nodes, [i])[0]) for i in
                                 torch.tensor([n.value for n in lr.nodes[: lr.n_latents]]).argsort(descending=True)[:k]
                                 .tolist()}
                why = (" Those are the largest total effects with their sign: rank by the absolute value, since "
                       "a latent that pushes the target down matters as much." if kinds["top"] == by_sign else
                       " Those are the most active latents: rank by total effect on the target, which is what the "
                       "graph predicts." if kinds["top"] == by_activation else "")
                raise CheckFailed(f"{where}: your top latents are {sorted(kinds['top'])}, but the {k} with the largest "
                                  f"|total effect| are {sorted(top)}.{why}")
            outside = [node for node in kinds["random"] if node not in index]
            if outside:
                raise CheckFailed(f"{where}: the random latent {outside[0]} is not active on this prompt; ablating a "
                                  "latent that is not firing changes nothing, so the control would be empty. Draw "
                                  "among the prompt's active latents (lr.nodes[:lr.n_latents])")
            if kinds["random"] & top or len(kinds["random"]) < n_random:
                raise CheckFailed(f"{where}: the random latents should be {n_random} different active latents outside "
                                  "the top ones")
            for r in rows.itertuples():
                node = (int(r.layer), int(r.position), int(r.latent))
                i = index[node]
                want_predicted = -float(effects[i])
                if abs(float(r.predicted) - want_predicted) > 1e-4 * max(1.0, abs(want_predicted)):
                    why = (" That is the total effect itself: removing a node changes the target by about *minus* "
                           "its total effect." if abs(float(r.predicted) + want_predicted) < 1e-4 * max(
                               1.0, abs(want_predicted)) else "")
                    raise CheckFailed(f"{where}: node {node}'s predicted change is {float(r.predicted):.5f}, but minus "
                                      f"its total effect is {want_predicted:.5f}.{why}")
                want_real = float(target(ref.ablate_latents(model, tcs, lr.tokens, lr.errors, [node]))) - base
                if abs(float(r.real) - want_real) > 1e-3 * max(1.0, abs(want_real)):
                    raise CheckFailed(f"{where}: node {node}'s real change is {float(r.real):.5f}, but ablating it "
                                      f"alone changes the target by {want_real:.5f} from its value with nothing "
                                      "ablated")
        again = run()
        if sorted(map(tuple, again[["prompt", "layer", "position", "latent"]].values.tolist())) != \
                sorted(map(tuple, table[["prompt", "layer", "position", "latent"]].values.tolist())):
            raise CheckFailed(f"{label} chose other random latents when called again with the same seed; draw them "
                              "from a torch.Generator seeded with `seed`")
    passed(f"intervention_test tests the graph's top latents beside random active ones, every row as measured, on "
           f"{len(_intervention_cases(hidden)[0].args[0])} prompts")


check_intervention_test, grade_intervention_test = check_and_grade("intervention_test", _check_intervention_test)


# ---------------------------------------------------------------- 11. the investigation


def _recall_answers(fn: Callable, hidden: bool
                    ) -> list[tuple[corpus.Person, str, ag.LocalReplacement, list[tuple[int, int, int]]]]:
    """The learner's answer on each prompt, checked for form, with the prompt's local
    replacement model it is measured with."""
    model, tcs = course_model("corpus_2l"), _tcs()
    call = guard_model(fn, "explain_recall")
    answers = []
    for person, template in investigation.prompts(hidden):
        lr = investigation.replacement(model, tcs, person, template)
        description = f"the prompt {template.format(p=person.name)!r}"
        answer = call_learner(call, "explain_recall", description, (model, tcs, lr.tokens.clone()))
        try:
            nodes = investigation.normalise(answer, lr)
        except CheckFailed as e:
            raise CheckFailed(f"explain_recall({description}): {e}") from None
        if not nodes:
            raise CheckFailed(f"explain_recall({description}) returned no latent")
        answers.append((person, template, lr, nodes))
    return answers


def _prediction(lr: ag.LocalReplacement, city: str, nodes) -> float:
    """The share of the target the graph predicts `nodes` remove: the sum of their total
    effects over the target (0 for a latent that is not active on the prompt)."""
    target = ag.city_target(city)
    effects = ag.total_effects(lr, target)[: lr.n_latents]
    index = {t: i for i, t in enumerate(ag.latent_triples(lr.nodes, range(lr.n_latents)))}
    return sum(float(effects[index[n]]) for n in nodes if n in index) / float(target(lr.clean_logits))


def _over_promise(answers) -> str:
    """For a failing answer, on the first ten prompts: what the graph predicts its latents
    remove against what they remove in the real model."""
    predicted = [_prediction(lr, person.city, nodes) for person, _, lr, nodes in answers[:10]]
    real = [investigation.removed_share(lr, person.city, nodes) for person, _, lr, nodes in answers[:10]]
    p, r = investigation.mean_share(predicted), investigation.mean_share(real)
    if p > r + 0.05:
        return (f"On the first ten prompts the graph predicts that your latents remove {p:.2f} of the target; "
                f"ablated together in the real model they remove {r:.2f}. Neither the graph's predictions nor "
                "single ablations add up to what a set of latents removes together: measure sets in the real "
                "model, and find out what the graph leaves out.")
    return "Find what carries the fact, not what fires most."


def _check_explain_recall(fn: Callable, hidden: bool) -> None:
    answers = _recall_answers(fn, hidden)
    if not hidden:
        passed(f"explain_recall returned well-formed answers (at most {investigation.BUDGET} latents) on "
               f"{len(answers)} prompts; the hidden test measures what ablating them removes")
        return
    shares = [investigation.removed_share(lr, p.city, nodes) for p, _, lr, nodes in answers]
    mean = investigation.mean_share(shares)
    if not mean >= investigation.BAR:
        worst = int(np.argmin(shares))
        person, template, _, nodes = answers[worst]
        raise CheckFailed(
            f"ablating your latents removes {mean:.2f} of the target on average over the {len(shares)} prompts; the "
            f"bar is {investigation.BAR}. Worst: {template.format(p=person.name)!r}, where your latents {nodes} "
            f"remove {shares[worst]:.2f} of the preference for {person.city}. {_over_promise(answers)}")
    passed(f"explain_recall: ablating your latents removes {mean:.2f} of the target on average over the "
           f"{len(shares)} prompts (bar {investigation.BAR})")


# off limits inside the learner's function: the ablation that judges an answer, and this module's
# strategies (the graded prompts and their replacement models stay: the function is handed them)
check_explain_recall, grade_explain_recall = check_and_grade(
    "explain_recall", _check_explain_recall,
    Truth(modules=(investigation,), public=("prompts", "replacement", "normalise")))


def _top_activations(model, transcoders, tokens):
    lr = ag.LocalReplacement(model, transcoders, tokens)
    top = torch.tensor([n.value for n in lr.nodes[: lr.n_latents]]).argsort(descending=True)[: investigation.BUDGET]
    return ag.latent_triples(lr.nodes, top.tolist())


_GRAPHS: dict[tuple, tuple[object, ag.Graph]] = {}


def predicted_city_graph(model, transcoders, tokens) -> ag.Graph:
    """The graph of the city the model itself prefers on the prompt (what an answer that is
    not told the city builds). Kept per prompt: the comparison's two influence strategies
    read the same 90 graphs."""
    key = (id(model), *map(id, transcoders), *tokens.tolist())
    if key not in _GRAPHS or _GRAPHS[key][0] is not model:  # (an id can be reused once its object is gone)
        _GRAPHS[key] = model, ag.attribution_graph(model, transcoders, tokens, _predicted_city_target(model, tokens))
    return _GRAPHS[key][1]


def _last_position_influence(model, transcoders, tokens):
    g = predicted_city_graph(model, transcoders, tokens)
    last = [i for i in range(g.n_latents) if g.nodes[i].position == len(tokens) - 1]
    return ag.latent_triples(g.nodes, sorted(last, key=lambda i: -float(g.influence[i]))[: investigation.BUDGET])


def _influence(model, transcoders, tokens):
    g = predicted_city_graph(model, transcoders, tokens)
    return ag.latent_triples(g.nodes, ag.top_nodes(g, investigation.BUDGET, ("latent",)))


def _predicted_city_target(model, tokens):
    city = int(model(tokens[None])[0, -1, ag.city_ids()].argmax())
    return ag.city_target(corpus.CITIES[city])


def _largest_effects(model, transcoders, tokens, k: int = investigation.BUDGET, signed: bool = True):
    """The k latents of largest total effect on the city the model prefers (signed: the
    ones that push it up most), as the graph ranks them."""
    lr = ag.LocalReplacement(model, transcoders, tokens)
    effects = ag.total_effects(lr, _predicted_city_target(model, tokens))[: lr.n_latents]
    return ag.latent_triples(lr.nodes, (effects if signed else effects.abs()).argsort(descending=True)[:k].tolist())


def _single_ablations(model, transcoders, tokens):
    """Of the 16 latents of largest |total effect|, the 6 that remove the most when each is
    ablated alone in the real model: real effects, but chosen one at a time."""
    lr = ag.LocalReplacement(model, transcoders, tokens)
    target = _predicted_city_target(model, tokens)
    candidates = _largest_effects(model, transcoders, tokens, 16, signed=False)
    after = torch.tensor([float(target(ref.ablate_latents(model, transcoders, lr.tokens, lr.errors, [c])))
                          for c in candidates])
    return [candidates[i] for i in after.argsort()[: investigation.BUDGET].tolist()]


STRATEGIES = {"the 6 most active latents": _top_activations,
              "the 6 most influential latents at the last position": _last_position_influence,
              "the 6 most influential latents (unsigned)": _influence,
              "the 6 largest total effects (the graph's ranking)": _largest_effects,
              "the 6 largest single real ablations": _single_ablations}


def _frozen(lr: ag.LocalReplacement, parts: str) -> list:
    """Hooks that freeze LayerNorm's scales ("ln"), the attention patterns ("attn") or both
    at their values on the replacement's prompt."""
    with torch.no_grad():
        _, cache = lr.model.run_with_cache(lr.tokens[None])
    hooks = ref.freeze_hooks(cache, lr.model.cfg.n_layers)
    return [h for h in hooks if ("hook_scale" in h[0] and "ln" in parts) or ("pattern" in h[0] and "attn" in parts)]


def recall_gap(choose: Callable = _largest_effects) -> dict[str, float]:
    """Where the graph's prediction for its own six latents parts from the real ablation,
    on the 90 graded prompts: the mean share of the target removed as the graph predicts
    it (the sum of minus the total effects), as the sum of single real ablations, and
    ablated together with LayerNorm and attention frozen, with one of them frozen, and
    live (the grader's measurement)."""
    model, tcs = course_model("corpus_2l"), _tcs()
    rows = {k: [] for k in ("graph's prediction (sum of total effects)", "sum of single real ablations",
                            "together, LayerNorm and attention frozen", "together, LayerNorm frozen",
                            "together, attention frozen", "together, everything live (graded)")}
    for person, template in investigation.prompts(True):
        lr = investigation.replacement(model, tcs, person, template)
        target = ag.city_target(person.city)
        nodes = choose(model, tcs, lr.tokens)
        base = float(target(lr.clean_logits))

        def removed(nodes, frozen=()) -> float:
            with lr.model.hooks(fwd_hooks=list(frozen)):
                return (base - float(target(ref.ablate_latents(model, tcs, lr.tokens, lr.errors, nodes)))) / base

        values = [_prediction(lr, person.city, nodes), sum(removed([n]) for n in nodes),
                  removed(nodes, _frozen(lr, "ln attn")), removed(nodes, _frozen(lr, "ln")),
                  removed(nodes, _frozen(lr, "attn")), removed(nodes)]
        for key, value in zip(rows, values):
            rows[key].append(value)
    means = {key: investigation.mean_share(v) for key, v in rows.items()}
    for key, value in means.items():
        print(f"the graph's six latents, {key}: mean share removed {value:.3f}")
    return means


def recall_comparison(fn: Callable):
    """The learner's answer and other strategies, each measured as the hidden test measures
    it, on the 90 graded prompts: the mean share of the target removed."""
    import pandas as pd

    rows = {}
    for name, strategy in {"your explain_recall": fn, **STRATEGIES}.items():
        answers = _recall_answers(strategy, True)
        shares = [investigation.removed_share(lr, p.city, nodes) for p, _, lr, nodes in answers]
        last = [n[1] == len(lr.tokens) - 1 for _, _, lr, nodes in answers for n in nodes]
        rows[name] = {"mean share removed": round(investigation.mean_share(shares), 3),
                      "lowest": round(min(shares), 3), "at the last position": round(float(np.mean(last)), 2),
                      "passes": investigation.mean_share(shares) >= investigation.BAR}
        print(f"{name}: mean share removed {rows[name]['mean share removed']:.3f}; "
              f"share of its latents at the last position {rows[name]['at the last position']:.2f}")
    return pd.DataFrame(rows).T
