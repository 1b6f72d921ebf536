"""Chapter 1's checks: each hidden test fails a plausible wrong answer and says why, and
accepts a correct answer written differently (tests/test_exercise_checks.py covers what
every chapter's checks must do)."""

from __future__ import annotations

import einops
import pytest
import torch

from mechlab.checks import CheckFailed
from mechlab.superposition import checks
from mechlab.superposition import reference as ref
from conftest import as_learner, check_tests

EXERCISES = ref.__all__  # generated from the chapter's source


# ---------------------------------------------------------------- mutants: plausible wrong answers


def toy_no_relu(W, b, x):
    h = torch.einsum("khf,bkf->bkh", W, x)
    return torch.einsum("khf,bkh->bkf", W, h) + b


def toy_transposed(W, b, x):
    h = torch.einsum("kfh,bkf->bkh", W, x)  # reads W as [instance, feature, hidden]
    return torch.relu(torch.einsum("kfh,bkh->bkf", W, h) + b)


def toy_bias_after_relu(W, b, x):
    return toy_no_relu(W, torch.zeros_like(b), x).relu() + b


def generate_shared_uniform(batch_size, p, n_features, generator):
    u = torch.rand(batch_size, p.shape[0], n_features, generator=generator)
    return torch.where(u < p[:, None], u, 0.0)  # values correlated with being active


def generate_inverted(batch_size, p, n_features, generator):
    shape = (batch_size, p.shape[0], n_features)
    values = torch.rand(shape, generator=generator)
    return torch.where(torch.rand(shape, generator=generator) > p[:, None], values, 0.0)


def generate_no_generator(batch_size, p, n_features, generator):
    shape = (batch_size, p.shape[0], n_features)
    return torch.where(torch.rand(shape) < p[:, None], torch.rand(shape), 0.0)


def generate_shared_mask(batch_size, p, n_features, generator):
    shape = (batch_size, p.shape[0], n_features)
    active = torch.rand(1, p.shape[0], n_features, generator=generator) < p[:, None]
    return torch.where(active, torch.rand(shape, generator=generator), 0.0)


def loss_no_importance(x, x_hat, importance):
    return ((x - x_hat) ** 2).sum(-1).mean(0)


def loss_mean_features(x, x_hat, importance):
    return (importance * (x - x_hat) ** 2).mean(-1).mean(0)


def loss_sum_batch(x, x_hat, importance):
    return (importance * (x - x_hat) ** 2).sum(-1).sum(0)


def train_no_step(W, b, feature_probability, importance, *, steps, batch_size, lr, generator,
                  forward, generate, loss_fn):
    W.requires_grad_(True)
    b.requires_grad_(True)
    history = []
    for _ in range(steps):
        x = generate(batch_size, feature_probability, W.shape[-1], generator)
        loss = loss_fn(x, forward(W, b, x), importance)
        loss.sum().backward()
        history.append(loss.detach())
    return torch.stack(history)


def train_fixed_lr(W, b, feature_probability, importance, *, steps, batch_size, lr, generator,
                   forward, generate, loss_fn):
    return ref.train_toy_models(W, b, feature_probability, importance, steps=steps, batch_size=batch_size,
                                lr=1e-4, generator=generator, forward=forward, generate=generate, loss_fn=loss_fn)


def train_ignores_pieces(W, b, feature_probability, importance, *, steps, batch_size, lr, generator,
                         forward, generate, loss_fn):
    return ref.train_toy_models(W, b, feature_probability, importance, steps=steps, batch_size=batch_size,
                                lr=lr, generator=generator)


def train_history_attached(W, b, feature_probability, importance, *, steps, batch_size, lr, generator,
                           forward, generate, loss_fn):
    ref.train_toy_models(W, b, feature_probability, importance, steps=steps, batch_size=batch_size, lr=lr,
                         generator=generator, forward=forward, generate=generate, loss_fn=loss_fn)
    return torch.zeros(steps, W.shape[0], requires_grad=True)


def norms_including_self(W):
    norms = W.norm(dim=1)
    dots = torch.einsum("khi,khj->kij", W / norms.clamp_min(1e-8)[:, None, :], W)
    return norms, (dots**2).sum(-1)


def norms_unnormalised(W):
    dots = torch.einsum("khi,khj->kij", W, W)
    return W.norm(dim=1), (dots**2).sum(-1) - torch.diagonal(dots, dim1=-2, dim2=-1) ** 2


def norms_nan_on_zero(W):
    norms = W.norm(dim=1)
    dots = torch.einsum("khi,khj->kij", W / norms[:, None, :], W)
    return norms, (dots**2).sum(-1) - torch.diagonal(dots, dim1=-2, dim2=-1) ** 2


def dimensionality_nan_on_zero(W):
    norms = W.norm(dim=1)
    dots = torch.einsum("khi,khj->kij", W / norms[:, None, :], W)
    return norms**2 / (dots**2).sum(-1)


def dimensionality_excluding_self(W):
    norms = W.norm(dim=1)
    dots = torch.einsum("khi,khj->kij", W / norms.clamp_min(1e-8)[:, None, :], W)
    ratio = norms**2 / ((dots**2).sum(-1) - norms**2).clamp_min(1e-16)
    return torch.where(norms > 1e-8, ratio, 0.0)


def phase_fixed_thresholds(W, feature, *, norm_threshold=0.5, interference_threshold=0.25):
    return ref.feature_phase(W, feature)


def phase_interference_first(W, feature, *, norm_threshold=0.5, interference_threshold=0.25):
    norms, interference = ref.feature_norms_and_interference(W)
    norm, interf = norms[:, feature], interference[:, feature]
    return torch.where(interf < interference_threshold, 1, torch.where(norm < norm_threshold, 0, 2)).long()


def phase_float(W, feature, **kwargs):
    return ref.feature_phase(W, feature, **kwargs).float()


def sae_no_relu(h, W_enc, b_enc, W_dec, b_dec):
    z = (h - b_dec) @ W_enc + b_enc
    return z, z @ W_dec.T + b_dec


def sae_no_centering(h, W_enc, b_enc, W_dec, b_dec):
    z = torch.relu(h @ W_enc + b_enc)
    return z, z @ W_dec.T + b_dec


def sae_loss_mse_mean(h, latents, reconstruction, l1_coeff):
    return (((reconstruction - h) ** 2).mean(-1) + l1_coeff * latents.abs().sum(-1)).mean()


def sae_loss_no_l1(h, latents, reconstruction, l1_coeff):
    return ((reconstruction - h) ** 2).sum(-1).mean()


def sae_loss_float(h, latents, reconstruction, l1_coeff):
    return ref.sae_loss(h, latents, reconstruction, l1_coeff).item()


def train_sae_renormalising(dim: int | None):
    """An SAE loop that renormalises W_dec along `dim` (None: never) instead of its columns."""
    def train(sample_hidden, W_enc, b_enc, W_dec, b_dec, *, steps, batch_size, lr, l1_coeff, forward, loss_fn):
        params = [W_enc, b_enc, W_dec, b_dec]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=lr)
        history = []
        for _ in range(steps):
            h = sample_hidden(batch_size)
            loss = loss_fn(h, *forward(h, W_enc, b_enc, W_dec, b_dec), l1_coeff)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if dim is not None:
                with torch.no_grad():
                    W_dec /= W_dec.norm(dim=dim, keepdim=True)
            history.append(loss.detach())
        return torch.stack(history)
    train.__name__ = "train_sae_no_renorm" if dim is None else f"train_sae_renorm_dim{dim}"
    return train


def train_sae_no_step(sample_hidden, W_enc, b_enc, W_dec, b_dec, *, steps, batch_size, lr, l1_coeff,
                      forward, loss_fn):
    history = []
    for _ in range(steps):
        h = sample_hidden(batch_size)
        history.append(loss_fn(h, *forward(h, W_enc, b_enc, W_dec, b_dec), l1_coeff).detach())
    return torch.stack(history)


def train_adam_every_step(W, b, p, importance, *, steps, batch_size, lr, generator, forward, generate, loss_fn):
    W.requires_grad_(True), b.requires_grad_(True)
    history = []
    for _ in range(steps):
        optimizer = torch.optim.Adam([W, b], lr=lr)  # forgets Adam's running averages every step
        x = generate(batch_size, p, W.shape[-1], generator)
        loss = loss_fn(x, forward(W, b, x), importance)
        optimizer.zero_grad(), loss.sum().backward(), optimizer.step()
        history.append(loss.detach())
    return torch.stack(history)


def train_mean_over_instances(W, b, p, importance, *, steps, batch_size, lr, generator, forward, generate, loss_fn):
    """Correct: Adam is scale-invariant, so stepping on the mean instead of the sum is as good."""
    W.requires_grad_(True), b.requires_grad_(True)
    optimizer, history = torch.optim.Adam([W, b], lr=lr), []
    for _ in range(steps):
        x = generate(batch_size, p, W.shape[-1], generator)
        loss = loss_fn(x, forward(W, b, x), importance)
        optimizer.zero_grad(), loss.mean().backward(), optimizer.step()
        history.append(loss.detach())
    return torch.stack(history)


def train_sae_adam_every_step(sample_hidden, W_enc, b_enc, W_dec, b_dec, *, steps, batch_size, lr, l1_coeff,
                              forward, loss_fn):
    params, history = [W_enc, b_enc, W_dec, b_dec], []
    for p in params:
        p.requires_grad_(True)
    for _ in range(steps):
        optimizer = torch.optim.Adam(params, lr=lr)
        h = sample_hidden(batch_size)
        loss = loss_fn(h, *forward(h, *params), l1_coeff)
        optimizer.zero_grad(), loss.backward(), optimizer.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=0, keepdim=True)
        history.append(loss.detach())
    return torch.stack(history)


def _cos(W_dec, W_true):
    d = W_dec / W_dec.norm(dim=0, keepdim=True).clamp_min(1e-8)
    t = W_true / W_true.norm(dim=0, keepdim=True).clamp_min(1e-8)
    return t.T @ d


def recovery_abs(W_dec, W_true):
    return _cos(W_dec, W_true).abs().max(dim=-1).values.mean().item()


def recovery_wrong_axis(W_dec, W_true):
    return _cos(W_dec, W_true).max(dim=0).values.mean().item()


def recovery_unnormalised(W_dec, W_true):
    return (W_true.T @ W_dec).max(dim=-1).values.mean().item()


def recovery_tensor(W_dec, W_true):
    return _cos(W_dec, W_true).max(dim=-1).values.mean()



def _phase_runs(p, r, restarts, steps, generator, train, classify, feature=1, layout="(cell restart)"):
    """Each cell's runs: final losses and phases, [cell, restart]."""
    pattern = f"{layout} -> cell restart"
    if layout == "(cell restart)":
        p_runs, r_runs = p.repeat_interleave(restarts), r.repeat_interleave(restarts)
    else:
        p_runs, r_runs = p.repeat(restarts), r.repeat(restarts)
    from mechlab.superposition import toy_models as sp
    W, b = sp.init_toy_weights(sp.ToyConfig(n_features=2, n_hidden=1, n_instances=len(p_runs)), generator)
    history = train(W, b, p_runs, torch.stack([torch.ones_like(r_runs), r_runs], -1), steps=steps,
                    batch_size=256, lr=1e-2, generator=generator)
    final = einops.rearrange(history[-steps // 10:].mean(0), pattern, restart=restarts)
    return final, einops.rearrange(classify(W.detach(), feature), pattern, restart=restarts)


def _agreement(runs, phases):
    return (runs == phases[:, None]).float().mean(-1)


def phase_one_run(p, r, *, restarts, steps, generator, train, classify):
    _, runs = _phase_runs(p, r, restarts, steps, generator, train, classify)
    return runs[:, 0], _agreement(runs, runs[:, 0])


def phase_majority_vote(p, r, *, restarts, steps, generator, train, classify):
    _, runs = _phase_runs(p, r, restarts, steps, generator, train, classify)
    phases = runs.mode(dim=1).values
    return phases, _agreement(runs, phases)


def phase_feature_0(p, r, *, restarts, steps, generator, train, classify):
    final, runs = _phase_runs(p, r, restarts, steps, generator, train, classify, feature=0)
    phases = runs.gather(1, final.argmin(1, keepdim=True)).squeeze(1)
    return phases, _agreement(runs, phases)


def phase_no_error_bar(p, r, *, restarts, steps, generator, train, classify):
    phases, agreement = ref.phase_diagram(p, r, restarts=restarts, steps=steps, generator=generator, train=train,
                                          classify=classify)
    return phases, torch.ones_like(agreement)


def phase_ignores_train(p, r, *, restarts, steps, generator, train, classify):
    return ref.phase_diagram(p, r, restarts=restarts, steps=steps, generator=generator, classify=classify)


def phase_restart_major(p, r, *, restarts, steps, generator, train, classify):
    """Correct, laid out the other way: all cells' first runs, then all cells' second runs..."""
    final, runs = _phase_runs(p, r, restarts, steps, generator, train, classify, layout="(restart cell)")
    phases = runs.gather(1, final.argmin(1, keepdim=True)).squeeze(1)
    return phases, _agreement(runs, phases)


MUTANTS = [
    ("toy_forward", toy_no_relu, "ReLU"),
    ("toy_forward", toy_transposed, "W is \\[instance, hidden, feature\\]"),
    ("toy_forward", toy_bias_after_relu, "before the ReLU"),
    ("generate_batch", generate_shared_uniform, "two separate uniform"),
    ("generate_batch", generate_inverted, "below"),
    ("generate_batch", generate_no_generator, "generator"),
    ("generate_batch", generate_shared_mask, "non-zero|every batch element"),
    ("importance_weighted_loss", loss_no_importance, "importance"),
    ("importance_weighted_loss", loss_mean_features, "sum over features"),
    ("importance_weighted_loss", loss_sum_batch, "mean over the batch"),
    ("train_toy_models", train_no_step, "did not change"),
    ("train_toy_models", train_fixed_lr, "reference loop reaches"),
    ("train_toy_models", train_ignores_pieces, "argument"),
    ("train_toy_models", train_history_attached, "requires grad"),
    ("train_toy_models", train_adam_every_step, "optimiser once"),
    ("feature_norms_and_interference", norms_including_self, "j = i"),
    ("feature_norms_and_interference", norms_unnormalised, "normalise"),
    ("feature_norms_and_interference", norms_nan_on_zero, "NaN"),
    ("feature_dimensionality", dimensionality_nan_on_zero, "NaN"),
    ("feature_dimensionality", dimensionality_excluding_self, "includes j = i"),
    ("feature_phase", phase_fixed_thresholds, "thresholds you are given"),
    ("feature_phase", phase_interference_first, "norm first"),
    ("feature_phase", phase_float, "dtype"),
    ("phase_diagram", phase_one_run, "one run per cell differs from the best in \\d+ to \\d+ cells"),
    ("phase_diagram", phase_majority_vote, "differs from the best of the grader's 8 runs per cell"),
    ("phase_diagram", phase_feature_0, "differs from the best of the grader's 8 runs per cell"),
    ("phase_diagram", phase_no_error_bar, "agreement is 1 in every cell"),
    ("phase_diagram", phase_ignores_train, "`train` it was given"),
    ("sae_forward", sae_no_relu, "ReLU"),
    ("sae_forward", sae_no_centering, "b_dec"),
    ("sae_loss", sae_loss_mse_mean, "sum the squared error"),
    ("sae_loss", sae_loss_no_l1, "sparsity penalty"),
    ("sae_loss", sae_loss_float, "0-dimensional"),
    ("train_sae", train_sae_renormalising(None), "unit|norm 1"),
    ("train_sae", train_sae_renormalising(1), "norm 1"),
    ("train_sae", train_sae_no_step, "did not change"),
    ("train_sae", train_sae_adam_every_step, "optimiser once"),
    ("feature_recovery_score", recovery_abs, "signed"),
    ("feature_recovery_score", recovery_wrong_axis, "max over latents"),
    ("feature_recovery_score", recovery_unnormalised, "normalise"),
    ("feature_recovery_score", recovery_tensor, "float"),
]


# ---------------------------------------------------------------- correct answers written differently

VARIANTS = [("train_toy_models", train_mean_over_instances), ("phase_diagram", phase_restart_major)]


def test_value_mismatch_gets_no_hint_about_the_output_form():
    """An L2 penalty in sae_loss returns the right kind of value with the wrong number: the
    hint about returning a 0-dimensional tensor would send the learner the wrong way."""
    def sae_loss_l2(h, latents, reconstruction, l1_coeff):
        return ((h - reconstruction) ** 2).sum(-1).mean() + l1_coeff * (latents ** 2).sum(-1).mean()
    with pytest.raises(CheckFailed) as failure:
        checks.grade_sae_loss(sae_loss_l2)
    assert "0-dimensional" not in str(failure.value)


# ---------------------------------------------------------------- the investigation


def _findings(W, b, represented_norm=0.5, pair_cosine=-0.9, filter_dropped=True, top_m=False, all_features=False,
              pair_bias=0.01, every_pair_exclusive=False):
    norms = W.norm(dim=0)
    cos = (W / norms.clamp_min(1e-8)).T @ (W / norms.clamp_min(1e-8))
    n = W.shape[1]
    if all_features:
        represented = list(range(n))
    elif top_m:
        represented = sorted(norms.argsort(descending=True)[: W.shape[0]].tolist())
    else:
        represented = [i for i in range(n) if norms[i] > represented_norm]
    candidates = represented if filter_dropped else range(n)
    pairs = [(i, j) for i in candidates for j in candidates if i < j and cos[i, j] < pair_cosine]
    exclusive = pairs if every_pair_exclusive else [(i, j) for i, j in pairs if float(b[i] + b[j]) / 2 < pair_bias]
    return {"represented": represented, "antipodal_pairs": pairs, "exclusive_pairs": exclusive}


def investigate_all_features(W, b):
    """'Every feature is represented' (and the pairs among them by cosine)."""
    return _findings(W, b, all_features=True)


def investigate_top_m(W, b):
    """'A model with m dimensions represents m features': the m longest columns."""
    return _findings(W, b, top_m=True)


def investigate_negative_cosine(W, b):
    """Any two represented features pointing away from each other (cosine below -0.5) as a pair."""
    return _findings(W, b, pair_cosine=-0.5)


def investigate_unfiltered_pairs(W, b):
    """Pairs by cosine among all features, dropped ones included."""
    return _findings(W, b, filter_dropped=False)


def investigate_antipodal_means_exclusive(W, b):
    """'Features that share a line are never active together': every antipodal pair called exclusive."""
    return _findings(W, b, every_pair_exclusive=True)


def investigate_hard_coded(W, b):
    """The answer for the visible mystery model, whatever model it is given."""
    return {"represented": [0, 1, 2, 4, 6], "antipodal_pairs": [(1, 4), (2, 6)], "exclusive_pairs": [(1, 4)]}


def investigate_other_thresholds(W, b):
    """Correct, with other thresholds inside the margins, tensors turned into ints, pairs as lists."""
    found = _findings(W, b, represented_norm=0.35, pair_cosine=-0.95, pair_bias=0.015)
    return {"represented": tuple(reversed(found["represented"])),
            "antipodal_pairs": [[j, i] for i, j in found["antipodal_pairs"]],
            "exclusive_pairs": [[j, i] for i, j in found["exclusive_pairs"]]}


INVESTIGATION_WRONG = [
    (investigate_all_features, r"you list feature \d+ as represented, but its column has norm 0.0"),
    (investigate_top_m, r"you leave out feature .*norm (0.9|1.0)"),
    (investigate_negative_cosine, r"on mystery model 1 .*cosine -0\.[78]\d.*not 180°"),
    (investigate_unfiltered_pairs, "is not represented .*direction means nothing"),
    (investigate_antipodal_means_exclusive, r"as never active together, but its biases are .*independent sparse "
                                            r"features pair up too"),
    (investigate_hard_coded, r"on mystery model \d"),  # even model 0: the hidden test disguises it
]


@pytest.mark.parametrize("wrong, message", INVESTIGATION_WRONG, ids=[w[0].__name__ for w in INVESTIGATION_WRONG])
def test_investigation_grade_fails_a_plausible_wrong_finding_with_the_measurement(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checks.grade_investigate_toy_model(wrong)


@pytest.mark.parametrize("answer", [ref.investigate_toy_model, investigate_other_thresholds],
                         ids=["solution", "other_thresholds"])
def test_investigation_grade_accepts_the_solution_and_other_sensible_thresholds(answer, capsys):
    checks.grade_investigate_toy_model(as_learner(answer))
    assert capsys.readouterr().out.startswith("✓")


@pytest.mark.parametrize("answer, message", [
    (lambda W, b: [0, 1], "got a list"),
    (lambda W, b: {"represented": [0, 1]}, "keys"),
    (lambda W, b: {"represented": [0, 99], "antipodal_pairs": [], "exclusive_pairs": []}, "features 0 to 6"),
    (lambda W, b: {"represented": torch.tensor([0, 1]), "antipodal_pairs": [], "exclusive_pairs": []}, "Tensor"),
    (lambda W, b: {"represented": [0, 1], "antipodal_pairs": [(1, 1)], "exclusive_pairs": []}, "itself"),
    (lambda W, b: {"represented": [0, 1], "antipodal_pairs": [(0, 1, 2)], "exclusive_pairs": []}, "two feature ids"),
    (lambda W, b: {"represented": [0, 1], "antipodal_pairs": [], "exclusive_pairs": (2,)}, "two feature ids"),
])
def test_investigation_visible_check_rejects_a_malformed_answer(answer, message):
    with pytest.raises(CheckFailed, match=message):
        checks.check_investigate_toy_model(answer)


def test_investigation_visible_check_says_nothing_about_correctness(capsys):
    checks.check_investigate_toy_model(investigate_all_features)  # wrong, but well formed
    assert "says nothing about whether it is right" in capsys.readouterr().out


def test_investigation_refuses_the_reference():
    with pytest.raises(CheckFailed, match="reference"):
        checks.grade_investigate_toy_model(ref.investigate_toy_model)


def test_mystery_models_keep_their_margins_and_their_planted_structure():
    """Every measured norm, cosine and antipodal pair's mean bias is outside the bands where the
    answer would depend on a threshold; every model's measured never-co-active pairs are its
    recipe's; and the models hold both kinds of antipodal pair, so calling every antipodal
    pair exclusive is wrong somewhere (model 0, the visible one, has one of each)."""
    from mechlab.superposition import investigation
    kinds = set()
    for index, recipe in enumerate(investigation.RECIPES):
        truth = investigation.judge(*investigation.mystery_model(index))
        assert all(None not in truth[part].values() for part in ("features", "pairs", "exclusive")), index
        assert {p for p, v in truth["exclusive"].items() if v} == set(recipe.exclusive_pairs), index
        kinds |= {truth["exclusive"][p] for p, v in truth["pairs"].items() if v}
    assert kinds == {True, False}
    truth = investigation.judge(*investigation.mystery_model(0))
    assert [i for i, v in truth["features"].items() if v is False] == [3, 5]
    assert {p: truth["exclusive"][p] for p, v in truth["pairs"].items() if v} == {(1, 4): True, (2, 6): False}


def test_the_committed_mystery_models_come_from_their_recipes():
    """Retrained from the recipes (16 s of CPU), each model has the committed one's findings,
    norms and cosines; the checkpoint names no recipe, only their digest."""
    from safetensors import safe_open

    from mechlab.superposition import investigation

    with safe_open(str(investigation.CHECKPOINT), framework="pt") as f:
        assert set(f.metadata()) == {"recipes_sha256", "torch", "cpu_seconds"}
    for k, retrained in enumerate(investigation.train_recipes(investigation.RECIPES)):
        assert investigation.same_findings(retrained, investigation.mystery_model(k)) == [], k


def train_no_zero_grad(W, b, p, importance, *, steps, batch_size, lr, generator, forward, generate, loss_fn):
    W.requires_grad_(True), b.requires_grad_(True)
    optimizer, history = torch.optim.Adam([W, b], lr=lr), []
    for _ in range(steps):
        x = generate(batch_size, p, W.shape[-1], generator)
        loss = loss_fn(x, forward(W, b, x), importance)
        loss.sum().backward()  # gradients pile up
        optimizer.step()
        history.append(loss.detach())
    return torch.stack(history)


def sae_loss_mean_everything(h, latents, reconstruction, l1_coeff):
    return ((reconstruction - h) ** 2).mean() + l1_coeff * latents.abs().mean()


def norms_wrong_axis(W):
    norms = W.norm(dim=2)  # over features instead of hidden
    return norms, norms


@pytest.mark.parametrize("name, wrong, message, absent", [
    ("train_toy_models", train_no_zero_grad, "never calls optimizer.zero_grad", "new Adam"),
    ("sae_loss", sae_loss_mean_everything, "over every entry", "0-dimensional"),
    ("feature_norms_and_interference", norms_wrong_axis, "over the `hidden` axis", None),
])
def test_visible_check_names_the_one_cause(name, wrong, message, absent):
    """Issue 20: a wrong loop without zero_grad, a loss averaged over every entry, norms over
    the wrong axis each get the hint for their own mistake, in the visible check already."""
    with pytest.raises(CheckFailed, match=message) as failure:
        getattr(checks, f"check_{name}")(as_learner(wrong))
    assert absent is None or absent not in str(failure.value)


MUTANTS += [("investigate_toy_model", wrong, message) for wrong, message in INVESTIGATION_WRONG[:2]]
MUTANTS += [("train_toy_models", train_no_zero_grad, "zero_grad"),
            ("sae_loss", sae_loss_mean_everything, "every entry")]
test_grade_fails_a_wrong_answer_and_says_why, test_every_exercise_has_a_mutant, test_grade_accepts_a_correct_variant = \
    check_tests(checks, EXERCISES, MUTANTS, VARIANTS)
