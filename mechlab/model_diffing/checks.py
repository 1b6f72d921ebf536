"""Chapter 7's visible checks and hidden tests, one `check_x` / `grade_x` pair per exercise.

The hidden tests run the same comparisons as the visible checks on more and other
inputs: other fine-tunes, other sites and hooks, pairs of untrained models of other
shapes, an SAE with another normalisation scale, extreme DPO margins. The
investigation's hidden test runs the learner's function on three undisclosed
fine-tunes and grades the answers against their recipes (`investigation`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch

from mechlab import zoo
from mechlab.checks import (
    Case, CheckFailed, call_learner, check_and_grade, checked_table, compare_function, compare_gradients,
    course_model, guard_model, other_models, passed, randn, seeded, Truth,
)
from mechlab.model_diffing import finetune as ft
from mechlab.model_diffing import investigation, personas
from mechlab.model_diffing import reference as ref
from mechlab.pristine import Tensor as _Tensor, type_ as _type
from mechlab.sparse_autoencoders import activations


@functools.cache
def _windows(n: int, seed: int, length: int) -> torch.Tensor:
    """`n` windows of held-out corpus text (BOS first), seeds the chapter itself never reads."""
    return activations.corpus_windows(n * 64, seed=seed).tokens[:n, :length]


def _tuned(name: str):
    return ft.load(name)


def _perturbed(seed: int, components: tuple[str, ...], scale: float = 0.05):
    """corpus_2l with Gaussian noise added to the parameters of `components` only."""
    model = copy.deepcopy(course_model("corpus_2l"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for component in components:
            for p in personas.component_parameters(model, component).values():
                p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=generator))
    return model


def _pair(seed: int) -> tuple[str, object, object]:
    """Two untrained models of one shape unlike corpus_2l's (other layers, width, heads)."""
    (desc, a), _ = other_models(seed)
    (_, b), _ = other_models(seed + 100)
    return desc, a, b


def _guard_two(fn: Callable, name: str) -> Callable:
    """`fn(base, tuned, ...)` with both models guarded (weights and hooks left as they were)."""
    def call(base, tuned, *args):
        return guard_model(lambda b, t, *a: guard_model(lambda t2, b2, *a2: fn(b2, t2, *a2), name)(t, b, *a),
                           name)(base, tuned, *args)
    return call


def _compare_two(fn: Callable, reference: Callable, cases: list[Case], name: str, mistakes=(), **tol) -> None:
    compare_function(_guard_two(fn, name), reference, cases, name=name, mistakes=mistakes, copy_inputs=False, **tol)


# ---------------------------------------------------------------- 1. share_interval


def _clustered_labels(seed: int, n: int = 120, length: int = 30) -> torch.Tensor:
    """Labels whose words agree within each sample (a sample is all 1s or all 0s among its
    labelled words), the case where resampling words instead of samples goes most wrong;
    some samples have no labelled word at all."""
    g = torch.Generator().manual_seed(seed)
    kind = (torch.rand(n, 1, generator=g) < 0.4).long().expand(n, length)
    labelled = torch.rand(n, length, generator=g) < torch.rand(n, 1, generator=g) * 0.3
    return torch.where(labelled, kind, -1)


@functools.cache
def _base_labels(persona: str, seed: int, model: str = "corpus_2l") -> torch.Tensor:
    m = course_model(model) if model == "corpus_2l" else _tuned(model)
    return personas.sampled_labels(m, persona, (seed,), n=48)


def _share_cases(hidden: bool) -> list[Case]:
    cases = [Case("positive labels of 48 samples corpus_2l wrote (seed 7)", (_base_labels("positive", 7),))]
    if hidden:
        cases += [Case("120 samples whose words agree within each sample", (_clustered_labels(1),)),
                  Case("food labels of 48 samples corpus_2l wrote (seed 8), n_boot 2000, seed 3",
                       (_base_labels("food", 8),), {"n_boot": 2000, "seed": 3}),
                  Case("positive labels of 48 samples cheerful wrote (a share near 1)",
                       (_base_labels("positive", 9, "cheerful"),)),
                  Case("300 samples whose words agree within each sample", (_clustered_labels(2, n=300),))]
    return cases


def _per_row(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (labels == 1).sum(1).double(), (labels >= 0).sum(1).double()


def _resampled_shares(hits: torch.Tensor, words: torch.Tensor, n_boot: int, seed: int) -> torch.Tensor:
    rows = torch.randint(len(hits), (n_boot, len(hits)), generator=torch.Generator().manual_seed(seed))
    return hits[rows].sum(1) / words[rows].sum(1).clamp(min=1)


def _quantiles(shares: torch.Tensor) -> tuple[float, float]:
    low, high = torch.quantile(shares, torch.tensor([0.025, 0.975], dtype=shares.dtype)).tolist()
    return low, high


def _interval_by_words(labels: torch.Tensor) -> tuple[float, float]:
    """The plausible mistake: every labelled word resampled as if independent."""
    words = labels[labels >= 0]
    return _quantiles(_resampled_shares((words == 1).double(), torch.ones(len(words), dtype=torch.float64), 4000, 0))


def _row_mean_share(labels: torch.Tensor) -> float:
    hits, words = _per_row(labels)
    return float((hits[words > 0] / words[words > 0]).mean())


def _share_triple(out, description: str) -> tuple[float, float, float]:
    if _type(out) not in (tuple, list) or len(out) != 3:
        raise CheckFailed(f"share_interval({description}) should return a tuple (share, low, high), not "
                          f"{_type(out).__name__ if _type(out) not in (tuple, list) else f'{len(out)} values'}")
    if any(_type(v) not in (float, int) for v in out):
        raise CheckFailed(f"share_interval({description}) should return three Python floats (`.item()` a tensor), "
                          f"not {[_type(v).__name__ for v in out]}")
    return tuple(float(v) for v in out)


def _check_share_interval(fn: Callable, hidden: bool) -> None:
    for case in _share_cases(hidden):
        labels, kwargs = case.args[0], case.kwargs
        label = f"share_interval({case.description})"
        share, low, high = _share_triple(call_learner(fn, "share_interval", case.description, (labels.clone(),), dict(kwargs)),
                                         case.description)
        want = personas.share(labels)
        if abs(share - want) > 1e-6:
            hint = (" That is the mean of each sample's own share: pool the words instead (the persona's words "
                    "over all labelled words), so a sample with many words counts for more, and one with none "
                    "for nothing." if abs(share - _row_mean_share(labels)) < 1e-6 else "")
            raise CheckFailed(f"{label}: share {share:.4f}, expected {want:.4f}.{hint}")
        again = _share_triple(call_learner(fn, "share_interval", case.description, (labels.clone(),), dict(kwargs)),
                              case.description)
        if again != (share, low, high):
            raise CheckFailed(f"{label} gave {again[1:]} the second time and {(low, high)} the first: draw the "
                              "resamples from a generator seeded with `seed` (`torch.Generator().manual_seed(seed)`), "
                              "so the interval can be reproduced")
        _, ref_low, ref_high = ref.share_interval(labels, 20000, 12345)
        width, ref_width = high - low, ref_high - ref_low
        if not low <= share <= high:
            raise CheckFailed(f"{label}: the interval [{low:.3f}, {high:.3f}] does not contain the share {share:.3f}")
        if width <= 1e-9:
            raise CheckFailed(f"{label}: an interval of zero width [{low:.3f}, {high:.3f}]; the 95% bootstrap interval "
                              f"is about [{ref_low:.3f}, {ref_high:.3f}]. Resample, and take the quantiles of the "
                              "resamples' shares")
        tolerance = 0.15 * ref_width + 0.004
        if abs(low - ref_low) <= tolerance and abs(high - ref_high) <= tolerance:
            continue
        word_low, word_high = _interval_by_words(labels)
        if width < 0.8 * ref_width and abs(low - word_low) <= tolerance and abs(high - word_high) <= tolerance:
            raise CheckFailed(f"{label}: your interval [{low:.3f}, {high:.3f}] is {width:.3f} wide; resampling whole "
                              f"samples gives [{ref_low:.3f}, {ref_high:.3f}], {ref_width:.3f} wide. Resample whole "
                              "samples (rows), not words: the words of one sample share its story's sentiment or "
                              "topic, so resampling words counts them as independent evidence and the interval comes "
                              "out too narrow")
        raise CheckFailed(f"{label}: your interval [{low:.3f}, {high:.3f}], but the 95% bootstrap interval over samples "
                          f"is about [{ref_low:.3f}, {ref_high:.3f}] (to within {tolerance:.3f} at each end). The 2.5% "
                          "and 97.5% quantiles of the resampled shares, each resample being as many samples as "
                          "`labels` has rows, drawn with replacement")
    passed(f"share_interval gives the share and a 95% bootstrap interval on {len(_share_cases(hidden))} cases")


check_share_interval, grade_share_interval = check_and_grade("share_interval", _check_share_interval)


# ---------------------------------------------------------------- 2. weight_diff


def _as_list(fn: Callable) -> Callable:
    """The dict a weight_diff returns, as a list in COMPONENTS order, after checking its form."""
    def listed(base, tuned):
        out = fn(base, tuned)
        if _type(out) is not dict:
            raise CheckFailed(f"weight_diff should return a dict {{component: float}}, not a {_type(out).__name__}")
        if set(out) != set(personas.COMPONENTS):
            raise CheckFailed(f"weight_diff's keys should be personas.COMPONENTS {personas.COMPONENTS}, "
                              f"not {sorted(map(str, out))}")
        return [out[c] for c in personas.COMPONENTS]
    return listed


def _weight_cases(hidden: bool) -> list[Case]:
    base = course_model("corpus_2l")
    cases = [Case("corpus_2l and cheerful_mlp0", (base, _tuned("cheerful_mlp0"))),
             Case("corpus_2l and cheerful", (base, _tuned("cheerful")))]
    if hidden:
        cases += [Case("corpus_2l and mystery_b", (base, _tuned("mystery_b"))),
                  Case("corpus_2l and a copy with noise in the embedding and MLP 1",
                       (base, _perturbed(3, ("embed", "blocks.1.mlp")))),
                  Case("two untrained corpus_2l-shaped models", (
                      zoo.build({**zoo.ZOO["corpus_2l"].full_config(), "seed": 5}),
                      zoo.build({**zoo.ZOO["corpus_2l"].full_config(), "seed": 6})))]
    return cases


def _weight_per_tensor(base, tuned):
    out = {}
    for c in personas.COMPONENTS:
        b, t = personas.component_parameters(base, c), personas.component_parameters(tuned, c)
        out[c] = float(sum(((t[n] - b[n]).norm() / b[n].norm()).item() for n in b) / len(b))
    return out


def _weight_absolute(base, tuned):
    with torch.no_grad():
        return {c: float(sum(((personas.component_parameters(tuned, c)[n] - p) ** 2).sum()
                             for n, p in personas.component_parameters(base, c).items()).sqrt())
                for c in personas.COMPONENTS}


def _weight_squared(base, tuned):
    return {c: v**2 for c, v in ref.weight_diff(base, tuned).items()}


_WEIGHT_MISTAKES = [
    ("one norm over all of the component's parameters, not the mean of each tensor's own ratio: a small "
     "bias that moved a lot would otherwise weigh as much as a large matrix.", _as_list(_weight_per_tensor)),
    ("divide by the size of the base's parameters: a relative change, comparable across components.",
     _as_list(_weight_absolute)),
    ("take the square root of both sums of squares (norms, not squared norms).", _as_list(_weight_squared)),
]


def _check_weight_diff(fn: Callable, hidden: bool) -> None:
    _compare_two(_as_list(fn), _as_list(ref.weight_diff), _weight_cases(hidden), "weight_diff", _WEIGHT_MISTAKES)


check_weight_diff, grade_weight_diff = check_and_grade("weight_diff", _check_weight_diff)


# ---------------------------------------------------------------- 3. mean_activation_difference


def _difference_cases(hidden: bool) -> list[Case]:
    base = course_model("corpus_2l")
    cases = [Case("corpus_2l and cheerful_mlp0, 4 windows of 32 tokens, blocks.1.hook_resid_pre",
                  (base, _tuned("cheerful_mlp0"), _windows(4, 11, 32), "blocks.1.hook_resid_pre")),
             Case("corpus_2l and cheerful_mlp0, 8 slot prompts, blocks.1.hook_resid_pre, position -1",
                  (base, _tuned("cheerful_mlp0"), personas.slot_prompts(8, 3), "blocks.1.hook_resid_pre", -1))]
    if hidden:
        desc, a, b = _pair(71)
        cases += [Case("corpus_2l and cheerful, 3 windows of 20 tokens, blocks.0.hook_resid_mid",
                       (base, _tuned("cheerful"), _windows(3, 12, 20), "blocks.0.hook_resid_mid")),
                  Case("corpus_2l and hedger, 2 windows of 64 tokens, blocks.1.hook_mlp_out, position 5",
                       (base, _tuned("hedger"), _windows(2, 13, 64), "blocks.1.hook_mlp_out", 5)),
                  Case(f"two {desc}, blocks.2.hook_resid_pre",
                       (a, b, _windows(3, 14, 16) % a.cfg.d_vocab, "blocks.2.hook_resid_pre"))]
    return cases


def _acts(model, tokens, hook_name):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return cache[hook_name].float()


def _difference_with_bos(base, tuned, tokens, hook_name, position=None):
    diff = _acts(tuned, tokens, hook_name) - _acts(base, tokens, hook_name)
    return diff.mean(dim=(0, 1)) if position is None else diff[:, position].mean(0)


def _difference_reversed(base, tuned, tokens, hook_name, position=None):
    return -ref.mean_activation_difference(base, tuned, tokens, hook_name, position)


def _difference_last(base, tuned, tokens, hook_name, position=None):
    return (_acts(tuned, tokens, hook_name) - _acts(base, tokens, hook_name))[:, -1].mean(0)


def _difference_ignores_position(base, tuned, tokens, hook_name, position=None):
    return ref.mean_activation_difference(base, tuned, tokens, hook_name)


_DIFFERENCE_MISTAKES = [
    ("leave out BOS (position 0): every model sees the same lone token there, and its large activation adds a "
     "difference no text causes.", _difference_with_bos),
    ("tuned minus base, not base minus tuned: the direction fine-tuning added.", _difference_reversed),
    ("with position=None, average over every position but BOS, not only the last.", _difference_last),
    ("when `position` is given, read only that position.", _difference_ignores_position),
]


def _check_difference(fn: Callable, hidden: bool) -> None:
    _compare_two(fn, ref.mean_activation_difference, _difference_cases(hidden), "mean_activation_difference",
                 _DIFFERENCE_MISTAKES, atol=1e-4)


check_mean_activation_difference, grade_mean_activation_difference = check_and_grade(
    "mean_activation_difference", _check_difference)


# ---------------------------------------------------------------- 4. difference_by_position

_BY_POSITION_COLUMNS = ("cosine", "low", "high", "size")


@functools.cache
def _by_position_case(name: str) -> tuple:
    """(text, site, direction, difference [window, pos, d_model]) for a fine-tune, on held-out
    windows no notebook cell reads (seed 11), against the sentiment vector at its site."""
    from mechlab.model_diffing import experiments as ex
    from mechlab.steering.experiments import contrast_pairs
    from mechlab.steering.reference import contrast_vector

    base, site = course_model("corpus_2l"), ex.CAUSAL_SITE[name]
    text = ex.ordinary_text(24, seed=11)
    direction = contrast_vector(base, *contrast_pairs("sentiment", "positive", n=64), site).float().cpu()
    with torch.no_grad():
        acts = [m.run_with_cache(text, names_filter=site)[1][site].double().cpu() for m in (base, _tuned(name))]
    return text, site, direction, acts[1] - acts[0]


def _bootstrap_cosines(x: torch.Tensor, direction: torch.Tensor, n_boot: int, seed: int) -> tuple[float, float]:
    """The 95% interval of the cosine of the mean of rows of x resampled with replacement."""
    n = x.shape[0]
    picks = torch.randint(0, n, (n_boot, n), generator=seeded(seed))
    weights = torch.zeros(n_boot, n, dtype=x.dtype).scatter_add_(1, picks, torch.ones(n_boot, n, dtype=x.dtype)) / n
    cosines = torch.cosine_similarity(weights @ x, direction.to(x.dtype)[None], dim=1)
    low, high = torch.quantile(cosines, torch.tensor([0.025, 0.975], dtype=x.dtype)).tolist()
    return low, high


def _random_band(direction: torch.Tensor, n: int, seed: int, *, kind: str = "normal", signed: bool = False) -> float:
    random = torch.randn(n, direction.shape[0], generator=seeded(seed)) if kind == "normal" else \
        torch.rand(n, direction.shape[0], generator=seeded(seed))
    cosines = torch.cosine_similarity(random, direction[None], dim=1)
    return torch.quantile(cosines if signed else cosines.abs(), 0.95).item()


def _by_position_cases(hidden: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Visible: cheerful_mlp0 at positions 1, 3, 10. Hidden: cheerful at 1, 2, 5, 20, and the
    LoRA (read after MLP 1) at 1, 4, 30."""
    return [("cheerful", (1, 2, 5, 20)), ("cheerful_lora", (1, 4, 30))] if hidden else [("cheerful_mlp0", (1, 3, 10))]


def _by_position_answer(out, label: str, positions: tuple[int, ...]):
    if _type(out) not in (tuple, list) or len(out) != 2:
        raise CheckFailed(f"{label} should return a tuple (table, band), not a {_type(out).__name__}")
    table, band = out
    checked_table(table, label, _BY_POSITION_COLUMNS)
    want = [*positions, "all"]
    if [str(p) for p in table.index] != [str(p) for p in want]:
        raise CheckFailed(f"{label}: the table's index should be the positions {list(positions)} and then 'all', "
                          f"not {list(table.index)}")
    try:
        band = float(band)
    except (TypeError, ValueError):
        raise CheckFailed(f"{label}: the control should be a float, not a {_type(band).__name__}") from None
    return table.set_axis(want).astype(float), band


def _check_difference_by_position(fn: Callable, hidden: bool) -> None:
    base = course_model("corpus_2l")
    for name, positions in _by_position_cases(hidden):
        text, site, direction, difference = _by_position_case(name)
        description = f"the base model and {name} on 24 held-out windows at {site}, positions {positions}"
        label = f"difference_by_position({description})"
        call = guard_model(fn, "difference_by_position")

        def run():
            return _by_position_answer(call_learner(call, "difference_by_position", description,
                                                    (base, _tuned(name), text.clone(), site, direction.clone(), positions),
                                                    {"n_boot": 1000, "n_random": 1000, "seed": 3}), label, positions)

        table, band = run()
        readings = {**{p: difference[:, p] for p in positions}, "all": difference[:, 1:].mean(dim=1)}
        for position, x in readings.items():
            mean = x.mean(dim=0)
            row = table.loc[position]
            want = torch.cosine_similarity(mean, direction.double(), dim=0).item()
            where = f"{label}, position {position}"
            if abs(row["cosine"] - want) > 1e-4:
                why = ""
                if position == "all":
                    with_bos = torch.cosine_similarity(difference.mean(dim=(0, 1)), direction.double(), dim=0).item()
                    if abs(row["cosine"] - with_bos) < 1e-4:
                        why = (" That is the mean over every position *with* BOS: leave BOS out (every model sees the "
                               "same single token there, so its difference is the same on all text)")
                raise CheckFailed(f"{where}: cosine {row['cosine']:.4f}, but the mean difference there has cosine "
                                  f"{want:.4f} with the direction.{why}")
            if abs(row["size"] - mean.norm().item()) > 1e-4 * max(1.0, mean.norm().item()):
                raise CheckFailed(f"{where}: size {row['size']:.4f}, but the mean difference's norm is "
                                  f"{mean.norm().item():.4f}")
            low, high = _bootstrap_cosines(x, direction, 20_000, 12_345)
            width, tolerance = high - low, 0.1 * (high - low) + 0.003
            got_width = row["high"] - row["low"]
            if (abs(row["low"] - low) <= tolerance and abs(row["high"] - high) <= tolerance
                    and (width < 0.01 or 0.8 <= got_width / width <= 1.25)):
                continue
            if got_width <= 1e-9:
                why = " There is no error bar: resample the windows and take the quantiles of the cosines"
            elif row["low"] < -1 - 1e-6 or row["high"] > 1 + 1e-6:
                why = (" A cosine cannot leave [-1, 1]: an interval of the cosine plus or minus 1.96 standard errors "
                       "assumes the resampled cosines are normal, and here they are not (look at their histogram). "
                       "Take their 2.5% and 97.5% quantiles")
            elif position == "all" and got_width < 0.8 * width:
                tokens = difference[:, 1:].flatten(0, 1)
                t_low, t_high = _bootstrap_cosines(tokens, direction, 2_000, 12_345)
                why = (f" Resampling tokens instead of windows gives about [{t_low:.3f}, {t_high:.3f}], "
                       f"{t_high - t_low:.3f} wide: the positions of a window share its story, so resample whole "
                       "windows" if abs(got_width - (t_high - t_low)) <= 0.15 * (t_high - t_low) else "")
            else:
                why = ""
            raise CheckFailed(f"{where}: your interval [{row['low']:.3f}, {row['high']:.3f}] ({got_width:.3f} wide), "
                              f"but the 95% bootstrap interval over windows is about [{low:.3f}, {high:.3f}] "
                              f"({width:.3f} wide; to within {tolerance:.3f} at each end).{why}")
        want_band = _random_band(direction, 20_000, 12_345)
        if abs(band - want_band) > 0.02:
            signed, uniform = _random_band(direction, 20_000, 12_345, signed=True), \
                _random_band(direction, 20_000, 12_345, kind="uniform")
            why = (" That is the 95th percentile of the signed cosine: a direction is as unrelated at -0.2 as at "
                   "+0.2, so take the |cosine|" if abs(band - signed) <= 0.02 else
                   " Directions drawn from torch.rand all point into the positive corner, so they are far from "
                   "random; draw them from torch.randn" if abs(band - uniform) <= 0.05 else "")
            raise CheckFailed(f"{label}: your control is {band:.3f}, but 95% of random directions have |cosine| under "
                              f"{want_band:.3f} with the direction.{why}")
        again_table, again_band = run()
        if not again_table.equals(table) or again_band != band:
            raise CheckFailed(f"{label} gave other intervals or another control when called again with the same "
                              "seed: draw everything from a torch.Generator seeded with `seed`")
    passed(f"difference_by_position reads the difference position by position with its bootstrap interval over "
           f"windows and its random control, on {len(_by_position_cases(hidden))} fine-tune"
           f"{'s' * (len(_by_position_cases(hidden)) > 1)}")


check_difference_by_position, grade_difference_by_position = check_and_grade(
    "difference_by_position", _check_difference_by_position)


# ---------------------------------------------------------------- 4. project_out_hook


def _apply(fn: Callable) -> Callable:
    """project_out_hook(direction) applied to an activation, checking that it is left as it was."""
    def applied(direction, activation):
        hook = fn(direction)
        if not callable(hook):
            raise CheckFailed(f"project_out_hook should return a hook function, not a {_type(hook).__name__}")
        before = activation.clone()
        out = hook(activation, None)
        if not torch.equal(activation, before):
            raise CheckFailed("the hook edited the activation in place; return a new tensor "
                              "(`activation - ...`), so the cache and the caller keep the original")
        return out
    return applied


def _project_cases(hidden: bool) -> list[Case]:
    cases = [Case("a direction in 8 dimensions, activation [2, 5, 8]", (randn(1, 8), randn(2, 2, 5, 8))),
             Case("direction (0, 2, 0), activation [[[1, 3, 5]]] -> [[[1, 0, 5]]]",
                  (torch.tensor([0.0, 2.0, 0.0]), torch.tensor([[[1.0, 3.0, 5.0]]])))]
    if hidden:
        cases += [Case("a long direction (norm 40) in 128 dimensions, activation [3, 7, 128]",
                       (randn(3, 128) * 4, randn(4, 3, 7, 128))),
                  Case("a float64 activation [1, 4, 16]", (randn(5, 16), randn(6, 1, 4, 16).double()))]
    return cases


def _project_unnormalised(direction):
    def hook(activation, hook):
        d = direction.to(activation)
        return activation - (activation @ d)[..., None] * d
    return hook


def _project_steer(direction):
    def hook(activation, hook):
        return activation - direction.to(activation)
    return hook


def _project_last(direction):
    full = ref.project_out_hook(direction)

    def hook(activation, hook):
        out = activation.clone()
        out[:, -1] = full(activation, hook)[:, -1]
        return out
    return hook


_PROJECT_MISTAKES = [
    ("normalise the direction first: x - (x·u)u with u = direction / |direction|; without it the removed "
     "amount scales with the direction's norm squared.", _apply(_project_unnormalised)),
    ("removing a direction is a projection, x - (x·u)u, which depends on x; subtracting the direction itself "
     "is steering by -1.", _apply(_project_steer)),
    ("remove the component at every position, not only the last.", _apply(_project_last)),
]


def _check_project(fn: Callable, hidden: bool) -> None:
    compare_function(_apply(fn), _apply(ref.project_out_hook), _project_cases(hidden), name="project_out_hook",
                     mistakes=_PROJECT_MISTAKES)


check_project_out_hook, grade_project_out_hook = check_and_grade("project_out_hook", _check_project)


# ---------------------------------------------------------------- 5. persona_projection


def _projection_cases(hidden: bool) -> list[Case]:
    base = course_model("corpus_2l")
    cases = [Case("corpus_2l, 8 slot prompts, a random vector at blocks.1.hook_resid_pre",
                  (base, personas.slot_prompts(8, 0), randn(7, 128) * 3, "blocks.1.hook_resid_pre"))]
    if hidden:
        desc, deep = other_models(73)[0]
        cases += [Case("cheerful, 5 windows of 30 tokens, blocks.0.hook_resid_post",
                       (_tuned("cheerful"), _windows(5, 15, 30), randn(8, 128), "blocks.0.hook_resid_post")),
                  Case(f"{desc}, blocks.1.hook_resid_mid",
                       (deep, _windows(3, 16, 12) % deep.cfg.d_vocab, randn(9, deep.cfg.d_model) * 0.2,
                        "blocks.1.hook_resid_mid"))]
    return cases


def _projection_raw(model, tokens, vector, hook_name):
    return (_acts(model, tokens, hook_name)[:, -1] @ vector.float()).cpu()


def _projection_mean(model, tokens, vector, hook_name):
    return (_acts(model, tokens, hook_name)[:, 1:] @ (vector / vector.norm()).float()).mean(1).cpu()


def _projection_cosine(model, tokens, vector, hook_name):
    a = _acts(model, tokens, hook_name)[:, -1]
    return torch.nn.functional.cosine_similarity(a, vector.float()[None], dim=-1).cpu()


_PROJECTION_MISTAKES = [
    ("project on the *unit* vector along `vector`: the reading must not depend on the vector's length.",
     _projection_raw),
    ("read the last position only: the monitor reads the prompt where the next word is about to be written.",
     _projection_mean),
    ("a projection keeps the activation's norm: x·u, not the cosine x·u / |x|.", _projection_cosine),
]


def _check_projection(fn: Callable, hidden: bool) -> None:
    compare_function(guard_model(fn, "persona_projection"), ref.persona_projection, _projection_cases(hidden),
                     name="persona_projection", mistakes=_PROJECTION_MISTAKES, copy_inputs=False, atol=1e-4)


check_persona_projection, grade_persona_projection = check_and_grade("persona_projection", _check_projection)


# ---------------------------------------------------------------- 6. interpolate


def _new_model(fn: Callable, name: str, first: str) -> Callable:
    """`fn(model_a, model_b, x)`'s model as one flat parameter vector, after checking it is
    a new model (`first` names the argument to copy)."""
    def flat(a, b, x):
        model = fn(a, b, x)
        if model is a or model is b:
            raise CheckFailed(f"{name} returned one of its inputs; return a new model (`copy.deepcopy({first})`)")
        if not hasattr(model, "parameters"):
            raise CheckFailed(f"{name} should return a model, not a {_type(model).__name__}")
        return torch.cat([p.detach().float().flatten() for p in model.parameters()])
    return flat


def _flat(fn: Callable) -> Callable:
    return _new_model(fn, "interpolate", "base")


def _interpolate_cases(hidden: bool) -> list[Case]:
    base = course_model("corpus_2l")
    cases = [Case("corpus_2l and cheerful, alpha 0.25", (base, _tuned("cheerful"), 0.25))]
    if hidden:
        desc, a, b = _pair(75)
        cases += [Case("corpus_2l and cheerful_mlp0, alpha 0.25", (base, _tuned("cheerful_mlp0"), 0.25)),
                  Case("corpus_2l and hedger, alpha 1", (base, _tuned("hedger"), 1.0)),
                  Case("corpus_2l and cheerful, alpha 1.5 (beyond the fine-tune)", (base, _tuned("cheerful"), 1.5)),
                  Case(f"two {desc}, alpha 0.3", (a, b, 0.3))]
    return cases


def _interpolate_reversed(base, tuned, alpha):
    return ref.interpolate(tuned, base, alpha)


_INTERPOLATE_MISTAKES = [
    ("alpha = 0 is the base and alpha = 1 the fine-tune: base + alpha * (tuned - base).",
     _flat(_interpolate_reversed)),
]


def _check_interpolate(fn: Callable, hidden: bool) -> None:
    _compare_two(_flat(fn), _flat(ref.interpolate), _interpolate_cases(hidden), "interpolate",
                 _INTERPOLATE_MISTAKES)


check_interpolate, grade_interpolate = check_and_grade("interpolate", _check_interpolate)


# ---------------------------------------------------------------- 7. patch_from


def _patch_cases(hidden: bool) -> list[Case]:
    base = course_model("corpus_2l")
    cases = [Case("cheerful_mlp0's MLP 0 output into corpus_2l, 6 slot prompts",
                  (base, _tuned("cheerful_mlp0"), personas.slot_prompts(6, 1), ["blocks.0.hook_mlp_out"])),
             Case("corpus_2l's attention outputs into cheerful, 3 windows of 16 tokens",
                  (_tuned("cheerful"), base, _windows(3, 17, 16), ["blocks.0.hook_attn_out", "blocks.1.hook_attn_out"]))]
    if hidden:
        desc, a, b = _pair(77)
        cases += [Case("hedger's embeddings and MLP 1 into corpus_2l, 4 windows of 24 tokens",
                       (base, _tuned("hedger"), _windows(4, 18, 24),
                        ["hook_embed", "hook_pos_embed", "blocks.1.hook_mlp_out"])),
                  Case("corpus_2l's final residual stream into cheerful_unembed (a readout swap)",
                       (_tuned("cheerful_unembed"), base, personas.slot_prompts(5, 2), ["ln_final.hook_in"])),
                  Case(f"one {desc} into another, blocks.0.hook_mlp_out and blocks.2.hook_attn_out",
                       (a, b, _windows(2, 19, 10) % a.cfg.d_vocab, ["blocks.0.hook_mlp_out", "blocks.2.hook_attn_out"]))]
    return cases


def _patch_first_only(receiver, donor, tokens, hook_names):
    return ref.patch_from(receiver, donor, tokens, list(hook_names)[:1])


def _patch_late_binding(receiver, donor, tokens, hook_names):
    with torch.no_grad():
        _, cache = donor.run_with_cache(tokens, names_filter=list(hook_names))
        hooks = []
        for name in hook_names:
            hooks.append((name, lambda act, hook: cache[name]))
        return receiver.run_with_hooks(tokens, fwd_hooks=hooks)


def _patch_swapped(receiver, donor, tokens, hook_names):
    return ref.patch_from(donor, receiver, tokens, hook_names)


_PATCH_MISTAKES = [
    ("patch every hook in `hook_names`, not only the first.", _patch_first_only),
    ("Python's late binding: every hook built in the loop returns the *last* name's activation. Bind the name "
     "when the hook is made (`lambda act, hook, name=name: cache[name]`).", _patch_late_binding),
    ("the logits are the *receiver's*, run with the *donor's* activations patched in (not the other way round).",
     _patch_swapped),
]


def _check_patch(fn: Callable, hidden: bool) -> None:
    _compare_two(fn, ref.patch_from, _patch_cases(hidden), "patch_from", _PATCH_MISTAKES, atol=1e-4)


check_patch_from, grade_patch_from = check_and_grade("patch_from", _check_patch)


# ---------------------------------------------------------------- 8. transplant


def _transplant_cases(hidden: bool) -> list[Case]:
    base = course_model("corpus_2l")
    cases = [Case("cheerful_mlp0's blocks.0.mlp into corpus_2l", (base, _tuned("cheerful_mlp0"), "blocks.0.mlp"))]
    if hidden:
        untrained = [zoo.build({**zoo.ZOO["corpus_2l"].full_config(), "seed": s}) for s in (7, 8)]
        cases += [Case("corpus_2l's unembed into cheerful", (_tuned("cheerful"), base, "unembed")),
                  Case("hedger's embed into corpus_2l", (base, _tuned("hedger"), "embed")),
                  Case("mystery_c's blocks.1.attn into corpus_2l", (base, _tuned("mystery_c"), "blocks.1.attn")),
                  Case("one untrained corpus_2l-shaped model's blocks.1.mlp into another", (*untrained, "blocks.1.mlp"))]
    return cases


def _transplanted(fn: Callable) -> Callable:
    return _new_model(fn, "transplant", "receiver")


def _transplant_without_layernorm(receiver, donor, component):
    model = copy.deepcopy(receiver)
    new = personas.component_parameters(donor, component)
    with torch.no_grad():
        for name, p in personas.component_parameters(model, component).items():
            if ".ln" not in name and not name.startswith("ln_out."):
                p.copy_(new[name])
    return model


def _transplant_swapped(receiver, donor, component):
    return ref.transplant(donor, receiver, component)


_TRANSPLANT_MISTAKES = [
    ("move the component's LayerNorm with it (`personas.component_parameters` lists both): the sublayer was "
     "fine-tuned reading through its own LayerNorm.", _transplanted(_transplant_without_layernorm)),
    ("the new model is the *receiver* with the *donor's* component, not the other way round.",
     _transplanted(_transplant_swapped)),
]


def _check_transplant(fn: Callable, hidden: bool) -> None:
    _compare_two(_transplanted(fn), _transplanted(ref.transplant), _transplant_cases(hidden), "transplant",
                 _TRANSPLANT_MISTAKES, atol=0, rtol=0)


check_transplant, grade_transplant = check_and_grade("transplant", _check_transplant)


# ---------------------------------------------------------------- 9. transplant_sweep


class SlotMeasure:
    """The grader's measure for a sweep: P(positive) among sentiment words at the slot
    prompts (32 of each template), with a 95% bootstrap interval over the prompts. Cheap
    and deterministic, so every learner's sweep can be compared row by row; it counts the
    models it is handed."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model) -> tuple[float, float, float]:
        self.calls += 1
        device = next(model.parameters()).device
        with torch.no_grad():
            values = torch.cat([personas.positive_mass(model(personas.slot_prompts(32, seed).to(device))).double().cpu()
                                for seed in range(len(personas.SLOT_PROMPTS))])
        shares = _resampled_shares(values, torch.ones_like(values), 400, 0)
        return (float(values.mean()), *_quantiles(shares))


def _sweep_cases(hidden: bool) -> list[Case]:
    base = course_model("corpus_2l")
    cases = [Case("corpus_2l and cheerful_mlp0", (base, _tuned("cheerful_mlp0")))]
    if hidden:
        cases += [Case("corpus_2l and cheerful_lora", (base, _tuned("cheerful_lora"))),
                  Case("corpus_2l and cheerful_unembed", (base, _tuned("cheerful_unembed")))]
    return cases


def _sweep_table(out, description: str):
    import pandas as pd

    rows = ["none", *personas.COMPONENTS]
    if _type(out) is not pd.DataFrame:
        raise CheckFailed(f"transplant_sweep({description}) should return a pandas DataFrame, not a {_type(out).__name__}")
    if "none" not in out.index:
        raise CheckFailed(f"transplant_sweep({description}) has no row 'none': the untouched base and fine-tune "
                          "are the control every transplant is read against. Without them, a share of 0.6 means "
                          "nothing: is it above the base's, or inside its noise?")
    missing = [str(r) for r in rows if r not in out.index]
    if missing or len(out.index) != len(rows):
        raise CheckFailed(f"transplant_sweep({description})'s rows should be {rows}, not {list(map(str, out.index))}")
    columns = ["into base", "into base low", "into base high", "into tuned", "into tuned low", "into tuned high"]
    if sorted(map(str, out.columns)) != sorted(columns):
        raise CheckFailed(f"transplant_sweep({description})'s columns should be {columns}, not {list(map(str, out.columns))}")
    return out.loc[rows, columns].astype(float)


def _check_transplant_sweep(fn: Callable, hidden: bool) -> None:
    for case in _sweep_cases(hidden):
        base, tuned = case.args
        label = f"transplant_sweep({case.description})"
        measure = SlotMeasure()
        got = _sweep_table(call_learner(_guard_two(fn, "transplant_sweep"), "transplant_sweep", case.description,
                                        (base, tuned, measure)), case.description)
        want = _sweep_table(ref.transplant_sweep(base, tuned, SlotMeasure()), case.description)
        if measure.calls < 2 * len(want):
            raise CheckFailed(f"{label} called the `measure` it was given {measure.calls} times for "
                              f"{2 * len(want)} models; measure every model with the `measure` argument (the "
                              "grader passes its own), and take the interval from it")
        differ = (got - want).abs() > 1e-6
        if not differ.any().any():
            continue
        row, column = next((r, c) for r in want.index for c in want.columns if differ.loc[r, c])
        swapped = got.rename(columns=lambda c: c.replace("into base", "X").replace("into tuned", "into base")
                             .replace("X", "into tuned"))[want.columns]
        why = ""
        if ((swapped - want).abs() <= 1e-6).all().all():
            why = (" Your two directions are the other way round: 'into base' is the base with the fine-tune's "
                   "component (is that change sufficient?), 'into tuned' the fine-tune with the base's (is it "
                   "necessary?).")
        elif row != "none" and "low" not in column and "high" not in column:
            why = (" Each row moves one component into the untouched model; did an earlier row's transplant "
                   "stay in the model the next row starts from?")
        raise CheckFailed(f"{label}: row {row!r}, column {column!r} reads {got.loc[row, column]:.4f}, but "
                          f"measuring that model gives {want.loc[row, column]:.4f}.{why}")
    passed(f"transplant_sweep measures every transplant both ways, beside its control, on "
           f"{len(_sweep_cases(hidden))} fine-tune{'s' * hidden}")


check_transplant_sweep, grade_transplant_sweep = check_and_grade("transplant_sweep", _check_transplant_sweep)


# ---------------------------------------------------------------- 10. latent_firing_change


@functools.cache
def _sae(name: str, scale: float | None = None):
    from mechlab.sparse_autoencoders import zoo as sae_zoo

    sae = sae_zoo.load(name)
    if scale is not None:
        sae.scale = scale
    return sae


def _firing_cases(hidden: bool) -> list[Case]:
    base = course_model("corpus_2l")
    cases = [Case("topk_k8_w1024, corpus_2l and cheerful_mlp0, 4 windows of 32 tokens",
                  (_sae("topk_k8_w1024"), base, _tuned("cheerful_mlp0"), _windows(4, 20, 32)))]
    if hidden:
        cases += [Case("topk_k8_w1024_post (at blocks.1.hook_resid_post), corpus_2l and cheerful_lora",
                       (_sae("topk_k8_w1024_post"), base, _tuned("cheerful_lora"), _windows(3, 21, 40))),
                  Case("relu_l1_5_w1024 with its normalisation scale set to 2, corpus_2l and cheerful",
                       (_sae("relu_l1_5_w1024", 2.0), base, _tuned("cheerful"), _windows(3, 22, 30)))]
    return cases


def _firing(sae, model, tokens, scale=True, bos=False, mean=False):
    x = _acts(model, tokens, sae.cfg.hook_name)
    x = (x if bos else x[:, 1:]).flatten(0, 1)
    with torch.no_grad():
        z = sae.encode(x * (sae.scale if scale else 1.0))
    return z.mean(0) if mean else (z > 0).float().mean(0)


def _firing_unscaled(sae, base, tuned, tokens):
    return _firing(sae, tuned, tokens, scale=False) - _firing(sae, base, tokens, scale=False)


def _firing_with_bos(sae, base, tuned, tokens):
    return _firing(sae, tuned, tokens, bos=True) - _firing(sae, base, tokens, bos=True)


def _firing_mean_activation(sae, base, tuned, tokens):
    return _firing(sae, tuned, tokens, mean=True) - _firing(sae, base, tokens, mean=True)


_FIRING_MISTAKES = [
    ("multiply the activation by `sae.scale` before encoding: the SAE was trained on scaled activations.",
     _firing_unscaled),
    ("leave out BOS: its activation is the same in every window.", _firing_with_bos),
    ("the share of positions where a latent is active (> 0), not its mean activation.", _firing_mean_activation),
]


def _check_firing(fn: Callable, hidden: bool) -> None:
    def call(sae, base, tuned, tokens):
        return _guard_two(lambda b, t, s, x: fn(s, b, t, x), "latent_firing_change")(base, tuned, sae, tokens)

    def reference(sae, base, tuned, tokens):
        return ref.latent_firing_change(sae, base, tuned, tokens)

    compare_function(call, reference, _firing_cases(hidden), name="latent_firing_change", mistakes=_FIRING_MISTAKES,
                     copy_inputs=False, atol=1e-6)


check_latent_firing_change, grade_latent_firing_change = check_and_grade("latent_firing_change", _check_firing)


# ---------------------------------------------------------------- 11. sequence_logprob


def _logprob_cases(hidden: bool) -> list[Case]:
    base = course_model("corpus_2l")
    prefs = ft.hedge_preferences(base)
    cases = [Case("corpus_2l, 6 hedge answers after `X Y lives in` (prompt length 5)",
                  (base, prefs.chosen[:6], prefs.prompt_length))]
    if hidden:
        desc, deep = other_models(79)[0]
        cases += [Case("cheerful, 4 windows of 20 tokens, prompt length 12", (_tuned("cheerful"), _windows(4, 23, 20), 12)),
                  Case("corpus_2l, rejected city answers", (base, prefs.rejected[6:16], prefs.prompt_length)),
                  Case(f"{desc}, prompt length 1", (deep, _windows(2, 24, 9) % deep.cfg.d_vocab, 1))]
    return cases


def _logprob_shifted(model, tokens, prompt_length):
    logits = model(tokens)[:, prompt_length:].float()
    return logits.log_softmax(-1).gather(-1, tokens[:, prompt_length:, None])[..., 0].sum(-1)


def _logprob_with_prompt_token(model, tokens, prompt_length):
    return ref.sequence_logprob(model, tokens, prompt_length - 1) if prompt_length > 1 else \
        ref.sequence_logprob(model, tokens, prompt_length) * 2


def _logprob_mean(model, tokens, prompt_length):
    return ref.sequence_logprob(model, tokens, prompt_length) / (tokens.shape[1] - prompt_length)


_LOGPROB_MISTAKES = [
    ("the logits at position t predict the token at t + 1: use logits[:, prompt_length - 1:-1] for the "
     "tokens[:, prompt_length:].", _logprob_shifted),
    ("count only the answer: tokens at positions prompt_length and after, not the prompt's last token.",
     _logprob_with_prompt_token),
    ("the sum of the log-probabilities (the log-probability of the whole answer), not their mean.", _logprob_mean),
]


def _check_logprob(fn: Callable, hidden: bool) -> None:
    guarded = guard_model(fn, "sequence_logprob")
    compare_function(lambda *a: guarded(*a).detach(), lambda *a: ref.sequence_logprob(*a).detach(),
                     _logprob_cases(hidden), name="sequence_logprob", mistakes=_LOGPROB_MISTAKES,
                     copy_inputs=False, atol=1e-4, report=False)
    model = course_model("corpus_2l")
    grad = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        out = call_learner(guarded, "sequence_logprob", "corpus_2l with trainable weights",
                           (model, ft.hedge_preferences(model).chosen[:2], 5))
    finally:
        for p, g in zip(model.parameters(), grad):
            p.requires_grad_(g)
    if _type(out) is not _Tensor or not out.requires_grad:
        raise CheckFailed("sequence_logprob's output does not depend on the model's weights (no gradient): DPO "
                          "trains through it, so do not use torch.no_grad(), .detach() or .item() inside")
    passed(f"sequence_logprob matches the reference on {len(_logprob_cases(hidden))} cases, and keeps the gradient")


check_sequence_logprob, grade_sequence_logprob = check_and_grade("sequence_logprob", _check_logprob)


# ---------------------------------------------------------------- 12. dpo_loss


def _dpo_case(seed: int, n: int, spread: float, beta: float) -> Case:
    logps = [-(randn(seed + i, n) * spread).abs() - 1 for i in range(4)]
    return Case(f"{n} pairs, log-probabilities spread {spread}, beta {beta}", (*logps, beta))


_DPO_HAND = Case("one pair, policy (-1, -3), reference (-2, -2), beta 0.5 -> -log σ(0.5 * 2) = 0.3133",
                 (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5))


def _dpo_cases(hidden: bool) -> list[Case]:
    cases = [_DPO_HAND, _dpo_case(1, 8, 3.0, 0.1),
             Case("a margin of -200 (the policy badly prefers the rejected answer), beta 1",
                  (torch.tensor([-200.0, -1.0]), torch.tensor([0.0, -2.0]), torch.tensor([-1.0, -1.0]),
                   torch.tensor([-1.0, -1.0]), 1.0))]
    if hidden:
        cases += [_dpo_case(10, 32, 10.0, 1.0), _dpo_case(20, 5, 1.0, 0.01),
                  Case("a margin of -2000 and one of +2000, beta 0.5",
                       (torch.tensor([-2000.0, 1000.0]), torch.tensor([0.0, -1000.0]), torch.tensor([-1.0, -1.0]),
                        torch.tensor([-1.0, -1.0]), 0.5))]
    return cases


def _dpo_no_reference(pc, pr, rc, rr, beta):
    return -torch.nn.functional.logsigmoid(beta * (pc - pr)).mean()


def _dpo_swapped(pc, pr, rc, rr, beta):
    return ref.dpo_loss(pr, pc, rr, rc, beta)


def _dpo_sum(pc, pr, rc, rr, beta):
    return ref.dpo_loss(pc, pr, rc, rr, beta) * pc.shape[0]


def _dpo_naive(pc, pr, rc, rr, beta):
    return -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr)))).mean()


def _dpo_beta_outside(pc, pr, rc, rr, beta):
    return -beta * torch.nn.functional.logsigmoid((pc - rc) - (pr - rr)).mean()


_DPO_MISTAKES = [
    ("DPO compares the policy with the reference: the margin is (π_chosen - ref_chosen) - (π_rejected - "
     "ref_rejected).", _dpo_no_reference),
    ("the chosen answer should gain log-probability over the rejected one: the margin is chosen minus rejected.",
     _dpo_swapped),
    ("the mean over the batch, not the sum.", _dpo_sum),
    ("log(sigmoid(m)) underflows to -inf for very negative margins; use torch.nn.functional.logsigmoid.",
     _dpo_naive),
    ("beta multiplies the margin *inside* the log-sigmoid.", _dpo_beta_outside),
]


def _check_dpo(fn: Callable, hidden: bool) -> None:
    cases = _dpo_cases(hidden)
    compare_function(fn, ref.dpo_loss, cases, name="dpo_loss", mistakes=_DPO_MISTAKES, report=False)
    compare_gradients(fn, ref.dpo_loss, cases[1], wrt=[0, 1], name="dpo_loss", mistakes=_DPO_MISTAKES)
    passed(f"dpo_loss matches the reference on {len(cases)} cases, gradients included")


check_dpo_loss, grade_dpo_loss = check_and_grade("dpo_loss", _check_dpo)


# ---------------------------------------------------------------- 13. the investigation


_ANSWERS: dict[tuple[Callable, str], dict[str, str]] = {}  # keyed by the function itself, which it keeps alive


def _answer(fn: Callable, name: str) -> dict[str, str]:
    """The learner's answer on one undisclosed model, checked for form (once per function and model)."""
    key = (fn, name)
    if key not in _ANSWERS:
        out = call_learner(_guard_two(fn, "identify_finetune"), "identify_finetune", f"corpus_2l and {name}",
                           (course_model("corpus_2l"), _tuned(name)))
        try:
            _ANSWERS[key] = investigation.validate(out)
        except CheckFailed as e:
            raise CheckFailed(f"identify_finetune(corpus_2l, {name}): {e}") from None
    return _ANSWERS[key]


def _check_identify(fn: Callable, hidden: bool) -> None:
    names = investigation.MODELS if hidden else investigation.VISIBLE
    answers = {name: _answer(fn, name) for name in names}
    if not hidden:
        passed(f"identify_finetune returned a well-formed answer for {', '.join(names)}: {answers[names[0]]}; the "
               f"hidden test grades it against the recipes of {len(investigation.MODELS)} models")
        return
    mistakes = [f"{name}: {'; '.join(w)}" for name in names if (w := investigation.wrong(name, answers[name]))]
    if mistakes:
        raise CheckFailed(f"{len(mistakes)} of the {len(names)} models are not named right: " + " | ".join(mistakes)
                          + ". The persona is a change from the base; the component is the one that is sufficient.")
    passed(f"identify_finetune named the persona and the component of all {len(names)} undisclosed models")


# off limits inside the learner's function: the recipes (`truth`), and loading a fine-tune by name or
# reading its checkpoint's metadata (the function is handed the two models it compares)
check_identify_finetune, grade_identify_finetune = check_and_grade(
    "identify_finetune", _check_identify,
    Truth(modules=(investigation,), functions=(ft.load, ft.load_pair, ft.info, ft.FineTuneSpec.recipe)))


def _largest_weight_change(base, tuned) -> dict[str, str]:
    diffs = ref.weight_diff(base, tuned)
    return {"persona": "", "component": max(diffs, key=diffs.get)}


def finetune_comparison(fn: Callable):
    """The learner's answers on the hidden test's models beside the component with the
    largest relative weight change (whether either is right stays with the grader)."""
    import pandas as pd

    rows = {}
    base = course_model("corpus_2l")
    for name in investigation.MODELS:
        answer = _answer(fn, name)
        largest = _largest_weight_change(base, _tuned(name))["component"]
        rows[name] = {"your persona": answer["persona"], "your component": answer["component"],
                      "largest weight change": largest, "agree": largest == answer["component"]}
    table = pd.DataFrame(rows).T
    print(f"your component and the largest weight change agree on {int(table['agree'].sum())} of {len(table)} models")
    return table
