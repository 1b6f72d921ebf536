"""Checks for chapter 3 (activation patching): `check_x` visible, `grade_x` hidden.

Every exercise is compared with `mechlab.activation_patching.reference` on inputs
built here: IOI prompts from the course corpus (`mechlab.activation_patching.plots.ioi_batch`), random
token tensors, and models: the course model `corpus_2l` (on the CPU, with the
normalised metric) and, in the hidden tests, untrained models of other shapes (three
layers of two heads with MLPs; two layers of three heads, attention only), so code that hard-codes this model's sizes, or
assumes MLPs, fails. Patching results are compared entry by entry (atol 1e-4,
rtol 1e-3: each entry is a forward pass of its own); attribution patching with
atol 1e-4, rtol 1e-3 as well.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from mechlab.activation_patching import investigation, plots as patching
from mechlab.checks import (
    call_learner, Case, check_and_grade, CheckFailed, compare_function, compare_on_models, course_model,
    guard_model, other_models, passed, seeded, Truth,
)
from mechlab.pristine import Parameter as _Parameter, Tensor as _Tensor, type_ as _type
from mechlab.activation_patching import reference as ref

TOLERANCE = dict(atol=1e-4, rtol=1e-3)

# ---------------------------------------------------------------- models and prompts


@functools.cache
def _setup(which: int, n: int, seed: int):
    """(description, model, clean tokens, corrupted tokens, clean cache, corrupted cache, metric, correct,
    distractor) for model `which` (0: the course model, 1-2: untrained ones)."""
    desc, model = (("course model corpus_2l", course_model("corpus_2l")), *other_models(21))[which]
    batch = patching.ioi_batch(n, seed=seed, template=seed % 6)
    clean = batch.tokens
    corrupted = ref.replace_subject(clean, batch.distractor, batch.correct)
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean)
        corrupted_logits, corrupted_cache = model.run_with_cache(corrupted)
    # the normalised metric everywhere: an untrained model's logit difference barely moves
    # (by 0.002 to 0.04), and normalising puts every model's effects on the same scale
    metric = functools.partial(
        ref.patching_metric, correct=batch.correct, distractor=batch.distractor,
        clean_diff=ref.logit_diff(clean_logits, batch.correct, batch.distractor).item(),
        corrupted_diff=ref.logit_diff(corrupted_logits, batch.correct, batch.distractor).item())
    return (f"{desc}, {n} IOI prompts of template {seed % 6}", model, clean, corrupted, clean_cache,
            corrupted_cache, metric)


def _settings(hidden: bool) -> list[tuple[int, int, int]]:
    return [(0, 8, 0), (1, 4, 1), (2, 4, 2)] if hidden else [(0, 4, 0)]


def _patch_cases(hidden: bool, other_shape: bool = False) -> list[Case]:
    """The course model's cases (and, in the hidden test, the untrained ones'); `other_shape`
    adds the 3-layer untrained model to the visible check, where it costs under a second."""
    cases = []
    for which, n, seed in _settings(hidden) + ([(1, 4, 1)] if other_shape and not hidden else []):
        desc, model, _, corrupted, clean_cache, _, metric = _setup(which, n, seed)
        cases.append(Case(desc, (model, corrupted, clean_cache, metric)))
    return cases


# ---------------------------------------------------------------- 1. replace_subject


def _subject_cases(specs: Sequence[tuple[int, int, int]]) -> list[Case]:
    """Random rows in which the subject occurs 1-3 times at random places."""
    cases = []
    for seed, batch, pos in specs:
        g = seeded(seed)
        tokens = torch.randint(10, 272, (batch, pos), generator=g)
        subject = torch.randint(3, 6, (batch,), generator=g)
        io = torch.randint(6, 9, (batch,), generator=g)
        for row in range(batch):
            k = int(torch.randint(1, 4, (1,), generator=g))
            where = torch.randperm(pos, generator=g)[:k]
            tokens[row, where] = subject[row]
            tokens[row, int(torch.randint(0, pos, (1,), generator=g))] = io[row] if k < pos else tokens[row, 0]
            tokens[row, where] = subject[row]
        cases.append(Case(f"random rows, seed={seed}, batch={batch}, pos={pos}", (tokens, subject, io)))
    return cases


def _ioi_subject_case(n: int, seed: int) -> Case:
    b = patching.ioi_batch(n, seed=seed, template=seed % 6)
    return Case(f"{n} IOI prompts of template {seed % 6}", (b.tokens, b.distractor, b.correct))


def _replace_first(tokens, subject, io):
    out = tokens.clone()
    first = (tokens == subject[:, None]).int().argmax(dim=1)
    out[torch.arange(len(out)), first] = io
    return out


_SUBJECT_MISTAKES = [
    ("replace the *last* occurrence of the subject (S2), not the first.", _replace_first),
    ("replace only the last occurrence; the first mention stays.",
     lambda t, s, io: torch.where(t == s[:, None], io[:, None], t)),
    ("replace the subject only; leave the indirect object's own mentions as they are.",
     lambda t, s, io: torch.where(t == io[:, None], s[:, None], ref.replace_subject(t, s, io))),
]


def _leaves_input_alone(fn: Callable) -> None:
    case = _ioi_subject_case(4, 0)
    tokens = case.args[0].clone()
    call_learner(fn, "replace_subject", case.description, (tokens, *case.args[1:]))
    if not torch.equal(tokens, case.args[0]):
        raise CheckFailed("replace_subject changed the `tokens` it was given; return a new tensor "
                          "(start from tokens.clone()) and keep the clean prompts clean")


def _check_replace_subject(fn: Callable, hidden: bool) -> None:
    _leaves_input_alone(fn)
    ioi, random = ([(16, 1), (8, 3)], [(1, 6, 12), (2, 1, 3), (3, 20, 30)]) if hidden else ([(4, 0)], [(0, 3, 8)])
    cases = [*(_ioi_subject_case(n, seed) for n, seed in ioi), *_subject_cases(random)]
    compare_function(fn, ref.replace_subject, cases, name="replace_subject", mistakes=_SUBJECT_MISTAKES)


check_replace_subject, grade_replace_subject = check_and_grade("replace_subject", _check_replace_subject)


# ---------------------------------------------------------------- 2. logit_diff


def _logit_cases(specs: Sequence[tuple[int, int, int, int]]) -> list[Case]:
    cases = []
    for seed, batch, pos, vocab in specs:
        g = seeded(seed)
        logits = torch.randn(batch, pos, vocab, generator=g) * 3
        correct = torch.randint(0, vocab, (batch,), generator=g)
        distractor = (correct + torch.randint(1, vocab, (batch,), generator=g)) % vocab
        cases.append(Case(f"random logits, seed={seed}, batch={batch}, pos={pos}, d_vocab={vocab}",
                          (logits, correct, distractor)))
    return cases


_LOGIT_HAND = Case("hand case: last-position logits [[1, 3, 0], [2, 0, 5]], correct [1, 2], distractor [0, 0] -> 2.5",
                   (torch.tensor([[[9.0, 9, 9], [1, 3, 0]], [[9.0, 9, 9], [2, 0, 5]]]),
                    torch.tensor([1, 2]), torch.tensor([0, 0])))

_LOGIT_MISTAKES = [
    ("use the last position (logits[:, -1]): that is where the answer is predicted.",
     lambda lg, c, d: (lg[:, 0].gather(1, c[:, None]) - lg[:, 0].gather(1, d[:, None])).mean()),
    ("correct minus distractor, not the other way round.", lambda lg, c, d: -ref.logit_diff(lg, c, d)),
    ("average over the batch (mean), not sum.", lambda lg, c, d: ref.logit_diff(lg, c, d) * lg.shape[0]),
    ("pick one entry per row (last[rows, correct]); last[:, correct] is a [batch, batch] matrix.",
     lambda lg, c, d: (lg[:, -1][:, c] - lg[:, -1][:, d]).mean()),
]


def _check_logit_diff(fn: Callable, hidden: bool) -> None:
    specs = [(1, 8, 15, 272), (2, 1, 1, 2), (3, 32, 5, 50)] if hidden else [(0, 3, 4, 10)]
    compare_function(fn, ref.logit_diff, [_LOGIT_HAND, *_logit_cases(specs)], name="logit_diff",
                     mistakes=_LOGIT_MISTAKES)


check_logit_diff, grade_logit_diff = check_and_grade("logit_diff", _check_logit_diff)


# ---------------------------------------------------------------- 3. patching_metric


def _metric_cases(specs: Sequence[tuple[int, float, float]]) -> list[Case]:
    out = []
    for (seed, clean, corrupted), base in zip(specs, _logit_cases([(s, 4, 6, 20) for s, _, _ in specs])):
        out.append(Case(f"{base.description}, clean_diff={clean}, corrupted_diff={corrupted}",
                        (*base.args, clean, corrupted)))
    return out


_METRIC_MISTAKES = [
    ("0 should mean 'as corrupted' and 1 'as clean': subtract corrupted_diff, divide by clean_diff - corrupted_diff.",
     lambda lg, c, d, cl, co: (cl - ref.logit_diff(lg, c, d)) / (cl - co)),
    ("subtract corrupted_diff before dividing.", lambda lg, c, d, cl, co: ref.logit_diff(lg, c, d) / (cl - co)),
    ("divide by clean_diff - corrupted_diff, not by clean_diff.",
     lambda lg, c, d, cl, co: (ref.logit_diff(lg, c, d) - co) / cl),
]


def _keeps_gradient(fn: Callable) -> None:
    logits, correct, distractor, clean, corrupted = _metric_cases([(7, 3.0, -2.0)])[0].args
    logits = logits.clone().requires_grad_(True)
    out = call_learner(fn, "patching_metric", "logits that require grad", (logits, correct, distractor, clean, corrupted))
    if _type(out) not in (_Tensor, _Parameter) or not out.requires_grad:
        raise CheckFailed("patching_metric must stay differentiable: return a tensor built from `logits` "
                          "(no .item() or float() inside), so exercise 9 can take its gradient")


def _check_patching_metric(fn: Callable, hidden: bool) -> None:
    if hidden:  # the hidden test asks for the gradient before the values, the visible check after them
        _keeps_gradient(fn)
    specs = [(1, 5.5, -5.0), (2, 0.5, 0.25), (3, -1.0, 2.0)] if hidden else [(0, 4.0, -3.0)]
    compare_function(fn, ref.patching_metric, _metric_cases(specs), name="patching_metric",
                     mistakes=_METRIC_MISTAKES)
    if not hidden:
        _keeps_gradient(fn)


check_patching_metric, grade_patching_metric = check_and_grade("patching_metric", _check_patching_metric)


# ---------------------------------------------------------------- 4-7. patching grids


def _wrong_resid(hook_name: str, cumulative: bool = False) -> Callable:
    def wrong(model, corrupted, clean_cache, metric):
        out = torch.zeros(model.cfg.n_layers, corrupted.shape[1])
        with torch.no_grad():
            for layer in range(model.cfg.n_layers):
                name = hook_name.format(layer=layer)
                for pos in range(corrupted.shape[1]):
                    def patch(resid, hook, pos=pos, name=name):
                        resid = resid.clone()
                        where = slice(0, pos + 1) if cumulative else pos
                        resid[:, where] = clean_cache[name][:, where]
                        return resid
                    out[layer, pos] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])).item()
        return out
    return wrong


_RESID_MISTAKES = [
    ("patch blocks.{layer}.hook_resid_pre, the input of each block (you patched its output, resid_post).",
     _wrong_resid("blocks.{layer}.hook_resid_post")),
    ("patch one position at a time (resid[:, pos]), not every position up to it.",
     _wrong_resid("blocks.{layer}.hook_resid_pre", cumulative=True)),
]


def _check_patch_residual_stream(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.patch_residual_stream, _patch_cases(hidden, other_shape=True), "patch_residual_stream",
                      _RESID_MISTAKES, **TOLERANCE)


check_patch_residual_stream, grade_patch_residual_stream = \
    check_and_grade("patch_residual_stream", _check_patch_residual_stream)


def _heads_at_last_position(model, corrupted, clean_cache, metric):
    return ref.patch_head_outputs_by_position(model, corrupted, clean_cache, metric)[..., -1]


_HEAD_MISTAKES = [
    ("patch the head's z at every position (z[:, :, head]), not only the last one.", _heads_at_last_position),
]


def _check_patch_head_outputs(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.patch_head_outputs, _patch_cases(hidden), "patch_head_outputs", _HEAD_MISTAKES,
                      **TOLERANCE)


check_patch_head_outputs, grade_patch_head_outputs = check_and_grade("patch_head_outputs", _check_patch_head_outputs)


def _by_position_all_heads(model, corrupted, clean_cache, metric):
    """Every head of the layer patched at that position (z[:, pos]), repeated for each head."""
    n_pos, n_heads = corrupted.shape[1], model.cfg.n_heads
    out = torch.zeros(model.cfg.n_layers, n_heads, n_pos)
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_z"
            for pos in range(n_pos):
                def patch(z, hook, pos=pos):
                    z = z.clone()
                    z[:, pos] = clean_cache[name][:, pos]
                    return z
                out[layer, :, pos] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])).item()
    return out


_BY_POSITION_MISTAKES = [
    ("patch one head at one position, z[:, pos, head]; z[:, pos] patches every head of the layer at once.",
     _by_position_all_heads),
]


def _check_patch_head_outputs_by_position(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.patch_head_outputs_by_position, _patch_cases(hidden),
                      "patch_head_outputs_by_position", _BY_POSITION_MISTAKES, **TOLERANCE)


check_patch_head_outputs_by_position, grade_patch_head_outputs_by_position = \
    check_and_grade("patch_head_outputs_by_position", _check_patch_head_outputs_by_position)


def _pattern_query_dim(model, corrupted, clean_cache, metric):
    """Patterns patched along the query dimension (pattern[:, :, head]) instead of the head one."""
    out = ref.patch_pattern_and_value(model, corrupted, clean_cache, metric)
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_pattern"
            for head in range(model.cfg.n_heads):
                def patch(p, hook, head=head, name=name):
                    p = p.clone()
                    p[:, :, head] = clean_cache[name][:, :, head]
                    return p
                out[0, layer, head] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])).item()
    return out


_PATTERN_MISTAKES = [
    ("row 0 is the pattern patch, row 1 the value patch.",
     lambda *args: ref.patch_pattern_and_value(*args).flip(0)),
    ("hook_pattern is [batch, head, query, key]: the head is the second dimension (pattern[:, head]).",
     _pattern_query_dim),
]


def _check_patch_pattern_and_value(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.patch_pattern_and_value, _patch_cases(hidden), "patch_pattern_and_value",
                      _PATTERN_MISTAKES, **TOLERANCE)


check_patch_pattern_and_value, grade_patch_pattern_and_value = \
    check_and_grade("patch_pattern_and_value", _check_patch_pattern_and_value)


# ---------------------------------------------------------------- 8. path_patch


def _explains_alias_keys(fn: Callable, name: str) -> Callable:
    """`fn`, whose KeyError for a hook name says why: inside a hook, `hook.name` is the
    TransformerLens 4.x bridge's canonical name ('blocks.0.attn.o.hook_in' for
    'blocks.0.attn.hook_z'), so activations saved under `hook.name` are not found under
    the name that was hooked."""
    if not callable(fn):
        return fn

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyError as e:
            key = e.args[0] if e.args else None
            if _type(key) is str and "hook_" in key:
                raise CheckFailed(
                    f"{name} raised KeyError: {key!r}. Inside a hook, `hook.name` is the bridge's canonical name, "
                    "not the alias you hooked (for 'blocks.0.attn.hook_z' it is 'blocks.0.attn.o.hook_in'), so what "
                    "you saved under hook.name is not found under the name you look up. Key what you save by the "
                    "name you hooked: bind it, e.g. functools.partial(save, name=name).") from None
            raise

    return call



def _path_cases(hidden: bool) -> list[Case]:
    cases = []
    for which, n, seed in _settings(hidden) + ([] if hidden else [(1, 4, 1)]):
        desc, model, _, corrupted, clean_cache, corrupted_cache, metric = _setup(which, n, seed)
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        plans = [((0, n_heads - 1), [(1, h) for h in range(n_heads)], "q"), ((0, 0), [(1, 0)], "k")]
        if not hidden and which == 1:  # visible: one path past a layer of heads in between, on the 3-layer model
            plans = [((0, 0), [(n_layers - 1, h) for h in range(n_heads)], "q")]
        if hidden:
            plans += [((0, 1), [(n_layers - 1, 0), (1, n_heads - 1)], "v"),
                      ((n_layers - 2, 0), [(n_layers - 1, h) for h in range(n_heads)], "q"),
                      ((0, 0), [(n_layers - 1, h) for h in range(n_heads)], "k")]  # heads in between, if 3 layers
        for sender, receivers, component in plans:
            cases.append(Case(f"{desc}, sender {sender}, receivers {receivers}, component {component!r}",
                              (model, corrupted, clean_cache, corrupted_cache, sender, receivers, component, metric)))
    return cases


def _path_without_freezing(freeze_mlps: bool, freeze_heads: bool) -> Callable:
    def wrong(model, corrupted, clean_cache, corrupted_cache, sender, receivers, component, metric):
        s_layer, s_head = sender
        if component not in ("q", "k", "v") or any(layer <= s_layer for layer, _ in receivers):
            raise ValueError("invalid path")
        layers = sorted({layer for layer, _ in receivers})
        saved = {}

        def sender_only(z, hook, layer):
            z = (corrupted_cache[f"blocks.{layer}.attn.hook_z"] if freeze_heads else z).clone()
            if layer == s_layer:
                z[:, :, s_head] = clean_cache[f"blocks.{layer}.attn.hook_z"][:, :, s_head]
            return z

        hooks = [(f"blocks.{l}.attn.hook_z", functools.partial(sender_only, layer=l)) for l in range(model.cfg.n_layers)]
        if freeze_mlps and not model.cfg.attn_only:
            hooks += [(f"blocks.{l}.hook_mlp_out", lambda o, hook, l=l: corrupted_cache[f"blocks.{l}.hook_mlp_out"])
                      for l in range(model.cfg.n_layers)]
        hooks += [(f"blocks.{l}.attn.hook_{component}", lambda a, hook, l=l: saved.__setitem__(l, a.clone()))
                  for l in layers]

        def patch(a, hook, layer):
            a = a.clone()
            for r_layer, r_head in receivers:
                if r_layer == layer:
                    a[:, :, r_head] = saved[layer][:, :, r_head]
            return a

        with torch.no_grad():
            model.run_with_hooks(corrupted, fwd_hooks=hooks)
            logits = model.run_with_hooks(corrupted, fwd_hooks=[
                (f"blocks.{l}.attn.hook_{component}", functools.partial(patch, layer=l)) for l in layers])
            return metric(logits).item()
    return wrong


_PATH_MISTAKES = [
    ("in step 1, freeze every MLP output (blocks.{layer}.hook_mlp_out) at its corrupted value too: this exercise's "
     "path is one edge, so the sender's change must not reach the receivers through the MLPs (Wang et al.'s looser "
     "version lets MLPs recompute; the chapter compares the two after this exercise).", _path_without_freezing(False, True)),
    ("in step 1, freeze every other head at its corrupted value (hook_z from corrupted_cache), or the sender's change "
     "also reaches the receivers through heads in between.", _path_without_freezing(True, False)),
]


def _rejects_bad_paths(fn: Callable) -> None:
    desc, model, _, corrupted, clean_cache, corrupted_cache, metric = _setup(0, 4, 0)
    call = guard_model(fn, "path_patch")
    for what, sender, receivers, component in [
            ("component 'o'", (0, 0), [(1, 0)], "o"),
            ("a receiver in the sender's layer", (1, 0), [(1, 1)], "q"),
            ("a receiver before the sender", (1, 0), [(0, 1)], "q")]:
        try:
            call(model, corrupted, clean_cache, corrupted_cache, sender, receivers, component, metric)
        except ValueError:
            continue
        except CheckFailed:
            raise
        except NotImplementedError:
            raise CheckFailed("path_patch is not implemented yet (it raised NotImplementedError)") from None
        except Exception as e:  # noqa: BLE001  the wrong kind of error
            raise CheckFailed(f"path_patch with {what} raised {_type(e).__name__}: {e}; raise a ValueError") from None
        raise CheckFailed(f"path_patch with {what} returned a result; raise a ValueError")


def _check_path_patch(fn: Callable, hidden: bool) -> None:
    fn = _explains_alias_keys(fn, "path_patch")
    _rejects_bad_paths(fn)  # visible too: a ValueError costs nothing to check
    compare_on_models(fn, ref.path_patch, _path_cases(hidden), "path_patch", _PATH_MISTAKES, **TOLERANCE)


check_path_patch, grade_path_patch = check_and_grade("path_patch", _check_path_patch)


# ---------------------------------------------------------------- 9. attribution_patch_heads


def _attribution_cases(hidden: bool) -> list[Case]:
    cases = []
    for which, n, seed in _settings(hidden):
        desc, model, clean, corrupted, _, _, metric = _setup(which, n, seed)
        cases.append(Case(desc, (model, clean, corrupted, metric)))
    return cases


def _attribution_variant(kind: str) -> Callable:
    def wrong(model, clean, corrupted, metric):
        names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean, names_filter=names)
        acts, grads = {}, {}
        run_on = clean if kind == "clean_gradient" else corrupted
        fwd = [(n, lambda z, hook, n=n: acts.__setitem__(n, z.detach())) for n in names]
        bwd = [(n, lambda g, hook, n=n: grads.__setitem__(n, g.detach())) for n in names]
        with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            metric(model(run_on)).backward()
        model.zero_grad(set_to_none=True)
        rows = []
        for n in names:
            corr = acts[n] if kind != "clean_gradient" else model.run_with_cache(corrupted, names_filter=[n])[1][n]
            diff = {"reversed": corr - clean_cache[n], "gradient_only": torch.ones_like(corr)}.get(kind, clean_cache[n] - corr)
            rows.append((diff * grads[n]).sum(dim=(0, 1, 3)))
        return torch.stack(rows).detach().cpu()
    return wrong


_ATTRIBUTION_MISTAKES = [
    ("the difference is clean minus corrupted (z_clean - z_corrupted): the patch moves from corrupted to clean.",
     _attribution_variant("reversed")),
    ("take the gradient on the corrupted run: the patch starts from there.", _attribution_variant("clean_gradient")),
    ("multiply the gradient by the activation difference, z_clean - z_corrupted.",
     _attribution_variant("gradient_only")),
]


def _check_attribution_patch_heads(fn: Callable, hidden: bool) -> None:
    fn = _explains_alias_keys(fn, "attribution_patch_heads")
    compare_on_models(fn, ref.attribution_patch_heads, _attribution_cases(hidden), "attribution_patch_heads",
                      _ATTRIBUTION_MISTAKES, **TOLERANCE)


check_attribution_patch_heads, grade_attribution_patch_heads = \
    check_and_grade("attribution_patch_heads", _check_attribution_patch_heads)


# ---------------------------------------------------------------- 10. noise_head_outputs


def _noise_cases(hidden: bool) -> list[Case]:
    cases = []
    for which, n, seed in _settings(hidden):
        desc, model, clean, _, _, corrupted_cache, metric = _setup(which, n, seed)
        cases.append(Case(desc, (model, clean, corrupted_cache, metric)))
    return cases


def _noise_layer_at_once(model, clean, corrupted_cache, metric):
    """Every head of the layer corrupted at once (z = corrupted z), repeated for each head."""
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_z"
            logits = model.run_with_hooks(clean, fwd_hooks=[(name, lambda z, hook, name=name: corrupted_cache[name].clone())])
            out[layer] = metric(logits).item()
    return out


_NOISE_MISTAKES = [
    ("report the metric itself (1: unaffected, 0: as corrupted), not how much it dropped.",
     lambda *args: 1 - ref.noise_head_outputs(*args)),
    ("corrupt one head at a time (z[:, :, head]); replacing the whole z corrupts every head of the layer.",
     _noise_layer_at_once),
    # noising is patching the other way round: exercise 5's last-position mistake, from the corrupted cache
    ("corrupt the head's z at every position (z[:, :, head]), not only the last one.", _heads_at_last_position),
]


def _check_noise_head_outputs(fn: Callable, hidden: bool) -> None:
    compare_on_models(fn, ref.noise_head_outputs, _noise_cases(hidden), "noise_head_outputs", _NOISE_MISTAKES,
                      **TOLERANCE)


check_noise_head_outputs, grade_noise_head_outputs = check_and_grade("noise_head_outputs", _check_noise_head_outputs)


# ---------------------------------------------------------------- 11. the investigation: fact recall


def _investigation_settings(hidden: bool) -> list[tuple[int, int]]:
    """(template, seed) of the fact-recall batches: every template of the city fact in the hidden test."""
    return [(0, 1), (1, 2), (2, 3)] if hidden else [(0, 0)]


@functools.cache
def _measuring_model():
    """A copy of the course model that no learner function is ever given: what a learner's
    function does to its model (hooks it leaves, weights it edits) cannot touch the measurement."""
    from mechlab import zoo

    return zoo.load("corpus_2l")


def _check_investigate_fact_recall(fn: Callable, hidden: bool) -> None:
    """The learner's function is handed a batch whose twins change only the last name
    (`investigation.HANDED`); its circuit is measured on the same template's batches that
    change both names and only the first (`investigation.GRADED`), every template in the
    hidden test."""
    model = course_model("corpus_2l")
    call = guard_model(fn, "investigate_fact_recall")
    kept = []
    for template, seed in _investigation_settings(hidden):
        batch = investigation.fact_batch(template, seed, investigation.HANDED)
        metric, _, _ = investigation.fact_metric(model, batch)  # the learner's own copy of the metric
        answer = call_learner(call, "investigate_fact_recall", batch.describe(),
                              (model, batch.clean.clone(), batch.corrupted.clone(), metric))
        try:
            circuit = investigation.normalise_circuit(answer, model, batch.clean.shape[1])
        except CheckFailed as e:
            raise CheckFailed(f"investigate_fact_recall({batch.describe()}): {e}") from None
        if not circuit:
            raise CheckFailed(f"investigate_fact_recall({batch.describe()}) returned no component")
        if not hidden:
            passed(f"investigate_fact_recall returned a well-formed circuit of {len(circuit)} components (at most "
                   f"{investigation.BUDGET}) on {batch.describe()}; the hidden test measures how much of the "
                   "recall it carries")
            return
        graded = {vary: investigation.fact_batch(template, seed, vary) for vary in investigation.GRADED}
        # metric and cache made afresh, on a model no learner function was given
        scores = {vary: investigation.faithfulness(_measuring_model(), b, circuit) for vary, b in graded.items()}
        failed = [vary for vary in investigation.GRADED if not scores[vary] >= investigation.BAR]
        if failed:
            names = ", ".join(map(str, circuit))
            why = (f" With only the first name corrupted it keeps {scores['first']:.2f}: you were handed prompts "
                   "whose twins change only the last name, so on them every route from the first name is clean "
                   "in both runs, and patching on them cannot see it." if "first" in failed else "")
            raise CheckFailed(
                f"on {graded[failed[0]].describe()}, your circuit ({names}), chosen on {batch.describe()}, keeps "
                f"{scores[failed[0]]:.2f} of the clean logit difference when every other head and MLP output, at "
                f"every position, takes its corrupted value; the bar is {investigation.BAR}. Something that carries "
                f"the person's city is missing from it.{why}")
        kept += [f"{scores[vary]:.2f}" for vary in investigation.GRADED]
    passed(f"investigate_fact_recall: your circuits keep {', '.join(kept)} of the clean logit difference on the "
           f"{len(kept)} graded batches (bar {investigation.BAR})")


# off limits inside the learner's function: faithfulness and the hidden settings (fact batches and
# the metric stay: the function is handed them)
check_investigate_fact_recall, grade_investigate_fact_recall = check_and_grade(
    "investigate_fact_recall", _check_investigate_fact_recall,
    Truth(modules=(investigation,), public=("FactBatch", "fact_batch", "fact_metric")))
