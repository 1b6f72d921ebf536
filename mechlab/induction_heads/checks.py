"""Checks for chapter 2 (induction heads): `check_x` visible, `grade_x` hidden.

Every exercise is compared with `mechlab.induction_heads.reference` on inputs built
here: seeded CPU tensors, the course model `attn_only_2l` (loaded on the CPU,
whatever device the notebook uses) and, in the hidden tests, randomly initialised
models of other shapes (three layers of two heads; two layers of three heads with
MLPs and layer-norm weights), so code that hard-codes this model's sizes fails.

Functions that take a model are called on the model itself, not a copy
(`mechlab.checks.compare_on_models`): the checks remove any hook left behind and fail
a function that changed the model's weights.
Tolerances: float32 entry by entry (atol 1e-5, rtol 1e-4) unless stated; circuits
and losses, which go through several matrix products, are compared with a tolerance
scaled to their largest entry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mechlab import zoo
from mechlab.checks import (
    call_learner, Case, check_and_grade, checked_array, checked_table, CheckFailed, compare_function, compare_on_models,
    course_model, guard_model, passed, randn, seeded, Truth,
)
from mechlab.pristine import Parameter as _Parameter, Tensor as _Tensor, type_ as _type
from mechlab.induction_heads import investigation
from mechlab.induction_heads import reference as ref

# ---------------------------------------------------------------- models the checks use


@functools.cache
def _other_models() -> tuple[tuple[str, object], ...]:
    """Untrained models of other shapes: what hard-coded sizes or layer indices trip on."""
    return (
        ("untrained 3 layers x 2 heads, d_model 32", zoo.random_model(seed=11, n_layers=3, n_heads=2, d_model=32, d_head=8)),
        ("untrained 2 layers x 3 heads with MLPs and LN", zoo.random_model(
            seed=12, n_heads=3, d_model=48, d_head=16, attn_only=False, d_mlp=64, act_fn="gelu",
            normalization_type="LN")),
    )


def _models(hidden: bool) -> list[tuple[str, object]]:
    course = [("course model attn_only_2l", course_model("attn_only_2l"))]
    return course + list(_other_models()) if hidden else course


def _repeated(seed: int, batch: int, seq_len: int, d_vocab: int = 272) -> torch.Tensor:
    return ref.generate_repeated_tokens(batch, seq_len, d_vocab, seeded(seed))


@functools.cache
def _course_patterns(seq_len: int, seed: int) -> tuple[torch.Tensor, ...]:
    tokens = _repeated(seed, 4, seq_len)
    with torch.no_grad():
        _, cache = course_model("attn_only_2l").run_with_cache(tokens)
    return tuple(cache["pattern", layer] for layer in range(course_model("attn_only_2l").cfg.n_layers))


def _random_pattern(seed: int, batch: int, heads: int, pos: int) -> torch.Tensor:
    scores = randn(seed, batch, heads, pos, pos) * 2
    causal = torch.ones(pos, pos, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


# ---------------------------------------------------------------- 1. correct_log_probs


def _log_prob_cases(specs: Sequence[tuple[int, int, int, int]]) -> list[Case]:
    cases = []
    for seed, batch, pos, vocab in specs:
        logits = randn(seed, batch, pos, vocab) * 3
        tokens = torch.randint(0, vocab, (batch, pos), generator=seeded(seed + 1))
        cases.append(Case(f"seed={seed}, batch={batch}, pos={pos}, d_vocab={vocab}", (logits, tokens)))
    return cases


_LOG_PROB_HAND = Case("hand case: logits all zero over 4 words -> log(1/4) everywhere",
                      (torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]])))

_LOG_PROB_MISTAKES = [
    ("entry i should score the token at i + 1 (the next token), not the token at i.",
     lambda logits, tokens: logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, :-1, None])[..., 0]),
    ("the prediction for token i + 1 is made at position i: use logits[:, :-1] with tokens[:, 1:].",
     lambda logits, tokens: logits.log_softmax(-1)[:, 1:].gather(-1, tokens[:, 1:, None])[..., 0]),
    ("take log_softmax over the vocabulary first: raw logits are not log-probabilities.",
     lambda logits, tokens: logits[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]),
    ("that is a probability; take the log (log_softmax, not softmax).",
     lambda logits, tokens: logits.softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]),
]


def _course_log_prob_case() -> Case:
    tokens = _repeated(3, 2, 9)
    with torch.no_grad():
        logits = course_model("attn_only_2l")(tokens)
    return Case("the course model on repeated words (batch 2, 19 tokens)", (logits, tokens))


def _check_correct_log_probs(fn: Callable, hidden: bool) -> None:
    shapes = [(1, 3, 8, 11), (2, 1, 2, 5), (4, 5, 30, 272)] if hidden else [(0, 2, 5, 7)]
    cases = [_LOG_PROB_HAND, *_log_prob_cases(shapes)]
    if hidden:
        cases.append(_course_log_prob_case())
    compare_function(fn, ref.correct_log_probs, cases, name="correct_log_probs", mistakes=_LOG_PROB_MISTAKES)


check_correct_log_probs, grade_correct_log_probs = check_and_grade("correct_log_probs", _check_correct_log_probs)


# ---------------------------------------------------------------- 2. generate_repeated_tokens


def _repeated_properties(fn: Callable, batch: int, seq_len: int, d_vocab: int, seed: int) -> np.ndarray:
    name = "generate_repeated_tokens"
    desc = f"batch={batch}, seq_len={seq_len}, d_vocab={d_vocab}"
    out = call_learner(fn, name, desc, (batch, seq_len, d_vocab, seeded(seed)))
    x = checked_array(out, f"{name}({desc})", (batch, 1 + 2 * seq_len), torch.int64)
    if out.device.type != "cpu":
        raise CheckFailed(f"{name}({desc}): returned on {out.device}; return a CPU tensor (move it later)")
    if not (x[:, 0] == zoo.BOS_ID).all():
        raise CheckFailed(f"{name}({desc}): column 0 should be BOS_ID = {zoo.BOS_ID} in every row, "
                          f"got {sorted(set(x[:, 0].astype(int).tolist()))[:5]}")
    first, second = x[:, 1:seq_len + 1], x[:, seq_len + 1:]
    if not (first == second).all():
        row = int(np.argwhere((first != second).any(1))[0, 0])
        raise CheckFailed(f"{name}({desc}): row {row}: columns {seq_len + 1}.. should repeat columns 1..{seq_len}\n"
                          "Hint: draw the words once and concatenate them twice.")
    if first.min() < zoo.FIRST_WORD_ID or first.max() >= d_vocab:
        raise CheckFailed(f"{name}({desc}): words must lie in {zoo.FIRST_WORD_ID} .. {d_vocab - 1}, "
                          f"got {int(first.min())} .. {int(first.max())}\n"
                          "Hint: torch.randint(FIRST_WORD_ID, d_vocab, ...) never draws special tokens.")
    n_words = d_vocab - zoo.FIRST_WORD_ID
    if batch > 1 and seq_len > 3 and n_words > 1 and (first == first[:1]).all():
        raise CheckFailed(f"{name}({desc}): every row is the same sequence; draw each row independently")
    if first.size >= 20 * n_words:  # every word should turn up, about equally often
        counts = np.bincount(first.astype(int).ravel() - zoo.FIRST_WORD_ID, minlength=n_words)
        expected = first.size / n_words
        if counts.min() == 0 or np.abs(counts - expected).max() > 6 * np.sqrt(expected) + 2:
            raise CheckFailed(f"{name}({desc}): word counts range {counts.min()}..{counts.max()}, expected about "
                              f"{expected:.0f} each (uniform)\nHint: draw every word uniformly.")
    again = call_learner(fn, name, desc, (batch, seq_len, d_vocab, seeded(seed)))
    if _type(again) not in (_Tensor, _Parameter) or not np.array_equal(
            checked_array(again, name, x.shape, torch.int64), x):
        raise CheckFailed(f"{name}({desc}): two calls with generators seeded alike gave different tokens\n"
                          "Hint: pass `generator=generator` to torch.randint.")
    return x


def _check_generate_repeated_tokens(fn: Callable, hidden: bool) -> None:
    if not hidden:
        _repeated_properties(fn, 300, 10, 50, seed=0)
        passed("generate_repeated_tokens has the right shape, BOS, repeat, range and uniform words")
        return
    _repeated_properties(fn, 400, 25, 272, seed=1)
    _repeated_properties(fn, 1, 1, 10, seed=2)
    _repeated_properties(fn, 64, 40, 4, seed=3)  # a single word to draw from
    a = _repeated_properties(fn, 8, 12, 272, seed=4)
    b = _repeated_properties(fn, 8, 12, 272, seed=5)
    if np.array_equal(a, b):
        raise CheckFailed("generate_repeated_tokens gave the same tokens for generators with different seeds\n"
                          "Hint: draw all randomness from `generator`.")
    passed("generate_repeated_tokens passes the property tests on 6 configurations")


check_generate_repeated_tokens, grade_generate_repeated_tokens = check_and_grade("generate_repeated_tokens",
                                                                                 _check_generate_repeated_tokens)


# ---------------------------------------------------------------- 3. loss_by_half


def _half_cases(specs: Sequence[tuple[int, int, int]]) -> list[Case]:
    return [Case(f"seed={seed}, batch={batch}, seq_len={n}", (-randn(seed, batch, 2 * n).abs() * 2, n))
            for seed, batch, n in specs]


_HALF_HAND = Case("hand case: log-probs [-1, -2, -3, -5], seq_len=2 -> [1.5, 4.0]",
                  (torch.tensor([[-1.0, -2.0, -3.0, -5.0]]), 2))

_HALF_MISTAKES = [
    ("the loss is minus the mean log-probability.",
     lambda lp, n: torch.stack([lp[:, :n].mean(), lp[:, n:].mean()])),
    ("the first copy is entries 0 .. seq_len - 1 (they predict tokens 1 .. seq_len), "
     "the second copy the rest.",
     lambda lp, n: torch.stack([-lp[:, :n + 1].mean(), -lp[:, n + 1:].mean()])),
    ("average over the batch and the positions (mean, not sum).",
     lambda lp, n: torch.stack([-lp[:, :n].sum(), -lp[:, n:].sum()])),
    ("first the first copy, then the second.",
     lambda lp, n: torch.stack([-lp[:, n:].mean(), -lp[:, :n].mean()])),
]


def _check_loss_by_half(fn: Callable, hidden: bool) -> None:
    shapes = [(1, 5, 7), (2, 1, 1), (3, 16, 25)] if hidden else [(0, 3, 4)]
    compare_function(fn, ref.loss_by_half, [_HALF_HAND, *_half_cases(shapes)], name="loss_by_half",
                     mistakes=_HALF_MISTAKES)


check_loss_by_half, grade_loss_by_half = check_and_grade("loss_by_half", _check_loss_by_half)


# ---------------------------------------------------------------- 4. previous_token_score


def _pattern_cases(specs: Sequence[tuple[int, int, int, int]]) -> list[Case]:
    return [Case(f"random causal pattern, seed={seed}, batch={b}, heads={h}, pos={p}", (_random_pattern(seed, b, h, p),))
            for seed, b, h, p in specs]


def _course_pattern_cases(seq_len: int, seed: int, *extra) -> list[Case]:
    return [Case(f"course model, layer {layer}, repeated words of length {seq_len}", (pattern, *extra))
            for layer, pattern in enumerate(_course_patterns(seq_len, seed))]


def _hand_pattern(pos: int) -> torch.Tensor:
    """[1, 2, pos, pos]: head 0 attends to the previous token (position 0 to itself), head 1 to BOS."""
    p = torch.zeros(1, 2, pos, pos)
    p[0, 0, 0, 0] = 1.0
    p[0, 0, torch.arange(1, pos), torch.arange(pos - 1)] = 1.0
    p[0, 1, :, 0] = 1.0
    return p


_PREV_HAND = Case("hand case, 5 positions: head 0 attends to the previous token, head 1 to BOS -> [1, 0.25]",
                  (_hand_pattern(5),))

_PREV_MISTAKES = [
    ("that is the main diagonal (attention to itself); the previous token is one below it: offset=-1.",
     lambda p: p.diagonal(0, -2, -1).mean((0, -1))),
    ("average over the query positions that have a previous token (1 onwards), not all of them.",
     lambda p: p.diagonal(-1, -2, -1).sum(-1).mean(0) / p.shape[-1]),
    ("that is the attention to the *next* token (always 0 in a causal model); use offset=-1.",
     lambda p: p.diagonal(1, -2, -1).mean((0, -1))),
]


def _check_previous_token_score(fn: Callable, hidden: bool) -> None:
    shapes = [(1, 3, 5, 9), (2, 1, 1, 2), (3, 4, 2, 40)] if hidden else [(0, 2, 3, 6)]
    seq_len, seed = (13, 1) if hidden else (8, 0)
    cases = [*_pattern_cases(shapes), *_course_pattern_cases(seq_len, seed)]
    compare_function(fn, ref.previous_token_score, cases, name="previous_token_score", mistakes=_PREV_MISTAKES)


check_previous_token_score, grade_previous_token_score = check_and_grade("previous_token_score",
                                                                         _check_previous_token_score)


# ---------------------------------------------------------------- 5. repeat_scores


def _repeat_pattern_cases(specs: Sequence[tuple[int, int, int, int]]) -> list[Case]:
    return [Case(f"random causal pattern, seed={seed}, batch={b}, heads={h}, seq_len={n}",
                 (_random_pattern(seed, b, h, 1 + 2 * n), n)) for seed, b, h, n in specs]


def _hand_repeat_pattern(n: int) -> torch.Tensor:
    """[1, 2, 2n+1, 2n+1]: head 0 a perfect duplicate-token head, head 1 a perfect induction head
    (both attend to BOS in the first copy)."""
    pos = 2 * n + 1
    p = torch.zeros(1, 2, pos, pos)
    p[0, :, : n + 1, 0] = 1.0
    q = torch.arange(n + 1, pos)
    p[0, 0, q, q - n] = 1.0
    p[0, 1, q, q - n + 1] = 1.0
    return p


_REPEAT_HAND = Case("hand case, seq_len=3: head 0 a perfect duplicate-token head, head 1 a perfect induction "
                    "head -> [[1, 0], [0, 1]]", (_hand_repeat_pattern(3), 3))


def _scores_at(offset: int, queries: Callable[[int], range]) -> Callable:
    def scores(p, n):
        out = []
        for shift in (n, n - 1):
            q = torch.tensor(list(queries(n)))
            out.append(p[:, :, q, q - shift - offset].mean((0, -1)))
        return torch.stack(out)
    return scores


_REPEAT_MISTAKES = [
    ("row 0 is the duplicate-token score (key q - seq_len), row 1 the induction score (key q - seq_len + 1).",
     lambda p, n: ref.repeat_scores(p, n).flip(0)),
    ("the induction key is the token *after* the earlier occurrence: q - seq_len + 1; it looks like you used "
     "q - seq_len - 1 (or shifted both keys).",
     _scores_at(1, lambda n: range(n + 1, 2 * n + 1))),
    ("average only over the queries of the second copy, q = seq_len + 1 .. 2 * seq_len.",
     _scores_at(0, lambda n: range(n, 2 * n + 1))),
    ("average only over the queries of the second copy, q = seq_len + 1 .. 2 * seq_len (not the last one only "
     "or one fewer).", _scores_at(0, lambda n: range(n + 1, 2 * n))),
    ("your queries and keys are all one position too early, as if the sequence had no BOS: position 0 is BOS, "
     "so the second copy is q = seq_len + 1 .. 2 * seq_len (not seq_len .. 2 * seq_len - 1), with keys "
     "q - seq_len and q - seq_len + 1.", _scores_at(0, lambda n: range(n, 2 * n))),
]


def _check_repeat_scores(fn: Callable, hidden: bool) -> None:
    shapes = [(1, 3, 5, 6), (2, 1, 1, 1), (3, 2, 2, 20)] if hidden else [(0, 2, 3, 4)]
    seq_len, seed = (13, 1) if hidden else (8, 0)
    cases = [_REPEAT_HAND, *_repeat_pattern_cases(shapes), *_course_pattern_cases(seq_len, seed, seq_len)]
    compare_function(fn, ref.repeat_scores, cases, name="repeat_scores", mistakes=_REPEAT_MISTAKES)


check_repeat_scores, grade_repeat_scores = check_and_grade("repeat_scores", _check_repeat_scores)


# ---------------------------------------------------------------- 6. ablation_losses


def _ablation_mistake(mode: str) -> Callable:
    """Plausible wrong ablations, written out so their hints can be matched."""

    def wrong(model, tokens, seq_len, mean=False):
        with torch.no_grad():
            clean = ref.loss_by_half(ref.correct_log_probs(model(tokens), tokens), seq_len)[1]
            n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
            out = torch.zeros(n_layers, n_heads)
            for layer in range(n_layers):
                for head in range(n_heads):
                    def hook(z, hook, head=head if mode != "late_binding" else n_heads - 1):
                        z = z.clone()
                        if mode == "whole_layer":
                            z[:] = z.mean(0) if mean else 0.0
                        elif mode == "mean_over_positions" and mean:
                            z[:, :, head] = z[:, :, head].mean(dim=(0, 1))
                        else:
                            z[:, :, head] = z[:, :, head].mean(0) if mean else 0.0
                        return z

                    logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
                    loss = ref.loss_by_half(ref.correct_log_probs(logits, tokens), seq_len)[1]
                    out[layer, head] = loss if mode == "no_baseline" else loss - clean
            return out

    return wrong


_ABLATION_MISTAKES = [
    ("return the *increase*: the ablated second-copy loss minus the clean one.", _ablation_mistake("no_baseline")),
    ("every head of a layer got the same value: the hook ablated the last head of the loop (a closure sees the "
     "loop variable's final value). Bind it: def hook(z, hook, head=head).", _ablation_mistake("late_binding")),
    ("ablate one head at a time (z[:, :, head]), not the whole layer.", _ablation_mistake("whole_layer")),
    ("mean ablation averages over the batch only, keeping each position: z[:, :, head].mean(dim=0).",
     _ablation_mistake("mean_over_positions")),
]


def _ablation_cases(hidden: bool) -> list[Case]:
    """Hidden: zero and mean ablation on the course model and both other shapes. Visible
    (under a second): both ablations on the course model, and zero ablation on the
    three-layer model, so a hard-coded shape or a mean over the wrong dimension shows."""
    models = _models(True) if hidden else [*_models(False), _other_models()[0]]
    cases = []
    for i, (desc, model) in enumerate(models):
        n = 7 + 4 * i
        tokens = _repeated(20 + i, 6, n)
        for mean in ((False, True) if hidden or i == 0 else (False,)):
            kind = "mean" if mean else "zero"
            cases.append(Case(f"{desc}, {kind} ablation, batch 6, seq_len {n}", (model, tokens, n), {"mean": mean}))
    return cases


def _check_ablation_losses(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.ablation_losses, _ablation_cases(hidden), "ablation_losses", _ABLATION_MISTAKES,
                       atol=1e-4, rtol=1e-3)


check_ablation_losses, grade_ablation_losses = check_and_grade("ablation_losses", _check_ablation_losses)


# ---------------------------------------------------------------- 7. full_ov_circuit, 9. induction_qk_circuit


def _as_full(fn: Callable, name: str) -> Callable:
    """The learner's circuit function, with its FactoredMatrix checked and built (`.AB`)."""
    from transformer_lens import FactoredMatrix

    def full(*args):
        out = fn(*args)
        if _type(out) in (_Tensor, _Parameter):
            raise CheckFailed(f"{name} returned a {tuple(out.shape)} tensor; return a FactoredMatrix(A, B) "
                              "(with inner size d_head), not the product")
        if not isinstance(out, FactoredMatrix):
            raise CheckFailed(f"{name} should return a transformer_lens FactoredMatrix, got {_type(out).__name__}")
        return out.AB.detach()

    return full


def _compare_circuits(fn: Callable, reference: Callable, cases: list[Case], name: str, mistakes) -> None:
    """Compare the built circuits entry by entry, each divided by the reference's largest
    entry (the circuits' scales differ by orders of magnitude between models)."""

    def scaled(f: Callable) -> Callable:
        def full(*args):
            with torch.no_grad():
                scale = float(reference(*args).AB.abs().max()) + 1e-12
            return f(*args) / scale
        return full

    as_full = lambda f: lambda *args: f(*args).AB.detach()  # noqa: E731
    wrong = [(hint, scaled(as_full(m))) for hint, m in mistakes]
    compare_on_models(scaled(_as_full(fn, name)), scaled(as_full(reference)), cases, name, wrong,
                       atol=1e-4, rtol=1e-3)


def _ov_mistake(which: str) -> Callable:
    from transformer_lens import FactoredMatrix

    def wrong(model, layer, head):
        ov = FactoredMatrix(model.W_E @ model.W_V[layer, head], model.W_O[layer, head] @ model.W_U)
        if which == "transposed":
            return ov.T
        return FactoredMatrix(model.W_E @ model.W_Q[layer, head], model.W_O[layer, head] @ model.W_U)

    return wrong


_OV_MISTAKES = [
    ("rows should be the attended token (W_E first) and columns the output token (W_U last); yours is transposed.",
     _ov_mistake("transposed")),
    ("the OV circuit uses the value weights W_V, not W_Q.", _ov_mistake("query")),
]


def _circuit_cases(hidden: bool, pairs: Callable[[object], list[tuple[int, int]]]) -> list[Case]:
    return [Case(f"{desc}, heads {a}, {b}", (model, a, b)) for desc, model in _models(hidden) for a, b in pairs(model)]


def _check_full_ov_circuit(fn: Callable, hidden: bool) -> None:
    heads = (lambda m: [(m.cfg.n_layers - 1, m.cfg.n_heads - 1), (0, 1)]) if hidden else (lambda m: [(1, 0), (0, 2)])
    _compare_circuits(fn, ref.full_ov_circuit, _circuit_cases(hidden, heads), "full_ov_circuit", _OV_MISTAKES)


check_full_ov_circuit, grade_full_ov_circuit = check_and_grade("full_ov_circuit", _check_full_ov_circuit)


def _qk_mistake(which: str) -> Callable:
    from transformer_lens import FactoredMatrix

    def wrong(model, p, h):
        W_E = model.W_E
        if which == "transposed":
            return ref.induction_qk_circuit(model, p, h).T
        if which == "no_ov":
            return FactoredMatrix(W_E @ model.W_Q[1, h], (W_E @ model.W_K[1, h]).T)
        return FactoredMatrix(W_E @ model.W_Q[1, p], (W_E @ model.W_V[0, h] @ model.W_O[0, h] @ model.W_K[1, p]).T)

    return wrong


_QK_MISTAKES = [
    ("rows are the query token, columns the previous token at the key: yours is transposed.", _qk_mistake("transposed")),
    ("the key side must go through the previous-token head's OV circuit: W_E @ W_V[0, p] @ W_O[0, p] @ W_K[1, h].",
     _qk_mistake("no_ov")),
    ("prev_head is the layer-0 head and induction_head the layer-1 head; you swapped them.", _qk_mistake("swapped")),
]


def _check_induction_qk_circuit(fn: Callable, hidden: bool) -> None:
    heads = (lambda m: [(0, m.cfg.n_heads - 1), (m.cfg.n_heads - 1, 0)]) if hidden else (lambda m: [(0, 1), (2, 3)])
    _compare_circuits(fn, ref.induction_qk_circuit, _circuit_cases(hidden, heads), "induction_qk_circuit",
                      _QK_MISTAKES)


check_induction_qk_circuit, grade_induction_qk_circuit = check_and_grade("induction_qk_circuit",
                                                                         _check_induction_qk_circuit)


# ---------------------------------------------------------------- 8. copying_scores


def _factored_cases(specs: Sequence[tuple[int, int, int, float]]) -> list[Case]:
    """Random rank-r circuits, pushed towards copying (+), anti-copying (-) or neither (0)."""
    from transformer_lens import FactoredMatrix

    cases = []
    for seed, n, r, sign in specs:
        A = randn(seed, n, r)
        B = randn(seed + 1, r, n) + sign * 2 * A.T
        cases.append(Case(f"rank-{r} random {n}x{n} circuit, seed={seed}, " +
                          {1.0: "copying", -1.0: "anti-copying", 0.0: "unrelated"}[sign], (FactoredMatrix(A, B),)))
    return cases


def _course_ov_cases(heads: Sequence[tuple[int, int]]) -> list[Case]:
    with torch.no_grad():
        return [Case(f"course model, full OV circuit of head {layer}.{head}",
                     (ref.full_ov_circuit(course_model("attn_only_2l"), layer, head),)) for layer, head in heads]


def _copying_mistake(which: str) -> Callable:
    def wrong(circuit):
        eig = circuit.eigenvalues
        full = circuit.AB
        idx = torch.arange(full.shape[0])
        top1 = (full.argmax(dim=-1) == idx).float().mean().item()
        score = (eig.sum() / eig.abs().sum()).real.item()
        if which == "columns":
            return score, (full.argmax(dim=0) == idx).float().mean().item()
        if which == "real_abs":
            return (eig.real.sum() / eig.real.abs().sum()).item(), top1
        return (eig.real.mean()).item(), top1

    return wrong


_COPYING_MISTAKES = [
    ("top-1 is over each row (argmax over the columns, dim=-1): for the token attended to, which output rises most.",
     _copying_mistake("columns")),
    ("divide by the sum of the eigenvalues' absolute values |λ| (complex modulus), not of their real parts.",
     _copying_mistake("real_abs")),
    ("the eigenvalue score is Σλ / Σ|λ|, a ratio between -1 and 1, not the mean eigenvalue.",
     _copying_mistake("mean")),
]


def _check_copying(fn: Callable, hidden: bool) -> None:
    shapes = [(3, 30, 5, 1.0), (5, 8, 8, 0.0), (7, 50, 2, -1.0), (9, 3, 1, 1.0)] if hidden \
        else [(0, 12, 3, 1.0), (2, 10, 4, -1.0), (5, 8, 8, 0.0)]
    heads = [(0, 0), (0, 3), (1, 2)] if hidden else [(1, 1)]
    cases = [*_factored_cases(shapes), *_course_ov_cases(heads)]
    for case in cases:
        out = call_learner(fn, "copying_scores", case.description, case.args)
        if _type(out) not in (tuple, list) or len(out) != 2 or any(_type(v) not in (float, int) for v in out):
            raise CheckFailed(f"copying_scores({case.description}): expected a tuple of two Python floats, got "
                              f"{out!r}\nHint: turn 0-dimensional tensors into floats with .item().")
    # eigenvalues of a d_vocab x d_vocab matrix (torch.linalg.eigvals) and of the small B @ A agree to ~1e-4
    compare_function(fn, ref.copying_scores, cases, name="copying_scores", mistakes=_COPYING_MISTAKES,
                     atol=2e-3, rtol=1e-3)


check_copying_scores, grade_copying_scores = check_and_grade("copying_scores", _check_copying)


# ---------------------------------------------------------------- 10. composition_scores


def _composition_mistake(which: str) -> Callable:
    def wrong(model, kind):
        if kind not in ("Q", "K", "V"):
            raise ValueError(kind)
        n = model.cfg.n_heads
        out = torch.zeros(n, n)
        with torch.no_grad():
            for i in range(n):
                for j in range(n):
                    A = model.OV[0, i]
                    B = {"Q": model.QK[1, j], "K": model.QK[1, j] if which == "K_untransposed" else model.QK[1, j].T,
                         "V": model.OV[1, j]}[kind]
                    if which == "unnormalised":
                        out[i, j] = (A @ B).norm().item()
                    elif which == "reversed":
                        out[i, j] = ((B @ A).norm() / (A.norm() * B.norm())).item()
                    else:
                        out[i, j] = ((A @ B).norm() / (A.norm() * B.norm())).item()
        return out

    return wrong


_COMPOSITION_MISTAKES = [
    ("K-composition reads the layer-0 output at the key, which enters the score transposed: comp(W_OV, W_QKᵀ).",
     _composition_mistake("K_untransposed")),
    ("divide by both norms: ‖AB‖_F / (‖A‖_F ‖B‖_F).", _composition_mistake("unnormalised")),
    ("the layer-0 matrix comes first: A = W_OV of layer 0, then the layer-1 matrix (A @ B, not B @ A).",
     _composition_mistake("reversed")),
]


def _composition_cases(hidden: bool) -> list[Case]:
    kinds = "QKV" if hidden else "K"
    return [Case(f"{desc}, kind={kind!r}", (model, kind)) for desc, model in _models(hidden) for kind in kinds]


def _rejects_bad_kind(fn: Callable) -> None:
    model = course_model("attn_only_2l")
    try:
        guard_model(fn, "composition_scores")(model, "O")
    except ValueError:
        return
    except CheckFailed:
        raise
    except NotImplementedError:
        raise CheckFailed("composition_scores is not implemented yet (it raised NotImplementedError)") from None
    except Exception as e:  # noqa: BLE001  the wrong kind of error
        raise CheckFailed(f"composition_scores(model, 'O') raised {_type(e).__name__}: {e}; "
                          "raise a ValueError for a kind other than 'Q', 'K', 'V'") from None
    raise CheckFailed("composition_scores(model, 'O') returned a result; raise a ValueError for a kind other "
                      "than 'Q', 'K', 'V'")


def _check_composition_scores(fn: Callable, hidden: bool) -> None:
    _rejects_bad_kind(fn)
    compare_on_models(fn, ref.composition_scores, _composition_cases(hidden), "composition_scores",
                       _COMPOSITION_MISTAKES, atol=1e-5, rtol=1e-3)


check_composition_scores, grade_composition_scores = check_and_grade("composition_scores", _check_composition_scores)


# ---------------------------------------------------------------- 11. composition_null

_NULL_COLUMNS = ("kind", "head0", "head1", "score", "p")


class _Untrained:
    """The `untrained(seed)` the grader hands in: untrained models of one shape, seeds
    offset from the notebook's, recorded so that the null can be rebuilt from them."""

    def __init__(self, offset: int, **shape) -> None:
        self.offset, self.shape, self.seeds, self.models = offset, shape, [], {}

    def __call__(self, seed: int):
        self.seeds.append(seed)
        if seed not in self.models:
            self.models[seed] = zoo.random_model(seed=self.offset + int(seed), **self.shape)
        return self.models[seed]


def _null_cases(hidden: bool) -> list[tuple[str, object, dict, int]]:
    """(description, model, the untrained models' shape, n_models). Visible: the course
    model against 5 untrained models. Hidden: against 12, and an untrained model of
    three layers of two heads against 6 of its shape, so a hard-coded head count fails."""
    cases = [("course model attn_only_2l", course_model("attn_only_2l"), {}, 5)]
    if hidden:
        cases = [("course model attn_only_2l", course_model("attn_only_2l"), {}, 12),
                 ("untrained 3 layers x 2 heads, d_model 32", _other_models()[0][1],
                  dict(n_layers=3, n_heads=2, d_model=32, d_head=8), 6)]
    return cases


def _null_p(scores: torch.Tensor, null: torch.Tensor, n: int, plus_one: bool = True) -> torch.Tensor:
    """p of every score against a null of `n` values per score ([n] shared, or [n, *scores.shape])."""
    reaching = (null >= scores).sum(0) if null.dim() > 1 else (null[:, None, None] >= scores).sum(0)
    return (reaching + plus_one) / (n + plus_one)


def _check_composition_null(fn: Callable, hidden: bool) -> None:
    for i, (description, model, shape, n) in enumerate(_null_cases(hidden)):
        untrained = _Untrained(7_000 + 100 * i, **shape)
        label = f"composition_null({description}, n_models={n})"
        table = checked_table(call_learner(fn, "composition_null", f"{description}, n_models={n}",
                                           (model, untrained, n)), label, _NULL_COLUMNS)
        if sorted(untrained.seeds) != list(range(n)):
            seeds = sorted(untrained.seeds)
            raise CheckFailed(f"{label} built untrained models with the seeds {seeds[:8]}{'...' if len(seeds) > 8 else ''}; "
                              f"build {n}, one for each seed 0 .. {n - 1}, each once"
                              + (": the same seed gives the same model, and one model drawn many times is one draw"
                                 if len(set(seeds)) < len(seeds) else ""))
        chance = [untrained.models[seed] for seed in range(n)]
        n_heads = model.cfg.n_heads
        rows = {}
        for r in table.itertuples():
            rows[str(r.kind), int(r.head0), int(r.head1)] = (float(r.score), float(r.p))
        want_keys = [(k, a, b) for k in "QKV" for a in range(n_heads) for b in range(n_heads)]
        if sorted(rows) != sorted(want_keys) or len(table) != len(want_keys):
            raise CheckFailed(f"{label} should have one row for each kind in Q, K, V and each pair of the model's "
                              f"{n_heads} heads ({len(want_keys)} rows); it has {len(table)}")
        for kind in "QKV":
            scores = ref.composition_scores(model, kind)
            per_model = torch.stack([ref.composition_scores(m, kind) for m in chance])  # [n, head0, head1]
            p = _null_p(scores, per_model.amax(dim=(1, 2)), n)
            for a in range(n_heads):
                for b in range(n_heads):
                    got_score, got_p = rows[kind, a, b]
                    where = f"{label}, {kind}-composition 0.{a} -> 1.{b}"
                    if abs(got_score - float(scores[a, b])) > 1e-5:
                        raise CheckFailed(f"{where}: score {got_score:.5f}, but composition_scores gives "
                                          f"{float(scores[a, b]):.5f}")
                    if abs(got_p - float(p[a, b])) < 1e-6:
                        continue
                    variants = {
                        "no_plus_one": _null_p(scores, per_model.amax(dim=(1, 2)), n, plus_one=False),
                        "mean": _null_p(scores, per_model.mean(dim=(1, 2)), n),
                        "same_pair": _null_p(scores, per_model, n),
                    }
                    why = {
                        "no_plus_one": " That is the share without the + 1s: count the trained model as one more "
                                       "draw, (1 + reaching) / (1 + n_models); a p of 0 claims a certainty "
                                       f"{n} untrained models cannot give",
                        "mean": " That compares the score with each untrained model's *mean* score; the null is "
                                "each untrained model's strongest score of the kind, since all pairs are tested at "
                                "once",
                        "same_pair": " That compares each pair only with the same pair in the untrained models; "
                                     f"all {n_heads ** 2} pairs are tested at once, so compare each with the "
                                     "strongest score of its kind in each untrained model",
                    }
                    found = next((why[k] for k, v in variants.items() if abs(got_p - float(v[a, b])) < 1e-6), "")
                    raise CheckFailed(f"{where}: p = {got_p:.4f}, but {int(round(float(p[a, b]) * (n + 1))) - 1} "
                                      f"of the {n} untrained models have a {kind}-composition score of at least "
                                      f"{float(scores[a, b]):.4f} somewhere, so p = {float(p[a, b]):.4f}.{found}")
    passed(f"composition_null tests every score against the strongest chance scores of untrained models, on "
           f"{len(_null_cases(hidden))} case{'s' * (len(_null_cases(hidden)) > 1)}")


check_composition_null, grade_composition_null = check_and_grade("composition_null", _check_composition_null)


# ---------------------------------------------------------------- 12. direct_logit_attribution


def _dla_case(desc: str, model, seed: int, batch: int, seq_len: int) -> Case:
    tokens = _repeated(seed, batch, seq_len, model.cfg.d_vocab)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return Case(f"{desc}, repeated words, batch {batch}, seq_len {seq_len}", (model, cache, tokens))


def _dla_mistake(which: str) -> Callable:
    def wrong(model, cache, tokens):
        embed = cache["hook_embed"] + (0 if which == "no_pos" else cache["hook_pos_embed"])
        parts = [embed]
        for layer in range(model.cfg.n_layers):
            parts += list(torch.einsum("bphd,hdm->hbpm", cache["z", layer], model.W_O[layer]))
        stacked = torch.stack(parts)
        if which == "current_token":
            stacked, targets = stacked[:, :, :-1], tokens[:, :-1]
        else:
            stacked, targets = stacked[:, :, :-1], tokens[:, 1:]
        if which != "no_centre":
            stacked = stacked - stacked.mean(dim=-1, keepdim=True)
        if which != "no_scale":
            stacked = stacked / cache["ln_final.hook_scale"][:, :-1]
        return torch.einsum("cbpm,mbp->cbp", stacked, model.W_U[:, targets])

    return wrong


_DLA_MISTAKES = [
    ("divide by the final layer norm's scale (cache['ln_final.hook_scale'][:, :-1]): the logits are computed "
     "from the normalised residual stream.", _dla_mistake("no_scale")),
    ("centre each part over d_model first (subtract its mean): the final layer norm centres the residual "
     "stream before scaling it.", _dla_mistake("no_centre")),
    ("position i predicts the token at i + 1: take W_U's columns for tokens[:, 1:], not tokens[:, :-1].",
     _dla_mistake("current_token")),
    ("part 0 is the token embedding *plus* the positional embedding (hook_embed + hook_pos_embed).",
     _dla_mistake("no_pos")),
]


def _check_direct_logit_attribution(fn: Callable, hidden: bool) -> None:
    course = course_model("attn_only_2l")
    cases = [_dla_case("course model attn_only_2l", course, 30, 2, 6)]
    if hidden:
        cases += [_dla_case("course model attn_only_2l", course, 31, 3, 13),
                  _dla_case("the zoo's attn_only_3l", course_model("attn_only_3l"), 32, 2, 9),
                  _dla_case(_other_models()[0][0], _other_models()[0][1], 33, 2, 5)]
    compare_on_models(fn, ref.direct_logit_attribution, cases, "direct_logit_attribution", _DLA_MISTAKES,
                      atol=1e-4, rtol=1e-3)


check_direct_logit_attribution, grade_direct_logit_attribution = check_and_grade(
    "direct_logit_attribution", _check_direct_logit_attribution)


# ---------------------------------------------------------------- 13. path_ablation

PATHS = ("q", "k", "v", "all")
_PATH_COLUMNS = ("head", "path", "increase", "se")


def _path_runs(model, tokens: torch.Tensor, seq_len: int, *, mean: bool = False,
               span: str = "second") -> dict[tuple[int, str], torch.Tensor]:
    """Per-sequence loss increases of the path ablation, measured here, and measured the
    plausible wrong ways a failing table is compared with: `mean` ablation instead of
    zero, or the loss over the `first` copy or the `whole` sequence. (A whole residual
    stream patched for every path is told from the learner's own rows: q, k, v equal "all".)"""
    def loss(logits):
        lp = ref.correct_log_probs(logits, tokens)
        return -{"second": lp[:, seq_len:], "first": lp[:, :seq_len], "whole": lp}[span].mean(dim=1)

    names = {p: f"blocks.1.attn.hook_{p}" for p in PATHS[:3]}
    runs = {}
    with torch.no_grad():
        clean = loss(model(tokens))
        for head in range(model.cfg.n_heads):
            def remove(z, hook, head=head):
                z = z.clone()
                z[:, :, head] = z[:, :, head].mean(dim=0) if mean else 0.0
                return z

            with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", remove)]):
                ablated_logits, ablated = model.run_with_cache(tokens, names_filter=lambda n: n in names.values())
            for path, name in names.items():
                logits = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda act, hook, name=name: ablated[name])])
                runs[head, path] = loss(logits) - clean
            runs[head, "all"] = loss(ablated_logits) - clean
    return runs


def _path_cases(hidden: bool) -> list[Case]:
    """Visible: the course model on 24 sequences of length 13. Hidden: 32 of length 21
    (another seed), and an untrained model of three layers of two heads, so a hard-coded
    head count or a table copied from the notebook fails."""
    cases = [Case("course model attn_only_2l, batch 24, seq_len 13", (course_model("attn_only_2l"), _repeated(41, 24, 13), 13))]
    if hidden:
        three = _other_models()[0]
        cases += [Case("course model attn_only_2l, batch 32, seq_len 21", (course_model("attn_only_2l"), _repeated(42, 32, 21), 21)),
                  Case(f"{three[0]}, batch 16, seq_len 9", (three[1], _repeated(43, 16, 9, three[1].cfg.d_vocab), 9))]
    return cases


def _path_table(out, label: str, n_heads: int) -> dict[tuple[int, str], tuple[float, float]]:
    checked_table(out, label, _PATH_COLUMNS)
    rows = {}
    for r in out.itertuples():
        key = (int(r.head), str(r.path))
        if key in rows:
            raise CheckFailed(f"{label} has two rows for head {key[0]}, path {key[1]!r}")
        rows[key] = (float(r.increase), float(r.se))
    want = [(h, p) for h in range(n_heads) for p in PATHS]
    if sorted(rows) != sorted(want):
        missing = sorted(set(want) - set(rows))
        raise CheckFailed(f"{label} should have one row for each of the model's {n_heads} layer-0 heads and each path "
                          f"in {list(PATHS)} ({len(want)} rows); it has {len(rows)}"
                          + (f", missing {missing[:4]}" if missing else f", with extra {sorted(set(rows) - set(want))[:4]}")
                          + ". Every head is a control for the others, and 'all' says how much of a head's effect "
                            "one path carries")
    return rows


def _why_increase(got: dict, truth: dict, model, tokens, seq_len: int, key: tuple[int, str]) -> str:
    """The flaw a wrong increase column shows, told by measuring it that way."""
    def same(a: float, b: float) -> bool:
        return abs(a - b) <= 2e-3 + 1e-2 * abs(b)

    paths_zero = all(abs(got[h, p][0]) < 1e-4 for h, p in got if p != "all")
    if paths_zero and max(abs(v[0]) for (h, p), v in truth.items() if p != "all") > 0.01:
        return (" Every q, k and v row is 0: layer 1 got the real activations, not the ablated ones. "
                "`model.run_with_cache(tokens, fwd_hooks=...)` ignores its hooks on this model; run the "
                "ablated pass inside `with model.hooks(fwd_hooks=[...]):`")
    head, path = key
    if path != "all" and all(same(got[head, p][0], got[head, "all"][0]) for p in PATHS[:3]):
        return (f" Your q, k and v rows of head 0.{head} all equal its 'all' row: each path removed the head from "
                "everything layer 1 reads (its whole input) rather than from one of q, k or v")
    for other in PATHS:
        if other != path and same(got[key][0], truth[head, other][0]) and not same(truth[key][0], truth[head, other][0]):
            return f" That is what the grader measures for path {other!r}: the paths are swapped"
    if same(got[key][0], -truth[key][0]):
        return " That is minus the increase: subtract the clean loss from the ablated one, not the other way"
    for kwargs, what in (({"mean": True}, "mean ablation: zero-ablate the head (set its z to 0)"),
                         ({"span": "whole"}, "the loss over the whole sequence: use the second copy only"),
                         ({"span": "first"}, "the loss over the first copy: use the second copy")):
        variant = _path_runs(model, tokens, seq_len, **kwargs)[key].mean().item()
        if same(got[key][0], variant):
            return f" That is {what}"
    return ""


def _check_path_ablation(fn: Callable, hidden: bool) -> None:
    guarded = guard_model(fn, "path_ablation")
    for case in _path_cases(hidden):
        model, tokens, seq_len = case.args
        label = f"path_ablation({case.description})"
        got = _path_table(call_learner(guarded, "path_ablation", case.description, case.args), label, model.cfg.n_heads)
        runs = _path_runs(model, tokens, seq_len)
        n = tokens.shape[0]
        truth = {key: (v.mean().item(), (v.std() / n ** 0.5).item()) for key, v in runs.items()}
        for key, (want, want_se) in truth.items():
            value, se = got[key]
            if not abs(value - want) <= 2e-3 + 1e-2 * abs(want):
                raise CheckFailed(f"{label}: head 0.{key[0]}, path {key[1]!r}: your increase is {value:+.4f}, but "
                                  f"the grader measures {want:+.4f} ± {want_se:.4f}."
                                  + _why_increase(got, truth, model, tokens, seq_len, key))
            if not abs(se - want_se) <= 1e-4 + 0.15 * want_se:
                ratio = se / want_se if want_se > 0 else float("inf")
                why = (" There is no error bar: report the standard error of the increase over sequences"
                       if se == 0 else
                       f" That is the standard deviation ({n} sequences): divide by sqrt({n})"
                       if abs(ratio - n ** 0.5) <= 0.15 * n ** 0.5 else
                       f" It is {1 / ratio:.1f} times too small: the standard error counts the sequences, the "
                       f"independent draws ({n} here), not their {n * seq_len} positions" if ratio < 0.6 else "")
                raise CheckFailed(f"{label}: head 0.{key[0]}, path {key[1]!r}: your standard error is {se:.4f}, but "
                                  f"the increase's standard error over the {n} sequences is {want_se:.4f}.{why}")
    passed("path_ablation measures every layer-0 head through each input of layer 1 and everywhere, each "
           f"increase with its standard error over sequences, as the grader does on {len(_path_cases(hidden))} "
           f"case{'s' * (len(_path_cases(hidden)) > 1)}")


check_path_ablation, grade_path_ablation = check_and_grade("path_ablation", _check_path_ablation)


# ---------------------------------------------------------------- 14. the investigation: find_induction_circuit




def _circuit_answer(fn: Callable, model_name: str) -> dict[str, list[tuple[int, int]]]:
    """The learner's answer on zoo model `model_name`, checked for form only (types, keys,
    heads in range, no repeats) and returned as {kind: [(layer, head), ...]}."""
    name = "find_induction_circuit"
    model = course_model(model_name)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out = call_learner(guard_model(fn, name), name, f"the zoo's {model_name}", (model,))
    where = f"{name}(the zoo's {model_name})"
    if _type(out) is not dict:
        raise CheckFailed(f"{where} should return a dict, got {_type(out).__name__}")
    if set(out) != set(investigation.KINDS) or any(_type(k) is not str for k in out):
        raise CheckFailed(f"{where} should return a dict with exactly the keys {list(investigation.KINDS)}, "
                          f"got the keys {sorted(map(repr, out))}")
    answer = {}
    for kind in investigation.KINDS:
        heads = out[kind]
        if _type(heads) not in (list, tuple):
            raise CheckFailed(f"{where}[{kind!r}] should be a list of (layer, head) pairs, got {_type(heads).__name__}")
        pairs = []
        for entry in heads:
            if (_type(entry) not in (tuple, list) or len(entry) != 2
                    or any(_type(x) is not int for x in entry)):
                raise CheckFailed(f"{where}[{kind!r}]: every entry should be a (layer, head) pair of Python ints, "
                                  f"got {entry!r}\nHint: int(...) turns a 0-dimensional tensor into an int.")
            layer, head = entry
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise CheckFailed(f"{where}[{kind!r}]: ({layer}, {head}) is not a head of this model "
                                  f"({n_layers} layers of {n_heads} heads)")
            pairs.append((layer, head))
        if len(set(pairs)) != len(pairs):
            raise CheckFailed(f"{where}[{kind!r}] names a head twice: {pairs}")
        answer[kind] = pairs
    return answer


def _check_find_induction_circuit(fn: Callable, hidden: bool) -> None:
    if not hidden:
        answer = _circuit_answer(fn, investigation.INVESTIGATION_MODEL)
        shown = "; ".join(f"{kind}: " + (", ".join(f"{l}.{h}" for l, h in heads) or "none")
                          for kind, heads in answer.items())
        passed(f"find_induction_circuit returns a well-formed answer ({shown}); whether it is right is "
               "for the hidden test, which measures the heads on sequences you have not seen")
        return
    for model_name in investigation.GRADED_MODELS:
        found = investigation.problems(model_name, _circuit_answer(fn, model_name))
        if found:
            raise CheckFailed(f"find_induction_circuit(the zoo's {model_name}): the measurements disagree:\n- "
                              + "\n- ".join(found))
    passed(f"find_induction_circuit names the circuit of {' and of '.join(investigation.GRADED_MODELS)} "
           "as the held-out measurements find it")


# off limits inside the learner's function: the measurement on the held-out sequences, and the
# zoo's own head scores (what the checkpoints' metadata records)
check_find_induction_circuit, grade_find_induction_circuit = check_and_grade(
    "find_induction_circuit", _check_find_induction_circuit,
    Truth(modules=(investigation,), functions=(zoo.induction_metrics, zoo.info)))
