"""Chapter 2's checks: each hidden test fails a plausible wrong answer and says why,
accepts correct answers written differently, and protects the course model from a
learner function that edits it (tests/test_exercise_checks.py covers the rest)."""

from __future__ import annotations

import functools

import pytest
import torch
from transformer_lens import FactoredMatrix

from mechlab.checks import CheckFailed, course_model
from mechlab.induction_heads import checks
from conftest import as_learner, check_tests
from mechlab.induction_heads import reference as ref
from mechlab.zoo import BOS_ID, FIRST_WORD_ID

EXERCISES = ref.__all__


# ---------------------------------------------------------------- mutants: plausible wrong answers


def log_probs_current_token(logits, tokens):
    return logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, :-1, None])[..., 0]


def log_probs_no_softmax(logits, tokens):
    return logits[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


def repeated_no_bos(batch, seq_len, d_vocab, generator):
    words = torch.randint(FIRST_WORD_ID, d_vocab, (batch, seq_len + 1), generator=generator)
    return torch.cat([words[:, :1], words[:, 1:], words[:, 1:]], dim=1)


def repeated_special_tokens(batch, seq_len, d_vocab, generator):
    words = torch.randint(0, d_vocab, (batch, seq_len), generator=generator)
    return torch.cat([torch.full((batch, 1), BOS_ID), words, words], dim=1)


def repeated_fresh_second_copy(batch, seq_len, d_vocab, generator):
    a = torch.randint(FIRST_WORD_ID, d_vocab, (batch, seq_len), generator=generator)
    b = torch.randint(FIRST_WORD_ID, d_vocab, (batch, seq_len), generator=generator)
    return torch.cat([torch.full((batch, 1), BOS_ID), a, b], dim=1)


def repeated_global_rng(batch, seq_len, d_vocab, generator):
    words = torch.randint(FIRST_WORD_ID, d_vocab, (batch, seq_len))
    return torch.cat([torch.full((batch, 1), BOS_ID), words, words], dim=1)


def repeated_same_rows(batch, seq_len, d_vocab, generator):
    words = torch.randint(FIRST_WORD_ID, d_vocab, (1, seq_len), generator=generator).expand(batch, -1)
    return torch.cat([torch.full((batch, 1), BOS_ID), words, words], dim=1)


def half_positive(log_probs, seq_len):
    return torch.stack([log_probs[:, :seq_len].mean(), log_probs[:, seq_len:].mean()])


def half_off_by_one(log_probs, seq_len):
    return torch.stack([-log_probs[:, :seq_len + 1].mean(), -log_probs[:, seq_len + 1:].mean()])


def prev_main_diagonal(pattern):
    return pattern.diagonal(0, -2, -1).mean((0, -1))


def prev_divides_by_all(pattern):
    return pattern.diagonal(-1, -2, -1).sum(-1).mean(0) / pattern.shape[-1]


def repeat_swapped(pattern, seq_len):
    return ref.repeat_scores(pattern, seq_len).flip(0)


def repeat_all_queries(pattern, seq_len):
    q = torch.arange(seq_len, 2 * seq_len + 1)
    return torch.stack([pattern[:, :, q, q - seq_len].mean((0, -1)), pattern[:, :, q, q - seq_len + 1].mean((0, -1))])


def repeat_no_bos(pattern, seq_len):
    """Indexed as if position 0 were the first word: every query and key one too early."""
    q = torch.arange(seq_len, 2 * seq_len)
    return torch.stack([pattern[:, :, q, q - seq_len].mean((0, -1)), pattern[:, :, q, q - seq_len + 1].mean((0, -1))])


def ablation_mean_over_positions(model, tokens, seq_len, mean=False):
    with torch.no_grad():
        clean = ref.loss_by_half(ref.correct_log_probs(model(tokens), tokens), seq_len)[1]
        out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):
                def ablate(z, hook, head=head):
                    z = z.clone()
                    z[:, :, head] = z[:, :, head].mean(dim=(0, 1)) if mean else 0.0
                    return z
                logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
                out[layer, head] = ref.loss_by_half(ref.correct_log_probs(logits, tokens), seq_len)[1] - clean
        return out


def ablation_late_binding(model, tokens, seq_len, mean=False):
    with torch.no_grad():
        clean = ref.loss_by_half(ref.correct_log_probs(model(tokens), tokens), seq_len)[1]
        out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
        for layer in range(model.cfg.n_layers):
            hooks = []
            for head in range(model.cfg.n_heads):
                def ablate(z, hook):
                    z[:, :, head] = z[:, :, head].mean(0) if mean else 0.0  # `head` read when the hook runs
                    return z
                hooks.append(ablate)
            for h, hook in enumerate(hooks):
                logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
                out[layer, h] = ref.loss_by_half(ref.correct_log_probs(logits, tokens), seq_len)[1] - clean
        return out


def ablation_no_baseline(model, tokens, seq_len, mean=False):
    clean = ref.loss_by_half(ref.correct_log_probs(model(tokens), tokens), seq_len)[1]
    return ref.ablation_losses(model, tokens, seq_len, mean) + clean


def ablation_hard_coded_shape(model, tokens, seq_len, mean=False):
    out = torch.zeros(2, 4)
    full = ref.ablation_losses(model, tokens, seq_len, mean)
    out[: min(2, full.shape[0]), : min(4, full.shape[1])] = full[:2, :4]
    return out


def ablation_edits_weights(model, tokens, seq_len, mean=False):
    out = ref.ablation_losses(model, tokens, seq_len, mean)
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)  # "temporarily" scales a weight, never restores it
    return out


def ablation_leaves_hook(model, tokens, seq_len, mean=False):
    model.add_hook("blocks.0.attn.hook_z", lambda z, hook: z * 0)
    return ref.ablation_losses(model, tokens, seq_len, mean)


def ov_dense(model, layer, head):
    return (model.W_E @ model.W_V[layer, head] @ model.W_O[layer, head] @ model.W_U).detach()


def ov_transposed(model, layer, head):
    return ref.full_ov_circuit(model, layer, head).T


def ov_layer_zero(model, layer, head):
    return ref.full_ov_circuit(model, 0, head)


def copying_columns(circuit):
    eig = circuit.eigenvalues
    full = circuit.AB
    return (eig.sum() / eig.abs().sum()).real.item(), (full.argmax(0) == torch.arange(full.shape[0])).float().mean().item()


def copying_tensors(circuit):
    eig = circuit.eigenvalues
    full = circuit.AB
    return (eig.sum() / eig.abs().sum()).real, (full.argmax(-1) == torch.arange(full.shape[0])).float().mean()


def copying_mean_eigenvalue(circuit):
    return circuit.eigenvalues.real.mean().item(), ref.copying_scores(circuit)[1]


def qk_no_ov(model, prev_head, induction_head):
    return FactoredMatrix(model.W_E @ model.W_Q[1, induction_head], (model.W_E @ model.W_K[1, induction_head]).T)


def qk_transposed(model, prev_head, induction_head):
    return ref.induction_qk_circuit(model, prev_head, induction_head).T


def composition_untransposed_k(model, kind):
    if kind == "K":
        return ref.composition_scores(model, "Q")
    return ref.composition_scores(model, kind)


def composition_no_error(model, kind):
    return ref.composition_scores(model, kind if kind in ("Q", "K", "V") else "Q")


def composition_unnormalised(model, kind):
    if kind not in ("Q", "K", "V"):
        raise ValueError(kind)
    n = model.cfg.n_heads
    out = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            B = {"Q": model.QK[1, j], "K": model.QK[1, j].T, "V": model.OV[1, j]}[kind]
            out[i, j] = (model.OV[0, i] @ B).norm().item()
    return out


def dla_no_scale(model, cache, tokens):
    parts = [cache["hook_embed"] + cache["hook_pos_embed"]]
    for layer in range(model.cfg.n_layers):
        parts += list(torch.einsum("bphd,hdm->hbpm", cache["z", layer], model.W_O[layer]))
    stacked = torch.stack(parts)[:, :, :-1]
    return torch.einsum("cbpm,mbp->cbp", stacked - stacked.mean(-1, keepdim=True), model.W_U[:, tokens[:, 1:]])


def dla_heads_layer_minor(model, cache, tokens):
    """Heads ordered head by head across layers (0.0, 1.0, 0.1, ...) instead of layer by layer."""
    out = ref.direct_logit_attribution(model, cache, tokens)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    heads = out[1:].reshape(n_layers, n_heads, *out.shape[1:]).transpose(0, 1).reshape(-1, *out.shape[1:])
    return torch.cat([out[:1], heads])


def dla_current_token(model, cache, tokens):
    shifted = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)  # column i + 1 holds token i
    return ref.direct_logit_attribution(model, cache, shifted)


def _composition_null(mode: str = ""):
    """composition_null, right (vectorised, its null kept per kind) or wrong in one way."""
    import pandas as pd

    def composition_null(model, untrained, n_models=20):
        seeds = [0] * n_models if mode == "one_seed" else range(20 if mode == "twenty" else n_models)
        per_model = {k: [] for k in "QKV"}
        for seed in seeds:
            m = untrained(seed)
            for k in "QKV":
                per_model[k].append(ref.composition_scores(m, k))
        rows = []
        for k in "QKV":
            stack = torch.stack(per_model[k])
            null = {"mean": stack.mean((1, 2)), "same_pair": stack}.get(mode, stack.amax((1, 2)))
            scores = ref.composition_scores(model, k)
            reaching = (null >= scores).sum(0) if null.dim() > 1 else (null[:, None, None] >= scores).sum(0)
            p = reaching / len(seeds) if mode == "no_plus_one" else (reaching + 1) / (len(seeds) + 1)
            for (a, b), x in zip(torch.cartesian_prod(torch.arange(scores.shape[0]), torch.arange(scores.shape[1])).tolist(),
                                 scores.flatten().tolist()):
                rows.append(dict(kind=k, head0=a, head1=b, score=x, p=float(p[a, b])))
        return pd.DataFrame(rows)

    composition_null.__name__ = f"composition_null_{mode or 'vectorised'}"
    return composition_null


def _path_ablation(mode: str = "", *, bootstrap: bool = False):
    """path_ablation, right (with the cross-entropy and, with `bootstrap`, a bootstrapped
    standard error) or wrong in one way (`mode`)."""
    import pandas as pd

    def path_ablation(model, tokens, seq_len):
        def loss(logits):
            full = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
            return full.mean(1) if mode == "whole" else full[:, seq_len:].mean(1)

        names = {p: ("blocks.1.hook_resid_pre" if mode == "resid" else f"blocks.1.attn.hook_{p}") for p in "qkv"}
        if mode == "swap_qk":
            names["q"], names["k"] = names["k"], names["q"]
        rows = []
        with torch.no_grad():
            clean = loss(model(tokens))
            for head in range(4 if mode == "four_heads" else model.cfg.n_heads):
                def remove(z, hook, head=head):
                    z = z.clone()
                    z[:, :, head] = z[:, :, head].mean(0) if mode == "mean" else 0.0
                    return z

                hooks = [("blocks.0.attn.hook_z", remove)]
                if mode == "cache_fwd_hooks":
                    ablated_logits, ablated = model.run_with_cache(tokens, fwd_hooks=hooks)
                else:
                    with model.hooks(fwd_hooks=hooks):
                        ablated_logits, ablated = model.run_with_cache(tokens)
                runs = {p: model.run_with_hooks(tokens, fwd_hooks=[(n, lambda a, hook, n=n: ablated[n])])
                        for p, n in names.items()}
                runs["all"] = ablated_logits
                for path, logits in runs.items():
                    if mode == "no_all" and path == "all":
                        continue
                    increase = loss(logits) - clean
                    n = len(increase)
                    if bootstrap:
                        picks = torch.randint(0, n, (4000, n), generator=torch.Generator().manual_seed(0))
                        se = increase[picks].mean(1).std().item()
                    else:
                        se = {"sd": increase.std(), "no_se": torch.tensor(0.0),
                              "se_positions": increase.std() / (n * seq_len) ** 0.5}.get(
                            mode, increase.std(unbiased=False) / n ** 0.5).item()
                    rows.append({"head": head, "path": path, "increase": increase.mean().item(), "se": se})
        return pd.DataFrame(rows)

    path_ablation.__name__ = f"path_ablation_{mode or ('bootstrap' if bootstrap else 'cross_entropy')}"
    return path_ablation


# ---------------------------------------------------------------- the investigation: plausible wrong findings


def _scores(model, kind_index):
    """[layer, head] detector scores on the learner's own repeated sequences (lengths 11, 19, 27)."""
    gen = torch.Generator().manual_seed(5)
    per_length = []
    with torch.no_grad():
        for n in (11, 19, 27):
            tokens = ref.generate_repeated_tokens(16, n, model.cfg.d_vocab, gen)
            _, cache = model.run_with_cache(tokens)
            layers = range(model.cfg.n_layers)
            if kind_index == "previous":
                per_length.append(torch.stack([ref.previous_token_score(cache["pattern", l]) for l in layers]))
            else:
                per_length.append(torch.stack([ref.repeat_scores(cache["pattern", l], n)[kind_index] for l in layers]))
    return torch.stack(per_length).mean(0)


def _above(scores, cut):
    return [(int(l), int(h)) for l, h in torch.nonzero(scores >= cut)]


def circuit_of_the_first_model(model):
    """The heads attn_only_2l uses, copied onto any model."""
    return {"previous_token": [(0, 0)], "induction": [(1, 0), (1, 1), (1, 2)]}


def circuit_hard_coded_for_3l(model):
    """Right for attn_only_3l, found by hand, but not a function of the model."""
    return {"previous_token": [(0, 2)], "induction": [(1, 0), (1, 1), (1, 2), (1, 3)]}


def circuit_in_the_last_layer(model):
    """The previous-token head found with the detector, the induction heads assumed to be the last layer's."""
    last = model.cfg.n_layers - 1
    return {"previous_token": _above(_scores(model, "previous"), 0.5),
            "induction": [(last, h) for h in range(model.cfg.n_heads)]}


def circuit_all_of_layers_0_and_1(model):
    return {"previous_token": [(0, h) for h in range(model.cfg.n_heads)],
            "induction": [(1, h) for h in range(model.cfg.n_heads)]}


def circuit_from_the_duplicate_detector(model):
    """The induction heads taken as the three heads that top the duplicate-token score."""
    dup = _scores(model, 0).flatten()
    top = [divmod(int(i), model.cfg.n_heads) for i in dup.argsort(descending=True)[:3]]
    return {"previous_token": _above(_scores(model, "previous"), 0.5), "induction": top}


def circuit_kinds_swapped(model):
    right = ref.find_induction_circuit(model)
    return {"previous_token": right["induction"], "induction": right["previous_token"]}


def circuit_strings(model):
    return {"previous_token": ["0.2"], "induction": ["1.0", "1.1", "1.2"]}


def circuit_tensor_entries(model):
    return {kind: [torch.tensor(pair) for pair in pairs] for kind, pairs in ref.find_induction_circuit(model).items()}


MUTANTS = [
    ("correct_log_probs", log_probs_current_token, "next token"),
    ("correct_log_probs", log_probs_no_softmax, "log_softmax"),
    ("generate_repeated_tokens", repeated_no_bos, "BOS_ID"),
    ("generate_repeated_tokens", repeated_special_tokens, "special tokens"),
    ("generate_repeated_tokens", repeated_fresh_second_copy, "repeat columns"),
    ("generate_repeated_tokens", repeated_global_rng, "generator"),
    ("generate_repeated_tokens", repeated_same_rows, "same sequence"),
    ("loss_by_half", half_positive, "minus the mean"),
    ("loss_by_half", half_off_by_one, "first copy is entries"),
    ("previous_token_score", prev_main_diagonal, "main diagonal"),
    ("previous_token_score", prev_divides_by_all, "1 onwards"),
    ("repeat_scores", repeat_swapped, "row 0 is the duplicate"),
    ("repeat_scores", repeat_all_queries, "second copy"),
    ("repeat_scores", repeat_no_bos, "as if the sequence had no BOS"),
    ("ablation_losses", ablation_late_binding, "closure"),
    ("ablation_losses", ablation_no_baseline, "increase"),
    ("ablation_losses", ablation_hard_coded_shape, "shape"),
    ("ablation_losses", ablation_mean_over_positions, "batch only"),
    ("ablation_losses", ablation_edits_weights, "changed the model's weights"),
    ("ablation_losses", ablation_leaves_hook, "differ"),
    ("full_ov_circuit", ov_dense, "FactoredMatrix"),
    ("full_ov_circuit", ov_transposed, "transposed"),
    ("full_ov_circuit", ov_layer_zero, "differ"),
    ("copying_scores", copying_columns, "over each row"),
    ("copying_scores", copying_tensors, "Python floats"),
    ("copying_scores", copying_mean_eigenvalue, "ratio"),
    ("induction_qk_circuit", qk_no_ov, "previous-token head's OV"),
    ("induction_qk_circuit", qk_transposed, "transposed"),
    ("composition_scores", composition_untransposed_k, "transposed"),
    ("composition_scores", composition_no_error, "ValueError"),
    ("composition_scores", composition_unnormalised, "both norms"),
    ("direct_logit_attribution", dla_no_scale, "scale"),
    ("direct_logit_attribution", dla_heads_layer_minor, "differ"),
    ("direct_logit_attribution", dla_current_token, "i \\+ 1"),
    ("composition_null", _composition_null("no_plus_one"), r"without the \+ 1s"),
    ("composition_null", _composition_null("mean"), "each untrained model's \\*mean\\* score"),
    ("composition_null", _composition_null("same_pair"), "only with the same pair"),
    ("composition_null", _composition_null("one_seed"), "one model drawn many times is one draw"),
    ("composition_null", _composition_null("twenty"), r"build 12, one for each seed 0 \.\. 11"),
    ("path_ablation", _path_ablation("cache_fwd_hooks"), "ignores its hooks"),
    ("path_ablation", _path_ablation("resid"), "whole input"),
    ("path_ablation", _path_ablation("swap_qk"), "swapped"),
    ("path_ablation", _path_ablation("mean"), "mean ablation"),
    ("path_ablation", _path_ablation("whole"), "whole sequence"),
    ("path_ablation", _path_ablation("no_all"), "'all' says how much"),
    ("path_ablation", _path_ablation("four_heads"), "raised IndexError"),
    ("path_ablation", _path_ablation("sd"), r"standard deviation \(24 sequences\)"),
    ("path_ablation", _path_ablation("se_positions"), "not their 312 positions"),
    ("path_ablation", _path_ablation("no_se"), "no error bar"),
    ("find_induction_circuit", circuit_of_the_first_model, r"(?s)attn_only_3l.*missed 0\.2.*0\.0 is not a previous"),
    ("find_induction_circuit", circuit_hard_coded_for_3l, r"(?s)attn_only_2l.*missed 0\.0"),
    ("find_induction_circuit", circuit_in_the_last_layer, r"(?s)missed 1\.0.*2\.0 is not an induction head"),
    ("find_induction_circuit", circuit_all_of_layers_0_and_1, r"0\.0 is not a previous-token head: .* score is 0\.1"),
    ("find_induction_circuit", circuit_from_the_duplicate_detector, "is not an induction head"),
    ("find_induction_circuit", circuit_kinds_swapped, "is not a previous-token head"),
    ("find_induction_circuit", circuit_strings, "pair of Python ints"),
    ("find_induction_circuit", circuit_tensor_entries, "pair of Python ints"),
]

# Wrong findings of the investigation that are well formed: the visible check must pass them
# (it says nothing about correctness), the hidden test must fail them.
WELL_FORMED_WRONG_FINDINGS = [circuit_of_the_first_model, circuit_hard_coded_for_3l, circuit_in_the_last_layer,
                              circuit_all_of_layers_0_and_1, circuit_from_the_duplicate_detector,
                              circuit_kinds_swapped]


def test_a_function_that_edits_the_model_leaves_it_intact_for_the_next_check():
    model = course_model("attn_only_2l")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckFailed, match="changed the model's weights"):
        checks.check_ablation_losses(as_learner(ablation_edits_weights))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(CheckFailed):
        checks.check_ablation_losses(as_learner(ablation_leaves_hook))
    checks.check_ablation_losses(as_learner(ref.ablation_losses))  # no hook left behind


# ---------------------------------------------------------------- correct answers written differently


def log_probs_cross_entropy(logits, tokens):
    return -torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")


def repeated_repeat_method(batch, seq_len, d_vocab, generator):
    words = torch.randint(FIRST_WORD_ID, d_vocab, (batch, seq_len), generator=generator, dtype=torch.int64)
    return torch.cat([torch.full((batch, 1), BOS_ID, dtype=torch.int64), words.repeat(1, 2)], dim=1)


def ablation_hooks_context(model, tokens, seq_len, mean=False):
    """Hooks attached with the `model.hooks(...)` context manager and functools.partial."""
    def ablate(z, hook, head):
        z = z.clone()
        z[:, :, head] = z[:, :, head].mean(0, keepdim=True) if mean else torch.zeros_like(z[:, :, head])
        return z
    with torch.no_grad():
        clean = ref.loss_by_half(ref.correct_log_probs(model(tokens), tokens), seq_len)[1]
        rows = []
        for layer in range(model.cfg.n_layers):
            row = []
            for head in range(model.cfg.n_heads):
                with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", functools.partial(ablate, head=head))]):
                    logits = model(tokens)
                row.append(ref.loss_by_half(ref.correct_log_probs(logits, tokens), seq_len)[1] - clean)
            rows.append(torch.stack(row))
        return torch.stack(rows)


def ov_other_factoring(model, layer, head):
    return FactoredMatrix(model.W_E, model.W_V[layer, head]) @ FactoredMatrix(model.W_O[layer, head], model.W_U)


def copying_dense_eigvals(circuit):
    full = circuit.AB.double()
    eig = torch.linalg.eigvals(full)
    top1 = (full.argmax(-1) == torch.arange(full.shape[0])).double().mean()
    return float((eig.sum() / eig.abs().sum()).real), float(top1)


def qk_factored_product(model, prev_head, induction_head):
    query = FactoredMatrix(model.W_E @ model.W_Q[1, induction_head], model.W_K[1, induction_head].T)
    return query @ (model.W_E @ model.OV[0, prev_head]).T.AB


def composition_dense(model, kind):
    if kind not in "QKV" or len(kind) != 1:
        raise ValueError(kind)
    n = model.cfg.n_heads
    W_OV = (model.W_V @ model.W_O).detach()
    W_QK = (model.W_Q @ model.W_K.transpose(-1, -2)).detach()
    right = {"Q": W_QK[1], "K": W_QK[1].transpose(-1, -2), "V": W_OV[1]}[kind]
    return torch.tensor([[float(torch.linalg.norm(W_OV[0, i] @ right[j]) /
                                (torch.linalg.norm(W_OV[0, i]) * torch.linalg.norm(right[j])))
                          for j in range(n)] for i in range(n)])


def circuit_by_ablation(model):
    """Another route to a right answer: previous-token heads by detector, induction heads as
    the heads whose attention pattern looks back seq_len - 1, confirmed one head at a time
    by zero ablation on the learner's own data."""
    gen = torch.Generator().manual_seed(9)
    tokens = ref.generate_repeated_tokens(24, 15, model.cfg.d_vocab, gen)
    increase = ref.ablation_losses(model, tokens, 15)
    induction = _above(_scores(model, 1), 0.3)
    return {"previous_token": [h for h in _above(_scores(model, "previous"), 0.6) if increase[h] > 0.05]
            or _above(_scores(model, "previous"), 0.6), "induction": induction}


def dla_loops(model, cache, tokens):
    """Head by head with explicit hook names, and the logits' own formula for the scale."""
    rows = []
    resid = [cache["hook_embed"] + cache["hook_pos_embed"]]
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        resid += [z[:, :, h] @ model.W_O[layer, h] for h in range(model.cfg.n_heads)]
    scale = cache["ln_final.hook_scale"]
    for part in resid:
        centred = (part - part.mean(-1, keepdim=True)) / scale
        logits = centred @ model.W_U
        rows.append(logits[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0])
    return torch.stack(rows)


VARIANTS = [
    ("correct_log_probs", log_probs_cross_entropy),
    ("generate_repeated_tokens", repeated_repeat_method),
    ("ablation_losses", ablation_hooks_context),
    ("full_ov_circuit", ov_other_factoring),
    ("copying_scores", copying_dense_eigvals),
    ("induction_qk_circuit", qk_factored_product),
    ("composition_scores", composition_dense),
    ("direct_logit_attribution", dla_loops),
    ("path_ablation", _path_ablation()),
    ("composition_null", _composition_null()),
    ("path_ablation", _path_ablation(bootstrap=True)),
    ("find_induction_circuit", circuit_by_ablation),
]

test_grade_fails_a_wrong_answer_and_says_why, test_every_exercise_has_a_mutant, test_grade_accepts_a_correct_variant = \
    check_tests(checks, EXERCISES, MUTANTS, VARIANTS)




# ---------------------------------------------------------------- the investigation


@pytest.mark.parametrize("finding", WELL_FORMED_WRONG_FINDINGS, ids=lambda f: f.__name__)
def test_the_visible_check_says_nothing_about_whether_a_finding_is_right(finding, capsys):
    checks.check_find_induction_circuit(as_learner(finding))
    out = capsys.readouterr().out
    assert out.startswith("✓") and "well-formed" in out


def test_the_solution_earns_the_investigation_and_the_reference_is_refused_under_grading(monkeypatch, capsys):
    checks.grade_find_induction_circuit(as_learner(ref.find_induction_circuit))
    assert "as the held-out measurements find it" in capsys.readouterr().out
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(CheckFailed, match="reference"):
        checks.grade_find_induction_circuit(ref.find_induction_circuit)
    with pytest.raises(CheckFailed, match="uses the course's reference"):
        checks.grade_find_induction_circuit(as_learner(lambda model: ref.find_induction_circuit(model)))


def test_the_investigations_truth_has_a_margin_on_both_models():
    """Every head is clearly in, clearly out, or in between, with a gap of at least 0.1
    between the in-between heads and either bound, so no fresh sample flips the verdict."""
    from mechlab.induction_heads import investigation as inv

    for name in inv.GRADED_MODELS:
        m = inv.measure(name)
        for kind in inv.KINDS:
            s = m.score(kind).flatten()
            near = s[(abs(s - inv.MUST[kind]) < 0.1) | (abs(s - inv.MUST_NOT[kind]) < 0.1)]
            assert near.size == 0, (name, kind, near)
            assert m.heads(kind, inv.MUST[kind]), (name, kind, "no clear head")
        assert inv.share_undone(name, m.heads("induction", inv.MUST["induction"])) >= inv.CARRIES + 0.15
        assert inv.share_undone(name, m.heads("previous_token", inv.MUST["previous_token"])) >= inv.CARRIES + 0.15
