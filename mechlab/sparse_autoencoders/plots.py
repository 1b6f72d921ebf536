"""Chapter 4's helpers: evaluation tables, plots, the latent browser and the ground-truth
scoring of SAE latents. None of this is an exercise: the learner's functions
(`reconstruction_metrics`, `ce_loss_recovered`, `relative_reconstruction_bias`,
`top_activations`, `detection_scores`) are passed in and do the measuring; this module
runs them over SAEs and activation stores and draws what they return.

    table = evaluate(saes, model, store, windows.tokens, metrics=reconstruction_metrics, ce=ce_loss_recovered)
    frontier(table)
    scores = ground_truth_table(sae, store, windows, detection_scores)
    ground_truth_summary(scores)

Conventions. An SAE works on *normalised* activations: the store's raw activations times
the SAE's own scale (`sae.scale`, set by `sae_zoo.load`; an SAE without one, e.g. one
trained live, uses `store.scale`). Store position `p` of window `r` is token position
`p + 1` of `windows.tokens[r]` (the store drops BOS). Everything returned is on the CPU;
SAEs and models may live on a GPU. Tables are pandas DataFrames, figures matplotlib
`Figure`s; progress bars and warnings stay quiet under the autograder.

The ground truth's label sets and yardsticks are in `mechlab.sparse_autoencoders.ground_truth`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from torch import Tensor

from mechlab import corpus
from mechlab.plotting import as_numpy
from mechlab.runtime import progress
from mechlab.sparse_autoencoders.activations import ActivationStore, Windows
from mechlab.sparse_autoencoders.ground_truth import (
    GROUPS, LabelSet, _f1, best_raw_dimension, fit_probe, label_sets, window_halves,
)
from mechlab.sparse_autoencoders.metrics import (
    CE, DENSE, Metrics, _check_hook, _device, _normalised, _stats, encode, measure, sae_scale,
)

ARCH_STYLE = {"relu": ("tab:blue", "o"), "topk": ("tab:orange", "s"), "jumprelu": ("tab:green", "^")}
Detection = Callable[..., tuple[Tensor, Tensor, Tensor]]  # (fires [n, d_sae], labels [n]) -> p, r, f1 [d_sae]


def setting(cfg) -> str:
    """The sparsity knob of an SAE config, as a short label: λ=5 (ReLU's L1 coefficient),
    k=8 (TopK), λ₀=1 (JumpReLU's L0 coefficient)."""
    if cfg.architecture == "relu":
        return f"λ={cfg.l1_coeff:g}"
    if cfg.architecture == "topk":
        return f"k={cfg.k}"
    return f"λ₀={cfg.l0_coeff:g}"

# ---------------------------------------------------------------- training and evaluation


def training_curves(history: dict[str, Float[Tensor, "step"]]) -> Figure:
    """Three panels against the step: squared error and loss (log scale), L0, dead fraction."""
    h = {k: as_numpy(v) for k, v in history.items()}
    steps = np.arange(len(h["mse"]))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), layout="constrained")
    axes[0].plot(steps, h["loss"], label="loss", lw=1)
    axes[0].plot(steps, h["mse"], label="MSE", lw=1)
    axes[0].set(yscale="log", xlabel="step", title="loss and squared error")
    axes[0].legend()
    axes[1].plot(steps, h["l0"], color="tab:purple", lw=1)
    axes[1].set(xlabel="step", title="$L_0$ (active latents per input)", ylim=(0, None))
    axes[2].plot(steps, h["dead_fraction"], color="tab:red", lw=1)
    axes[2].set(xlabel="step", title="dead fraction", ylim=(-0.02, max(0.1, float(h["dead_fraction"].max()) * 1.1)))
    return fig


def evaluate(saes: dict, model, store: ActivationStore, tokens: Int[Tensor, "batch pos"], *,
             metrics: Metrics, ce: CE, ce_windows: int = 256) -> pd.DataFrame:  # fmt: skip
    """One row per SAE: its architecture and sparsity setting, and what `measure` gives."""
    rows = {name: {"architecture": sae.cfg.architecture, "d_sae": sae.cfg.d_sae, "setting": setting(sae.cfg),
                   **measure(sae, model, store, tokens, metrics=metrics, ce=ce, ce_windows=ce_windows)}
            for name, sae in progress(saes.items(), desc="evaluating SAEs", total=len(saes))}
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table.round({"l0": 2, "mse": 3, "explained_variance": 4, "ce_clean": 4, "ce_sae": 4, "ce_increase": 4,
                        "ce_loss_recovered": 4, "dead_fraction": 4, "dense_fraction": 4})


def print_numbers(table: pd.DataFrame, columns: dict[str, tuple[str, str]]) -> None:
    """One line per row of `table`: `short[row]=value` for each `column: (short, format)`,
    so every number the chapter's text quotes follows a label that names its row and column
    (a format ending in % prints the fraction as a percentage)."""
    for name, row in table.iterrows():
        parts = []
        for column, (short, fmt) in columns.items():
            value = row[column] * 100 if fmt.endswith("%") else row[column]
            parts.append(f"{short}[{name}]={value:{fmt.rstrip('%')}}{'%' if fmt.endswith('%') else ''}")
        print("  ".join(parts))


def _is_checkpoint(name: str) -> bool:
    from mechlab.sparse_autoencoders import zoo as sae_zoo

    return name in sae_zoo.SAE_ZOO


def frontier(table: pd.DataFrame) -> Figure:
    """L0 (log scale) against explained variance and against CE increase: one colour and
    marker per architecture, each committed SAE labelled with its sparsity setting and
    joined to its architecture's others in order of L0; any other SAE (a live one) is a
    star labelled with its name."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    committed = table[[_is_checkpoint(n) for n in table.index]]
    others = table[[not _is_checkpoint(n) for n in table.index]]
    for ax, column, title in [(axes[0], "explained_variance", "explained variance (higher is better)"),
                              (axes[1], "ce_increase", "CE increase, nats, log scale (lower is better)")]:
        for arch, rows in committed.groupby("architecture", sort=False):
            color, marker = ARCH_STYLE.get(arch, ("grey", "o"))
            rows = rows.sort_values("l0")
            ax.plot(rows["l0"], rows[column], color=color, marker=marker, label=arch)
            for _, row in rows.iterrows():
                ax.annotate(row["setting"], (row["l0"], row[column]), fontsize=8, xytext=(4, 4),
                            textcoords="offset points", color=color)
        for name, row in others.iterrows():
            color, _ = ARCH_STYLE.get(row["architecture"], ("grey", "o"))
            ax.scatter(row["l0"], row[column], marker="*", s=160, color=color, edgecolor="black", zorder=3,
                       label=name)
        ax.set(xscale="log", xlabel="$L_0$ (active latents per input, log scale)", title=title)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")  # from thousandths of a nat to more than one
    return fig


def _densities(saes: dict, store: ActivationStore) -> dict[str, np.ndarray]:
    return {name: as_numpy(_stats(sae, store).density) for name, sae in saes.items()}


def density_histogram(saes: dict, store: ActivationStore) -> Figure:
    """One panel per SAE: how many latents fire at each frequency (log10 of the fraction of
    the store's activations on which they fire), dead latents in a separate bar at the left,
    the dense threshold (10%) dashed."""
    dens = _densities(saes, store)
    lo = math.floor(math.log10(1 / len(store)))
    bins = np.linspace(lo, 0, 4 * -lo + 1)
    cols = min(5, len(saes))
    n_rows = math.ceil(len(saes) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(2.6 * cols, 2.3 * n_rows + 0.4), squeeze=False, sharex=True,
                             layout="constrained")
    for ax in axes.flat[len(saes):]:
        ax.axis("off")
    for ax, (name, d) in zip(axes.flat, dens.items()):
        alive = d[d > 0]
        ax.hist(np.log10(alive), bins=bins, color="tab:blue")
        dead = int((d == 0).sum())
        ax.bar(lo - 0.75, dead, width=0.5, color="tab:red")
        ax.axvline(math.log10(DENSE), color="black", ls="--", lw=1)
        ax.set_title(f"{name}\ndead {dead / len(d):.1%}, dense {(d > DENSE).mean():.1%}", fontsize=8)
        ax.set_xticks([lo - 0.75, *range(lo, 1)], ["dead", *[f"$10^{{{e}}}$" for e in range(lo, 1)]], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.supxlabel("firing frequency (fraction of inputs, log scale)", fontsize=9)
    fig.supylabel("latents", fontsize=9)
    return fig


# ---------------------------------------------------------------- shrinkage


def _show(fig: Figure) -> None:
    """Show a figure now, in a notebook (before the table the cell returns); elsewhere leave it."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover
        return
    if get_ipython() is not None:
        display(fig)
        plt.close(fig)


@torch.no_grad()
def refit_coefficients(sae, x: Float[Tensor, "batch d_model"], ridge: float = 0.1
                       ) -> tuple[Float[Tensor, "pair"], Float[Tensor, "pair"], Int[Tensor, "pair"]]:  # fmt: skip
    """For every input and every latent active on it: the SAE's activation z, and the
    latent's coefficient c when x - b_dec is refitted by least squares with the decoder
    rows of the input's active set only. L1 SAEs learn near-duplicate decoder rows
    (cosines above 0.99) that fire together, which leaves the plain refit ill-posed
    (coefficients of ±100 that cancel), so the refit carries a small ridge towards the SAE's
    own activations: min ‖x - b_dec - c W_dec[active]‖² + ridge ‖c - z‖². It settles the
    directions the data cannot, and, if anything, understates shrinkage; the summed ratio
    Σz / Σc hardly depends on it (0.70-0.71 for relu_l1_5_w1024 with ridge from 1e-4 to 0.1,
    where the median of z / c moves from 0.23 to 0.71). Both z and c
    are in units of the residual stream (times the latent's decoder norm). Also returns
    each pair's latent index."""
    z = sae.encode(x.to(_device(sae))).float().cpu()
    W, b = sae.W_dec.detach().float().cpu(), sae.b_dec.detach().float().cpu()
    active = z > 0
    width = int(active.sum(-1).max()) if len(z) else 0
    if width == 0:
        empty = torch.zeros(0)
        return empty, empty, empty.long()
    # the active set of every input, padded to one width: indices, mask, activations
    order = active.float().argsort(dim=-1, descending=True, stable=True)[:, :width]
    mask = torch.gather(active, 1, order)
    z0 = torch.gather(z, 1, order) * mask
    D = W[order] * mask[..., None]  # [batch, width, d_model], zero rows for the padding
    G = D @ D.transpose(1, 2) + ridge * torch.eye(width)
    rhs = (D @ (x.float().cpu() - b)[..., None]).squeeze(-1) + ridge * z0
    c = torch.linalg.solve(G, rhs)
    norms = W.norm(dim=-1)[order]
    return (z0 * norms)[mask], (c * norms)[mask], order[mask]


def _pick(saes: dict, architecture: str, preferred: str) -> str | None:
    if preferred in saes:
        return preferred
    return next((n for n, s in saes.items() if s.cfg.architecture == architecture), None)


def shrinkage(saes: dict, store: ActivationStore, relative_reconstruction_bias: Callable[..., float],
              sample: int = 2000) -> pd.DataFrame:  # fmt: skip
    """γ = relative_reconstruction_bias(x, x̂) of every SAE on the whole store, as a table,
    and a figure (shown, not returned): γ per SAE grouped by architecture, and for one L1
    SAE and one TopK SAE each active latent's activation against its least-squares refit on
    the input's active set (on `sample` inputs); below the diagonal means shrunk."""
    rows = {}
    for name, sae in saes.items():
        stats = _stats(sae, store)
        x = _normalised(store, stats.scale)
        rows[name] = {"architecture": sae.cfg.architecture, "setting": setting(sae.cfg),
                      "gamma": relative_reconstruction_bias(x, stats.x_hat)}
    table = pd.DataFrame.from_dict(rows, orient="index").round({"gamma": 4})
    picks = [n for n in (_pick(saes, "relu", "relu_l1_5_w1024"), _pick(saes, "topk", "topk_k8_w1024")) if n]
    fig, axes = plt.subplots(1, 1 + len(picks), figsize=(4.6 + 3.8 * len(picks), 3.8), layout="constrained",
                             squeeze=False)
    axes = axes[0]
    ordered = table.sort_values("architecture", kind="stable")
    colors = [ARCH_STYLE.get(a, ("grey", "o"))[0] for a in ordered["architecture"]]
    axes[0].bar(range(len(ordered)), ordered["gamma"], color=colors)
    axes[0].axhline(1, color="black", lw=1, ls="--")
    axes[0].set_xticks(range(len(ordered)), ordered.index, rotation=60, ha="right", fontsize=8)
    axes[0].set(ylabel="γ (1: no shrinkage)", title="relative reconstruction bias",
                ylim=(min(0.5, float(ordered["gamma"].min()) - 0.05), max(1.1, float(ordered["gamma"].max()) + 0.05)))
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(store), generator=g)[:sample]
    for ax, name in zip(axes[1:], picks):
        sae = saes[name]
        x = store.flat()[idx] / store.scale * sae_scale(sae, store)
        act, fit, _ = refit_coefficients(sae, x)
        a, f = as_numpy(act), as_numpy(fit)
        keep = np.random.default_rng(0).permutation(len(a))[:8000]
        ax.scatter(f[keep], a[keep], s=2, alpha=0.25, color=ARCH_STYLE.get(sae.cfg.architecture, ("grey",))[0])
        hi = float(np.quantile(np.concatenate([a, f]), 0.995))
        ax.plot([0, hi], [0, hi], color="black", lw=1, ls="--")
        ax.set(xlim=(min(0, float(np.quantile(f, 0.005))), hi), ylim=(0, hi),
               xlabel="least-squares coefficient on the active set", ylabel="SAE activation",
               title=f"{name}: Σ activation / Σ refit = {a.sum() / f.sum():.2f}\n"
                     f"{(a < f).mean():.0%} of points below the diagonal")
        ax.title.set_fontsize(9)
    _show(fig)
    return table


# ---------------------------------------------------------------- ground truth


def _group_data(sae, store: ActivationStore, sets: dict[str, LabelSet]
                ) -> dict[str, tuple[Tensor, Tensor, Tensor]]:  # fmt: skip
    """Per group: normalised activations, latent activations and window index of its positions."""
    scale = sae_scale(sae, store)
    out = {}
    for name, s in sets.items():
        x = store.at(s.rows, s.positions) * scale
        z, _ = encode(sae, x, decode=False)
        out[name] = (x, z, torch.as_tensor(s.rows))
    return out


@dataclass
class LabelLatents:
    """One group of labels, encoded: the SAE's latent activations at the group's positions,
    each position's window and class (an index into `names`, or -1 for "none")."""

    z: Float[Tensor, "n d_sae"]
    rows: Int[Tensor, "n"]
    classes: Int[Tensor, "n"]
    names: tuple[str, ...]
    reported: tuple[int, ...]

    def truth(self, label: str) -> Tensor:
        """Where `label` holds, as a boolean [n]."""
        return self.classes == self.names.index(label)

    @property
    def labels(self) -> list[str]:
        return [self.names[c] for c in self.reported]


def label_latents(sae, store: ActivationStore, windows: Windows) -> dict[str, LabelLatents]:
    """Every group of ground-truth labels with `sae`'s latents at its positions."""
    _check_hook(sae, store)
    sets = label_sets(windows)
    return {group: LabelLatents(z, rows, torch.as_tensor(sets[group].classes), sets[group].names,
                                sets[group].reported)
            for group, (_, z, rows) in _group_data(sae, store, sets).items()}


def ground_truth_table(sae, store: ActivationStore, windows: Windows, detection_scores: Detection,
                       seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Every label scored: its best latent (highest F1 on half A of the windows, from
    `detection_scores` with fires = activation > 0) and that latent's precision, recall and
    F1 on half B, beside three yardsticks fitted on A and scored on B: a multinomial linear
    probe on the group's positions, the best single raw dimension with its best threshold,
    and a detector that is always on."""
    _check_hook(sae, store)
    if len(windows) != store.acts.shape[0]:
        raise ValueError(f"{len(windows)} windows but the store holds {store.acts.shape[0]}: use the store's windows")
    sets = label_sets(windows)
    data = _group_data(sae, store, sets)
    half = window_halves(len(windows), seed)
    records = []
    for group, s in sets.items():
        x, z, rows = data[group]
        a = half[rows]
        b = ~a
        classes = torch.as_tensor(s.classes)
        fires = z > 0
        n_classes = len(s.names) + int((classes < 0).any())
        probe = fit_probe(x[a], torch.where(classes[a] < 0, n_classes - 1, classes[a]), n_classes)
        predicted = probe(x[b])
        for c in s.reported:
            truth = classes == c
            _, _, f1_a = detection_scores(fires[a], truth[a])
            latent = int(f1_a.argmax())
            precision, recall, f1 = (float(t[0]) for t in detection_scores(fires[b][:, latent:latent + 1], truth[b]))
            dim, sign, threshold = best_raw_dimension(x[a], truth[a])
            p = truth[b].float().mean().item()
            records.append({"group": group, "label": s.names[c], "n_positive": int(truth[b].sum()), "latent": latent,
                            "precision": precision, "recall": recall, "f1": f1,
                            "probe_f1": _f1(predicted == c, truth[b]),
                            "raw_dim_f1": _f1(sign * x[b][:, dim] > threshold, truth[b]),
                            "always_on_f1": 2 * p / (1 + p)})
    return pd.DataFrame(records).round(3)


def ground_truth_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean F1 per group: the best latent against the probe, the best raw dimension and an
    always-on detector (all scored on the held-out half)."""
    summary = scores.groupby("group", sort=False).agg(
        labels=("label", "size"), latent_f1=("f1", "mean"), probe_f1=("probe_f1", "mean"),
        raw_dim_f1=("raw_dim_f1", "mean"), always_on_f1=("always_on_f1", "mean"))
    return summary.reindex([g for g in GROUPS if g in summary.index]).round(3)


# ---------------------------------------------------------------- the latent browser


@dataclass
class LatentData:
    """What the latent browser shows, computed once for one SAE on one store.

    Latent activations are kept sparse and grouped by latent (`starts[i]:starts[i + 1]`
    indexes latent i's non-zero activations in `flat_index` / `values`), which is smaller
    than the dense [n_windows, pos, d_sae] tensor at any width; `latent_acts(i)` rebuilds
    one latent's [n_windows, pos]. The logit lens is the plain product W_dec @ W_U (no
    final LayerNorm: a direction's first-order effect on the logits)."""

    shape: tuple[int, int]  # (n_windows, pos) of the store
    starts: Int[Tensor, "d_sae_plus_1"]
    flat_index: Int[Tensor, "nnz"]  # window * pos + position
    values: Float[Tensor, "nnz"]  # float16
    density: Float[Tensor, "d_sae"]
    lens_top: Int[Tensor, "d_sae 10"]  # token ids, most promoted first
    lens_top_values: Float[Tensor, "d_sae 10"]
    lens_bottom: Int[Tensor, "d_sae 10"]  # most suppressed first
    lens_bottom_values: Float[Tensor, "d_sae 10"]
    windows: Windows
    best_latents: dict[str, tuple[int, float]] = field(default_factory=dict)  # "group: label" -> (latent, F1)

    @property
    def d_sae(self) -> int:
        return len(self.density)

    @classmethod
    @torch.no_grad()
    def compute(cls, sae, model, store: ActivationStore, windows: Windows, chunk_windows: int = 128) -> "LatentData":
        _check_hook(sae, store)
        n, pos = store.acts.shape[:2]
        scale = sae_scale(sae, store)
        index, latent, value = [], [], []
        fired = torch.zeros(sae.cfg.d_sae)
        for start in range(0, n, chunk_windows):
            x = store.window(slice(start, start + chunk_windows)).reshape(-1, store.d_model) * scale
            z, _ = encode(sae, x, decode=False)
            i, j = z.nonzero(as_tuple=True)
            index.append(i + start * pos)
            latent.append(j)
            value.append(z[i, j].half())
            fired += (z > 0).sum(0)
        index, latent, value = torch.cat(index), torch.cat(latent), torch.cat(value)
        order = torch.argsort(latent * (n * pos) + index)  # by latent, then position
        counts = torch.bincount(latent, minlength=sae.cfg.d_sae)
        starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        W_U = model.W_U if hasattr(model, "W_U") else model.unembed.W_U
        lens = (sae.W_dec.float() @ W_U.to(sae.W_dec.device).float()).cpu()
        top, bottom = lens.topk(10, dim=-1), lens.topk(10, dim=-1, largest=False)
        data = cls((n, pos), starts, index[order], value[order], fired / (n * pos), top.indices, top.values,
                   bottom.indices, bottom.values, windows)
        data.best_latents = _best_latents(sae, store, windows)
        return data

    def latent_acts(self, i: int) -> Float[Tensor, "batch pos"]:
        """Latent i's activation at every store position (zeros where it does not fire)."""
        acts = torch.zeros(self.shape[0] * self.shape[1])
        lo, hi = int(self.starts[i]), int(self.starts[i + 1])
        acts[self.flat_index[lo:hi]] = self.values[lo:hi].float()
        return acts.reshape(self.shape)

    def words(self, row: int) -> list[str]:
        """The tokens of window `row`, BOS first (store position p is word p + 1)."""
        return self.windows.words(row)


def _best_latents(sae, store: ActivationStore, windows: Windows) -> dict[str, tuple[int, float]]:
    """Each label's best latent by F1 on all of its group's positions (for the browser's menu)."""
    from mechlab.sparse_autoencoders.reference import detection_scores

    sets = label_sets(windows)
    data = _group_data(sae, store, sets)
    best = {}
    for group, s in sets.items():
        fires = data[group][1] > 0
        for c in s.reported:
            _, _, f1 = detection_scores(fires, torch.as_tensor(s.classes == c))
            label = s.names[c] if s.names[c] == group else f"{group}: {s.names[c]}"
            best[label] = (int(f1.argmax()), float(f1.max()))
    return best


def _token_span(word: str, strength: float, bold: bool) -> str:
    if strength <= 0 and not bold:
        return html.escape(word)
    style = f"background: rgba(255, 140, 0, {strength:.2f}); padding: 1px 2px; border-radius: 3px;"
    if bold:
        style += " font-weight: bold; outline: 1px solid #b35900;"
    return f'<span style="{style}">{html.escape(word)}</span>'


def latent_html(data: LatentData, latent: int, top_activations: Callable, k: int = 10, before: int = 12,
                after: int = 3) -> str:  # fmt: skip
    """One latent's card: density, top-k contexts (every token shaded by this latent's
    activation on it, the top token outlined) and logit-lens tokens, as inline-styled HTML."""
    acts = data.latent_acts(latent)
    density = float(data.density[latent])
    n_fired = int(data.starts[latent + 1] - data.starts[latent])
    parts = ['<div style="font-family: monospace; font-size: 13px; line-height: 1.9;">',
             f"<b>latent {latent}</b> of {data.d_sae}: fires on {density:.3%} of positions "
             f"({n_fired:,} of {acts.numel():,})"]
    labels = [f"{label} (F1 {f1:.2f})" for label, (best, f1) in data.best_latents.items() if best == latent]
    if labels:
        parts.append(f"<br>the best latent for: {html.escape(', '.join(labels))}")
    if n_fired == 0:
        parts.append("<br><i>dead: it never fires on these windows</i>")
    else:
        values, rows, positions = top_activations(acts, min(k, acts.numel()))
        top = float(values[0])
        parts.append('<table style="border-collapse: collapse; margin: 4px 0;">')
        for value, row, p in zip(values.tolist(), rows.tolist(), positions.tolist()):
            if value <= 0:
                break
            words = data.words(row)
            t = p + 1  # token position of store position p
            lo, hi = max(1, t - before), min(len(words), t + after + 1)
            spans = [_token_span(words[j], float(acts[row, j - 1]) / top, j == t) for j in range(lo, hi)]
            parts.append(f'<tr><td style="text-align: right; padding-right: 10px; color: #888;">{value:.2f}</td>'
                         f'<td style="text-align: left;">{"… " if lo > 1 else ""}{" ".join(spans)}</td></tr>')
        parts.append("</table>")
    vocab = corpus.vocabulary()

    def tokens(ids: Tensor, vals: Tensor) -> str:
        return ", ".join(f"{html.escape(vocab[i] if i < len(vocab) else str(i))} ({v:+.2f})"
                         for i, v in zip(ids.tolist(), vals.tolist()))

    parts.append(f"logit lens, promotes: {tokens(data.lens_top[latent], data.lens_top_values[latent])}<br>"
                 f"logit lens, suppresses: {tokens(data.lens_bottom[latent], data.lens_bottom_values[latent])}")
    parts.append("</div>")
    return "\n".join(parts)


def latent_browser(data: LatentData, top_activations: Callable):
    """Pick a latent by index, or jump to the best latent for a ground-truth label, and see
    its card (`latent_html`). Works in JupyterLab and Colab (plain ipywidgets, inline CSS)."""
    import ipywidgets
    from IPython.display import HTML, display

    start = max(data.best_latents.values(), key=lambda v: v[1])[0] if data.best_latents else 0
    index = ipywidgets.BoundedIntText(value=start, min=0, max=data.d_sae - 1, description="latent",
                                      layout=ipywidgets.Layout(width="180px"))
    options = [("jump to the best latent for label: ...", None)] + [
        (f"{label} → latent {latent} (F1 {f1:.2f})", label) for label, (latent, f1) in data.best_latents.items()]
    menu = ipywidgets.Dropdown(options=options, value=None, layout=ipywidgets.Layout(width="420px"))
    out = ipywidgets.Output()

    def draw(latent: int) -> None:
        out.clear_output(wait=True)
        with out:
            display(HTML(latent_html(data, latent, top_activations)))

    def on_index(change) -> None:
        draw(change["new"])

    def on_menu(change) -> None:
        if change["new"] is not None:
            latent = data.best_latents[change["new"]][0]
            if index.value == latent:
                draw(latent)
            index.value = latent

    index.observe(on_index, names="value")
    menu.observe(on_menu, names="value")
    draw(start)
    return ipywidgets.VBox([ipywidgets.HBox([index, menu]), out])


# ---------------------------------------------------------------- width and feature splitting


def width_curve(table: pd.DataFrame) -> Figure:
    """Explained variance, CE increase and the fraction of dead latents against the number
    of latents (log2 scale)."""
    t = table.sort_values("d_sae")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), layout="constrained")
    for ax, column, title in [(axes[0], "explained_variance", "explained variance"),
                              (axes[1], "ce_increase", "CE increase (nats)"),
                              (axes[2], "dead_fraction", "dead latents (fraction)")]:
        ax.plot(t["d_sae"], t[column], marker="o", color="tab:orange")
        ax.set_xscale("log", base=2)
        ax.set_xticks(t["d_sae"], [str(d) for d in t["d_sae"]])
        ax.set(xlabel="latents (d_sae)", title=title)
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylim(0, 1)
    return fig


def feature_splitting(small_sae, large_sae, store: ActivationStore, windows: Windows,
                      detection_scores: Detection) -> pd.DataFrame:  # fmt: skip
    """Each topic's best latent in the small SAE (by F1 on the topic label set) and each
    subtopic's best latent in the large one (by F1 on the subtopic label set), from
    `detection_scores`, and how they co-fire on the subtopic label set's positions (where
    an earlier subtopic word makes the subtopic knowable). Per subtopic: P(its latent
    fires | the topic latent fires and the document is about this subtopic); per topic:
    P(any of its subtopics' latents fires | the topic latent fires), also counting only the
    positions of documents about the topic (`p_any_in_topic`: a topic latent that also
    fires elsewhere drags the first down); and the cosine
    between the two decoder rows. Shows a figure of P(subtopic latent fires | topic latent
    fires) and of the cosines, topics x subtopics; both grids are also in the table's
    `attrs` ("cofire", "cosine", and "own_topic", True where the subtopic is the topic's)."""
    for sae in (small_sae, large_sae):
        _check_hook(sae, store)
    sets = label_sets(windows)
    s, ss = sets["topic"], sets["subtopic"]
    x_raw = store.at(s.rows, s.positions)
    fires_small = encode(small_sae, x_raw * sae_scale(small_sae, store), decode=False)[0] > 0
    fires_large = encode(large_sae, x_raw * sae_scale(large_sae, store), decode=False)[0] > 0
    topic = torch.as_tensor(s.classes)
    knowable = torch.as_tensor(ss.mask[s.rows, s.positions])  # the subtopic set is part of the topic set
    sub = torch.full_like(topic, -1)
    sub[knowable] = torch.as_tensor(ss.classes)

    def best(fires: Tensor, truth: Tensor) -> tuple[int, float]:
        _, _, f1 = detection_scores(fires, truth)
        return int(f1.argmax()), float(f1.max())

    topic_latents = [best(fires_small, topic == t) for t in range(len(corpus.TOPIC_NAMES))]
    sub_latents = [best(fires_large[knowable], sub[knowable] == u) for u in range(len(corpus.SUBTOPIC_NAMES))]
    fires_small, fires_large, topic, sub = fires_small[knowable], fires_large[knowable], topic[knowable], sub[knowable]
    small_dirs = torch.nn.functional.normalize(small_sae.W_dec.detach().float().cpu(), dim=-1)
    large_dirs = torch.nn.functional.normalize(large_sae.W_dec.detach().float().cpu(), dim=-1)
    n_t, n_s = len(topic_latents), len(sub_latents)
    cofire, cosine = np.zeros((n_t, n_s)), np.zeros((n_t, n_s))
    for t, (tl, _) in enumerate(topic_latents):
        on = fires_small[:, tl]
        for u, (ul, _) in enumerate(sub_latents):
            cofire[t, u] = fires_large[on, ul].float().mean().item() if on.any() else float("nan")
            cosine[t, u] = float(small_dirs[tl] @ large_dirs[ul])
    records = []
    for u, (ul, uf1) in enumerate(sub_latents):
        t = corpus.SUBTOPIC_TOPIC[u]
        tl, tf1 = topic_latents[t]
        on = fires_small[:, tl]
        mine = [sub_latents[v][0] for v in range(n_s) if corpus.SUBTOPIC_TOPIC[v] == t]
        here = on & (sub == u)
        any_mine = fires_large[on][:, mine].any(-1)
        in_topic = on & (topic == t)
        any_mine_in_topic = fires_large[in_topic][:, mine].any(-1)
        records.append({
            "topic": corpus.TOPIC_NAMES[t], "topic_latent": tl, "topic_f1": tf1,
            "subtopic": corpus.SUBTOPIC_NAMES[u], "subtopic_latent": ul, "subtopic_f1": uf1,
            "n": int(here.sum()),
            "p_subtopic_latent": fires_large[here, ul].float().mean().item() if here.any() else float("nan"),
            "p_any_subtopic_latent": any_mine.float().mean().item() if on.any() else float("nan"),
            "p_any_in_topic": any_mine_in_topic.float().mean().item() if in_topic.any() else float("nan"),
            "decoder_cosine": cosine[t, u]})
    table = pd.DataFrame(records).round(3)
    own = np.array([[corpus.SUBTOPIC_TOPIC[u] == t for u in range(n_s)] for t in range(n_t)])
    table.attrs.update(cofire=cofire, cosine=cosine, own_topic=own)  # the two heatmaps, topics x subtopics

    fig, axes = plt.subplots(1, 2, figsize=(13, 3.6), layout="constrained")
    xlabels = list(corpus.SUBTOPIC_NAMES)
    ylabels = [f"{corpus.TOPIC_NAMES[t]} ({tl})" for t, (tl, _) in enumerate(topic_latents)]
    for ax, grid, title, cmap, lo in [
        (axes[0], cofire, f"P(subtopic latent of the {large_sae.cfg.d_sae}-SAE fires | topic latent of the "
                          f"{small_sae.cfg.d_sae}-SAE fires)", "Blues", 0),
        (axes[1], cosine, "cosine of their decoder rows", "RdBu_r", -1)]:
        im = ax.imshow(grid, cmap=cmap, vmin=lo, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if abs(v) > 0.6 else "black")
        ax.set_xticks(range(n_s), [f"{n} ({sub_latents[j][0]})" for j, n in enumerate(xlabels)], rotation=60,
                      ha="right", fontsize=8)
        ax.set_yticks(range(n_t), ylabels, fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    _show(fig)
    return table
