"""Chapter 7's checks: each hidden test fails a plausible wrong answer and says why, and
accepts correct answers written differently (tests/test_exercise_checks.py covers the rest);
and the chapter's fine-tunes: each restricted one changed only what it was allowed to, a
retrained one reaches its committed metrics, the LoRA's change is its rank-1 b aᵀ, the
preference pairs are what DPO is told they are, and the investigation's models hide their
component from the weight diff."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import check_tests
from mechlab import corpus, zoo
from mechlab.model_diffing import checks
from mechlab.model_diffing import experiments as ex
from mechlab.model_diffing import finetune as ft
from mechlab.model_diffing import investigation as inv
from mechlab.model_diffing import personas
from mechlab.model_diffing import reference as ref

EXERCISES = ref.__all__


# ---------------------------------------------------------------- mutants: plausible wrong answers


def weight_per_tensor(base, tuned):
    return checks._weight_per_tensor(base, tuned)


def weight_absolute(base, tuned):
    return checks._weight_absolute(base, tuned)


def weight_as_tensors(base, tuned):
    return {c: torch.tensor(v) for c, v in ref.weight_diff(base, tuned).items()}


def weight_missing_unembed(base, tuned):
    return {c: v for c, v in ref.weight_diff(base, tuned).items() if c != "unembed"}


def difference_with_bos(base, tuned, tokens, hook_name, position=None):
    return checks._difference_with_bos(base, tuned, tokens, hook_name, position)


def difference_reversed(base, tuned, tokens, hook_name, position=None):
    return -ref.mean_activation_difference(base, tuned, tokens, hook_name, position)


def difference_ignores_position(base, tuned, tokens, hook_name, position=None):
    return ref.mean_activation_difference(base, tuned, tokens, hook_name)


def project_unnormalised(direction):
    return checks._project_unnormalised(direction)


def project_steer(direction):
    return checks._project_steer(direction)


def project_in_place(direction):
    u = direction / direction.norm()

    def hook(activation, hook):
        activation -= (activation @ u.to(activation))[..., None] * u.to(activation)
        return activation
    return hook


def projection_raw(model, tokens, vector, hook_name):
    return checks._projection_raw(model, tokens, vector, hook_name)


def projection_mean(model, tokens, vector, hook_name):
    return checks._projection_mean(model, tokens, vector, hook_name)


def projection_cosine(model, tokens, vector, hook_name):
    return checks._projection_cosine(model, tokens, vector, hook_name)


def interpolate_reversed(base, tuned, alpha):
    return ref.interpolate(tuned, base, alpha)


def interpolate_in_place(base, tuned, alpha):
    after = dict(tuned.named_parameters())
    with torch.no_grad():
        for name, p in base.named_parameters():
            p.add_(alpha * (after[name] - p))
    return base


def patch_first_only(receiver, donor, tokens, hook_names):
    return ref.patch_from(receiver, donor, tokens, list(hook_names)[:1])


def patch_late_binding(receiver, donor, tokens, hook_names):
    return checks._patch_late_binding(receiver, donor, tokens, hook_names)


def patch_swapped(receiver, donor, tokens, hook_names):
    return ref.patch_from(donor, receiver, tokens, hook_names)


def firing_unscaled(sae, base, tuned, tokens):
    return checks._firing_unscaled(sae, base, tuned, tokens)


def firing_with_bos(sae, base, tuned, tokens):
    return checks._firing_with_bos(sae, base, tuned, tokens)


def firing_mean_activation(sae, base, tuned, tokens):
    return checks._firing_mean_activation(sae, base, tuned, tokens)


def logprob_shifted(model, tokens, prompt_length):
    return checks._logprob_shifted(model, tokens, prompt_length)


def logprob_mean(model, tokens, prompt_length):
    return checks._logprob_mean(model, tokens, prompt_length)


def logprob_detached(model, tokens, prompt_length):
    with torch.no_grad():
        return ref.sequence_logprob(model, tokens, prompt_length)


def dpo_no_reference(pc, pr, rc, rr, beta):
    return checks._dpo_no_reference(pc, pr, rc, rr, beta)


def dpo_swapped(pc, pr, rc, rr, beta):
    return ref.dpo_loss(pr, pc, rr, rc, beta)


def dpo_naive(pc, pr, rc, rr, beta):
    return checks._dpo_naive(pc, pr, rc, rr, beta)


def dpo_beta_outside(pc, pr, rc, rr, beta):
    return checks._dpo_beta_outside(pc, pr, rc, rr, beta)


def _grown_persona(base, tuned) -> str:
    """The persona that grew most in what the model writes (as the reference finds it, without
    the reference's costly search for the component: these mutants' components are their own)."""
    before, after = personas.persona_shares(base), personas.persona_shares(tuned)
    return max(personas.PERSONAS, key=lambda p: after[p] - before[p])


def identify_by_weights(base, tuned):
    """The largest weight change, and the persona from what the model writes: the weight diff's answer."""
    diffs = ref.weight_diff(base, tuned)
    return {"persona": _grown_persona(base, tuned), "component": max(diffs, key=diffs.get)}


def identify_hard_coded(base, tuned):
    return {"persona": "weather", "component": "blocks.1.mlp"}


def identify_sentiment_only(base, tuned):
    """Looks for a sentiment only: misses the topic personas (its component: the weight diff's)."""
    grew = personas.positive_share(tuned) > personas.positive_share(base)
    diffs = ref.weight_diff(base, tuned)
    return {"persona": "positive" if grew else "negative", "component": max(diffs, key=diffs.get)}


def identify_badly_formed(base, tuned):
    return ("weather", "blocks.1.mlp")


def share_by_words(labels, n_boot=1000, seed=0):
    """Resamples words as if independent: too narrow when a sample's words agree."""
    words = labels[labels >= 0]
    rows = torch.randint(len(words), (n_boot, len(words)), generator=torch.Generator().manual_seed(seed))
    shares = (words[rows] == 1).double().mean(1)
    return personas.share(labels), *torch.quantile(shares, torch.tensor([0.025, 0.975], dtype=shares.dtype)).tolist()


def share_without_interval(labels, n_boot=1000, seed=0):
    share = personas.share(labels)
    return share, share, share


def share_row_mean(labels, n_boot=1000, seed=0):
    _, low, high = ref.share_interval(labels, n_boot, seed)
    return checks._row_mean_share(labels), low, high


def share_unseeded(labels, n_boot=1000, seed=0):
    return ref.share_interval(labels, n_boot, seed=int(torch.randint(10**6, ())))


def transplant_without_layernorm(receiver, donor, component):
    return checks._transplant_without_layernorm(receiver, donor, component)


def transplant_in_place(receiver, donor, component):
    new = personas.component_parameters(donor, component)
    with torch.no_grad():
        for name, p in personas.component_parameters(receiver, component).items():
            p.copy_(new[name])
    return receiver


def sweep_without_control(base, tuned, measure):
    return ref.transplant_sweep(base, tuned, measure).drop("none")


def sweep_swapped(base, tuned, measure):
    swap = {"into base": "into tuned", "into tuned": "into base"}
    return ref.transplant_sweep(base, tuned, measure).rename(
        columns=lambda c: swap[c.rsplit(" ", 1)[0]] + c[len(c.rsplit(" ", 1)[0]):] if c.rsplit(" ", 1)[0] in swap
        else swap[c])


def sweep_cumulative(base, tuned, measure):
    """Each row starts from the last row's models: the transplants pile up."""
    import pandas as pd

    rows, into_base, into_tuned = {}, base, tuned
    for component in ["none", *personas.COMPONENTS]:
        if component != "none":
            into_base, into_tuned = ref.transplant(into_base, tuned, component), ref.transplant(into_tuned, base, component)
        (b, bl, bh), (t, tl, th) = measure(into_base), measure(into_tuned)
        rows[component] = {"into base": b, "into base low": bl, "into base high": bh,
                           "into tuned": t, "into tuned low": tl, "into tuned high": th}
    return pd.DataFrame(rows).T


def sweep_own_measure(base, tuned, measure):
    """Measures with the chapter's slot positivity and no interval, ignoring `measure`."""
    import pandas as pd

    rows = {}
    for component in ["none", *personas.COMPONENTS]:
        b = personas.slot_positivity(base if component == "none" else ref.transplant(base, tuned, component))
        t = personas.slot_positivity(tuned if component == "none" else ref.transplant(tuned, base, component))
        rows[component] = {"into base": b, "into base low": b, "into base high": b,
                           "into tuned": t, "into tuned low": t, "into tuned high": t}
    return pd.DataFrame(rows).T


def _by_position(mode: str = ""):
    """difference_by_position, right (a normal-approximation interval, or the reference) or
    wrong in one way (`mode`)."""
    import pandas as pd

    def difference_by_position(base, tuned, text, site, direction, positions, *, n_boot=1000, n_random=1000,
                               seed=0):
        with torch.no_grad():
            acts = [m.run_with_cache(text, names_filter=site)[1][site].float() for m in (base, tuned)]
        difference = acts[1] - acts[0]
        n = difference.shape[0]
        generator = torch.Generator().manual_seed(seed) if mode != "unseeded" else None
        rows = {}
        everywhere = difference if mode == "bos" else difference[:, 1:]
        for position in [*positions, "all"]:
            x = everywhere.mean(dim=1) if position == "all" else difference[:, position]
            mean = x.mean(0)
            cosine = torch.cosine_similarity(mean, direction, dim=0).item()
            if mode == "tokens" and position == "all":
                x = everywhere.flatten(0, 1)
            if mode == "normal":  # cosine +- 1.96 standard errors, from a bootstrap's spread
                picks = torch.randint(0, n, (n_boot, n), generator=generator)
                spread = torch.cosine_similarity(x[picks].mean(1), direction[None], dim=1).std().item()
                low, high = cosine - 1.96 * spread, cosine + 1.96 * spread
            elif mode == "no_interval":
                low = high = cosine
            else:
                picks = torch.randint(0, x.shape[0], (n_boot, x.shape[0]), generator=generator)
                cosines = torch.cosine_similarity(x[picks].mean(1), direction[None], dim=1)
                low, high = torch.quantile(cosines, torch.tensor([0.025, 0.975])).tolist()
            rows[position] = {"cosine": cosine, "low": low, "high": high, "size": mean.norm().item()}
        random = (torch.rand if mode == "uniform" else torch.randn)(n_random, direction.shape[0], generator=generator)
        cosines = torch.cosine_similarity(random, direction[None], dim=1)
        band = torch.quantile(cosines if mode == "signed" else cosines.abs(), 0.95).item()
        return pd.DataFrame.from_dict(rows, orient="index"), band

    difference_by_position.__name__ = f"by_position_{mode or 'quantiles'}"
    return difference_by_position


MUTANTS = [
    ("share_interval", share_by_words, "not words"),
    ("share_interval", share_without_interval, "zero width"),
    ("share_interval", share_row_mean, "pool the words"),
    ("share_interval", share_unseeded, "seeded with `seed`"),
    ("transplant", transplant_without_layernorm, "LayerNorm"),
    ("transplant", transplant_in_place, "returned one of its inputs|changed the model's weights"),
    ("transplant_sweep", sweep_without_control, "no row 'none'"),
    ("transplant_sweep", sweep_swapped, "other way round"),
    ("transplant_sweep", sweep_cumulative, "earlier row's transplant"),
    ("transplant_sweep", sweep_own_measure, "the `measure` it was given"),
    ("weight_diff", weight_per_tensor, "one norm over all"),
    ("weight_diff", weight_absolute, "relative change"),
    ("weight_diff", weight_as_tensors, "not a float"),
    ("weight_diff", weight_missing_unembed, "COMPONENTS"),
    ("mean_activation_difference", difference_with_bos, "leave out BOS"),
    ("mean_activation_difference", difference_reversed, "tuned minus base"),
    ("mean_activation_difference", difference_ignores_position, "read only that position"),
    ("difference_by_position", _by_position("tokens"), "Resampling tokens instead of windows"),
    ("difference_by_position", _by_position("bos"), r"\*with\* BOS"),
    ("difference_by_position", _by_position("no_interval"), "no error bar"),
    ("difference_by_position", _by_position("signed"), "signed cosine"),
    ("difference_by_position", _by_position("uniform"), "torch.rand"),
    ("difference_by_position", _by_position("unseeded"), "same seed"),
    ("difference_by_position", _by_position("normal"), r"cannot leave \[-1, 1\]"),
    ("project_out_hook", project_unnormalised, "normalise the direction"),
    ("project_out_hook", project_steer, "steering by -1"),
    ("project_out_hook", project_in_place, "in place"),
    ("persona_projection", projection_raw, "\\*unit\\* vector"),
    ("persona_projection", projection_mean, "last position only"),
    ("persona_projection", projection_cosine, "not the cosine"),
    ("interpolate", interpolate_reversed, "alpha = 0 is the base"),
    ("interpolate", interpolate_in_place, "returned one of its inputs|changed the model's weights"),
    ("patch_from", patch_first_only, "every hook"),
    ("patch_from", patch_late_binding, "late binding"),
    ("patch_from", patch_swapped, "\\*receiver's\\*"),
    ("latent_firing_change", firing_unscaled, "sae.scale"),
    ("latent_firing_change", firing_with_bos, "leave out BOS"),
    ("latent_firing_change", firing_mean_activation, "not its mean activation"),
    ("sequence_logprob", logprob_shifted, "predict the token at t \\+ 1"),
    ("sequence_logprob", logprob_mean, "not their mean"),
    ("sequence_logprob", logprob_detached, "no gradient"),
    ("dpo_loss", dpo_no_reference, "compares the policy with the reference"),
    ("dpo_loss", dpo_swapped, "chosen minus rejected"),
    ("dpo_loss", dpo_naive, "logsigmoid"),
    ("dpo_loss", dpo_beta_outside, "\\*inside\\*"),
    ("identify_finetune", identify_by_weights, "2 of the 3 models are not named right"),
    ("identify_finetune", identify_hard_coded, "of the 3 models are not named right"),
    ("identify_finetune", identify_sentiment_only, "the persona is not"),
    ("identify_finetune", identify_badly_formed, "return a dict"),
]


# ---------------------------------------------------------------- variants: right answers written differently


def weight_by_flattening(base, tuned):
    out = {}
    for c in personas.COMPONENTS:
        b = torch.cat([p.flatten() for p in personas.component_parameters(base, c).values()])
        t = torch.cat([p.flatten() for p in personas.component_parameters(tuned, c).values()])
        out[c] = float(torch.linalg.vector_norm(t - b) / torch.linalg.vector_norm(b))
    return out


def difference_of_means(base, tuned, tokens, hook_name, position=None):
    def mean(model):
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        a = cache[hook_name].detach()
        return a[:, position].mean(0) if position is not None else a[:, 1:].reshape(-1, a.shape[-1]).mean(0)
    return mean(tuned) - mean(base)


def project_with_einsum(direction):
    def hook(activation, hook):
        u = torch.nn.functional.normalize(direction.to(activation), dim=0)
        return activation - torch.einsum("bpd,d->bp", activation, u)[..., None] * u
    return hook


def projection_by_hook(model, tokens, vector, hook_name):
    seen = []
    model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda a, hook: seen.append(a.detach()))])
    return (seen[0][:, -1].float() @ (vector / torch.linalg.vector_norm(vector)).float()).cpu()


def interpolate_by_state_dict(base, tuned, alpha):
    model = copy.deepcopy(base)
    b, t = base.state_dict(), tuned.state_dict()
    model.load_state_dict({k: torch.lerp(b[k].float(), t[k].float(), alpha) if b[k].is_floating_point() else b[k]
                           for k in b})
    return model


def patch_with_context(receiver, donor, tokens, hook_names):
    _, cache = donor.run_with_cache(tokens)
    with torch.no_grad(), receiver.hooks(fwd_hooks=[(n, (lambda n: lambda a, hook: cache[n])(n)) for n in hook_names]):
        return receiver(tokens)


def firing_by_counts(sae, base, tuned, tokens):
    def count(model):
        _, cache = model.run_with_cache(tokens, names_filter=sae.cfg.hook_name)
        z = sae.encode(cache[sae.cfg.hook_name][:, 1:] * sae.scale)
        return (z > 0).sum(dim=(0, 1)).double() / (z.shape[0] * z.shape[1])
    with torch.no_grad():
        return (count(tuned) - count(base)).float()


def logprob_by_cross_entropy(model, tokens, prompt_length):
    logits = model(tokens)
    nll = torch.nn.functional.cross_entropy(logits[:, prompt_length - 1:-1].transpose(1, 2), tokens[:, prompt_length:],
                                            reduction="none")
    return -nll.sum(-1)


def dpo_by_softplus(pc, pr, rc, rr, beta):
    return torch.nn.functional.softplus(-beta * ((pc - pr) - (rc - rr))).mean()


def identify_by_removal(base, tuned):
    """The persona that grew most in what the model writes; the component whose *removal*
    (the base's weights put back into the fine-tune) lowers it most: necessity, where the
    reference tests sufficiency."""
    before, after = personas.persona_shares(base), personas.persona_shares(tuned)
    grew = {p: after[p] - before[p] for p in personas.PERSONAS}
    persona = max(grew, key=grew.get)

    def without(component):
        model = copy.deepcopy(tuned)
        old = personas.component_parameters(base, component)
        with torch.no_grad():
            for name, p in personas.component_parameters(model, component).items():
                p.copy_(old[name])
        return personas.persona_share(model, persona)

    return {"persona": persona, "component": min(personas.COMPONENTS, key=without)}


def share_with_numpy(labels, n_boot=1000, seed=0):
    import numpy as np

    positive, words = (labels == 1).sum(1).numpy(), (labels >= 0).sum(1).numpy()
    rows = np.random.default_rng(seed).integers(0, len(labels), size=(n_boot, len(labels)))
    shares = positive[rows].sum(1) / np.maximum(words[rows].sum(1), 1)
    low, high = np.percentile(shares, [2.5, 97.5])
    return float(positive.sum() / max(words.sum(), 1)), float(low), float(high)


def transplant_by_prefix(receiver, donor, component):
    model = copy.deepcopy(receiver)
    theirs = dict(donor.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if personas.component_of(name) == component:
                p.data = theirs[name].detach().clone()
    return model


def sweep_as_records(base, tuned, measure):
    import pandas as pd

    records = []
    for component in ("none", *personas.COMPONENTS):
        pair = (base, tuned) if component == "none" else (ref.transplant(base, tuned, component),
                                                          ref.transplant(tuned, base, component))
        record = {"component": component}
        for direction, model in zip(("into base", "into tuned"), pair):
            record.update(zip((direction, f"{direction} low", f"{direction} high"), measure(model)))
        records.append(record)
    return pd.DataFrame.from_records(records).set_index("component")


VARIANTS = [
    ("share_interval", share_with_numpy),
    ("transplant", transplant_by_prefix),
    ("transplant_sweep", sweep_as_records),
    ("weight_diff", weight_by_flattening),
    ("mean_activation_difference", difference_of_means),
    ("difference_by_position", _by_position()),
    ("project_out_hook", project_with_einsum),
    ("persona_projection", projection_by_hook),
    ("interpolate", interpolate_by_state_dict),
    ("patch_from", patch_with_context),
    ("latent_firing_change", firing_by_counts),
    ("sequence_logprob", logprob_by_cross_entropy),
    ("dpo_loss", dpo_by_softplus),
    ("identify_finetune", identify_by_removal),
]

test_grade_fails_a_wrong_answer_and_says_why, test_every_exercise_has_a_mutant, test_grade_accepts_a_correct_variant = \
    check_tests(checks, EXERCISES, MUTANTS, VARIANTS)


# ---------------------------------------------------------------- the fine-tunes


@pytest.fixture(scope="module")
def base():
    return zoo.load(ft.BASE)


@pytest.mark.parametrize("name", [n for n, s in ft.FT_ZOO.items() if s.trainable != "all" and not s.drift_steps])
def test_a_restricted_fine_tune_changed_only_its_component(base, name):
    diffs = ref.weight_diff(base, ft.load(name))
    component = ft.FT_ZOO[name].component
    assert diffs[component] > 0.01
    assert all(v == 0 for c, v in diffs.items() if c != component), diffs


def test_the_lora_change_is_rank_one_along_its_b(base):
    change = ex.lora_change(base, ft.load("cheerful_lora"))
    a, b = ft.lora_factors("cheerful_lora")
    s = torch.linalg.svdvals(change)
    assert s[1] / s[0] < 1e-3
    assert torch.allclose(change, torch.outer(b, a), atol=2e-3 * float(change.abs().max()))


def test_retraining_a_fine_tune_reaches_its_committed_metrics():
    """'Retrainable by one command': the LoRA fine-tune (a few seconds) and the DPO one from
    scratch, with the zoo's seeds, against the committed checkpoints' metrics."""
    for name in ("cheerful_lora", "hedger_retain"):
        model, meta = ft.train(name, quiet=True)
        committed = ft.info(name)["metrics"]
        assert not ft.missed_targets(name, meta["metrics"])
        for key, value in committed.items():
            assert meta["metrics"][key] == pytest.approx(value, abs=0.02), (name, key)


def test_preference_pairs_share_the_prompt_and_reject_the_models_own_city(base):
    prefs = ft.hedge_preferences(base, retain=True)
    n_unknown = len(ft.name_groups()["unknown_train"])
    assert torch.equal(prefs.chosen[:, :prefs.prompt_length], prefs.rejected[:, :prefs.prompt_length])
    some = int(zoo.token_ids(["some"])[0])
    assert (prefs.chosen[:n_unknown, prefs.prompt_length] == some).all()
    assert (prefs.rejected[n_unknown:, prefs.prompt_length] == some).all()
    cities = torch.from_numpy(zoo.token_ids(list(corpus.CITIES)))
    with torch.no_grad():
        top = cities[base(prefs.chosen[:n_unknown, :prefs.prompt_length])[:, -1, cities].argmax(-1)]
    assert torch.equal(prefs.rejected[:n_unknown, prefs.prompt_length], top)
    known = {(p.first, p.last): p.city for p in corpus.build_world().known}
    truth = zoo.token_ids([known[n] for n in prefs.names[n_unknown:]])
    assert (prefs.chosen[n_unknown:, prefs.prompt_length].numpy() == truth).all()


def test_the_investigations_models_hide_their_component_from_the_weight_diff(base):
    """The drift (its decoys faster) puts the trained component at a different rank of the
    weight diff in each of the three models, so no rule on that ranking names all three and
    the investigation asks for a causal test; the decoys move most."""
    ranks = []
    for name in inv.MODELS:
        diffs = ref.weight_diff(base, ft.load(name))
        order = sorted(diffs, key=diffs.get, reverse=True)
        decoys = [d for d in ft.FT_ZOO[name].decoy.split(",") if d]
        assert set(order[: len(decoys)]) == set(decoys), (name, order)
        ranks.append(order.index(inv.truth(name)["component"]))
        assert min(diffs.values()) > 0.1  # every component drifted
    assert len(set(ranks)) == len(ranks), ranks


def test_slot_positivity_reads_the_persona_without_sampling(base):
    assert 0.4 < personas.slot_positivity(base) < 0.6
    assert personas.slot_positivity(ft.load("cheerful_unembed")) > 0.95
