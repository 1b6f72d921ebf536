"""Chapter 3's checks: each hidden test fails a plausible wrong answer and says why, and
accepts correct answers written differently (tests/test_exercise_checks.py covers the rest)."""

from __future__ import annotations

import functools

import pytest
import torch

from mechlab.checks import CheckFailed
from mechlab.activation_patching import checks
from conftest import as_learner, check_tests
from mechlab.activation_patching import reference as ref

EXERCISES = ref.__all__


# ---------------------------------------------------------------- mutants: plausible wrong answers


def replace_in_place(tokens, subject, indirect_object):
    out = ref.replace_subject(tokens, subject, indirect_object)
    tokens[:] = out
    return tokens


def replace_first(tokens, subject, indirect_object):
    out = tokens.clone()
    first = (tokens == subject[:, None]).int().argmax(dim=1)
    out[torch.arange(len(out)), first] = indirect_object
    return out


def replace_fixed_position(tokens, subject, indirect_object):
    out = tokens.clone()
    out[:, 10] = indirect_object  # where S2 sits in template 0
    return out


def logit_diff_first_position(logits, correct, distractor):
    rows = torch.arange(len(correct))
    return (logits[rows, 0, correct] - logits[rows, 0, distractor]).mean()


def logit_diff_per_prompt(logits, correct, distractor):
    rows = torch.arange(len(correct))
    return logits[rows, -1, correct] - logits[rows, -1, distractor]


def logit_diff_float(logits, correct, distractor):
    return ref.logit_diff(logits, correct, distractor).item()


def metric_flipped(logits, correct, distractor, clean_diff, corrupted_diff):
    return (clean_diff - ref.logit_diff(logits, correct, distractor)) / (clean_diff - corrupted_diff)


def metric_item(logits, correct, distractor, clean_diff, corrupted_diff):
    return torch.tensor(ref.patching_metric(logits, correct, distractor, clean_diff, corrupted_diff).item())


def resid_post(model, corrupted_tokens, clean_cache, metric):
    return checks._wrong_resid("blocks.{layer}.hook_resid_post")(model, corrupted_tokens, clean_cache, metric)


def resid_late_binding(model, corrupted_tokens, clean_cache, metric):
    out = torch.zeros(model.cfg.n_layers, corrupted_tokens.shape[1])
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.hook_resid_pre"
            hooks = []
            for pos in range(corrupted_tokens.shape[1]):
                def patch(resid, hook):
                    resid[:, pos] = clean_cache[name][:, pos]  # `pos` read when the hook runs
                    return resid
                hooks.append(patch)
            for p, hook in enumerate(hooks):
                out[layer, p] = metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])).item()
    return out


def resid_hard_coded(model, corrupted_tokens, clean_cache, metric):
    return ref.patch_residual_stream(model, corrupted_tokens, clean_cache, metric)[:2, :15]


def heads_last_position(model, corrupted_tokens, clean_cache, metric):
    return ref.patch_head_outputs_by_position(model, corrupted_tokens, clean_cache, metric)[..., -1]


def heads_edits_cache(model, corrupted_tokens, clean_cache, metric):
    with torch.no_grad():
        model.W_O.data  # noqa: B018  (a read; the next line is the bug)
        next(model.parameters()).add_(1.0)
    return ref.patch_head_outputs(model, corrupted_tokens, clean_cache, metric)


def by_position_all_heads(model, corrupted_tokens, clean_cache, metric):
    return checks._by_position_all_heads(model, corrupted_tokens, clean_cache, metric)


def pattern_value_swapped(model, corrupted_tokens, clean_cache, metric):
    return ref.patch_pattern_and_value(model, corrupted_tokens, clean_cache, metric).flip(0)


def pattern_query_dim(model, corrupted_tokens, clean_cache, metric):
    return checks._pattern_query_dim(model, corrupted_tokens, clean_cache, metric)


def path_no_mlp_freeze(*args):
    return checks._path_without_freezing(False, True)(*args)


def path_no_head_freeze(*args):
    return checks._path_without_freezing(True, False)(*args)


def path_accepts_anything(model, corrupted, clean_cache, corrupted_cache, sender, receivers, component, metric):
    if component not in "qkv":
        component = "q"
    if any(layer <= sender[0] for layer, _ in receivers):
        return 0.0
    return ref.path_patch(model, corrupted, clean_cache, corrupted_cache, sender, receivers, component, metric)


def attribution_reversed(*args):
    return checks._attribution_variant("reversed")(*args)


def attribution_clean_gradient(*args):
    return checks._attribution_variant("clean_gradient")(*args)


def noise_reports_the_drop(model, clean_tokens, corrupted_cache, metric):
    return 1 - ref.noise_head_outputs(model, clean_tokens, corrupted_cache, metric)


def noise_last_position(model, clean_tokens, corrupted_cache, metric):
    return checks._heads_at_last_position(model, clean_tokens, corrupted_cache, metric)


def noise_whole_layer(model, clean_tokens, corrupted_cache, metric):
    return checks._noise_layer_at_once(model, clean_tokens, corrupted_cache, metric)


def attribution_by_hook_name(model, clean_tokens, corrupted_tokens, metric):
    """Saves under hook.name (the bridge's canonical 'blocks.0.attn.o.hook_in') and looks up hook_z."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, clean = model.run_with_cache(clean_tokens, names_filter=names)
    acts, grads = {}, {}

    def save(z, hook):
        acts[hook.name] = z.detach()

    def save_grad(g, hook):
        grads[hook.name] = g.detach()

    with model.hooks(fwd_hooks=[(n, save) for n in names], bwd_hooks=[(n, save_grad) for n in names]):
        metric(model(corrupted_tokens)).backward()
    return torch.stack([((clean[n] - acts[n]) * grads[n]).sum(dim=(0, 1, 3)) for n in names]).cpu()


def attribution_mean_over_batch(model, clean_tokens, corrupted_tokens, metric):
    return ref.attribution_patch_heads(model, clean_tokens, corrupted_tokens, metric) / clean_tokens.shape[0]


def _final_heads(model):
    return [("head", layer, head, -1) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]


def circuit_of_ioi(model, clean_tokens, corrupted_tokens, metric):
    """The IOI circuit of the chapter: head 0.3, MLP0 and the layer-1 heads, at the end."""
    return [("head", 0, 3, -1), ("mlp", 0, -1), *[("head", 1, h, -1) for h in range(model.cfg.n_heads)]]


def circuit_attention_only(model, clean_tokens, corrupted_tokens, metric):
    return _final_heads(model)


def circuit_mlps_only(model, clean_tokens, corrupted_tokens, metric):
    names = (clean_tokens[0] != corrupted_tokens[0]).nonzero().flatten().tolist()
    return [("mlp", layer, pos) for layer in range(model.cfg.n_layers) for pos in [*names, -1]]


def circuit_found_on_one_template(model, clean_tokens, corrupted_tokens, metric):
    """Right for "FIRST LAST lives in" (the first name's position written down from it), wrong where the
    name sits elsewhere."""
    return [("mlp", 1, -1), ("mlp", 0, -1), ("head", 0, 2, -1), ("mlp", 0, 1), ("head", 1, 3, -1), ("head", 0, 3, -1),
            ("head", 1, 1, -1), ("head", 0, 1, -1)]


def circuit_last_name_only(model, clean_tokens, corrupted_tokens, metric):
    return [("head", 0, 2, -1), ("head", 0, 3, -1), ("mlp", 0, -1), ("mlp", 1, -1)]


def circuit_largest_final_position(model, clean_tokens, corrupted_tokens, metric):
    """The course's method restricted to the final position: misses the first name's MLP."""
    circuit = ref.investigate_fact_recall(model, clean_tokens, corrupted_tokens, metric)
    n_pos = clean_tokens.shape[1]
    return [c for c in circuit if c[-1] == n_pos - 1] + [("head", 1, 2, -1)]


def circuit_ranked_on_the_handed_batch(model, clean_tokens, corrupted_tokens, metric):
    """The mechanical answer: the 8 largest single effects, measured on the prompts handed in, whose
    twins share the first name, so that nothing carrying the first name has an effect to rank."""
    with torch.no_grad():
        _, cache = model.run_with_cache(clean_tokens)
        effects = {}
        for layer in range(model.cfg.n_layers):
            for pos in range(clean_tokens.shape[1]):
                for head in [None, *range(model.cfg.n_heads)]:
                    name = f"blocks.{layer}.hook_mlp_out" if head is None else f"blocks.{layer}.attn.hook_z"
                    index = (slice(None), pos) if head is None else (slice(None), pos, head)

                    def patch(act, hook, name=name, index=index):
                        act = act.clone()
                        act[index] = cache[name][index]
                        return act

                    key = ("mlp", layer, pos) if head is None else ("head", layer, head, pos)
                    effects[key] = metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, patch)])).item()
    return sorted(effects, key=effects.get, reverse=True)[:8]


MUTANTS = [
    ("replace_subject", replace_in_place, "changed the `tokens`"),
    ("replace_subject", replace_first, "last"),
    ("replace_subject", replace_fixed_position, "differ"),
    ("logit_diff", logit_diff_first_position, "last position"),
    ("logit_diff", logit_diff_per_prompt, "shape"),
    ("logit_diff", logit_diff_float, "torch.Tensor"),
    ("patching_metric", metric_flipped, "0 should mean"),
    ("patching_metric", metric_item, "differentiable"),
    ("patch_residual_stream", resid_post, "resid_pre"),
    ("patch_residual_stream", resid_late_binding, "differ"),
    ("patch_residual_stream", resid_hard_coded, "shape"),
    ("patch_head_outputs", heads_last_position, "every position"),
    ("patch_head_outputs", heads_edits_cache, "changed the model's weights"),
    ("patch_head_outputs_by_position", by_position_all_heads, "one head at one position"),
    ("patch_pattern_and_value", pattern_value_swapped, "row 0 is the pattern"),
    ("patch_pattern_and_value", pattern_query_dim, "second dimension"),
    ("path_patch", path_no_mlp_freeze, "MLP"),
    ("path_patch", path_no_head_freeze, "every other head"),
    ("path_patch", path_accepts_anything, "ValueError"),
    ("attribution_patch_heads", attribution_reversed, "clean minus corrupted"),
    ("attribution_patch_heads", attribution_clean_gradient, "corrupted run"),
    ("attribution_patch_heads", attribution_mean_over_batch, "differ"),
    ("attribution_patch_heads", attribution_by_hook_name, "canonical name"),
    ("noise_head_outputs", noise_reports_the_drop, "the metric itself"),
    ("noise_head_outputs", noise_last_position, "every position"),
    ("noise_head_outputs", noise_whole_layer, "one head at a time"),
    ("investigate_fact_recall", circuit_of_ioi, "the bar is 0.75"),
    ("investigate_fact_recall", circuit_found_on_one_template, "the city of FIRST LAST is"),
    ("investigate_fact_recall", circuit_ranked_on_the_handed_batch, "only the first name corrupted it keeps 0.1"),
]


# ---------------------------------------------------------------- correct answers written differently


def replace_with_flip(tokens, subject, indirect_object):
    out = tokens.clone()
    for row in range(tokens.shape[0]):
        hits = (tokens[row] == subject[row]).nonzero().flatten()
        out[row, hits[-1]] = indirect_object[row]
    return out


def logit_diff_gather(logits, correct, distractor):
    last = logits[:, -1]
    return (last.gather(-1, correct[:, None]) - last.gather(-1, distractor[:, None])).squeeze(-1).mean()


def resid_with_transformer_lens(model, corrupted_tokens, clean_cache, metric):
    from transformer_lens import patching
    return patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric).cpu()


def heads_with_transformer_lens(model, corrupted_tokens, clean_cache, metric):
    from transformer_lens import patching
    return patching.get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, metric).cpu()


def by_position_with_transformer_lens(model, corrupted_tokens, clean_cache, metric):
    from transformer_lens import patching
    out = patching.get_act_patch_attn_head_out_by_pos(model, corrupted_tokens, clean_cache, metric)
    return out.permute(0, 2, 1).cpu()  # TransformerLens: [layer, pos, head]


def noise_with_transformer_lens(model, clean_tokens, corrupted_cache, metric):
    from transformer_lens import patching
    return patching.get_act_patch_attn_head_out_all_pos(model, clean_tokens, corrupted_cache, metric).cpu()


def attribution_in_one_hook_context(model, clean_tokens, corrupted_tokens, metric):
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    store = {}
    def fwd(z, hook, name):
        store[("act", name)] = z.detach()
    def bwd(g, hook, name):
        store[("grad", name)] = g.detach()
    with torch.no_grad():
        clean = {n: model.run_with_cache(clean_tokens, names_filter=[n])[1][n] for n in names}
    with model.hooks(fwd_hooks=[(n, functools.partial(fwd, name=n)) for n in names],
                     bwd_hooks=[(n, functools.partial(bwd, name=n)) for n in names]):
        metric(model(corrupted_tokens)).backward()
    return torch.stack([torch.einsum("bphd,bphd->h", clean[n] - store[("act", n)], store[("grad", n)])
                        for n in names]).cpu()


def circuit_from_attention(model, clean_tokens, corrupted_tokens, metric):
    """A reasoned answer that ranks nothing: the two names found by their word class, MLP0 at the
    first name and the layer-1 heads that read it from the end (that route), the layer-0 heads that
    read the last name from the end (the other), and both MLPs at the end, where the routes meet."""
    from mechlab import corpus

    words = model.to_str_tokens(clean_tokens[0])
    classes = [corpus.CLASS_OF.get(w.strip(), -1) for w in words]
    first = classes.index(corpus.WORD_CLASSES.index("first_name"))
    last = classes.index(corpus.WORD_CLASSES.index("last_name"))
    end = clean_tokens.shape[1] - 1
    with torch.no_grad():
        _, cache = model.run_with_cache(clean_tokens)
    from_end = [cache["pattern", layer][:, :, end].mean(0) for layer in range(model.cfg.n_layers)]
    readers_of_first = [("head", 1, h, end) for h in range(model.cfg.n_heads) if from_end[1][h, first] > 0.5]
    readers_of_last = [("head", 0, h, end) for h in range(model.cfg.n_heads) if from_end[0][h, last] > 0.3]
    return [("mlp", 0, first), *readers_of_first, *readers_of_last, ("mlp", 0, end), ("mlp", 1, end)]


VARIANTS = [
    ("replace_subject", replace_with_flip),
    ("logit_diff", logit_diff_gather),
    ("patch_residual_stream", resid_with_transformer_lens),
    ("patch_head_outputs", heads_with_transformer_lens),
    ("patch_head_outputs_by_position", by_position_with_transformer_lens),
    ("attribution_patch_heads", attribution_in_one_hook_context),
    ("noise_head_outputs", noise_with_transformer_lens),
    ("investigate_fact_recall", circuit_from_attention),
]

test_grade_fails_a_wrong_answer_and_says_why, test_every_exercise_has_a_mutant, test_grade_accepts_a_correct_variant = \
    check_tests(checks, EXERCISES, MUTANTS, VARIANTS)


def test_ioi_batch_positions_line_up_with_their_labels():
    from mechlab import zoo
    from mechlab.activation_patching import plots as patching
    batch = patching.ioi_batch(12, seed=0, template=0)
    assert batch.tokens.shape == (12, len(batch.labels))
    s2 = batch.labels.index("S2 (subject again)")
    assert torch.equal(batch.tokens[:, s2], batch.distractor)
    assert (batch.tokens[:, 0] == zoo.BOS_ID).all() and batch.labels[-1].endswith("(end)")
    corrupted = ref.replace_subject(batch.tokens, batch.distractor, batch.correct)
    assert (corrupted != batch.tokens).sum(dim=1).tolist() == [1] * 12  # exactly one token differs, at S2
    assert torch.equal(corrupted[:, s2], batch.correct)


def test_a_path_patch_that_edits_the_cache_fails_and_the_cache_is_restored():
    """Without .clone() a hook writes into corrupted_cache: later cases (and cells) would see it."""
    def path_edits_cache(model, corrupted, clean_cache, corrupted_cache, sender, receivers, component, metric):
        name = f"blocks.{sender[0]}.attn.hook_z"
        corrupted_cache[name][:, :, sender[1]] = clean_cache[name][:, :, sender[1]]
        return ref.path_patch(model, corrupted, clean_cache, corrupted_cache, sender, receivers, component, metric)

    _, model, _, corrupted, clean_cache, corrupted_cache, metric = checks._setup(0, 4, 0)
    before = corrupted_cache["blocks.0.attn.hook_z"].clone()
    with pytest.raises(CheckFailed, match="changed argument 4"):
        checks.check_path_patch(as_learner(path_edits_cache))
    assert torch.equal(corrupted_cache["blocks.0.attn.hook_z"], before)


# ---------------------------------------------------------------- 10. the investigation, graded by measurement


@pytest.mark.parametrize("wrong", [circuit_of_ioi, circuit_attention_only, circuit_mlps_only,
                                   circuit_found_on_one_template, circuit_last_name_only,
                                   circuit_largest_final_position], ids=lambda f: f.__name__)
def test_investigation_wrong_findings_are_well_formed_but_earn_nothing(wrong, capsys):
    checks.check_investigate_fact_recall(as_learner(wrong))  # the visible check says nothing about correctness
    assert "well-formed" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match=r"keeps -?\d\.\d\d of the clean logit difference .* the bar is 0\.75"):
        checks.grade_investigate_fact_recall(as_learner(wrong))


def test_investigation_the_solution_and_a_correct_answer_written_differently_pass(capsys):
    checks.grade_investigate_fact_recall(as_learner(ref.investigate_fact_recall))
    assert capsys.readouterr().out.startswith("✓ investigate_fact_recall: your circuits keep 0.")

    def by_the_names(model, clean_tokens, corrupted_tokens, metric):
        """What a learner who read the routes off the patterns would write, positions from the batch:
        the handed twins differ at the last name only, and the first name is just before it."""
        (last,) = (clean_tokens[0] != corrupted_tokens[0]).nonzero().flatten().tolist()
        first = last - 1
        return [("head", 0, 2, -1), ("head", 0, 3, -1), ("head", 0, 0, -1), ("mlp", 0, -1), ("mlp", 1, -1),
                ("mlp", 0, first), ("head", 1, 1, -1), ("head", 1, 3, -1)]

    checks.grade_investigate_fact_recall(as_learner(by_the_names))


@pytest.mark.parametrize("answer, message", [
    ({"mlp": 0}, "list of components"),
    ([("mlp", 0)], "an MLP"),
    ([("resid", 1, 4)], "write"),
    ([("head", 2, 0, 4)], "layer 2"),
    ([("head", 0, 4, 4)], "head 4"),
    ([("mlp", 0, 5)], "position 5"),
    ([("mlp", 0, 4), ("mlp", 0, -1)], "named twice"),
    ([("mlp", 0, torch.tensor(4))], "Python int"),
    ([("head", 0, h, p) for h in range(4) for p in range(3)], "budget is 8"),
    ([], "no component"),
])
def test_investigation_a_malformed_answer_fails_the_visible_check(answer, message):
    with pytest.raises(CheckFailed, match=message):
        checks.check_investigate_fact_recall(as_learner(lambda *args: answer))


def test_investigation_the_reference_is_refused_under_grading(monkeypatch):
    with pytest.raises(CheckFailed, match="reference"):
        checks.grade_investigate_fact_recall(ref.investigate_fact_recall)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")

    def wraps_the_reference(*args):
        return ref.investigate_fact_recall(*args)

    with pytest.raises(CheckFailed, match="uses the course's reference"):
        checks.grade_investigate_fact_recall(as_learner(wraps_the_reference))


def test_investigation_faithfulness_is_one_for_everything_and_zero_for_nothing():
    from mechlab.activation_patching import investigation
    model = checks.course_model("corpus_2l")
    batch = investigation.fact_batch(2, 3)
    metric, cache = investigation._corrupted_run(model, batch)
    n_pos = batch.clean.shape[1]
    everything = [("head", l, h, p) for l in range(2) for h in range(4) for p in range(n_pos)] + \
                 [("mlp", l, p) for l in range(2) for p in range(n_pos)]
    assert investigation._keep_only(model, batch, everything, metric, cache) == pytest.approx(1.0, abs=1e-4)
    assert investigation._keep_only(model, batch, [], metric, cache) == pytest.approx(0.0, abs=1e-4)
    assert (batch.clean != batch.corrupted).sum(1).tolist() == [2] * len(batch.clean)  # both names, nothing else
    assert not (batch.correct == batch.distractor).any()


def test_investigation_a_function_that_tampers_with_its_inputs_gains_nothing():
    """The measurement uses its own model, metric and cache, never the ones the learner's function was given."""
    def edits_the_metric(model, clean_tokens, corrupted_tokens, metric):
        metric.keywords["corrupted_diff"] = -1e6  # every run would read as 'clean'
        return [("mlp", 0, -1)]

    with pytest.raises(CheckFailed, match="keeps 0.00"):
        checks.grade_investigate_fact_recall(as_learner(edits_the_metric))

    def leaves_a_hook(model, clean_tokens, corrupted_tokens, metric):
        with torch.no_grad():
            city = model(clean_tokens)[:, -1].argmax(-1)

        def favour_the_city(logits, hook):
            return logits + 100.0 * torch.nn.functional.one_hot(city, logits.shape[-1])[:, None]

        model.add_hook("unembed.hook_out", favour_the_city)
        return [("mlp", 0, -1)]

    with pytest.raises(CheckFailed, match="keeps 0.00"):
        checks.grade_investigate_fact_recall(as_learner(leaves_a_hook))
