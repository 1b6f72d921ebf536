"""Checks for chapter 5 (steering): `check_x` visible, `grade_x` hidden.

Every exercise is compared with `mechlab.steering.reference` on inputs built here:
contrast pairs and name prompts from the course corpus (`mechlab.steering.experiments`), random
tokens, activations and labels, and models: the course model `corpus_2l` and, in the
hidden tests, untrained models of other shapes (`zoo.other_shapes`), so code that
hard-codes this model's sizes fails. Generation is compared token for token from the
same seed; steering and clamping hooks both on activations handed to them directly and
through a real forward pass (logits compared). Exercises that take hooks must leave
none attached: a check runs the model again afterwards and compares with a clean run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from mechlab.steering import experiments as st
from mechlab import corpus, zoo
from mechlab.checks import (
    call_learner, Case, check_and_grade, CheckFailed, compare_function, compare_on_models, course_model,
    checked_table, guard_model, other_models, passed, randn, seeded, Truth,
)
from mechlab.sparse_autoencoders import reference as sae_ref
from mechlab.steering import investigation as inv
from mechlab.steering import reference as ref
from mechlab.pristine import type_ as _type

TOLERANCE = dict(atol=1e-4, rtol=1e-3)
COURSE_SITE = "blocks.1.hook_resid_pre"

# ---------------------------------------------------------------- models, SAEs and inputs


def _models(hidden: bool) -> list[tuple[str, object]]:
    course = [("course model corpus_2l", course_model("corpus_2l"))]
    return course + list(other_models(51)) if hidden else course


def _random_tokens(seed: int, batch: int, pos: int) -> torch.Tensor:
    tokens = torch.randint(zoo.FIRST_WORD_ID, len(corpus.vocabulary()), (batch, pos), generator=seeded(seed))
    tokens[:, 0] = zoo.BOS_ID
    return tokens


@functools.cache
def _pairs(prop: str, target: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return st.contrast_pairs(prop, target, n, seed)


def _site(model, seed: int) -> str:
    """A residual site that varies with the case (never the embedding: a mean difference
    of random-token embeddings is still a fine test, but the sites after it test hooks)."""
    sites = st.residual_sites(model)
    return sites[1 + seed % (len(sites) - 1)]


def _vector_hooks(model, seed: int, coefficient: float = 0.5) -> list:
    """The reference's steering hooks: a random vector at half the residual norm at one site."""
    site = _site(model, seed)
    vector = randn(seed, model.cfg.d_model)
    norm = ref.residual_norm(model, _random_tokens(seed, 4, 12), site)
    return [(site, ref.steering_hook(st.relative(vector, norm, coefficient), 1.0))]


def _leaves_no_hooks(fn: Callable, name: str, model, call: Callable[[Callable], object]) -> None:
    """Call the learner's `fn` through `call` with steering hooks, then check that the model
    runs as before (no hook left attached); whatever was left is removed."""
    tokens = _random_tokens(99, 2, 8)
    with torch.no_grad():
        clean = model(tokens)
    try:
        call(fn)
        with torch.no_grad():
            after = model(tokens)
    finally:
        model.reset_hooks()
    if not torch.equal(clean, after):
        raise CheckFailed(f"{name} left a hook attached to the model: after it returned, the model's output had "
                          "changed. Attach hooks with `with model.hooks(fwd_hooks=...):` (removed at the end of "
                          "the block) rather than model.add_hook")


# ---------------------------------------------------------------- 1. generate


def _generate_cases(hidden: bool) -> list[Case]:
    cases = []
    for i, (desc, model) in enumerate(_models(hidden)):
        specs = [(1, 6, 0, 1.0, False), (3, 10, 1, 0.7, True), (2, 5, 2, 0.0, True)] if hidden else \
            [(1, 6, 0, 1.0, False), (1, 5, 3, 0.7, True), (2, 4, 1, 0.0, True)]  # fmt: skip
        for prompt_len, n_new, seed, temperature, steer in specs:
            batch = 4 + seed
            prompt = st.start_prompts(batch) if prompt_len == 1 else _random_tokens(seed + 10 * i, batch, prompt_len)
            hooks = _vector_hooks(model, seed + i, 1.0) if steer else []
            steering = f", steered at {hooks[0][0]}" if hooks else ""
            cases.append(Case(f"{desc}, {batch} prompts of {prompt_len} tokens, n_new={n_new}, "
                              f"temperature={temperature}, generator seeded {seed}{steering}",
                              (model, prompt, n_new, seed, temperature, hooks)))
    return cases


def _with_seed(fn: Callable) -> Callable:
    """`fn(model, prompt, n_new, generator, temperature, fwd_hooks)` called with a fresh
    generator seeded from the case, so both sides draw the same random numbers."""
    def call(model, prompt, n_new, seed, temperature, hooks):
        return fn(model, prompt, n_new, seeded(seed), temperature, hooks)
    return call


def _generate_ignoring_hooks(model, prompt, n_new, generator, temperature=1.0, fwd_hooks=()):
    return ref.generate(model, prompt, n_new, generator, temperature, ())


def _generate_without_temperature(model, prompt, n_new, generator, temperature=1.0, fwd_hooks=()):
    return ref.generate(model, prompt, n_new, generator, 1.0 if temperature else 0.0, fwd_hooks)


def _generate_ignoring_temperature(model, prompt, n_new, generator, temperature=1.0, fwd_hooks=()):
    return ref.generate(model, prompt, n_new, generator, 1.0, fwd_hooks)


def _generate_first_position(model, prompt, n_new, generator, temperature=1.0, fwd_hooks=()):
    tokens = prompt
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        for _ in range(n_new):
            logits = model(tokens)[:, 0]
            probs = torch.softmax(logits / max(temperature, 1e-6), -1)
            nxt = logits.argmax(-1, keepdim=True) if temperature == 0 else torch.multinomial(probs, 1,
                                                                                            generator=generator)
            tokens = torch.cat([tokens, nxt], 1)
    return tokens


_GENERATE_MISTAKES = [
    ("the hooks in `fwd_hooks` must be attached during every forward pass (`with model.hooks(fwd_hooks=...)`).",
     _generate_ignoring_hooks),
    ("divide the logits by the temperature before the softmax.", _generate_without_temperature),
    ("use the temperature: divide the logits by it, and at temperature 0 take the argmax (greedy, no sampling).",
     _generate_ignoring_temperature),
    ("sample from the logits at the *last* position (`[:, -1]`), which predict the next token.",
     _generate_first_position),
]
_GENERATE_HINT = ("sample with torch.multinomial(probs, 1, generator=generator) on the CPU, one token per step, "
                  "and return the prompt followed by the new tokens ([batch, pos + n_new]).")


def _generate_hook_check(fn: Callable) -> None:
    model = course_model("corpus_2l")
    _leaves_no_hooks(fn, "generate", model,
                     lambda f: call_learner(f, "generate", "4 prompts with a steering hook", (
                         model, st.start_prompts(4), 3, seeded(0), 1.0, _vector_hooks(model, 0))))


def _check_generate(fn: Callable, hidden: bool) -> None:
    _generate_hook_check(fn)
    compare_on_models(_with_seed(fn), _with_seed(ref.generate), _generate_cases(hidden), "generate",
                      [(h, _with_seed(w)) for h, w in _GENERATE_MISTAKES], hint=_GENERATE_HINT)


check_generate, grade_generate = check_and_grade("generate", _check_generate)


# ---------------------------------------------------------------- 2. success_rate

_SUCCESS_HAND = Case(
    "hand case: labels of tokens 0-5 = [-1, 0, 0, 1, 1, 2], target 1, prompt of 1; rows: "
    "[0 | 3 3 1] succeeds, [0 | 3 1 1] loses, [0 | 3 1 5] ties, [0 | 0 0 0] has no labels, [3 | 0 0 5] loses "
    "(the prompt's 3 does not count) -> 1/5",
    (torch.tensor([[0, 3, 3, 1], [0, 3, 1, 1], [0, 3, 1, 5], [0, 0, 0, 0], [3, 0, 0, 5]]),
     torch.tensor([-1, 0, 0, 1, 1, 2]), 1, 1))


def _success_cases(specs: Sequence[tuple[int, int, int, int, int, int]]) -> list[Case]:
    cases = []
    for seed, batch, pos, n_labels, target, prompt in specs:
        g = seeded(seed)
        vocab = 40
        labels = torch.randint(-1, n_labels, (vocab,), generator=g)
        tokens = torch.randint(0, vocab, (batch, pos), generator=g)
        cases.append(Case(f"seed={seed}, {batch} rows of {pos} tokens, {n_labels} labels over {vocab} tokens, "
                          f"target={target}, prompt_length={prompt}", (tokens, labels, target, prompt)))
    return cases


def _success_ties_win(tokens, labels, target, prompt_length):
    generated = labels[tokens[:, prompt_length:]]
    counts = torch.stack([(generated == k).sum(-1) for k in range(int(labels.max()) + 1)], -1)
    others = torch.cat([counts[:, :target], counts[:, target + 1:]], -1).max(-1).values
    return ((counts[:, target] >= others) & (counts[:, target] > 0)).float().mean().item()


def _success_at_least(tokens, labels, target, prompt_length):
    generated = labels[tokens[:, prompt_length:]]
    counts = torch.stack([(generated == k).sum(-1) for k in range(int(labels.max()) + 1)], -1)
    others = torch.cat([counts[:, :target], counts[:, target + 1:]], -1).max(-1).values
    return (counts[:, target] >= others).float().mean().item()


def _success_with_prompt(tokens, labels, target, prompt_length):
    return ref.success_rate(tokens, labels, target, 0)


def _success_argmax(tokens, labels, target, prompt_length):
    generated = labels[tokens[:, prompt_length:]]
    counts = torch.stack([(generated == k).sum(-1) for k in range(int(labels.max()) + 1)], -1)
    return (counts.argmax(-1) == target).float().mean().item()


def _success_any(tokens, labels, target, prompt_length):
    return (labels[tokens[:, prompt_length:]] == target).any(-1).float().mean().item()


_SUCCESS_MISTAKES = [
    ("a tie with another label is not a success: the target needs *strictly* more tokens.", _success_ties_win),
    ("`>=` counts ties as successes, and a row with no labelled token at all ties at 0 against 0: the target "
     "needs *strictly* more tokens than the best other label (`>`).", _success_at_least),
    ("count only the generated tokens, after the first `prompt_length`.", _success_with_prompt),
    ("argmax breaks ties (and all-zero rows) in favour of the first label; compare the target's count with the "
     "best other label's, strictly.", _success_argmax),
    ("one target token is not enough: the target needs more tokens than any other label.", _success_any),
]


def _check_success_rate(fn: Callable, hidden: bool) -> None:
    shapes = ([(1, 64, 25, 5, 0, 1), (2, 32, 12, 2, 1, 3), (3, 16, 8, 3, 2, 0), (4, 50, 30, 5, 4, 5)] if hidden
              else [(0, 48, 10, 5, 1, 1), (5, 40, 12, 3, 2, 2)])
    compare_function(fn, ref.success_rate, [_SUCCESS_HAND, *_success_cases(shapes)], name="success_rate",
                     mistakes=_SUCCESS_MISTAKES, hint="return a Python float.")


check_success_rate, grade_success_rate = check_and_grade("success_rate", _check_success_rate)


# ---------------------------------------------------------------- 3. contrast_vector


def _contrast_cases(hidden: bool) -> list[Case]:
    model = course_model("corpus_2l")
    food, other = _pairs("topic", "food", 16 if hidden else 8, 1)
    pos, neg = _pairs("sentiment", "positive", 12, 2)
    known = st.name_prompts(st.entity_split().known_train)
    unknown = st.name_prompts(st.entity_split().unknown_train)
    cases = [Case(f"course model, {len(food)} topic pairs (food), blocks.1.hook_resid_pre, all positions",
                  (model, food, other, COURSE_SITE)),
             Case("course model, 8 known against 16 unknown names, blocks.0.hook_resid_post, position=2",
                  (model, known, unknown, "blocks.0.hook_resid_post", 2)),
             Case(f"course model, {len(food)} topic pairs (food), blocks.1.hook_resid_pre, position=0 (BOS: the same "
                  "in every prompt, so the difference is 0)", (model, food, other, COURSE_SITE, 0))]
    if hidden:
        cases += [
            Case("course model, 12 sentiment pairs, blocks.0.hook_resid_mid, position=-1",
                 (model, pos, neg, "blocks.0.hook_resid_mid", -1)),
            Case("course model, 16 topic pairs (food), blocks.1.hook_resid_post, all positions",
                 (model, food, other, "blocks.1.hook_resid_post")),
        ]
        for i, (desc, m) in enumerate(other_models(51)):
            site = _site(m, i)
            cases.append(Case(f"{desc}, 5 against 3 random prompts of 9 tokens, {site}, all positions",
                              (m, _random_tokens(i, 5, 9), _random_tokens(i + 5, 3, 9), site)))
            cases.append(Case(f"{desc}, 4 against 6 random prompts of 7 tokens, {site}, position=3",
                              (m, _random_tokens(i + 1, 4, 7), _random_tokens(i + 6, 6, 7), site, 3)))
    return cases


def _contrast_with_bos(model, pos_tokens, neg_tokens, hook_name, position=None):
    def mean(tokens):
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        acts = cache[hook_name] if position is None else cache[hook_name][:, position]
        return acts.reshape(-1, acts.shape[-1]).mean(0)
    with torch.no_grad():
        return mean(pos_tokens) - mean(neg_tokens)


def _contrast_flipped(model, pos_tokens, neg_tokens, hook_name, position=None):
    return -ref.contrast_vector(model, pos_tokens, neg_tokens, hook_name, position)


def _contrast_last(model, pos_tokens, neg_tokens, hook_name, position=None):
    return ref.contrast_vector(model, pos_tokens, neg_tokens, hook_name, -1)


def _contrast_normalised(model, pos_tokens, neg_tokens, hook_name, position=None):
    v = ref.contrast_vector(model, pos_tokens, neg_tokens, hook_name, position)
    return v / v.norm()


_CONTRAST_MISTAKES = [
    ("leave out position 0 (BOS) when averaging over positions.", _contrast_with_bos),
    ("the vector points from `neg_tokens` to `pos_tokens`: mean(pos) - mean(neg).", _contrast_flipped),
    ("with position=None, average over all positions but the first, not just the last.", _contrast_last),
    ("return the difference itself, not a unit vector: its size is part of the answer.", _contrast_normalised),
]


def _check_contrast(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.contrast_vector, _contrast_cases(hidden), "contrast_vector", _CONTRAST_MISTAKES,
                      **TOLERANCE)


check_contrast_vector, grade_contrast_vector = check_and_grade("contrast_vector", _check_contrast)


# ---------------------------------------------------------------- 4. residual_norm


def _norm_cases(hidden: bool) -> list[Case]:
    text = st.ordinary_text(4, seed=5)
    cases = [Case("course model, 4 corpus windows, blocks.1.hook_resid_pre", (course_model("corpus_2l"), text, COURSE_SITE))]
    if hidden:
        cases.append(Case("course model, 4 corpus windows, blocks.0.hook_resid_pre",
                          (course_model("corpus_2l"), text, "blocks.0.hook_resid_pre")))
        for i, (desc, m) in enumerate(other_models(51)):
            site = _site(m, i + 2)
            cases.append(Case(f"{desc}, 3 random prompts of 10 tokens, {site}", (m, _random_tokens(i, 3, 10), site)))
    return cases


def _norm_with_bos(model, tokens, hook_name):
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return cache[hook_name].norm(dim=-1).mean().item()


def _norm_squared(model, tokens, hook_name):
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return cache[hook_name][:, 1:].pow(2).sum(-1).mean().item()


def _norm_of_mean(model, tokens, hook_name):
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return cache[hook_name][:, 1:].mean((0, 1)).norm().item()


_NORM_MISTAKES = [
    ("leave out position 0 (BOS).", _norm_with_bos),
    ("the L2 norm of each vector, not its square: `.norm(dim=-1)`.", _norm_squared),
    ("take the norm of each activation vector, then the mean, not the norm of the mean activation.", _norm_of_mean),
]


def _check_norm(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.residual_norm, _norm_cases(hidden), "residual_norm", _NORM_MISTAKES, **TOLERANCE)


check_residual_norm, grade_residual_norm = check_and_grade("residual_norm", _check_norm)


# ---------------------------------------------------------------- 5. steering_hook


def _apply_hook(make: Callable) -> Callable:
    """(activation, *args) -> make(*args)(activation, None): the hook applied to a tensor."""
    def apply(activation, *args):
        return make(*args)(activation, None)
    return apply


def _hook_cases(hidden: bool) -> list[Case]:
    specs = [(0, 2, 5, 8, 1.5, None), (1, 3, 6, 8, -2.0, 2), (5, 2, 6, 8, 2.0, 0)]  # 0 is a position, not None
    if hidden:
        specs += [(2, 4, 7, 16, 0.3, slice(1, 4)), (3, 1, 9, 4, 10.0, -1), (4, 5, 3, 128, 1.0, slice(None, None, 2))]
    return [Case(f"activation [{b}, {p}, {d}], coefficient {c}, positions={pos}",
                 (randn(seed, b, p, d), randn(seed + 100, d), c, pos)) for seed, b, p, d, c, pos in specs]


def _steer_model_cases(hidden: bool) -> list[Case]:
    cases = []
    for i, (desc, model) in enumerate(_models(hidden)):
        site = _site(model, i)
        vector = st.relative(randn(i, model.cfg.d_model), ref.residual_norm(model, _random_tokens(i, 4, 10), site),
                             0.5)
        for positions in ([None, 2] if hidden else [None]):
            cases.append(Case(f"{desc}: logits with the hook at {site}, positions={positions}",
                              (model, _random_tokens(i + 3, 3, 8), site, vector, 1.0, positions)))
    return cases


def _logits_with(make: Callable) -> Callable:
    def run(model, tokens, site, vector, coefficient, positions):
        with torch.no_grad():
            return model.run_with_hooks(tokens, fwd_hooks=[(site, make(vector, coefficient, positions))])
    return run


def _hook_ignores_positions(vector, coefficient, positions=None):
    return ref.steering_hook(vector, coefficient, None)


def _hook_unit(vector, coefficient, positions=None):
    return ref.steering_hook(vector / vector.norm(), coefficient, positions)


def _hook_last(vector, coefficient, positions=None):
    return ref.steering_hook(vector, coefficient, -1 if positions is None else positions)


_HOOK_MISTAKES = [
    ("add only at `positions` (None means every position).", _hook_ignores_positions),
    ("add coefficient * vector as given; do not normalise the vector (the caller chose its size).", _hook_unit),
    ("positions=None means every position, not only the last.", _hook_last),
]


def _hook_in_place_check(fn: Callable) -> None:
    activation = randn(7, 2, 4, 8)
    before = activation.clone()
    call_learner(_apply_hook(fn), "steering_hook", "a [2, 4, 8] activation",
                 (activation, randn(8, 8), 1.0, None))
    if not torch.equal(activation, before):
        raise CheckFailed("steering_hook's hook edited the activation it was given in place; clone it first "
                          "(`steered = activation.clone()`) and return the copy")


def _check_steering_hook(fn: Callable, hidden: bool) -> None:
    _hook_in_place_check(fn)
    compare_function(_apply_hook(fn), _apply_hook(ref.steering_hook), _hook_cases(hidden), name="steering_hook",
                     mistakes=[(h, _apply_hook(w)) for h, w in _HOOK_MISTAKES], report=False)
    compare_on_models(_logits_with(fn), _logits_with(ref.steering_hook), _steer_model_cases(hidden), "steering_hook",
                      [(h, _logits_with(w)) for h, w in _HOOK_MISTAKES], **TOLERANCE)


check_steering_hook, grade_steering_hook = check_and_grade("steering_hook", _check_steering_hook)


# ---------------------------------------------------------------- 6. extra_loss


def _loss_cases(hidden: bool) -> list[Case]:
    text = st.ordinary_text(4, seed=6)
    cases = []
    for i, (desc, model) in enumerate(_models(hidden)):
        tokens = text if i == 0 else _random_tokens(i, 3, 12)
        for seed, c in ([(i, 0.5), (i + 1, 1.0)] if hidden else [(i, 0.5)]):
            hooks = _vector_hooks(model, seed, c)
            cases.append(Case(f"{desc}, random vector at {c} x the residual norm at {hooks[0][0]}",
                              (model, tokens, hooks)))
    if hidden:
        cases.append(Case("course model, no hooks (0)", (course_model("corpus_2l"), text, [])))
    return cases


def _loss(model, tokens, fwd_hooks, shift: bool = True):
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        logits = model(tokens)
    if shift:
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).item()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).item()


def _loss_unshifted(model, tokens, fwd_hooks):
    return _loss(model, tokens, fwd_hooks, shift=False) - _loss(model, tokens, [], shift=False)


def _loss_steered_only(model, tokens, fwd_hooks):
    return _loss(model, tokens, fwd_hooks)


def _loss_ratio(model, tokens, fwd_hooks):
    return _loss(model, tokens, fwd_hooks) / _loss(model, tokens, [])


_LOSS_MISTAKES = [
    ("predict token t + 1 from position t: logits[:, :-1] against tokens[:, 1:].", _loss_unshifted),
    ("subtract the loss without hooks: the *extra* loss is steered minus clean.", _loss_steered_only),
    ("a difference, not a ratio: steered loss minus clean loss.", _loss_ratio),
]


def _check_extra_loss(fn: Callable, hidden: bool) -> None:
    model = course_model("corpus_2l")
    _leaves_no_hooks(fn, "extra_loss", model, lambda f: call_learner(
        f, "extra_loss", "2 windows with a steering hook",
        (model, st.ordinary_text(2, seed=6), _vector_hooks(model, 0))))
    compare_on_models(fn, ref.extra_loss, _loss_cases(hidden), "extra_loss", _LOSS_MISTAKES, **TOLERANCE)


check_extra_loss, grade_extra_loss = check_and_grade("extra_loss", _check_extra_loss)


# ---------------------------------------------------------------- 7. repetition

_REPETITION_HAND = Case(
    "hand case: prompt of 1, rows [9 | 1 2 1 2 1] (bigrams 12 21 12 21: 2 repeats of 4 -> 0.5) and "
    "[9 | 1 2 3 4 5] (no repeats -> 0) -> 0.25",
    (torch.tensor([[9, 1, 2, 1, 2, 1], [9, 1, 2, 3, 4, 5]]), 1))
_REPETITION_BIG_IDS = Case(
    "hand case: prompt of 1, row [9 | 1 150 2 50 7]: bigrams (1, 150), (150, 2), (2, 50), (50, 7) are all "
    "distinct -> 0 (a pair code like a * 100 + b makes (1, 150) and (2, 50) collide)",
    (torch.tensor([[9, 1, 150, 2, 50, 7]]), 1))


def _repetition_cases(specs: Sequence[tuple[int, int, int, int, int]]) -> list[Case]:
    cases = []
    for seed, batch, pos, vocab, prompt in specs:
        tokens = torch.randint(0, vocab, (batch, pos), generator=seeded(seed))
        cases.append(Case(f"seed={seed}, {batch} rows of {pos} tokens from {vocab} ids, prompt_length={prompt}",
                          (tokens, prompt)))
    return cases


def _repetition_tokens(tokens, prompt_length):
    generated = tokens[:, prompt_length:]
    return sum(1 - torch.unique(r).numel() / r.numel() for r in generated) / len(generated)


def _repetition_with_prompt(tokens, prompt_length):
    return ref.repetition(tokens, 0)


def _repetition_across_rows(tokens, prompt_length):
    generated = tokens[:, prompt_length:]
    bigrams = generated[:, :-1] * (int(tokens.max()) + 1) + generated[:, 1:]
    return 1 - torch.unique(bigrams).numel() / bigrams.numel()


_REPETITION_MISTAKES = [
    ("count repeated *bigrams* (pairs of consecutive tokens), not repeated tokens.", _repetition_tokens),
    ("only the generated tokens count, after the first `prompt_length`.", _repetition_with_prompt),
    ("a bigram repeats only within its own row: count distinct bigrams per row, not over the whole batch.",
     _repetition_across_rows),
]


def _check_repetition(fn: Callable, hidden: bool) -> None:
    shapes = [(1, 32, 25, 5, 1), (2, 8, 40, 300, 3), (3, 5, 9, 3, 0), (4, 3, 4, 2, 1)] if hidden else [(0, 4, 12, 6, 1)]
    compare_function(fn, ref.repetition, [_REPETITION_HAND, _REPETITION_BIG_IDS, *_repetition_cases(shapes)],
                     name="repetition", mistakes=_REPETITION_MISTAKES, hint="return a Python float.")


check_repetition, grade_repetition = check_and_grade("repetition", _check_repetition)


# ---------------------------------------------------------------- 8. clamp_latent_hook


@functools.cache
def _course_sae():
    from mechlab.sparse_autoencoders import zoo as sae_zoo

    return sae_zoo.load("topk_k8_w1024")


@functools.cache
def _random_sae(architecture: str, d_in: int, d_sae: int, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = sae_ref.SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, k=4)
        sae = sae_ref.SAE(cfg).eval()
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(0.1 * torch.randn(p.shape))  # biases off zero, so b_dec and b_enc matter
    return sae


def _clamp_cases(hidden: bool) -> list[Case]:
    sae = _course_sae()
    with torch.no_grad():
        _, cache = course_model("corpus_2l").run_with_cache(st.ordinary_text(2, seed=7), names_filter=COURSE_SITE)
    course_acts = cache[COURSE_SITE]
    cases = [Case(f"course SAE topk_k8_w1024 on 2 corpus windows at {COURSE_SITE}, latent 5 clamped to 20",
                  (course_acts, sae, 5, 20.0, sae.scale))]
    if hidden:
        cases += [
            Case("course SAE on 2 corpus windows, latent 700 clamped to 0 (ablated)", (course_acts, sae, 700, 0.0,
                                                                                      sae.scale)),
            Case("course SAE, latent 31 clamped to -3", (course_acts[:1, :9], sae, 31, -3.0, sae.scale)),
        ]
        for seed, arch, d_in, d_sae, scale in [(1, "relu", 16, 40, 0.5), (2, "jumprelu", 8, 24, 2.0),
                                               (3, "topk", 12, 30, 1.0)]:
            cases.append(Case(f"random {arch} SAE d_in={d_in}, d_sae={d_sae}, scale={scale}, activation [3, 5, "
                              f"{d_in}], latent {seed + 2} clamped to 4",
                              (randn(seed, 3, 5, d_in), _random_sae(arch, d_in, d_sae, seed), seed + 2, 4.0, scale)))
    return cases


def _clamp_no_error(sae, latent, value, scale):
    def hook(activation, hook):
        z = sae.encode(activation[:, 1:] * scale).clone()
        z[..., latent] = value
        return torch.cat([activation[:, :1], sae.decode(z) / scale], 1)
    return hook


def _clamp_with_bos(sae, latent, value, scale):
    def hook(activation, hook):
        x = activation * scale
        z = sae.encode(x)
        error = x - sae.decode(z)
        z = z.clone()
        z[..., latent] = value
        return (sae.decode(z) + error) / scale
    return hook


def _clamp_unscaled(sae, latent, value, scale):
    return ref.clamp_latent_hook(sae, latent, value, 1.0)


def _clamp_added(sae, latent, value, scale):
    def hook(activation, hook):
        steered = activation.clone()
        steered[:, 1:] += value * sae.W_dec[latent] / scale
        return steered
    return hook


_CLAMP_MISTAKES = [
    ("keep the SAE's reconstruction error: return decode(z_clamped) + (x - decode(z)), so that only the clamped "
     "latent changes the activation.", _clamp_no_error),
    ("leave position 0 (BOS) untouched.", _clamp_with_bos),
    ("the SAE works on normalised activations: multiply by `scale` before encoding and divide after decoding.",
     _clamp_unscaled),
    ("clamping *sets* the latent to `value`: it adds (value - current activation) times the decoder row, "
     "not value times it.", _clamp_added),
]


def _clamp_model_case(hidden: bool) -> list[Case]:
    sae = _course_sae()
    return [Case(f"course model: logits with latent {latent} clamped to {value} at {COURSE_SITE}",
                 (course_model("corpus_2l"), st.ordinary_text(2, seed=8), sae, latent, value))
            for latent, value in ([(5, 20.0), (300, 0.0)] if hidden else [(5, 20.0)])]


def _clamp_logits(make: Callable) -> Callable:
    def run(model, tokens, sae, latent, value):
        with torch.no_grad():
            return model.run_with_hooks(tokens, fwd_hooks=[(COURSE_SITE, make(sae, latent, value, sae.scale))])
    return run


def _check_clamp(fn: Callable, hidden: bool) -> None:
    activation = randn(9, 2, 4, 8)
    before = activation.clone()
    with torch.no_grad():
        call_learner(_apply_hook(fn), "clamp_latent_hook", "a [2, 4, 8] activation",
                     (activation, _random_sae("relu", 8, 16, 9), 1, 3.0, 1.0))
    if not torch.equal(activation, before):
        raise CheckFailed("clamp_latent_hook's hook edited the activation it was given in place; build a new tensor")
    with torch.no_grad():
        compare_function(_apply_hook(fn), _apply_hook(ref.clamp_latent_hook), _clamp_cases(hidden),
                         name="clamp_latent_hook", mistakes=[(h, _apply_hook(w)) for h, w in _CLAMP_MISTAKES],
                         report=False, **TOLERANCE)
    compare_on_models(_clamp_logits(fn), _clamp_logits(ref.clamp_latent_hook), _clamp_model_case(hidden),
                      "clamp_latent_hook", [(h, _clamp_logits(w)) for h, w in _CLAMP_MISTAKES], **TOLERANCE)


check_clamp_latent_hook, grade_clamp_latent_hook = check_and_grade("clamp_latent_hook", _check_clamp)


# ---------------------------------------------------------------- 9. steering_curve

_CURVE_TRUTH_DIRECTIONS = 32  # the grader's own random directions, whose spread the learner's controls are read against
_CURVE_SIGMAS = 4.0  # how many standard errors of the mean a learner's controls may stray


class PushMeasure:
    """The grader's measure for `steering_curve`: the model's next-token probability mass
    on a set of words over 8 windows of ordinary text, with the hooks attached. Cheap and
    deterministic; it records the push each hook adds, read off by applying the hook to
    zeros, so the check can tell which push a row of the table came from."""

    def __init__(self, model, site: str, words: torch.Tensor) -> None:
        self.model, self.site, self.words = model, site, words
        self.text = st.ordinary_text(8)
        self.records: list[tuple[torch.Tensor, float, float]] = []  # (push after BOS, push at BOS, value)

    @property
    def calls(self) -> int:
        return len(self.records)

    def __call__(self, hooks) -> dict[str, float]:
        hooks = list(hooks)
        if len(hooks) != 1 or hooks[0][0] != self.site:
            raise CheckFailed(f"steering_curve should hand the measure one hook at the site it was given "
                              f"({self.site!r}), not {[name for name, _ in hooks]}")
        added = hooks[0][1](torch.zeros(1, 3, self.model.cfg.d_model), hook=None)
        with torch.no_grad(), self.model.hooks(fwd_hooks=hooks):
            probs = self.model(self.text).softmax(-1)
        value = float(probs[..., self.words].sum(-1).mean())
        self.records.append((added[0, 1].detach().clone(), float(added[0, 0].norm()), value))
        return {"mass": value}


def _curve_cases(hidden: bool) -> list[Case]:
    cases = [Case("the food vector at 1.resid_pre, coefficients (0, 0.5, 1), n_random=3, seed=7",
                  ("topic", "food", COURSE_SITE, (0.0, 0.5, 1.0)), {"n_random": 3, "seed": 7})]
    if hidden:
        cases.append(Case("the positive vector at 0.resid_mid, coefficients (0.25, 0.75, 1.5), n_random=5, seed=11",
                          ("sentiment", "positive", "blocks.0.hook_resid_mid", (0.25, 0.75, 1.5)),
                          {"n_random": 5, "seed": 11}))
    return cases


@functools.cache
def _curve_setup(prop: str, target: str, site: str) -> tuple[torch.Tensor, float, torch.Tensor]:
    model = course_model("corpus_2l")
    vector = ref.contrast_vector(model, *_pairs(prop, target, 32, 0), site)
    norm = ref.residual_norm(model, st.ordinary_text(8), site)
    words = (st.word_labels(prop) == st.label_index(prop, target)).nonzero().flatten()
    return vector, norm, words


@functools.cache
def _control_spread(prop: str, target: str, site: str, coefficient: float) -> tuple[float, float]:
    """Mean and standard deviation of the measure over the grader's own random directions."""
    vector, norm, words = _curve_setup(prop, target, site)
    measure = PushMeasure(course_model("corpus_2l"), site, words)
    generator = seeded(1000)
    for _ in range(_CURVE_TRUTH_DIRECTIONS):
        direction = torch.randn(vector.shape[0], generator=generator)
        measure([(site, ref.steering_hook(st.relative(direction, norm, coefficient), 1.0, slice(1, None)))])
    values = torch.tensor([value for *_, value in measure.records], dtype=torch.float64)
    return float(values.mean()), float(values.std())


def _curve_table(out, label: str, directions: list[str], coefficients: tuple):
    checked_table(out, label, ("direction", "coefficient", "cosine", "mass"),
                  ": direction, coefficient, cosine, and one column per entry of the measure's dict (the "
                  "grader's measure returns 'mass')")
    got = sorted((str(d), float(c)) for d, c in zip(out["direction"], out["coefficient"]))
    want = sorted((d, float(c)) for d in directions for c in coefficients)
    if got != want:
        raise CheckFailed(f"{label} should have one row for each direction in {directions} and each coefficient in "
                          f"{list(coefficients)} ({len(want)} rows); it has {len(got)}: "
                          f"{sorted(set(d for d, _ in got))} at {sorted(set(c for _, c in got))}")
    return out.assign(direction=out["direction"].astype(str), coefficient=out["coefficient"].astype(float))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.cosine_similarity(a.double(), b.double(), dim=0))


def _check_one_curve(fn: Callable, case: Case) -> None:
    prop, target, site, coefficients = case.args
    n_random, seed = case.kwargs["n_random"], case.kwargs["seed"]
    vector, norm, words = _curve_setup(prop, target, site)
    label = f"steering_curve({case.description})"
    directions = ["vector", *(f"random {k + 1}" for k in range(n_random))]

    def run():
        measure = PushMeasure(course_model("corpus_2l"), site, words)
        out = call_learner(fn, "steering_curve", case.description, (measure, site, vector.clone(), norm, coefficients),
                           {"n_random": n_random, "seed": seed, "hook": ref.steering_hook})
        return _curve_table(out, label, directions, coefficients), measure

    table, measure = run()
    if measure.calls < len(table):
        raise CheckFailed(f"{label} called the `measure` it was given {measure.calls} times for {len(table)} rows; "
                          "measure every setting with the `measure` argument (the grader hands in its own)")
    pushes: dict[str, list[torch.Tensor]] = {}
    for row in table.itertuples():
        found = [(push, bos) for push, bos, value in measure.records if abs(value - float(row.mass)) <= 1e-9]
        where = f"{label}: the row of {row.direction!r} at coefficient {row.coefficient:g}"
        if not found:
            raise CheckFailed(f"{where} reads mass {float(row.mass):.6f}, a number the measure never returned: "
                              "each row should hold what the measure returned for that setting")
        push, bos = found[0]
        size = push.norm().item()
        if bos > 1e-6:
            raise CheckFailed(f"{where}: its hook pushes the BOS position too (norm {bos:.3f}); push every position "
                              "but the first, slice(1, None)")
        if abs(size - row.coefficient * norm) > 1e-3 * max(norm, 1.0):
            raise CheckFailed(f"{where}: the push has norm {size:.4f}, but coefficient x norm is "
                              f"{row.coefficient * norm:.4f}; every direction, controls included, is rescaled to "
                              "that size, or the control does not say what pushing *this much* does")
        if row.coefficient > 0:
            pushes.setdefault(row.direction, []).append(push)
            if row.direction == "vector" and _cos(push, vector) < 0.9999:
                raise CheckFailed(f"{where}: the push is not along the vector (cosine {_cos(push, vector):.3f})")
            if abs(_cos(push, vector) - float(row.cosine)) > 1e-4:
                raise CheckFailed(f"{where}: the cosine column says {float(row.cosine):.4f}, but the push it measured "
                                  f"has cosine {_cos(push, vector):.4f} with the vector")
    controls = [name for name in directions if name != "vector"]
    for name in controls:
        first, *rest = pushes[name]
        if any(_cos(first, other) < 0.9999 for other in rest):
            raise CheckFailed(f"{label}: {name!r} points in different directions at different coefficients; draw "
                              "each control once and push it at every coefficient, so that each is a curve")
    heads = [pushes[name][0] for name in controls]
    overlap = max((abs(_cos(a, b)) for i, a in enumerate(heads) for b in heads[i + 1:]), default=0.0)
    if overlap > 0.5:
        raise CheckFailed(f"{label}: two of your random directions have cosine {overlap:.2f}; independent random "
                          f"directions in {vector.shape[0]} dimensions have about ±{1 / vector.shape[0] ** 0.5:.2f}. "
                          "Draw each from a standard Gaussian (torch.randn): a uniform [0, 1) vector has every entry "
                          "positive, so all such vectors share one direction")
    again, _ = run()
    if not again.sort_values(["direction", "coefficient"]).reset_index(drop=True)[["mass", "cosine"]].equals(
            table.sort_values(["direction", "coefficient"]).reset_index(drop=True)[["mass", "cosine"]]):
        raise CheckFailed(f"{label} gave another table when called again with the same seed; draw the random "
                          "directions from a torch.Generator seeded with `seed`, not from the global generator")
    for c in coefficients:
        mean, sd = _control_spread(prop, target, site, c)
        got = float(table[(table.direction != "vector") & (table.coefficient == c)]["mass"].mean())
        allowed = _CURVE_SIGMAS * sd / n_random ** 0.5 + 1e-4
        if abs(got - mean) > allowed:
            raise CheckFailed(f"{label}: at coefficient {c:g} your {n_random} controls average mass {got:.4f}, but "
                              f"{_CURVE_TRUTH_DIRECTIONS} random directions of that size average {mean:.4f} (sd "
                              f"{sd:.4f}, so within {allowed:.4f} is accepted): are your controls uniformly random "
                              "directions of the vector's size?")


def _check_steering_curve(fn: Callable, hidden: bool) -> None:
    cases = _curve_cases(hidden)
    for case in cases:
        _check_one_curve(fn, case)
    passed(f"steering_curve measures the vector beside its random controls, of the same size and independent, on "
           f"{len(cases)} case{'s' * (len(cases) > 1)}")


check_steering_curve, grade_steering_curve = check_and_grade("steering_curve", _check_steering_curve)


# ---------------------------------------------------------------- 10. fit_probe


def _probe_cases(specs: Sequence[tuple[int, int, int, int, float, float, torch.dtype]]) -> list[Case]:
    cases = []
    for seed, n, d, steps, lr, l2, dtype in specs:
        x = randn(seed, n, d)
        truth = randn(seed + 1, d)
        y = ((x @ truth + 0.5 * randn(seed + 2, n)) > 0).to(dtype)
        cases.append(Case(f"seed={seed}, x [{n}, {d}], y {dtype} (0/1, noisy linear), steps={steps}, lr={lr}, "
                          f"l2={l2}", (x, y), dict(steps=steps, lr=lr, l2=l2)))
    return cases


def _probe_no_l2(x, y, steps=300, lr=0.05, l2=1e-3):
    return ref.fit_probe(x, y, steps, lr, 0.0)


def _wrong_probe(x, y, steps=300, lr=0.05, l2=1e-3, *, optimiser=torch.optim.Adam, reduction="mean",
                 bias=True):  # fmt: skip
    """The probe's recipe with one thing changed: the optimiser, the loss's reduction, or no bias."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=bias)
    opt = optimiser([w, b] if bias else [w], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            bce = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y.float(), reduction=reduction)
            loss = bce + l2 * (w**2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w.detach(), b.detach()


_probe_sgd = functools.partial(_wrong_probe, optimiser=torch.optim.SGD)
_probe_summed = functools.partial(_wrong_probe, reduction="sum")
_probe_no_bias = functools.partial(_wrong_probe, bias=False)


_PROBE_MISTAKES = [
    ("add the penalty l2 * (w ** 2).sum() to the loss.", _probe_no_l2),
    ("use torch.optim.Adam, as specified.", _probe_sgd),
    ("the BCE is the mean over the batch (the default reduction), not the sum.", _probe_summed),
    ("the probe has a bias b, trained with w.", _probe_no_bias),
]


def _check_probe(fn: Callable, cases: list[Case]) -> None:
    for case in cases:
        got = call_learner(fn, "fit_probe", case.description, case.args, case.kwargs)
        if isinstance(got, tuple) and len(got) == 2 and any(getattr(t, "requires_grad", False) for t in got):
            raise CheckFailed(f"fit_probe({case.description}): return w and b detached (`w.detach()`)")
    compare_function(fn, ref.fit_probe, cases, name="fit_probe", mistakes=_PROBE_MISTAKES,
                     hint="return a tuple (w, b): w of shape [d], b 0-dimensional.", **TOLERANCE)


def _check_fit_probe(fn: Callable, hidden: bool) -> None:
    _check_probe(fn, _probe_cases([(1, 200, 16, 300, 0.05, 1e-3, torch.bool), (2, 100, 32, 120, 0.1, 1e-2, torch.int64),
                                   (3, 500, 8, 300, 0.02, 0.0, torch.float32)] if hidden
                                  else [(0, 64, 8, 50, 0.05, 1e-3, torch.float32)]))


check_fit_probe, grade_fit_probe = check_and_grade("fit_probe", _check_fit_probe)


# ---------------------------------------------------------------- 11. auroc

_AUROC_HAND = Case("hand case: scores [3, 1, 2, 2, 0], labels [T, F, T, F, F]: pairs won 5 of 6, one tie "
                   "-> (5 + 0.5) / 6 = 0.9167", (torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0]),
                                                 torch.tensor([True, False, True, False, False])))


def _auroc_cases(specs: Sequence[tuple[int, int, float, bool]]) -> list[Case]:
    cases = []
    for seed, n, shift, rounded in specs:
        g = seeded(seed)
        labels = torch.rand(n, generator=g) < 0.4
        labels[0], labels[1] = True, False
        scores = torch.randn(n, generator=g) + shift * labels
        if rounded:
            scores = scores.round()
        cases.append(Case(f"seed={seed}, {n} scores, positives shifted by {shift}" + (", rounded (ties)" * rounded),
                          (scores, labels)))
    return cases


def _auroc_no_ties(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    return (pos[:, None] > neg[None]).float().mean().item()


def _auroc_ties_win(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    return (pos[:, None] >= neg[None]).float().mean().item()


def _auroc_accuracy(scores, labels):
    return ((scores > scores.median()) == labels).float().mean().item()


_AUROC_MISTAKES = [
    ("a tie counts as half a pair won.", _auroc_no_ties),
    ("a tie counts as half a pair won, not a whole one.", _auroc_ties_win),
    ("AUROC compares every (positive, negative) pair; it uses no threshold.", _auroc_accuracy),
    ("the positive group is labels == True; you have the area for the other group.",
     lambda scores, labels: 1 - ref.auroc(scores, labels)),
]


def _check_auroc(fn: Callable, hidden: bool) -> None:
    shapes = [(1, 200, 0.5, False), (2, 60, 1.0, True), (3, 9, -1.0, False), (4, 500, 3.0, True)] if hidden \
        else [(0, 20, 1.0, False)]
    compare_function(fn, ref.auroc, [_AUROC_HAND, *_auroc_cases(shapes)], name="auroc", mistakes=_AUROC_MISTAKES,
                     hint="return a Python float.")


check_auroc, grade_auroc = check_and_grade("auroc", _check_auroc)


# ---------------------------------------------------------------- 12. answer_probabilities


def _answer_cases(hidden: bool) -> list[Case]:
    hedge, cities = st.answer_tokens()
    names = st.entity_split()
    model = course_model("corpus_2l")
    unknown = st.name_prompts(names.unknown_test[:12], "lives in")
    known = st.name_prompts(names.known_test[:8], "lives in")
    hooks = _vector_hooks(model, 3, 0.5)
    cases = [Case("course model, 12 unknown names + 'lives in', no hooks", (model, unknown, hedge, cities)),
             Case(f"course model, 12 unknown names, a random vector at {hooks[0][0]}",
                  (model, unknown, hedge, cities, hooks))]
    if hidden:
        cases += [Case("course model, 8 known names + 'lives in', no hooks", (model, known, hedge, cities))]
        for i, (desc, m) in enumerate(other_models(51)):
            cases.append(Case(f"{desc}, 4 random prompts, a random vector", (
                m, _random_tokens(i, 4, 6), hedge, cities[:5], _vector_hooks(m, i, 1.0))))
    return cases


def _answers_first_position(model, tokens, hedge, cities, fwd_hooks=()):
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        probs = model(tokens)[:, 0].softmax(-1)
    return probs[:, hedge].mean().item(), probs[:, cities].sum(-1).mean().item()


def _answers_max_city(model, tokens, hedge, cities, fwd_hooks=()):
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        probs = model(tokens)[:, -1].softmax(-1)
    return probs[:, hedge].mean().item(), probs[:, cities].max(-1).values.mean().item()


def _answers_logits(model, tokens, hedge, cities, fwd_hooks=()):
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        logits = model(tokens)[:, -1]
    return logits[:, hedge].mean().item(), logits[:, cities].sum(-1).mean().item()


_ANSWER_MISTAKES = [
    ("read the prediction at the *last* position, which follows 'lives in'.", _answers_first_position),
    ("the probability mass on cities is the *sum* over the city tokens, not the largest one.", _answers_max_city),
    ("probabilities: the softmax of the logits over the vocabulary.", _answers_logits),
    ("attach `fwd_hooks` while the model runs.", lambda m, t, h, c, fwd_hooks=(): ref.answer_probabilities(m, t, h, c)),
]


def _check_answers(fn: Callable, hidden: bool) -> None:
    model = course_model("corpus_2l")
    hedge, cities = st.answer_tokens()
    _leaves_no_hooks(fn, "answer_probabilities", model, lambda f: call_learner(
        f, "answer_probabilities", "4 prompts with a steering hook",
        (model, _random_tokens(0, 4, 5), hedge, cities, _vector_hooks(model, 0))))
    compare_on_models(fn, ref.answer_probabilities, _answer_cases(hidden), "answer_probabilities", _ANSWER_MISTAKES,
                      hint="return a tuple of two Python floats (p_hedge, p_cities).", **TOLERANCE)


check_answer_probabilities, grade_answer_probabilities = check_and_grade("answer_probabilities", _check_answers)


# ---------------------------------------------------------------- 13. investigate_steering (the investigation)


def _investigation_hint(result) -> str:
    """Which way the measurement missed, never where the answer is."""
    if result.success < inv.MIN_SUCCESS and result.extra_loss > inv.MAX_EXTRA_LOSS:
        return ("it moves the topic too little for what it costs: is the vector about the target (a contrast "
                f"between {inv.TARGET} stories and others)?")
    if result.success < inv.MIN_SUCCESS:
        return "push harder, or find a site or method where the same damage buys more."
    return ("it steers, but costs more than the budget: push less, or find a site or method where the same "
            "success costs less. Measure on more generations than 32 and leave a margin on both bars.")


def _check_investigate_steering(fn: Callable, hidden: bool) -> None:
    name = "investigate_steering"
    model, sae = course_model("corpus_2l"), _course_sae()
    sae_before = [p.detach().clone() for p in sae.parameters()]
    try:
        answer = call_learner(guard_model(fn, name), name, "the course model and chapter 4's SAE", (model, sae))
    finally:
        if any(not torch.equal(p, q) for p, q in zip(sae.parameters(), sae_before)):
            with torch.no_grad():
                for p, q in zip(sae.parameters(), sae_before):
                    p.copy_(q)
            raise CheckFailed(f"{name} changed the SAE's weights; leave the SAE as it was")
    setting = inv.validate(answer, model, sae)
    if not hidden:
        passed(f"{name}'s answer is well formed: {setting.describe()} (whether it steers well enough is what the "
               "grader measures, on generations and text you have not seen)")
        return
    result = inv.measure(model, sae, setting)
    if not result.passes:
        raise CheckFailed(f"{name}: {setting.describe()} gives {result.report()}.\nHint: {_investigation_hint(result)}")
    passed(f"{name}: {setting.describe()} gives {result.report()}")


# off limits inside the learner's function: the held-out measurement of a setting
check_investigate_steering, grade_investigate_steering = check_and_grade(
    "investigate_steering", _check_investigate_steering, Truth(modules=(inv,)))
