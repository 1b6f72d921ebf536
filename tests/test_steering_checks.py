"""Chapter 5's checks: each hidden test fails a plausible wrong answer and says why, and
accepts correct answers written differently (tests/test_exercise_checks.py covers the rest)."""

from __future__ import annotations

import numpy as np
import torch

from conftest import check_tests
from mechlab.steering import checks
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


MUTANTS = [
    ("generate", generate_unseeded, "differ"),
    ("generate", generate_leaves_hooks, "left a hook attached"),
    ("generate", generate_new_tokens_only, "shape"),
    ("generate", generate_greedy_always, "differ"),
    ("success_rate", success_counts_ties, "strictly"),
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

test_grade_fails_a_wrong_answer_and_says_why, test_every_exercise_has_a_mutant, test_grade_accepts_a_correct_variant = \
    check_tests(checks, EXERCISES, MUTANTS, VARIANTS)
