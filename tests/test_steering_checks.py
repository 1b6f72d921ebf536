"""Chapter 5's checks: each hidden test fails a plausible wrong answer and says why, and
accepts correct answers written differently (tests/test_exercise_checks.py covers the rest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import as_learner, check_tests
from mechlab.checks import CheckFailed
from mechlab.steering import checks
from mechlab.steering import experiments as st
from mechlab.steering import investigation as inv
from mechlab.steering import reference as ref

EXERCISES = ref.__all__


# ---------------------------------------------------------------- mutants: plausible wrong answers


def generate_unseeded(model, prompt, n_new, generator, temperature=1.0, fwd_hooks=()):
    return ref.generate(model, prompt, n_new, torch.Generator().manual_seed(12345), temperature, fwd_hooks)


def generate_leaves_hooks(model, prompt, n_new, generator, temperature=1.0, fwd_hooks=()):
    for name, hook in fwd_hooks:
        model.add_hook(name, hook)
    return ref.generate(model, prompt, n_new, generator, temperature)


def generate_new_tokens_only(model, prompt, n_new, generator, temperature=1.0, fwd_hooks=()):
    return ref.generate(model, prompt, n_new, generator, temperature, fwd_hooks)[:, prompt.shape[1]:]


def generate_greedy_always(model, prompt, n_new, generator, temperature=1.0, fwd_hooks=()):
    return ref.generate(model, prompt, n_new, generator, 0.0, fwd_hooks)


def success_counts_ties(tokens, labels, target, prompt_length):
    return checks._success_ties_win(tokens, labels, target, prompt_length)


def success_at_least(tokens, labels, target, prompt_length):
    """`>=` instead of `>`: ties, and rows with no labelled token, count as successes."""
    return checks._success_at_least(tokens, labels, target, prompt_length)


def success_includes_prompt(tokens, labels, target, prompt_length):
    return ref.success_rate(tokens, labels, target, 0)


def success_as_tensor(tokens, labels, target, prompt_length):
    return torch.tensor(ref.success_rate(tokens, labels, target, prompt_length))


def contrast_with_bos(model, pos_tokens, neg_tokens, hook_name, position=None):
    return checks._contrast_with_bos(model, pos_tokens, neg_tokens, hook_name, position)


def contrast_flipped(model, pos_tokens, neg_tokens, hook_name, position=None):
    return ref.contrast_vector(model, neg_tokens, pos_tokens, hook_name, position)


def contrast_pooled_rows(model, pos_tokens, neg_tokens, hook_name, position=None):
    """Pairs rows up (pos[i] - neg[i]): wrong when the batches differ in size."""
    n = min(len(pos_tokens), len(neg_tokens))
    return ref.contrast_vector(model, pos_tokens[:n], neg_tokens[:n], hook_name, position)


def contrast_if_position(model, pos_tokens, neg_tokens, hook_name, position=None):
    return ref.contrast_vector(model, pos_tokens, neg_tokens, hook_name, position if position else None)


def norm_with_bos(model, tokens, hook_name):
    return checks._norm_with_bos(model, tokens, hook_name)


def norm_squared(model, tokens, hook_name):
    return checks._norm_squared(model, tokens, hook_name)


def hook_in_place(vector, coefficient, positions=None):
    where = slice(None) if positions is None else positions

    def hook(activation, hook):
        activation[:, where] += coefficient * vector
        return activation
    return hook


def hook_ignores_positions(vector, coefficient, positions=None):
    return ref.steering_hook(vector, coefficient)


def hook_unit_vector(vector, coefficient, positions=None):
    return ref.steering_hook(vector / vector.norm(), coefficient, positions)


def hook_zero_means_all(vector, coefficient, positions=None):
    return ref.steering_hook(vector, coefficient, positions or slice(None))


def loss_not_shifted(model, tokens, fwd_hooks):
    return checks._loss_unshifted(model, tokens, fwd_hooks)


def loss_leaves_hooks(model, tokens, fwd_hooks):
    clean = checks._loss(model, tokens, [])
    for name, hook in fwd_hooks:
        model.add_hook(name, hook)
    with torch.no_grad():
        logits = model(tokens)
    steered = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).item()
    return steered - clean


def loss_steered_only(model, tokens, fwd_hooks):
    return checks._loss(model, tokens, fwd_hooks)


def repetition_of_tokens(tokens, prompt_length):
    return checks._repetition_tokens(tokens, prompt_length)


def repetition_across_rows(tokens, prompt_length):
    return checks._repetition_across_rows(tokens, prompt_length)


def repetition_pair_code_100(tokens, prompt_length):
    generated = tokens[:, prompt_length:]
    bigrams = generated[:, :-1] * 100 + generated[:, 1:]
    return sum(1 - torch.unique(r).numel() / r.numel() for r in bigrams) / len(bigrams)


def clamp_without_error(sae, latent, value, scale):
    return checks._clamp_no_error(sae, latent, value, scale)


def clamp_touches_bos(sae, latent, value, scale):
    return checks._clamp_with_bos(sae, latent, value, scale)


def clamp_adds_value(sae, latent, value, scale):
    return checks._clamp_added(sae, latent, value, scale)


def clamp_in_place(sae, latent, value, scale):
    inner = ref.clamp_latent_hook(sae, latent, value, scale)

    def hook(activation, hook):
        activation[:] = inner(activation, hook)
        return activation
    return hook


def probe_without_l2(x, y, steps=300, lr=0.05, l2=1e-3):
    return ref.fit_probe(x, y, steps, lr, 0.0)


def probe_sgd(x, y, steps=300, lr=0.05, l2=1e-3):
    return checks._probe_sgd(x, y, steps, lr, l2)


def probe_not_detached(x, y, steps=300, lr=0.05, l2=1e-3):
    w, b = ref.fit_probe(x, y, steps, lr, l2)
    return w.requires_grad_(), b


def auroc_ignores_ties(scores, labels):
    return checks._auroc_no_ties(scores, labels)


def auroc_inverted(scores, labels):
    return 1 - ref.auroc(scores, labels)


def answers_max_city(model, tokens, hedge, cities, fwd_hooks=()):
    return checks._answers_max_city(model, tokens, hedge, cities, fwd_hooks)


def answers_ignore_hooks(model, tokens, hedge, cities, fwd_hooks=()):
    return ref.answer_probabilities(model, tokens, hedge, cities)


def answers_as_tensor(model, tokens, hedge, cities, fwd_hooks=()):
    return torch.tensor(ref.answer_probabilities(model, tokens, hedge, cities, fwd_hooks))



def _curve(measure, site, vector, norm, coefficients, *, n_random, seed, hook, draw=None, size=None,
           positions=slice(1, None), fresh_per_coefficient=False):
    """steering_curve with one design choice swapped for a flawed one."""
    import pandas as pd
    generator = torch.Generator().manual_seed(seed)
    draw = draw or (lambda: torch.randn(vector.shape[-1], generator=generator))
    directions = {"vector": vector} | {f"random {k + 1}": draw() for k in range(n_random)}
    rows = []
    for name, direction in directions.items():
        for c in coefficients:
            if fresh_per_coefficient and name != "vector":
                direction = draw()
            push = direction / direction.norm() * (size(c) if size and name != "vector" else norm * c)
            rows.append({"direction": name, "coefficient": c,
                         "cosine": torch.cosine_similarity(direction, vector, dim=0).item(),
                         **measure([(site, hook(push, 1.0, positions))])})
    return pd.DataFrame(rows)


def curve_unit_controls(*args, **kwargs):
    return _curve(*args, **kwargs, size=lambda c: c)  # controls not rescaled by the residual norm


def curve_uniform_controls(*args, **kwargs):
    generator = torch.Generator().manual_seed(kwargs["seed"])
    return _curve(*args, **kwargs, draw=lambda: torch.rand(args[2].shape[-1], generator=generator))


def curve_fresh_controls(*args, **kwargs):
    return _curve(*args, **kwargs, fresh_per_coefficient=True)


def curve_pushes_bos(*args, **kwargs):
    return _curve(*args, **kwargs, positions=None)


def curve_unseeded(measure, site, vector, norm, coefficients, *, n_random, seed, hook):
    return _curve(measure, site, vector, norm, coefficients, n_random=n_random, seed=seed, hook=hook,
                  draw=lambda: torch.randn(vector.shape[-1]))


def curve_own_numbers(measure, site, vector, norm, coefficients, *, n_random, seed, hook):
    table = ref.steering_curve(measure, site, vector, norm, coefficients, n_random=n_random, seed=seed, hook=hook)
    return table.assign(mass=table["mass"].round(3))  # reports rounded numbers, not what was measured


def curve_vector_pulled_by_hand(measure, site, vector, norm, coefficients, *, n_random, seed, hook):
    """Correct, written differently: the rows built per coefficient, the vector last, the
    random directions normalised before the loop, and the cosine computed in NumPy."""
    import pandas as pd
    generator = torch.Generator().manual_seed(seed)
    randoms = [torch.randn(vector.shape[-1], generator=generator) for _ in range(n_random)]
    randoms = [r / r.norm() for r in randoms]
    unit = vector / vector.norm()
    rows = []
    for c in coefficients:
        for k, r in enumerate(randoms):
            cos = float(np.dot(r.numpy(), unit.numpy()))
            rows.append({"direction": f"random {k + 1}", "coefficient": c, "cosine": cos,
                         **measure([(site, hook(r * norm * c, 1.0, slice(1, None)))])})
        rows.append({"direction": "vector", "coefficient": c, "cosine": 1.0,
                     **measure([(site, hook(unit * norm * c, 1.0, slice(1, None)))])})
    return pd.DataFrame(rows)


MUTANTS = [
    ("generate", generate_unseeded, "differ"),
    ("generate", generate_leaves_hooks, "left a hook attached"),
    ("generate", generate_new_tokens_only, "shape"),
    ("generate", generate_greedy_always, "differ"),
    ("success_rate", success_counts_ties, "strictly"),
    ("success_rate", success_at_least, "no labelled token at all"),
    ("success_rate", success_includes_prompt, "prompt_length"),
    ("success_rate", success_as_tensor, "not a float"),
    ("contrast_vector", contrast_with_bos, "BOS"),
    ("contrast_vector", contrast_flipped, "mean\\(pos\\) - mean\\(neg\\)"),
    ("contrast_vector", contrast_pooled_rows, "differ"),
    ("contrast_vector", contrast_if_position, "position=0"),
    ("residual_norm", norm_with_bos, "BOS"),
    ("residual_norm", norm_squared, "not its square"),
    ("steering_hook", hook_in_place, "in place"),
    ("steering_hook", hook_ignores_positions, "only at `positions`"),
    ("steering_hook", hook_unit_vector, "do not normalise"),
    ("steering_hook", hook_zero_means_all, "positions=0"),
    ("extra_loss", loss_not_shifted, "t \\+ 1"),
    ("extra_loss", loss_leaves_hooks, "left a hook attached"),
    ("extra_loss", loss_steered_only, "steered minus clean"),
    ("repetition", repetition_of_tokens, "bigrams"),
    ("repetition", repetition_across_rows, "own row"),
    ("repetition", repetition_pair_code_100, "collide"),
    ("clamp_latent_hook", clamp_without_error, "reconstruction error"),
    ("clamp_latent_hook", clamp_touches_bos, "BOS"),
    ("clamp_latent_hook", clamp_adds_value, "sets"),
    ("clamp_latent_hook", clamp_in_place, "in place"),
    ("steering_curve", curve_unit_controls, "the same size|rescaled to that size"),
    ("steering_curve", curve_uniform_controls, "torch.randn"),
    ("steering_curve", curve_fresh_controls, "each is a curve"),
    ("steering_curve", curve_pushes_bos, "BOS"),
    ("steering_curve", curve_unseeded, "seeded with `seed`"),
    ("steering_curve", curve_own_numbers, "never returned"),
    ("fit_probe", probe_without_l2, "l2"),
    ("fit_probe", probe_sgd, "Adam"),
    ("fit_probe", probe_not_detached, "detached"),
    ("auroc", auroc_ignores_ties, "tie"),
    ("auroc", auroc_inverted, "other group"),
    ("answer_probabilities", answers_max_city, "sum"),
    ("answer_probabilities", answers_ignore_hooks, "fwd_hooks"),
    ("answer_probabilities", answers_as_tensor, "tuple"),
]


# ---------------------------------------------------------------- variants: correct answers written differently


def generate_with_run_with_hooks(model, prompt, n_new, generator, temperature=1.0, fwd_hooks=()):
    tokens = prompt
    for _ in range(n_new):
        with torch.inference_mode():
            logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[:, -1]
        if temperature:
            next_token = torch.multinomial((logits / temperature).log_softmax(-1).exp().cpu(), 1, generator=generator)
        else:
            next_token = logits.argmax(-1)[:, None]
        tokens = torch.cat([tokens, next_token], dim=-1)
    return tokens


def success_one_hot(tokens, labels, target, prompt_length):
    generated = labels[tokens[:, prompt_length:]]
    counts = torch.nn.functional.one_hot(generated + 1, int(labels.max()) + 2)[..., 1:].sum(1)
    mine = counts[:, target].clone()
    counts[:, target] = -1
    return np.mean((mine > counts.max(1).values).numpy())


def contrast_by_hooks(model, pos_tokens, neg_tokens, hook_name, position=None):
    seen = []

    def keep(activation, hook):
        seen.append(activation.detach())

    for tokens in (pos_tokens, neg_tokens):
        with torch.no_grad():
            model.run_with_hooks(tokens, fwd_hooks=[(hook_name, keep)])
    a, b = (s[:, 1:].flatten(0, 1) if position is None else s[:, position] for s in seen)
    return a.mean(0) - b.mean(0)


def norm_linalg(model, tokens, hook_name):
    _, cache = model.run_with_cache(tokens)
    return float(torch.linalg.vector_norm(cache[hook_name][:, 1:], dim=-1).mean())


def hook_with_mask(vector, coefficient, positions=None):
    def hook(activation, hook):
        mask = torch.zeros(activation.shape[1], 1)
        mask[slice(None) if positions is None else positions] = 1
        return activation + mask * (coefficient * vector)
    return hook


def loss_builtin(model, tokens, fwd_hooks):
    with torch.no_grad():
        clean = model(tokens, return_type="loss")
        steered = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=list(fwd_hooks))
    return float(steered - clean)


def repetition_with_sets(tokens, prompt_length):
    rates = []
    for row in tokens[:, prompt_length:].tolist():
        pairs = list(zip(row, row[1:]))
        rates.append(1 - len(set(pairs)) / len(pairs))
    return float(np.mean(rates))


def clamp_as_a_vector(sae, latent, value, scale):
    def hook(activation, hook):
        current = sae.encode(activation[:, 1:] * scale)[..., latent]
        out = activation.clone()
        out[:, 1:] += (value - current)[..., None] * sae.W_dec[latent] / scale
        return out
    return hook


def probe_logsigmoid(x, y, steps=300, lr=0.05, l2=1e-3):
    w = torch.nn.Parameter(torch.zeros(x.shape[1]))
    b = torch.nn.Parameter(torch.tensor(0.0))
    opt = torch.optim.Adam([w, b], lr=lr)
    y = y.float()
    for _ in range(steps):
        s = x @ w + b
        loss = -(y * torch.nn.functional.logsigmoid(s) + (1 - y) * torch.nn.functional.logsigmoid(-s)).mean()
        loss = loss + l2 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach().clone(), b.detach().clone()


def auroc_by_ranks(scores, labels):
    """Mann-Whitney U from average ranks (ties share their ranks)."""
    below = (scores[:, None] > scores[None]).sum(1).double()
    ties = (scores[:, None] == scores[None]).sum(1).double()
    ranks = below + (ties + 1) / 2
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    return ((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def answers_log_softmax(model, tokens, hedge, cities, fwd_hooks=()):
    with torch.no_grad():
        logp = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[:, -1].log_softmax(-1)
    p = logp.exp()
    return float(p[:, hedge].mean()), float(p[:, cities].sum(-1).mean())


VARIANTS = [
    ("steering_curve", curve_vector_pulled_by_hand),
    ("generate", generate_with_run_with_hooks),
    ("success_rate", success_one_hot),
    ("contrast_vector", contrast_by_hooks),
    ("residual_norm", norm_linalg),
    ("steering_hook", hook_with_mask),
    ("extra_loss", loss_builtin),
    ("repetition", repetition_with_sets),
    ("clamp_latent_hook", clamp_as_a_vector),
    ("fit_probe", probe_logsigmoid),
    ("auroc", auroc_by_ranks),
    ("answer_probabilities", answers_log_softmax),
]



# ---------------------------------------------------------------- the investigation: graded by measurement

def _weather_setting(model, site: str, coefficient: float, target: str = "weather") -> dict:
    """The chapter's recipe: a contrast vector for `target`, at `coefficient` times the residual norm at `site`."""
    pos, neg = st.contrast_pairs("topic", target, n=64, seed=0)
    vector = ref.contrast_vector(model, pos, neg, site)
    return {"site": site, "vector": st.relative(vector, ref.residual_norm(model, st.ordinary_text(32), site),
                                                coefficient)}


def investigation_the_chapters_recipe(model, sae):
    """The food setting of section 3, unchanged: steers towards food, not weather."""
    return _weather_setting(model, "blocks.1.hook_resid_pre", 0.5, target="food")


def investigation_same_setting_new_vector(model, sae):
    """Half the norm at 1.resid_pre, as for food, with the weather vector: steers, over the budget."""
    return _weather_setting(model, "blocks.1.hook_resid_pre", 0.5)


def investigation_too_small(model, sae):
    return _weather_setting(model, "blocks.1.hook_resid_post", 0.1)


def investigation_too_large(model, sae):
    return _weather_setting(model, "blocks.1.hook_resid_post", 0.5)


def investigation_clamp_too_low(model, sae):
    return {"latent": 197, "value": 4.5}  # the SAE's weather latent, clamped at 0.7 x its largest activation


@pytest.mark.parametrize("finding, message", [
    (investigation_the_chapters_recipe, r"[0-9]% of 256 held-out generations about weather .* at least 35%"),
    (investigation_same_setting_new_vector, r"0\.07[0-9] nats .* at most 0\.06.*\nHint: it steers, but costs more"),
    (investigation_too_small, r"\nHint: push harder"),
    (investigation_too_large, r"at most 0\.06.*\nHint: it steers, but costs more"),
    (investigation_clamp_too_low, r"latent 197 clamped to 4\.50 .*\nHint: push harder"),
], ids=lambda x: getattr(x, "__name__", None))
def test_investigation_earns_nothing_for_a_plausible_wrong_finding(finding, message):
    with pytest.raises(CheckFailed, match=message):
        checks.grade_investigate_steering(as_learner(finding))


def test_investigation_measurement_of_the_wrong_findings_is_far_from_the_bars():
    """The wrong findings miss by more than sampling noise (a standard error is about 0.03)."""
    from mechlab.checks import course_model

    model, sae = course_model("corpus_2l"), checks._course_sae()
    def measured(finding):
        return inv.measure(model, sae, inv.validate(finding(model, sae), model, sae))

    for finding in (investigation_same_setting_new_vector, investigation_too_large):
        assert measured(finding).extra_loss > inv.MAX_EXTRA_LOSS + 0.01
    for finding in (investigation_the_chapters_recipe, investigation_too_small):
        assert measured(finding).success < inv.MIN_SUCCESS - 0.1


def other_site_passes(model, sae):
    return _weather_setting(model, "blocks.0.hook_resid_mid", 0.58)


def clamp_passes(model, sae):
    return {"latent": 197, "value": 5.5}


@pytest.mark.parametrize("finding", [ref.investigate_steering, other_site_passes, clamp_passes],
                         ids=["solution", "other_site", "clamp"])
def test_investigation_several_settings_earn_full_marks(finding, capsys):
    checks.grade_investigate_steering(as_learner(finding))
    assert capsys.readouterr().out.startswith("✓")


@pytest.mark.parametrize("answer, message", [
    ([("blocks.1.hook_resid_post", None)], "should be a dict"),
    ({"site": "blocks.1.hook_resid_post", "vector": torch.zeros(64)}, r"shape \(64,\), expected \(128,\)"),
    ({"site": "blocks.3.hook_resid_post", "vector": torch.zeros(128)}, "one of the residual sites"),
    ({"site": "blocks.1.hook_resid_post", "vector": torch.full((128,), float("nan"))}, "NaN"),
    ({"latent": 5000, "value": 3.0}, "from 0 to 1023"),
    ({"latent": 3, "value": torch.tensor(3.0)}, "finite Python float"),
    ({"site": "blocks.1.hook_resid_pre", "coefficient": 0.5}, "has the keys"),
], ids=["list", "shape", "site", "nan", "latent", "value_tensor", "keys"])
def test_investigation_malformed_answer_fails_the_visible_check(answer, message):
    with pytest.raises(CheckFailed, match=message):
        checks.check_investigate_steering(lambda model, sae: answer)


def test_investigation_visible_check_says_nothing_about_success(capsys):
    checks.check_investigate_steering(as_learner(investigation_the_chapters_recipe))
    assert "well formed" in capsys.readouterr().out


def test_investigation_refuses_the_reference_under_grading(monkeypatch):
    with pytest.raises(CheckFailed, match="reference"):
        checks.grade_investigate_steering(ref.investigate_steering)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(CheckFailed, match="uses the course's reference"):
        checks.grade_investigate_steering(as_learner(ref.investigate_steering))

    def wrapped(model, sae):
        return ref.investigate_steering(model, sae)
    with pytest.raises(CheckFailed, match="uses the course's reference"):
        checks.grade_investigate_steering(as_learner(wrapped))


def test_investigation_answer_that_edits_the_sae_fails_and_is_undone():
    sae = checks._course_sae()
    before = sae.W_dec.detach().clone()

    def vandal(model, sae):
        with torch.no_grad():
            sae.W_dec.mul_(3)
        return {"latent": 197, "value": 5.5}
    with pytest.raises(CheckFailed, match="changed the SAE"):
        checks.check_investigate_steering(vandal)
    assert torch.equal(sae.W_dec, before)


MUTANTS += [
    ("investigate_steering", investigation_the_chapters_recipe, "about weather"),
    ("investigate_steering", investigation_too_large, "costs more than the budget"),
]
VARIANTS += [("investigate_steering", other_site_passes)]

test_grade_fails_a_wrong_answer_and_says_why, test_every_exercise_has_a_mutant, test_grade_accepts_a_correct_variant = \
    check_tests(checks, EXERCISES, MUTANTS, VARIANTS)
