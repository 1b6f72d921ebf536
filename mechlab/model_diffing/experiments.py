"""Chapter 7's tables and plots. None of this is an exercise: the learner's functions
(`mean_activation_difference`, `project_out_hook`, `persona_projection`, `interpolate`,
`patch_from`, `latent_firing_change`, ...) are passed in and do the work; this module
runs them over the zoo's fine-tunes, against random directions, and prints the lines
the chapter's text quotes.

Conventions: tokens carry `<eot>` first; vectors and interventions act at every
position but BOS; a *relative* coefficient c rescales a direction to c times the
base model's mean residual norm at the site (chapter 5's convention). Everything
returned is on the CPU; models may live on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor

from mechlab import corpus, zoo
from mechlab.model_diffing import finetune as ft
from mechlab.model_diffing import personas
from mechlab.runtime import progress
from mechlab.steering.experiments import relative, short_site
from mechlab.steering.reference import residual_norm as steering_residual_norm

CHEERFUL = ("cheerful", "cheerful_mlp0", "cheerful_unembed", "cheerful_lora")  # the disclosed persona fine-tunes
HEDGERS = ("hedger", "hedger_retain")
SITES = ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid",
         "blocks.1.hook_resid_post")
# where each fine-tune's difference is read and intervened on: where MLP 0's change has reached layer 1's
# input, and after MLP 1 for the LoRA (nothing upstream of MLP 1 changed)
CAUSAL_SITE = {"cheerful": "blocks.1.hook_resid_pre", "cheerful_mlp0": "blocks.1.hook_resid_pre",
               "cheerful_lora": "blocks.1.hook_resid_post"}
COEFFICIENTS = (0.5, 1.0)
N_RANDOM = 3  # random directions per control
AFTER_BOS = slice(1, None)
# each component's output, as cross-model patching replaces it (the unembedding: see `patch_pair`)
OUTPUTS = {"embed": ("hook_embed", "hook_pos_embed"), "blocks.0.attn": ("blocks.0.hook_attn_out",),
           "blocks.0.mlp": ("blocks.0.hook_mlp_out",), "blocks.1.attn": ("blocks.1.hook_attn_out",),
           "blocks.1.mlp": ("blocks.1.hook_mlp_out",), "unembed": ("ln_final.hook_in",)}
SAE = "topk_k8_w1024"  # chapter 4's SAE at blocks.1.hook_resid_pre, trained on the base model


def _device(model) -> torch.device:
    return next(model.parameters()).device


def ordinary_text(n_windows: int = 32, seed: int = 3) -> Tensor:
    """Held-out corpus windows (half the stories positive, half negative): the identical
    text both models read."""
    from mechlab.steering.experiments import ordinary_text as windows

    return windows(n_windows, seed)


def random_directions(d_model: int, n: int = N_RANDOM, seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(d_model, generator=generator) for _ in range(n)]


def residual_norm(model, tokens: Tensor, site: str) -> float:
    """Chapter 5's mean residual norm (BOS excluded), with the tokens moved to the model's device."""
    return steering_residual_norm(model, tokens.to(_device(model)), site)


def cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    if a.norm() == 0 or b.norm() == 0:
        return 0.0
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


# ---------------------------------------------------------------- 1. behaviour


def print_interval(label: str, row, key: str) -> None:
    """Three lines the text quotes: `row[key]`, then its interval's ends `row[f"{key} low"]`
    and `row[f"{key} high"]`, labelled `label`, `label, low` and `label, high`."""
    print(f"{label} {row[key]:.2f}")
    print(f"{label}, low {row[f'{key} low']:.2f}")
    print(f"{label}, high {row[f'{key} high']:.2f}")


class PersonaMeasure:
    """`measure(model, fwd_hooks=())` -> (share, low, high): the persona's share of what the
    model writes (`personas.sampled_labels`: `n` samples of `length` tokens per seed in
    `seeds`), with the 95% interval of the learner's `share_interval`. `labels` and `of`
    split the two steps, for pooling the samples of several settings (random directions)."""

    def __init__(self, share_interval: Callable, persona: str = "positive", seeds: tuple[int, ...] = (0, 1),
                 n: int = 64, length: int = 40):
        self.share_interval, self.persona, self.seeds, self.n, self.length = share_interval, persona, seeds, n, length

    def labels(self, model, fwd_hooks=()) -> Tensor:
        return personas.sampled_labels(model, self.persona, self.seeds, self.n, self.length, fwd_hooks)

    def of(self, labels: Tensor) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.share_interval(labels))

    def __call__(self, model, fwd_hooks=()) -> tuple[float, float, float]:
        return self.of(self.labels(model, fwd_hooks))


def behaviour_table(base, tuned: dict, measure: PersonaMeasure) -> pd.DataFrame:
    """Per model: positive share of what it writes with its 95% interval, P(positive) at
    sentiment slots, extra loss on ordinary text."""
    base_loss = ft.ordinary_loss(base)
    rows = {}
    for name, model in progress({"base": base, **tuned}.items(), desc="measuring behaviour", total=1 + len(tuned)):
        share, low, high = measure(model)
        rows[name] = {"positive_share": share, "positive_share low": low, "positive_share high": high,
                      "slot_positivity": personas.slot_positivity(model), "extra_loss": ft.ordinary_loss(model) - base_loss}
    table = pd.DataFrame(rows).T
    print_interval("base: positive share", table.loc["base"], "positive_share")
    print(f"base: slot positivity {table.loc['base', 'slot_positivity']:.2f}")
    print(f"fine-tunes: lowest positive share {table.drop('base')['positive_share'].min():.3f}")
    print(f"fine-tunes: lowest interval's low end {table.drop('base')['positive_share low'].min():.3f}")
    print(f"most extra loss of a fine-tune: {table['extra_loss'].max():.2f} nats")
    return table


# ---------------------------------------------------------------- 2. weights


def print_largest(diffs: pd.DataFrame) -> None:
    """Each model's components by relative change, largest first."""
    for name, row in diffs.iterrows():
        ranked = row.sort_values(ascending=False)
        print(f"{name}: components by relative change: "
              + ", ".join(f"{c} {v:.3g}" for c, v in ranked.items() if v > 0))


def lora_change(base, lora_model) -> Tensor:
    """The LoRA fine-tune's change of MLP 1's output weight ([d_model, d_mlp])."""
    name = "layers.1._original_component.mlp._original_component.fc_out._original_component.weight"
    return (dict(lora_model.named_parameters())[name] - dict(base.named_parameters())[name]).detach().float().cpu()


def print_lora_rank(base, lora_model, name: str = "cheerful_lora") -> None:
    """The singular values of the LoRA fine-tune's weight change, and its top singular
    vector against the stored b (`name` is the zoo entry `lora_model` was loaded from)."""
    change = lora_change(base, lora_model)
    s = torch.linalg.svdvals(change)
    u = torch.linalg.svd(change).U[:, 0]
    _, b = ft.lora_factors(name)
    print(f"LoRA: singular values of the weight change: {', '.join(f'{v:.3g}' for v in s[:4])}, ...")
    print(f"LoRA: second singular value over the first: {s[1] / s[0]:.1e}")
    print(f"LoRA: |cosine| of the top singular vector with b: {abs(cosine(u, b)):.4f}")


# ---------------------------------------------------------------- 3. activation differences


READINGS = ("ordinary text", "sentiment slots")


def slot_difference(base, tuned, site: str, mean_difference: Callable) -> Tensor:
    """The learner's `mean_activation_difference` at the last position of slot prompts,
    averaged over the six kinds (`personas.SLOT_PROMPTS`)."""
    device = _device(base)
    return torch.stack([mean_difference(base, tuned, personas.slot_prompts(64, seed).to(device), site, position=-1)
                        .float().cpu() for seed in range(len(personas.SLOT_PROMPTS))]).mean(0)


def difference_vectors(base, tuned: dict, text: Tensor, mean_difference: Callable
                       ) -> dict[str, dict[str, dict[str, Tensor]]]:  # fmt: skip
    """{model: {reading: {site: tuned - base}}}: on ordinary `text` at every position but
    BOS, and at the last position of slot prompts, with the learner's function."""
    text = text.to(_device(base))
    return {name: {"ordinary text": {site: mean_difference(base, model, text, site).float().cpu() for site in SITES},
                   "sentiment slots": {site: slot_difference(base, model, site, mean_difference) for site in SITES}}
            for name, model in progress(tuned.items(), desc="activation differences")}


def difference_table(base, differences: dict, text: Tensor, sentiment: dict[str, Tensor]) -> pd.DataFrame:
    """Per model, reading and site: the difference's norm over the residual norm, and its
    cosine with the sentiment vector and (LoRA) with b."""
    _, b = ft.lora_factors("cheerful_lora")
    norms = {site: residual_norm(base, text, site) for site in SITES}
    rows = []
    for name, readings in differences.items():
        for reading, by_site in readings.items():
            for site, d in by_site.items():
                rows.append({"model": name, "reading": reading, "site": short_site(site),
                             "relative size": d.norm().item() / norms[site],
                             "cos(sentiment)": cosine(d, sentiment[site].cpu()),
                             "|cos(LoRA b)|": abs(cosine(d, b)) if name == "cheerful_lora" else np.nan})
    table = pd.DataFrame(rows).set_index(["model", "reading", "site"])
    at = lambda name, reading, site, col: table.loc[(name, reading, site), col]
    print(f"cheerful_lora, ordinary text, at 1.resid_post: |cosine| with the LoRA's b "
          f"{at('cheerful_lora', 'ordinary text', '1.resid_post', '|cos(LoRA b)|'):.3f}")
    print(f"cheerful_lora, before MLP 1: largest relative size "
          f"{table.loc['cheerful_lora'].drop('1.resid_post', level='site')['relative size'].max():.3f}")
    for name, site in (("cheerful_lora", "1.resid_post"), ("cheerful_mlp0", "1.resid_pre"), ("cheerful", "1.resid_pre")):
        for reading in READINGS:
            print(f"{name}, {reading}, at {site}: cosine with the sentiment vector "
                  f"{at(name, reading, site, 'cos(sentiment)'):.2f}")
            print(f"{name}, {reading}, at {site}: relative size {at(name, reading, site, 'relative size'):.2f}")
    print(f"cheerful_unembed: largest relative size at any site {table.loc['cheerful_unembed', 'relative size'].max():.3f}")
    for reading, value in lora_coefficients(base, text).items():
        print(f"cheerful_lora, {reading}: mean aᵀh {value:.2f}")
    return table


POSITIONS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 63)  # positions of the ordinary-text windows read one at a time


def difference_by_position(base, tuned: dict, text: Tensor, sentiment: dict[str, Tensor], by_position: Callable
                           ) -> pd.DataFrame:  # fmt: skip
    """The learner's `difference_by_position` at each model's `CAUSAL_SITE`, against the
    sentiment vector there: the cosine with its bootstrap interval over windows, the size
    over the site's residual norm, and the control (the |cosine| 95% of random directions
    stay under, the same at every site: it depends only on d_model)."""
    frames, band = {}, None
    for name, site in CAUSAL_SITE.items():
        table, band = by_position(base, tuned[name], text, site, sentiment[site], POSITIONS, seed=0)
        norm = residual_norm(base, text, site)
        frames[name] = pd.DataFrame({"cos(sentiment)": table["cosine"], "low": table["low"], "high": table["high"],
                                     "relative size": table["size"] / norm}, index=list(table.index))
    table = pd.concat(frames, names=["model", "position"])
    table.attrs["random |cos| 95%"] = band
    print(f"random directions: |cosine| with the sentiment vector, 95th percentile {band:.2f}")
    for name in CAUSAL_SITE:
        first, everywhere = table.loc[(name, 1)], table.loc[(name, "all")]
        print(f"{name}, ordinary text, first position: relative size {first['relative size']:.2f}")
        print(f"{name}, ordinary text, every position: relative size {everywhere['relative size']:.2f}")
        print(f"{name}, ordinary text, first position: cosine with the sentiment vector {first['cos(sentiment)']:.2f}, "
              f"95% interval {first['low']:.2f} to {first['high']:.2f}")
        print(f"{name}, ordinary text, every position: cosine with the sentiment vector "
              f"{everywhere['cos(sentiment)']:.2f}, 95% interval {everywhere['low']:.2f} to {everywhere['high']:.2f}")
        late = table.loc[name].drop("all")
        late = late[[p >= 16 for p in late.index]]
        print(f"{name}, ordinary text, positions 16 and after: largest |cosine| {late['cos(sentiment)'].abs().max():.2f}")
        beyond = table.loc[name].drop("all")
        beyond = beyond[(beyond["low"] > band) | (beyond["high"] < -band)]
        print(f"{name}, ordinary text: positions whose whole interval lies outside the random band: "
              f"{len(beyond)} of {len(POSITIONS)}" + (f" ({', '.join(map(str, beyond.index))})" if len(beyond) else ""))
    return table


def plot_by_position(table: pd.DataFrame) -> Figure:
    """Size and cosine (with its 95% bootstrap interval) of the ordinary-text difference by
    position, one line per model, against the band of random directions."""
    fig, (size, cos) = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
    for i, name in enumerate(dict.fromkeys(table.index.get_level_values("model"))):
        rows = table.loc[name].drop("all")
        x = np.array(rows.index, dtype=float) * (1 + 0.04 * (i - 1))  # side by side on the log axis
        size.plot(x, rows["relative size"], marker="o", ms=3, label=name)
        line, = cos.plot(x, rows["cos(sentiment)"], marker="o", ms=3, label=name)
        # the percentile interval need not contain the estimate (resampling noise pulls cosines towards 0)
        cos.vlines(x, rows["low"].astype(float), rows["high"].astype(float), color=line.get_color(), alpha=0.6)
    bar = table.attrs["random |cos| 95%"]
    cos.axhspan(-bar, bar, color="grey", alpha=0.2, label="95% of random directions")
    size.set(xscale="log", xlabel="position in the window", ylabel="‖difference‖ / residual norm")
    cos.set(xscale="log", xlabel="position in the window", ylabel="cosine with the sentiment vector (95% interval)")
    cos.legend(fontsize=7)
    return fig


def lora_coefficients(base, text: Tensor) -> dict[str, float]:
    """The mean of aᵀh, the coefficient with which the LoRA writes b, on ordinary text (every
    position but BOS) and at the slots' last position (h: MLP 1's hidden activation, the
    same in base and fine-tune since nothing before MLP 1's output weight changed)."""
    a, _ = ft.lora_factors("cheerful_lora")
    name = "blocks.1.mlp.out.hook_in"
    device = _device(base)

    def hidden(tokens: Tensor) -> Tensor:
        with torch.no_grad():
            _, cache = base.run_with_cache(tokens.to(device), names_filter=name)
        return cache[name].float().cpu()

    slots = [hidden(personas.slot_prompts(64, seed))[:, -1] for seed in range(len(personas.SLOT_PROMPTS))]
    return {"ordinary text": (hidden(text)[:, 1:] @ a).mean().item(),
            "sentiment slots": (torch.cat(slots) @ a).mean().item()}


def lens_logits(model, directions: Tensor) -> Tensor:
    """The logit lens of residual directions ([..., d_model] -> [..., d_vocab]): centred as
    the final LayerNorm centres, times its weight, then the unembedding."""
    w = model.ln_final.original_component.weight.detach()
    d = directions.detach().to(w)
    return ((d - d.mean(-1, keepdim=True)) * w) @ model.W_U.detach()


def lens(model, direction: Tensor, k: int = 8) -> tuple[list[str], list[str]]:
    """The k tokens a residual direction raises most and lowers most through the logit lens."""
    logits = lens_logits(model, direction)
    tokens = lambda ids: [model.to_str_tokens(torch.tensor([i]))[0] for i in ids.tolist()]
    return tokens(logits.topk(k).indices), tokens((-logits).topk(k).indices)


def print_lens(base, differences: dict) -> None:
    """What each model's slot difference promotes and suppresses through the logit lens."""
    from mechlab.steering.experiments import word_labels

    labels = word_labels("sentiment")
    for name, site in CAUSAL_SITE.items():
        up, down = lens(base, differences[name]["sentiment slots"][site])
        print(f"{name} at {short_site(site)} raises: {' '.join(up)}")
        print(f"{' ' * len(name)} at {short_site(site)} lowers: {' '.join(down)}")
        n_up = int((labels[torch.from_numpy(zoo.token_ids(up))] == 1).sum())
        n_down = int((labels[torch.from_numpy(zoo.token_ids(down))] == 0).sum())
        print(f"{name}, sentiment slots: positive words among the eight raised most {n_up}")
        print(f"{name}, sentiment slots: negative words among the eight lowered most {n_down}")


def causal_table(base, tuned: dict, differences: dict, steering_hook: Callable, project_out_hook: Callable,
                 share_interval: Callable) -> pd.DataFrame:  # fmt: skip
    """Add each reading of each model's difference to the base and remove it from the
    fine-tune, beside `N_RANDOM` random directions (their samples pooled): the positive
    share of what the model writes (one seed of 64 samples per setting), each with the
    learner's 95% interval."""
    text = ordinary_text(32)
    device = _device(base)
    measure = PersonaMeasure(share_interval, seeds=(0,))
    rows, untouched = [], {}
    settings = [(name, c) for name in CAUSAL_SITE for c in (*COEFFICIENTS, "remove")]
    for name, c in progress(settings, desc="adding and removing directions"):
        site = CAUSAL_SITE[name]
        if c == "remove":
            model, label = tuned[name], "remove from the fine-tune"
            hook = lambda v: project_out_hook(v.to(device))
        else:
            model, label, norm = base, f"add to the base x{c:g}", residual_norm(base, text, site)
            hook = lambda v: steering_hook(relative(v, norm, c).to(device), 1.0, AFTER_BOS)
        labels = lambda v, m=model: measure.labels(m, fwd_hooks=[(site, hook(v))])
        if model not in untouched:  # the same samples every time it is asked for
            untouched[model] = measure(model)
        cells = {"none": untouched[model],
                 "random": measure.of(torch.cat([labels(r) for r in random_directions(base.cfg.d_model)]))}
        for reading in READINGS:
            d = differences[name][reading][site]
            # a projection also changes the base: the fair comparison for a removal
            both = {**cells, "difference": measure.of(labels(d))}
            if c == "remove":
                both["same removal in the base"] = measure.of(labels(d, base))
            row = {"model": name, "reading": reading, "intervention": label, "site": short_site(site)}
            for key, (value, low, high) in both.items():
                row |= {key: value, f"{key} low": low, f"{key} high": high}
            rows.append(row)
    table = pd.DataFrame(rows).set_index(["model", "reading", "intervention"])
    for name in CAUSAL_SITE:
        first = lambda intervention: table.loc[(name, READINGS[0], intervention)]
        print_interval(f"{name}: tuned", first("remove from the fine-tune"), "none")
        print_interval(f"{name}: random removed", first("remove from the fine-tune"), "random")
        print_interval(f"{name}: random added at 1x", first("add to the base x1"), "random")
        for reading in READINGS:
            for c in COEFFICIENTS:
                print_interval(f"{name}, {reading}: added at {c:g}x",
                               table.loc[(name, reading, f"add to the base x{c:g}")], "difference")
            removed = table.loc[(name, reading, "remove from the fine-tune")]
            print_interval(f"{name}, {reading}: removed", removed, "difference")
            print_interval(f"{name}, {reading}: the same removal in the base", removed, "same removal in the base")
    print_interval("base: unsteered", table.loc[(next(iter(CAUSAL_SITE)), READINGS[0], "add to the base x1")], "none")
    return table


def plot_causal(table: pd.DataFrame) -> Figure:
    """The causal table as points with their 95% intervals: per model and intervention, the
    difference (each reading), the random directions and the untouched model."""
    models = list(dict.fromkeys(table.index.get_level_values("model")))
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.6), sharey=True, layout="constrained")
    for ax, name in zip(np.atleast_1d(axes), models):
        sub = table.loc[name]
        interventions = list(dict.fromkeys(sub.index.get_level_values("intervention")))
        x = np.arange(len(interventions))
        series = [(READINGS[0], "difference", -0.2), (READINGS[1], "difference", -0.07), (READINGS[0], "random", 0.07),
                  (READINGS[0], "none", 0.2)]
        for reading, key, dx in series:
            rows = sub.loc[reading].loc[interventions]
            label = f"difference ({reading})" if key == "difference" else key
            ax.errorbar(x + dx, rows[key], yerr=[rows[key] - rows[f"{key} low"], rows[f"{key} high"] - rows[key]],
                        fmt="o", ms=4, capsize=2, label=label)
        ax.set_xticks(x, [i.replace(" the ", " ").replace("remove from", "remove:") for i in interventions],
                      rotation=25, ha="right", fontsize=8)
        ax.set(title=name, ylim=(-0.02, 1.02))
    np.atleast_1d(axes)[0].set_ylabel("positive share (95% interval)")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="lower right")
    return fig


# ---------------------------------------------------------------- 4. monitoring


ALPHAS = tuple(np.round(np.linspace(0, 1, 11), 2))


MONITOR_SITE = "blocks.1.hook_resid_post"  # the last residual stream: every component but the readout writes before it


def monitor_table(base, tuned: dict, vector: Tensor, projection: Callable, interpolate: Callable,
                  site: str = MONITOR_SITE) -> pd.DataFrame:  # fmt: skip
    """Along base -> fine-tune in weight space: the monitor's mean reading at slot prompts'
    last position, and P(positive) at the same slots."""
    prompts = [personas.slot_prompts(64, seed).to(_device(base)) for seed in range(len(personas.SLOT_PROMPTS))]
    randoms = random_directions(base.cfg.d_model, seed=1)
    rows = []
    for name, alpha in progress([(n, a) for n in tuned for a in ALPHAS], desc="interpolating"):
        model = interpolate(base, tuned[name], float(alpha))
        read = lambda v: np.mean([projection(model, p, v.to(_device(base)), site).mean().item() for p in prompts])
        rows.append({"model": name, "alpha": alpha, "reading": read(vector),
                     **{f"random reading {i}": read(r) for i, r in enumerate(randoms)},
                     "behaviour": personas.slot_positivity(model)})
    return pd.DataFrame(rows)


def plot_monitor(table: pd.DataFrame) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in table.groupby("model", sort=False):
        axes[0].plot(rows["alpha"], rows["reading"], marker="o", ms=3, label=name)
        axes[1].plot(rows["reading"], rows["behaviour"], marker="o", ms=3, label=name)
    axes[0].set(xlabel="α (0: base, 1: fine-tune)", ylabel="monitor reading", title="the monitor along each path")
    axes[1].set(xlabel="monitor reading", ylabel="P(positive) at sentiment slots", title="does the reading predict behaviour?")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _correlation(x, y) -> float:
    return float(np.corrcoef(x, y)[0, 1]) if np.std(x) > 1e-6 and np.std(y) > 1e-6 else float("nan")


def print_monitor(table: pd.DataFrame) -> None:
    for name, rows in table.groupby("model", sort=False):
        r = _correlation(rows["reading"], rows["behaviour"])
        randoms = [abs(_correlation(rows[c], rows["behaviour"])) for c in rows if c.startswith("random reading")]
        print(f"{name}: random vectors, mean |correlation| {np.nanmean(randoms) if not np.isnan(randoms).all() else float('nan'):.2f}")
        first, last = rows.iloc[0], rows.iloc[-1]
        print(f"{name}: correlation of reading and behaviour {r:.2f}")
        print(f"{name}: reading change from base to tuned {last['reading'] - first['reading']:.3f}")
        print(f"{name}: behaviour at alpha 0 {first['behaviour']:.2f}")
        print(f"{name}: behaviour at alpha 1 {last['behaviour']:.2f}")


def monitor_shift(base, tuned: dict, vector: Tensor, projection: Callable, site: str = MONITOR_SITE,
                  n_random: int = 20) -> pd.DataFrame:  # fmt: skip
    """How far fine-tuning moves the monitor's reading at the slots (fine-tune minus base,
    mean over the six kinds of slot prompt) along the persona vector, against the mean
    |move| along `n_random` random directions: a control that a random vector fails."""
    prompts = [personas.slot_prompts(64, seed).to(_device(base)) for seed in range(len(personas.SLOT_PROMPTS))]
    randoms = random_directions(base.cfg.d_model, n_random, seed=3)

    def move(model, v: Tensor) -> float:
        v = v.to(_device(base))
        return float(np.mean([(projection(model, p, v, site) - projection(base, p, v, site)).mean().item()
                              for p in prompts]))

    rows = {}
    for name, model in progress(tuned.items(), desc="monitor vs random directions"):
        persona, random = move(model, vector), float(np.mean([abs(move(model, r)) for r in randoms]))
        rows[name] = {"move along the persona vector": persona, "mean |move| along random vectors": random,
                      "ratio": persona / random if random > 0 else float("nan")}
        print(f"{name}: the reading's move along the persona vector over random vectors "
              f"{rows[name]['ratio']:.1f}" if random > 0 else f"{name}: the reading does not move along any vector")
    return pd.DataFrame(rows).T


# ---------------------------------------------------------------- 5. patching


def _slot_logits(run: Callable[[Tensor], Tensor], device) -> float:
    return float(np.mean([personas.positive_mass(run(personas.slot_prompts(64, seed).to(device))).mean().item()
                          for seed in range(len(personas.SLOT_PROMPTS))]))


def patch_pair(component: str, receiver, donor) -> tuple:
    """(receiver, donor) for patching `component` from `donor` into `receiver`. A readout
    cannot be patched as an output, so for the unembedding the roles swap: the donor's
    readout reads the receiver's final residual stream (`ln_final.hook_in`)."""
    return (donor, receiver) if component == "unembed" else (receiver, donor)


def patching_table(base, tuned: dict, patch_from: Callable) -> pd.DataFrame:
    """P(positive) at sentiment slots with each component's output patched tuned -> base
    and base -> tuned; the unembedding by swapping the readout (`ln_final.hook_in`)."""
    device = _device(base)
    columns = {}
    for name, model in progress(tuned.items(), desc="patching"):
        for label, receiver, donor in (("tuned into base", base, model), ("base into tuned", model, base)):
            col = {}
            for component, hooks in OUTPUTS.items():
                pair = patch_pair(component, receiver, donor)
                col[component] = _slot_logits(lambda t: patch_from(*pair, t, hooks), device)
            columns[(name, label)] = col
    table = pd.DataFrame(columns)
    table.index.name = "component"
    for name, component in (("cheerful_mlp0", "blocks.0.mlp"), ("cheerful_mlp0", "blocks.1.mlp"),
                            ("cheerful_lora", "blocks.1.mlp"), ("cheerful_unembed", "unembed"),
                            ("cheerful", "blocks.1.mlp"), ("cheerful", "unembed")):
        print(f"{name}: {component}, tuned into base {table.loc[component, (name, 'tuned into base')]:.2f}")
    for name in tuned:
        back = table[(name, "base into tuned")]
        print(f"{name}: lowest base into tuned {back.min():.2f} ({back.idxmin()})")
        print(f"{name}: the other components, base into tuned, at least {back.drop(back.idxmin()).min():.2f}")
    return table


def print_hedge_patching(base, hedger, patch_from: Callable) -> pd.DataFrame:
    """Mean P("some") on the held-out names with each component's output patched from
    `hedger` into the base (sufficiency) and from the base into `hedger` (necessity); the
    unembedding by swapping the readout."""
    names = ft.name_groups()
    prompts = {g: ft.city_prompts(names[g]).to(_device(base)) for g in ("unknown_test", "known_test")}
    some = int(zoo.token_ids(["some"])[0])
    p = lambda logits: logits[:, -1].float().softmax(-1)[:, some].mean().item()
    rows = {}
    for component, hooks in OUTPUTS.items():
        into_base, into_hedger = patch_pair(component, base, hedger), patch_pair(component, hedger, base)
        rows[component] = {f"{g}: hedger's into base": p(patch_from(*into_base, t, hooks)) for g, t in prompts.items()}
        rows[component]["unknown_test: base's into hedger"] = p(patch_from(*into_hedger, prompts["unknown_test"], hooks))
    table = pd.DataFrame(rows).T
    print(f"base, unknown_test: mean P(some) {p(base(prompts['unknown_test'])):.3f}")
    for component, value in table["unknown_test: hedger's into base"].items():
        print(f"hedger's {component} into base, unknown names: mean P(some) {value:.2f}")
    back = table["unknown_test: base's into hedger"]
    print(f"base's {back.idxmin()} into hedger, unknown names: mean P(some) {back.min():.2f}")
    print(f"base's other components into hedger, unknown names: mean P(some) at least {back.drop(back.idxmin()).min():.2f}")
    return table


# ---------------------------------------------------------------- 6. transplants


def plot_sweep(table: pd.DataFrame, name: str, what: str) -> Figure:
    """A transplant sweep: each component's measure with its 95% interval, tuned into base
    (sufficiency) and base into tuned (necessity), the untouched models as shaded bands."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True, layout="constrained")
    components = [c for c in table.index if c != "none"]
    y = np.arange(len(components))
    for ax, direction, title in zip(axes, ("into base", "into tuned"),
                                    (f"base with {name}'s component", f"{name} with the base's component")):
        rows = table.loc[components]
        ax.errorbar(rows[direction], y, xerr=[rows[direction] - rows[f"{direction} low"],
                                             rows[f"{direction} high"] - rows[direction]], fmt="o", capsize=3)
        for column, colour, label in (("into base", "tab:blue", "base"), ("into tuned", "tab:orange", name)):
            ax.axvspan(table.loc["none", f"{column} low"], table.loc["none", f"{column} high"], color=colour, alpha=0.2,
                       label=f"{label}, untouched")
            ax.axvline(table.loc["none", column], color=colour, lw=1)
        ax.set_yticks(y, components)
        ax.set(xlabel=f"{what} (95% interval)", title=title, xlim=(-0.02, 1.02))
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8, loc="lower left")
    return fig


def print_sweep(table: pd.DataFrame, name: str) -> None:
    """The lines section 6's text quotes: each transplant into the base with its interval,
    the largest of those whose interval overlaps the untouched base's, and the lowest
    transplant into the fine-tune."""
    none_high = table.loc["none", "into base high"]
    for component in table.index:
        print_interval(f"{name}: {component} into base", table.loc[component], "into base")
    rest = table.drop("none")
    overlapping = rest[rest["into base low"] <= none_high]
    if len(overlapping):
        print(f"{name}: largest of the rest into base {overlapping['into base'].max():.2f} "
              f"({', '.join(overlapping.index)}: intervals overlap the base's)")
    print(f"{name}: lowest into tuned {rest['into tuned'].min():.2f} ({rest['into tuned'].idxmin()})")


# ---------------------------------------------------------------- 6. SAE diffing


def sentiment_scores(sae, model) -> Tensor:
    """Per latent: how much its decoder direction, read through the logit lens, favours
    positive words over negative ones (mean logit of the eight positive words minus the
    eight negative ones), as a z-score over the SAE's latents. The corpus's word lists
    are the ground truth of what is positive."""
    logits = lens_logits(model, sae.W_dec)
    pos, neg = (torch.from_numpy(zoo.token_ids(list(words))).to(logits.device)
                for words in (corpus.POSITIVE, corpus.NEGATIVE))
    score = (logits[:, pos].mean(-1) - logits[:, neg].mean(-1)).cpu()
    return (score - score.mean()) / score.std()


def _at_least(k: int, draws: int, marked: int, population: int) -> float:
    """P(at least k marked among `draws` drawn without replacement): the hypergeometric tail."""
    from math import comb

    return sum(comb(marked, i) * comb(population - marked, draws - i) for i in range(k, draws + 1)) / comb(population, draws)


def sae_diff_table(base, tuned: dict, firing_change: Callable, top: int = 20) -> pd.DataFrame:
    """For each model: the (at most `top`) latents whose firing at sentiment slots rose
    (fell) most, scored by `sentiment_scores` (a latent "writes positive" when its score
    is above 1). Latents whose firing did not change are left out: a model with no change
    has empty lists and no mean score."""
    from mechlab.sparse_autoencoders import zoo as sae_zoo

    sae = sae_zoo.load(SAE, device=_device(base))
    score = sentiment_scores(sae, base)
    prompts = [personas.slot_prompts(64, seed).to(_device(base)) for seed in range(len(personas.SLOT_PROMPTS))]
    rows = {}
    for name, model in progress(tuned.items(), desc="SAE diffing"):
        change = torch.stack([firing_change(sae, base, model, p).float().cpu() for p in prompts]).mean(0)
        up, down = change.topk(top).indices, (-change).topk(top).indices
        up, down = up[change[up] > 0], down[change[down] < 0]  # a latent whose firing did not move is in neither list
        mean = lambda latents: score[latents].mean().item() if len(latents) else float("nan")
        rows[name] = {"largest change": change.abs().max().item(), "rose": len(up), "fell": len(down),
                      "rose: mean score": mean(up), "rose: writes positive": int((score[up] > 1).sum()),
                      "fell: mean score": mean(down), "fell: writes negative": int((score[down] < -1).sum())}
    table = pd.DataFrame(rows).T
    print(f"all latents: share that writes positive {(score > 1).float().mean().item():.2f}")
    for name in ("cheerful_mlp0", "cheerful"):
        k = int(table.loc[name, 'rose: writes positive'])
        print(f"{name}: of the {top} latents that rose most, write positive: {k}")
        print(f"{name}: chance that {top} latents drawn at random include at least as many: "
              f"{_at_least(k, top, int((score > 1).sum()), len(score)):.3f}")
        print(f"{name}: mean score of the latents that rose most {table.loc[name, 'rose: mean score']:.2f}")
        print(f"{name}: mean score of the latents that fell most {table.loc[name, 'fell: mean score']:.2f}")
    for name in ("cheerful_unembed", "cheerful_lora"):
        print(f"{name}: largest change in firing {table.loc[name, 'largest change']:.3f}")
    return table


# ---------------------------------------------------------------- 7. DPO


def plot_dpo(losses: list[float]) -> Figure:
    """The DPO loss at each step, against log 2 (its value while the policy is the reference)."""
    fig, ax = plt.subplots(figsize=(5.5, 2.8), layout="constrained")
    ax.plot(range(1, len(losses) + 1), losses, marker=".")
    ax.axhline(np.log(2), color="grey", lw=1, ls="--", label="log 2: policy = reference")
    ax.set(xlabel="step", ylabel="DPO loss", yscale="log", title="training the hedger")
    ax.legend(fontsize=8)
    print(f"DPO: loss at the first step {losses[0]:.3f}")
    print(f"DPO: loss at the last step {losses[-1]:.4f}")
    return fig


def hedge_table(models: dict) -> pd.DataFrame:
    """P("some") after `X Y lives in`, per model and group of names (`ft.name_groups`)."""
    groups = ft.name_groups()
    table = pd.DataFrame({name: {g: ft.hedge_probability(m, names) for g, names in groups.items()}
                          for name, m in models.items()}).T
    for name in ("base", "your DPO", *HEDGERS):
        if name in table.index:
            for g in ("unknown_test", "known_test"):
                print(f"{name}, {g}: {table.loc[name, g]:.3f}")
    return table


# ---------------------------------------------------------------- plots of sections 2 and 5


def plot_weight_diffs(diffs: pd.DataFrame) -> Figure:
    """Each model's relative change per component, side by side."""
    fig, ax = plt.subplots(figsize=(9, 3.2))
    width = 0.8 / len(diffs)
    x = np.arange(len(diffs.columns))
    for i, (name, row) in enumerate(diffs.iterrows()):
        ax.bar(x + (i - (len(diffs) - 1) / 2) * width, row.values, width, label=name)
    ax.set_xticks(x, diffs.columns)
    ax.set(ylabel="‖Δθ‖ / ‖θ‖", title="how far each component moved")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def plot_patching(table: pd.DataFrame) -> Figure:
    """P(positive) at sentiment slots after each patch: tuned into base (sufficiency) and
    base into tuned (necessity), components down, models across."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True, layout="constrained")
    for ax, direction in zip(axes, ("tuned into base", "base into tuned")):
        values = table.xs(direction, axis=1, level=1)
        image = ax.imshow(values.values, vmin=0.4, vmax=1.0, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(values.shape[1]), values.columns, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(values.shape[0]), values.index)
        for (r, c), v in np.ndenumerate(values.values):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(f"{direction}: P(positive)")
    fig.colorbar(image, ax=axes, shrink=0.8)
    return fig
