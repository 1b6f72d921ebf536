"""Chapter 6's checks: each hidden test fails a plausible wrong answer and says why, and
accepts correct answers written differently (tests/test_exercise_checks.py covers the rest);
and the chapter's helpers: the local replacement model is exact and linear, the graph's
rows add up, the zoo's transcoders meet their targets, the viewer draws and redraws."""

from __future__ import annotations

import pytest
import torch

from conftest import check_tests, replay_differences
from mechlab import corpus, zoo
from mechlab.checks import CheckFailed
from mechlab.transcoders import checks
from mechlab.transcoders import graph as ag
from mechlab.transcoders import investigation as inv
from mechlab.transcoders import reference as ref
from mechlab.transcoders import zoo as tc_zoo

EXERCISES = ref.__all__


# ---------------------------------------------------------------- mutants: plausible wrong answers


def collect_normalized(model, tokens, layer):
    return checks._COLLECT_MISTAKES[0][1](model, tokens, layer)


def collect_resid_mid(model, tokens, layer):
    return checks._collect_hooks("blocks.{}.hook_resid_mid", "blocks.{}.hook_mlp_out")(model, tokens, layer)


def collect_with_grad(model, tokens, layer):
    names = [f"blocks.{layer}.ln2.hook_out", f"blocks.{layer}.hook_mlp_out"]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return tuple(cache[n].float().requires_grad_(True) for n in names)


def transcode_sae_habit(x, W_enc, b_enc, W_dec, b_dec, k, W_skip=None):
    return checks._transcode_sae_habit(x, W_enc, b_enc, W_dec, b_dec, k, W_skip)


def transcode_no_skip(x, W_enc, b_enc, W_dec, b_dec, k, W_skip=None):
    return ref.transcode(x, W_enc, b_enc, W_dec, b_dec, k)


def transcode_relu(x, W_enc, b_enc, W_dec, b_dec, k, W_skip=None):
    return checks._transcode_relu(x, W_enc, b_enc, W_dec, b_dec, k, W_skip)


def fve_uncentred(prediction, target):
    return checks._fve_uncentred(prediction, target)


def fve_per_dimension(prediction, target):
    return checks._fve_per_dimension(prediction, target)


def fve_as_tensor(prediction, target):
    return torch.tensor(ref.variance_explained(prediction, target))


def replacement_clean_inputs(model, tokens, transcoders):
    return checks._replacement_from_clean_run(model, tokens, transcoders)


def replacement_first_only(model, tokens, transcoders):
    return ref.replacement_loss(model, tokens, list(transcoders)[:1])


def freeze_patterns_only(cache, n_layers):
    return [(f"blocks.{l}.attn.hook_pattern", lambda t, hook, l=l: cache[f"blocks.{l}.attn.hook_pattern"])
            for l in range(n_layers)]


def freeze_without_final(cache, n_layers):
    return [h for h in ref.freeze_hooks(cache, n_layers) if h[0] != "ln_final.hook_scale"]


def freeze_scores(cache, n_layers):
    """Freezes the pre-softmax scores instead of the patterns (the cache has no scores: so
    the hooks return what they get, and the softmax stays live)."""
    hooks = [h for h in ref.freeze_hooks(cache, n_layers) if "pattern" not in h[0]]
    return hooks + [(f"blocks.{l}.attn.hook_attn_scores", lambda t, hook: t) for l in range(n_layers)]


def freeze_too_much(cache, n_layers):
    """Also freezes the MLPs' inputs: exact at one and linear, but no latent depends on anything."""
    names = [f"blocks.{l}.ln2.hook_out" for l in range(n_layers)]
    return ref.freeze_hooks(cache, n_layers) + [(n, lambda t, hook, n=n: cache[n]) for n in names]


def freeze_late_binding(cache, n_layers):
    names = [name for name, _ in ref.freeze_hooks(cache, n_layers)]
    return [(name, lambda t, hook: cache[name]) for name in names]  # every hook returns the last name's value


def adjacency_total(replacement, target):
    return checks._adjacency_total(replacement, target)


def adjacency_times_value(replacement, target):
    return checks._adjacency_times_value(replacement, target)


def adjacency_without_target(replacement, target):
    return checks._adjacency_no_target(replacement, target)


def influence_direct(adjacency, weights):
    return checks._influence_direct(adjacency, weights)


def influence_with_identity(adjacency, weights):
    return checks._influence_with_identity(adjacency, weights)


def influence_signed(adjacency, weights):
    return checks._influence_signed(adjacency, weights)


def influence_columns(adjacency, weights):
    return checks._influence_columns(adjacency, weights)


def prune_strict(scores, share):
    return checks._prune_strict(scores, share)


def prune_by_count(scores, share):
    return checks._prune_by_count(scores, share)


def prune_no_ties(scores, share):
    """The right count, but ties at the cut-off broken by index."""
    total = scores.sum()
    if total <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    order = scores.argsort(descending=True, stable=True)
    n = int((scores[order].cumsum(0) < share * total).sum()) + 1
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[order[:n]] = True
    return mask


def ablate_without_errors(model, transcoders, tokens, errors, nodes):
    return checks._ablate_recomputed_errors(model, transcoders, tokens, errors, nodes)


def ablate_before_topk(model, transcoders, tokens, errors, nodes):
    return checks._ablate_pre_topk(model, transcoders, tokens, errors, nodes)


def ablate_every_position(model, transcoders, tokens, errors, nodes):
    return checks._ablate_every_position(model, transcoders, tokens, errors, nodes)


def explain_by_activation(model, transcoders, tokens):
    return checks._top_activations(model, transcoders, tokens)


def explain_last_position(model, transcoders, tokens):
    return checks._last_position_influence(model, transcoders, tokens)


def explain_graph_ranking(model, transcoders, tokens):
    """The six largest signed total effects: the graph's own answer, which it over-promises."""
    return checks._largest_effects(model, transcoders, tokens)


def explain_single_ablations(model, transcoders, tokens):
    return checks._single_ablations(model, transcoders, tokens)


_MARY = None


def explain_hard_coded(model, transcoders, tokens):
    """The solution's answer for the first visible prompt, whatever the prompt."""
    global _MARY
    if _MARY is None:
        person = next(p for p in corpus.build_world().known if p.name == inv.VISIBLE_PEOPLE[0])
        _MARY = ref.explain_recall(model, transcoders, ag.recall_prompt(model, person))
    return [n for n in _MARY if n[1] < len(tokens)]


def explain_other_person(model, transcoders, tokens):
    """The latents of the person listed next in the world, on that person's prompt."""
    world = corpus.build_world().known
    names = model.to_str_tokens(tokens)
    i = next(k for k, p in enumerate(world) if p.first in names and p.last in names)
    other = world[(i + 1) % len(world)]
    return checks._largest_effects(model, transcoders, ag.recall_prompt(model, other, "{p} lives in"))


def explain_too_many(model, transcoders, tokens):
    return ref.explain_recall(model, transcoders, tokens) + checks._top_activations(model, transcoders, tokens)[:3]


def explain_tensor_ids(model, transcoders, tokens):
    return [tuple(torch.tensor(v) for v in node) for node in ref.explain_recall(model, transcoders, tokens)]



def _interventions(model, transcoders, prompts, *, k, n_random, seed, ablate, replacement, rank="abs",
                   pool="active", sign=-1.0, together=False, generator=None):
    """intervention_test with one design choice swapped for a flawed one."""
    import pandas as pd
    generator = generator or torch.Generator().manual_seed(seed)
    rows = []
    for p, (tokens, target) in enumerate(prompts):
        lr = replacement(model, transcoders, tokens)
        effects = ag.total_effects(lr, target)[: lr.n_latents]
        base = float(target(lr.clean_logits))
        key = {"abs": effects.abs(), "signed": effects,
               "activation": torch.tensor([n.value for n in lr.nodes[: lr.n_latents]])}[rank]
        order = key.argsort(descending=True)
        top, rest = order[:k].tolist(), order[k:]
        picked = rest[torch.randperm(len(rest), generator=generator)[:n_random]].tolist()
        nodes = {i: (lr.nodes[i].layer, lr.nodes[i].position, lr.nodes[i].latent) for i in top + picked}
        if pool == "all":  # random latents from the whole dictionary, active or not
            d_sae = transcoders[0].cfg.d_sae
            nodes.update({i: (0, 1, int(torch.randint(d_sae, (1,), generator=generator))) for i in picked})
        for kind, indices in (("top", top), ("random", picked)):
            for i in indices:
                ablated = [nodes[j] for j in top] if together and kind == "top" else [nodes[i]]
                real = float(target(ablate(model, transcoders, lr.tokens, lr.errors, ablated))) - base
                rows.append({"prompt": p, "kind": kind, "layer": nodes[i][0], "position": nodes[i][1],
                             "latent": nodes[i][2], "predicted": sign * float(effects[i]), "real": real})
    return pd.DataFrame(rows)


def interventions_signed(*args, **kwargs):
    return _interventions(*args, **kwargs, rank="signed")


def interventions_most_active(*args, **kwargs):
    return _interventions(*args, **kwargs, rank="activation")


def interventions_inactive_controls(*args, **kwargs):
    return _interventions(*args, **kwargs, pool="all")


def interventions_effect_as_prediction(*args, **kwargs):
    return _interventions(*args, **kwargs, sign=1.0)


def interventions_ablated_together(*args, **kwargs):
    return _interventions(*args, **kwargs, together=True)


def interventions_unseeded(*args, **kwargs):
    return _interventions(*args, **kwargs, generator=torch.Generator().manual_seed(int(torch.randint(10**6, (1,)))))


def interventions_by_helper(*args, **kwargs):
    """Correct, written differently: the course's total_effects helper, the rows built per kind."""
    return _interventions(*args, **kwargs)


MUTANTS = [
    ("collect_mlp_io", collect_normalized, "ln2.hook_normalized"),
    ("collect_mlp_io", collect_resid_mid, "before the LayerNorm"),
    ("collect_mlp_io", collect_with_grad, "requires grad"),
    ("transcode", transcode_sae_habit, "subtract b_dec"),
    ("transcode", transcode_no_skip, "skip term"),
    ("transcode", transcode_relu, "k largest"),
    ("variance_explained", fve_uncentred, "its \\*mean\\*"),
    ("variance_explained", fve_per_dimension, "one ratio over everything"),
    ("variance_explained", fve_as_tensor, "Python float"),
    ("replacement_loss", replacement_clean_inputs, "replaced\\* run"),
    ("replacement_loss", replacement_first_only, "every transcoder in the list"),
    ("freeze_hooks", freeze_patterns_only, "Not frozen by your hooks: blocks.0.ln1.hook_scale"),
    ("freeze_hooks", freeze_without_final, "Not frozen by your hooks: ln_final.hook_scale"),
    ("freeze_hooks", freeze_scores, "Not frozen by your hooks: blocks.0.attn.hook_pattern"),
    ("freeze_hooks", freeze_too_much, "freeze only the LayerNorm scales"),
    ("freeze_hooks", freeze_late_binding, "bind it"),
    ("adjacency_matrix", adjacency_total, "propagate=True"),
    ("adjacency_matrix", adjacency_times_value, "don't multiply by the activation again"),
    ("adjacency_matrix", adjacency_without_target, "n_latents \\+ 1 rows"),
    ("node_influence", influence_direct, "every length"),
    ("node_influence", influence_with_identity, "subtract the identity"),
    ("node_influence", influence_signed, "absolute values"),
    ("node_influence", influence_columns, "\\*row\\*"),
    ("prune_nodes", prune_strict, "reaches"),
    ("prune_nodes", prune_by_count, "total \\*score\\*"),
    ("prune_nodes", prune_no_ties, "entries differ"),
    ("ablate_latents", ablate_without_errors, "frozen error vectors"),
    ("ablate_latents", ablate_before_topk, "after\\* TopK"),
    ("ablate_latents", ablate_every_position, "own position"),
    ("intervention_test", interventions_signed, "rank by the absolute value"),
    ("intervention_test", interventions_most_active, "most active latents"),
    ("intervention_test", interventions_inactive_controls, "not active on this prompt"),
    ("intervention_test", interventions_effect_as_prediction, "\\*minus\\*"),
    ("intervention_test", interventions_ablated_together, "ablating it alone"),
    ("intervention_test", interventions_unseeded, "same seed"),
    ("explain_recall", explain_by_activation, "bar is 0.5"),
    ("explain_recall", explain_last_position, "bar is 0.5"),
    ("explain_recall", explain_hard_coded, "bar is 0.5"),
    ("explain_recall", explain_other_person, "bar is 0.5"),
    ("explain_recall", explain_graph_ranking, r"(?s)bar is 0\.5.*the graph predicts that your latents remove 0\.7"),
    ("explain_recall", explain_single_ablations, "bar is 0.5"),
    ("explain_recall", explain_too_many, "budget is 6"),
    ("explain_recall", explain_tensor_ids, "Python ints"),
]


# ---------------------------------------------------------------- variants: correct answers written differently


def collect_two_runs(model, tokens, layer):
    with torch.no_grad():
        _, a = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.ln2.hook_out")
        _, b = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.hook_mlp_out")
    return a[f"blocks.{layer}.ln2.hook_out"].cpu(), b[f"blocks.{layer}.hook_mlp_out"].cpu()


def transcode_scatter(x, W_enc, b_enc, W_dec, b_dec, k, W_skip=None):
    pre = x @ W_enc + b_enc
    top = pre.topk(min(k, pre.shape[-1]), dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
    skip = x @ W_skip if W_skip is not None else torch.zeros(())
    return torch.addmm(b_dec, z, W_dec) + skip, z


def fve_from_variances(prediction, target):
    n = target.shape[0]
    return 1.0 - ((target - prediction) ** 2).sum().item() / (target.var(0, unbiased=False).sum().item() * n)


def replacement_with_forward_hooks(model, tokens, transcoders):
    by_layer = {tc.cfg.layer: tc for tc in transcoders}
    seen = {}
    hooks = []
    for layer, tc in by_layer.items():
        hooks.append((f"blocks.{layer}.ln2.hook_out", lambda t, hook, l=layer: seen.__setitem__(l, t)))
        hooks.append((f"blocks.{layer}.hook_mlp_out", lambda t, hook, l=layer: by_layer[l](seen[l])))
    with torch.no_grad():
        return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()


def freeze_by_search(cache, n_layers):
    names = [n for n in cache.keys() if n.endswith("hook_scale") or n.endswith("attn.hook_pattern")]
    return [(n, (lambda v: lambda t, hook: v)(cache[n].clone())) for n in names]


def adjacency_by_jacobian(replacement, target):
    def outputs(c):
        pre, logits = replacement.run(c)
        return torch.cat([pre, target(logits)[None]])
    return torch.autograd.functional.jacobian(outputs, replacement.coefficients.detach())


def influence_by_series(adjacency, weights):
    a = adjacency.abs()
    a = torch.where(a.sum(-1, keepdim=True) > 0, a / a.sum(-1, keepdim=True), a)
    total, current = torch.zeros_like(weights), weights @ a
    for _ in range(len(a)):
        total, current = total + current, current @ a
    return total


def prune_loop(scores, share):
    total = float(scores.sum())
    mask = torch.zeros(len(scores), dtype=torch.bool)
    if total <= 0:
        return mask
    running, cutoff = 0.0, None
    for v in sorted(scores.tolist(), reverse=True):
        running += v
        cutoff = v
        if running >= share * total:
            break
    return scores >= cutoff


def ablate_with_module_forward(model, transcoders, tokens, errors, nodes):
    state = {}
    hooks = []
    for layer, tc in enumerate(transcoders):
        gone = [(p, i) for l, p, i in nodes if l == layer]

        def replace(t, hook, tc=tc, gone=gone, layer=layer):
            z = tc.encode(state[layer])
            mask = torch.ones_like(z)
            for p, i in gone:
                mask[p, i] = 0
            return (tc.decode(z * mask, state[layer]) + errors[layer]).unsqueeze(0)

        hooks += [(f"blocks.{layer}.ln2.hook_out", lambda t, hook, layer=layer: state.__setitem__(layer, t[0])),
                  (f"blocks.{layer}.hook_mlp_out", replace)]
    with torch.no_grad():
        return model.run_with_hooks(tokens.unsqueeze(0), fwd_hooks=hooks).squeeze(0)


def explain_by_elimination(model, transcoders, tokens):
    """Another sound answer: start from the 10 latents whose single real ablations remove
    the most, and drop, one at a time, the latent whose return costs the set least, measured
    together in the real model."""
    lr = ag.LocalReplacement(model, transcoders, tokens)
    target = checks._predicted_city_target(model, tokens)
    candidates = checks._largest_effects(model, transcoders, tokens, 16, signed=False)
    alone = torch.tensor([float(target(ref.ablate_latents(model, transcoders, lr.tokens, lr.errors, [c])))
                          for c in candidates])
    chosen = [candidates[i] for i in alone.argsort()[:10].tolist()]
    while len(chosen) > inv.BUDGET:
        after = [float(target(ref.ablate_latents(model, transcoders, lr.tokens, lr.errors,
                                                 [c for c in chosen if c != drop]))) for drop in chosen]
        chosen.remove(chosen[int(torch.tensor(after).argmin())])
    return chosen


VARIANTS = [
    ("collect_mlp_io", collect_two_runs),
    ("transcode", transcode_scatter),
    ("variance_explained", fve_from_variances),
    ("replacement_loss", replacement_with_forward_hooks),
    ("freeze_hooks", freeze_by_search),
    ("adjacency_matrix", adjacency_by_jacobian),
    ("node_influence", influence_by_series),
    ("prune_nodes", prune_loop),
    ("ablate_latents", ablate_with_module_forward),
    ("intervention_test", interventions_by_helper),
    ("explain_recall", explain_by_elimination),
]

test_grade_fails_a_wrong_answer_and_says_why, test_every_exercise_has_a_mutant, test_grade_accepts_a_correct_variant = \
    check_tests(checks, EXERCISES, MUTANTS, VARIANTS)


# ---------------------------------------------------------------- the chapter's helpers


@pytest.fixture(scope="module")
def model():
    m = zoo.load("corpus_2l")
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def tcs():
    return tc_zoo.load_pair("w1024")


def mary_graph(model, tcs):
    mary = next(p for p in corpus.build_world().known if p.name == "mary brown")
    return ag.recall_graph(model, tcs, mary)


def test_local_replacement_is_exact_linear_and_its_edges_add_up(model, tcs):
    g = mary_graph(model, tcs)
    lr = g.replacement
    with torch.no_grad():
        _, one = lr.run()
        zero_pre, zero = lr.run(torch.zeros_like(lr.coefficients))
        two_pre, two = lr.run(2 * torch.ones_like(lr.coefficients))
        one_pre, _ = lr.run()
    assert (one - lr.clean_logits).abs().max() < 1e-4
    assert torch.allclose(two - one, one - zero, atol=2e-3)
    assert torch.allclose(two_pre - one_pre, one_pre - zero_pre, atol=1e-3)
    # each row of the graph sums, with the biases' constant, to what it differentiates
    rows = g.adjacency[list(range(g.n_latents)) + [-1], : len(lr.nodes)]
    assert torch.allclose(rows.sum(-1) + g.constant, torch.cat([one_pre, torch.tensor([g.target_value])]), atol=1e-3)
    # no edge goes backwards: a latent's pre-activation depends on nothing in its own layer's MLP or later
    for t in range(g.n_latents):
        later = [s for s in range(g.n_latents) if lr.nodes[s].layer >= lr.nodes[t].layer]
        assert g.adjacency[t, later].abs().max() == 0


def test_influence_reaches_every_path_and_pruning_keeps_the_share(model, tcs):
    g = mary_graph(model, tcs)
    keep, edges = ag.prune(g, 0.8)
    assert keep[-1] and keep[g.mask("embedding")].all()
    assert not (edges & ~(keep[:, None] & keep[None, :])).any()
    kept_latents = keep & g.mask("latent")
    assert 0 < int(kept_latents.sum()) < g.n_latents
    share = float(g.influence[keep & ~g.mask("target")].sum() / g.influence[:-1].sum())
    assert share >= 0.8 - 1e-6
    scores = ag.scores(g)
    assert 0 < scores["replacement"] < 1 and 0 < scores["completeness"] < 1
    assert 0.5 < ag.explained_share(g, keep) < 1.2


def test_total_effects_predict_ablation_in_the_frozen_model_exactly(model, tcs):
    """In the local replacement model (everything frozen), removing a latent changes the
    target by exactly minus its total effect: the linear account is exact where it is claimed."""
    g = mary_graph(model, tcs)
    lr = g.replacement
    effects = ag.total_effects(lr, g.target_fn)
    i = int(effects[: lr.n_latents].abs().argmax())
    c = torch.ones_like(lr.coefficients)
    c[i] = 0
    with torch.no_grad():
        _, logits = lr.run(c, propagate=True)
    assert abs(float(g.target_fn(logits)) - g.target_value + float(effects[i])) < 1e-3


def test_the_investigation_bar_is_above_the_graphs_own_ranking(model, tcs):
    """The graph's own answer (the six largest total effects) falls short of the bar by a
    margin on the 90 graded prompts. (That the solution clears it, 0.556, is its graded run's
    full marks, and the chapter's claims test holds the number.)"""
    replacements = [(inv.replacement(model, tcs, p, t), p.city) for p, t in inv.prompts(True)]
    graph = [inv.removed_share(lr, city, explain_graph_ranking(model, tcs, lr.tokens)) for lr, city in replacements]
    assert inv.mean_share(graph) < inv.BAR - 0.04


def test_a_visible_check_refuses_malformed_answers(model, tcs):
    with pytest.raises(CheckFailed, match="not a dict|list of"):
        checks.check_explain_recall(lambda m, t, x: {"latent": 3})
    with pytest.raises(CheckFailed, match="out of range"):
        checks.check_explain_recall(lambda m, t, x: [(2, 0, 0)])


def test_committed_transcoders_meet_their_targets_and_match_their_metadata():
    for name in tc_zoo.TC_ZOO:
        meta = tc_zoo.info(name)
        assert tc_zoo.missed_targets(name, meta["metrics"]) == [], name
    measured = tc_zoo.evaluate(tc_zoo.load("tc_l1_w1024"))
    stored = tc_zoo.info("tc_l1_w1024")["metrics"]
    for key in ("variance_explained", "l0", "replacement_loss"):
        assert measured[key] == pytest.approx(stored[key], abs=2e-3), key


def test_viewer_draws_the_pruned_graph_and_redraws_when_the_slider_moves(model, tcs):
    from mechlab.transcoders import viewer

    g = mary_graph(model, tcs)
    keep, edges = ag.prune(g)
    picture = viewer.svg(g, keep, edges)
    assert picture.startswith("<svg") and picture.count("<circle") + picture.count("<rect") == int(keep.sum())
    assert picture.count("<line") == int(edges.sum())
    wide, _ = ag.prune(g, 0.95)
    assert int(wide.sum()) > int(keep.sum())


@pytest.mark.parametrize("name", list(tc_zoo.TC_ZOO))
def test_a_replay_of_training_follows_the_committed_transcoders_history(name):
    """Its first 41 steps replayed: the history recorded at steps 0, 20 and 40."""
    assert replay_differences(tc_zoo.train, tc_zoo.info, name) == {}


@pytest.mark.retrain
def test_retraining_a_transcoder_from_scratch_reproduces_the_committed_one(tmp_path):
    """`python -m mechlab.transcoders.zoo train NAME` really retrains: the same recipe and
    seeds reach the committed checkpoint's metrics, and the written file loads."""
    name = "tc_l0_w1024"
    tc, meta = tc_zoo.train(name)
    stored = tc_zoo.info(name)["metrics"]
    for key, tolerance in (("variance_explained", 0.005), ("l0", 0.3), ("dead_fraction", 0.05),
                           ("replacement_loss", 0.005)):
        assert meta["metrics"][key] == pytest.approx(stored[key], abs=tolerance), key
    assert tc_zoo.missed_targets(name, meta["metrics"]) == []
    path = tmp_path / f"{name}.safetensors"
    from mechlab.sparse_autoencoders import zoo as sae_zoo

    sae_zoo.save(tc, meta, path)
    assert path.stat().st_size < 600_000  # float16 weights
