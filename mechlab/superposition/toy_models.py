"""Chapter 1's library: fixtures and plots for the toy models of superposition.

Not exercises: the learner's functions (and their reference versions in
`mechlab.superposition.reference`) do the modelling; this module builds the
configurations, starting weights and sweeps they are run on, and draws the
paper's figures from what they return (Elhage et al. 2022,
https://transformer-circuits.pub/2022/toy_model/index.html).

Shapes follow the chapter: a toy model's `W` is `[instance, hidden, feature]`
(column `W[k, :, i]` is feature i's direction in instance k), `b` is
`[instance, feature]`; an SAE's decoder `W_dec` is `[hidden, latent]`, laid out
like one instance of `W`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.plotting import as_numpy

# ---------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class ToyConfig:
    """Sizes of a batch of toy models trained in parallel (one per `instance`)."""

    n_features: int = 5  # n: features the model must reconstruct (paper §"Demonstrating Superposition")
    n_hidden: int = 2  # m < n: width of the bottleneck h = W x
    n_instances: int = 8  # independent models trained as one batch, e.g. one per sparsity level


def init_toy_weights(
    cfg: ToyConfig, generator: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[Float[Tensor, "instance hidden feature"], Float[Tensor, "instance feature"]]:
    """Xavier-normal W (std sqrt(2 / (hidden + feature))) and zero b, drawn from `generator`
    (which must live on `device`). Plain tensors: the training loop turns on their gradients."""
    std = math.sqrt(2.0 / (cfg.n_hidden + cfg.n_features))
    W = std * torch.randn(cfg.n_instances, cfg.n_hidden, cfg.n_features, generator=generator, device=device)
    b = torch.zeros(cfg.n_instances, cfg.n_features, device=device)
    return W, b


def feature_probability_sweep(
    n_instances: int, lowest: float = 0.02, highest: float = 1.0, device: torch.device | str = "cpu"
) -> Float[Tensor, "instance"]:
    """Feature probabilities p = 1 - S spaced evenly on a log scale, from `highest` (dense)
    for instance 0 down to `lowest` (sparse) for the last instance."""
    exponents = torch.linspace(0.0, 1.0, n_instances)
    return (highest * (lowest / highest) ** exponents).to(device)


def importance_decay(
    cfg: ToyConfig, base: float = 0.9, device: torch.device | str = "cpu"
) -> Float[Tensor, "instance feature"]:
    """The paper's importance I_i = base**i, the same for every instance."""
    importance = base ** torch.arange(cfg.n_features, dtype=torch.float32)
    return importance.expand(cfg.n_instances, -1).clone().to(device)


def phase_grid(
    n_probabilities: int = 10,
    n_importances: int = 20,
    lowest_probability: float = 0.01,
    importance_range: tuple[float, float] = (0.1, 10.0),
    device: torch.device | str = "cpu",
) -> tuple[Float[Tensor, "instance"], Float[Tensor, "instance"]]:
    """A (feature probability x relative importance) grid, flattened into instances:
    probability varies slowest. Both axes are log-spaced."""
    p = torch.logspace(0.0, math.log10(lowest_probability), n_probabilities)
    lo, hi = importance_range
    r = torch.logspace(math.log10(lo), math.log10(hi), n_importances)
    pp, rr = torch.meshgrid(p, r, indexing="ij")
    return pp.flatten().to(device), rr.flatten().to(device)


def hidden_sampler(
    W: Float[Tensor, "instance hidden feature"],
    feature_probability: Float[Tensor, "instance"],
    generate: Callable,
    generator: torch.Generator,
    instance: int = 0,
) -> Callable[[int], Float[Tensor, "batch hidden"]]:
    """A function batch_size -> hidden activations h = W x of one toy-model instance, on
    fresh sparse features from `generate(batch_size, feature_probability, n_features, generator)`."""
    W_one = W.detach()[instance : instance + 1]
    p_one = feature_probability[instance : instance + 1]

    def sample(batch_size: int) -> Float[Tensor, "batch hidden"]:
        with torch.no_grad():
            x = generate(batch_size, p_one, W_one.shape[-1], generator)[:, 0]  # [batch, feature]
            return x @ W_one[0].T

    return sample


def linear_forward(
    W: Float[Tensor, "instance hidden feature"],
    b: Float[Tensor, "instance feature"],
    x: Float[Tensor, "batch instance feature"],
) -> Float[Tensor, "batch instance feature"]:
    """The toy model without its ReLU, x' = Wᵀ W x + b: the baseline that shows what the ReLU buys."""
    gram = torch.einsum("khf,khg->kfg", W, W)  # Wᵀ W, [instance, feature, feature]
    return torch.einsum("kfg,bkg->bkf", gram, x) + b


def init_sae_weights(
    n_hidden: int, n_latents: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[Float[Tensor, "hidden latent"], Float[Tensor, "latent"],
           Float[Tensor, "hidden latent"], Float[Tensor, "hidden"]]:
    """SAE parameters (W_enc, b_enc, W_dec, b_dec): random unit decoder columns, the
    encoder tied to the decoder at the start (W_enc = W_dec), zero biases."""
    W_dec = random_dictionary(n_hidden, n_latents, generator, device)
    return W_dec.clone(), torch.zeros(n_latents, device=device), W_dec, torch.zeros(n_hidden, device=device)


def random_dictionary(
    n_hidden: int, n_latents: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Float[Tensor, "hidden latent"]:
    """`n_latents` directions drawn uniformly on the unit sphere, as columns."""
    W = torch.randn(n_hidden, n_latents, generator=generator, device=device)
    return W / W.norm(dim=0, keepdim=True)


# ---------------------------------------------------------------- plots



def _grid(n: int, panel: float = 2.2, max_cols: int = 8) -> tuple[Figure, np.ndarray]:
    """A figure with n panels, at most `max_cols` per row, laid out by matplotlib."""
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols, panel * rows + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


def plot_loss_history(history: Float[Tensor, "step instance"], labels: Sequence[str] | None = None,
                      smooth: int = 50) -> Figure:
    """Per-instance training loss (moving average over `smooth` steps), log scale."""
    h = as_numpy(history)
    kernel = np.ones(min(smooth, len(h))) / min(smooth, len(h))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors = plt.cm.viridis(np.linspace(0, 0.9, h.shape[1]))
    for k in range(h.shape[1]):
        ax.plot(np.convolve(h[:, k], kernel, mode="valid"), color=colors[k],
                label=labels[k] if labels else None)
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    if labels:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_features_in_2d(W: Float[Tensor, "instance hidden feature"], titles: Sequence[str] | None = None) -> Figure:
    """One panel per instance: each feature's column W_i as an arrow in the 2-D hidden space
    (darker = lower index = more important with the paper's 0.9**i importance)."""
    Wn = as_numpy(W)
    assert Wn.shape[1] == 2, "plot_features_in_2d needs a 2-dimensional hidden space"
    n_inst, _, n_feat = Wn.shape
    colors = plt.cm.viridis(np.linspace(0, 0.85, n_feat))
    fig, axes = _grid(n_inst)
    for k, ax in enumerate(axes.flat[:n_inst]):
        for i in range(n_feat):
            ax.plot([0, Wn[k, 0, i]], [0, Wn[k, 1, i]], color=colors[i], lw=1.5)
            ax.scatter(Wn[k, 0, i], Wn[k, 1, i], color=colors[i], s=18, zorder=3)
        ax.set(xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), aspect="equal", xticks=[], yticks=[])
        if titles:
            ax.set_title(titles[k], fontsize=9)
    fig.suptitle("feature directions $W_i$ in the hidden space")
    return fig


def plot_gram_matrices(W: Float[Tensor, "instance hidden feature"], titles: Sequence[str] | None = None) -> Figure:
    """One heatmap of WᵀW per instance (red positive, blue negative)."""
    gram = as_numpy(torch.einsum("khi,khj->kij", W.detach(), W.detach()))
    fig, axes = _grid(gram.shape[0])
    for k, ax in enumerate(axes.flat[:gram.shape[0]]):
        ax.imshow(gram[k], cmap="RdBu_r", vmin=-1.2, vmax=1.2)
        ax.set(xticks=[], yticks=[])
        if titles:
            ax.set_title(titles[k], fontsize=9)
    fig.suptitle(r"$W^\top W$ (entry $i, j$: how much feature $j$ leaks into feature $i$)")
    return fig


def _interference_scale(interference: np.ndarray) -> plt.Normalize:
    """Colour scale from 0 (a dimension of its own) to the largest interference shown, at
    least 1: an antipodal pair scores 1, a pentagon 1.5, so clipping at 1 would hide them."""
    return plt.Normalize(0, max(1.0, float(np.nanmax(interference, initial=0.0))))


def _bars(ax: plt.Axes, norms: np.ndarray, interference: np.ndarray, scale: plt.Normalize) -> None:
    n = len(norms)
    colors = plt.cm.viridis(scale(interference))
    ax.barh(np.arange(n), norms, color=colors)
    ax.set(xlim=(0, 1.3), ylim=(n - 0.5, -0.5), yticks=[] if n > 10 else range(n))


def plot_feature_bars(norms: Float[Tensor, "instance feature"], interference: Float[Tensor, "instance feature"],
                      titles: Sequence[str] | None = None) -> Figure:
    """The paper's bar charts: per instance, one bar per feature, length ‖W_i‖,
    colour Σ_{j≠i}(Ŵ_i·W_j)² on one scale for all panels (dark: a dimension of its own;
    brighter: more of its direction shared)."""
    N, I = as_numpy(norms), as_numpy(interference)
    scale = _interference_scale(I)
    fig, axes = _grid(N.shape[0], panel=2.0)
    for k, ax in enumerate(axes.flat[:N.shape[0]]):
        _bars(ax, N[k], I[k], scale)
        if titles:
            ax.set_title(titles[k], fontsize=9)
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=scale)
    fig.colorbar(sm, ax=axes.ravel().tolist(), label="interference", shrink=0.9)
    fig.suptitle("feature norms ‖W_i‖ (bar length) and interference (colour)")
    return fig


def explore_toy_models(W: Float[Tensor, "instance hidden feature"], feature_probability: Float[Tensor, "instance"],
                       norms_and_interference: Callable):
    """A slider over instances that redraws WᵀW, the 2-D picture (when hidden = 2) and the
    feature bars of the chosen model. Works in JupyterLab and Colab (ipywidgets.interactive)."""
    import ipywidgets

    W = W.detach()
    norms, interference = (as_numpy(t) for t in norms_and_interference(W))
    scale = _interference_scale(interference)  # one scale for every instance, so colours compare
    gram = as_numpy(torch.einsum("khi,khj->kij", W, W))
    Wn, p = as_numpy(W), as_numpy(feature_probability)
    two_d = Wn.shape[1] == 2

    def draw(instance: int) -> None:
        fig, axes = plt.subplots(1, 3 if two_d else 2, figsize=(10 if two_d else 7, 3.2))
        axes[0].imshow(gram[instance], cmap="RdBu_r", vmin=-1.2, vmax=1.2)
        axes[0].set(title=r"$W^\top W$", xticks=[], yticks=[])
        _bars(axes[1], norms[instance], interference[instance], scale)
        axes[1].set_title("norm (length), interference (colour)", fontsize=9)
        if two_d:
            colors = plt.cm.viridis(np.linspace(0, 0.85, Wn.shape[2]))
            for i in range(Wn.shape[2]):
                axes[2].plot([0, Wn[instance, 0, i]], [0, Wn[instance, 1, i]], color=colors[i], marker="o")
            axes[2].set(xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), aspect="equal", title="hidden space")
        fig.suptitle(f"instance {instance}: feature probability p = {p[instance]:.3g} (sparsity {1 - p[instance]:.3g})")
        fig.tight_layout()
        plt.show()

    slider = ipywidgets.IntSlider(value=0, min=0, max=Wn.shape[0] - 1, description="instance",
                                  continuous_update=False)
    return ipywidgets.interactive(draw, instance=slider)


STICKY_FRACTIONS = {"1": 1.0, "3/4": 0.75, "2/3": 2 / 3, "1/2": 0.5, "2/5": 0.4, "3/8": 0.375}


def plot_dimensionality(W: Float[Tensor, "instance hidden feature"], feature_probability: Float[Tensor, "instance"],
                        dimensionality: Float[Tensor, "instance feature"]) -> Figure:
    """The paper's feature-dimensionality figure: against 1/(1-S) = 1/p, the model's
    dimensions per feature m / ‖W‖_F² (line) and every feature's D_i (dots), with the
    sticky fractions dashed."""
    Wn, p, D = as_numpy(W), as_numpy(feature_probability), as_numpy(dimensionality)
    x = 1.0 / p
    per_feature = Wn.shape[1] / (Wn**2).sum(axis=(1, 2))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for label, y in STICKY_FRACTIONS.items():
        ax.axhline(y, color="grey", ls="--", lw=0.7)
        ax.text(x.max() * 1.08, y, label, va="center", fontsize=8, color="grey")
    rng = np.random.default_rng(0)  # horizontal jitter only, so overlapping dots can be seen
    for k in range(len(x)):
        ax.scatter(x[k] * np.exp(rng.normal(0, 0.03, D.shape[1])), D[k], s=6, alpha=0.35, color="tab:blue")
    ax.plot(x, per_feature, color="black", marker="o", ms=3, label=r"dimensions per feature $m/\|W\|_F^2$")
    ax.scatter([], [], s=6, color="tab:blue", label=r"feature dimensionality $D_i$")
    ax.set(xscale="log", xlabel="1 / (1 - S) = 1 / p", ylabel="dimensions per feature", ylim=(-0.05, 1.3),
           title="feature dimensionality across sparsity")
    ax.legend(loc="upper center", fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


PHASE_NAMES = ("not represented", "dedicated dimension", "superposition")


def plot_phase_diagram(phases: Int[Tensor, "instance"], feature_probability: Float[Tensor, "instance"],
                       relative_importance: Float[Tensor, "instance"],
                       agreement: Float[Tensor, "instance"] | None = None) -> Figure:
    """The phase diagram of the extra feature over the grid made by `phase_grid`; with
    `agreement` (the share of a cell's runs that reached its phase), the cells where the
    runs disagreed are hatched."""
    from matplotlib.colors import ListedColormap

    p, r = as_numpy(feature_probability), as_numpy(relative_importance)
    ps, rs = np.unique(p), np.unique(r)
    grid = np.full((len(rs), len(ps)), np.nan)
    for ph, pk, rk in zip(as_numpy(phases), p, r):
        grid[np.searchsorted(rs, rk), np.searchsorted(ps, pk)] = ph
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    cmap = ListedColormap(["#d9d9d9", "#2c7fb8", "#f03b20"])
    ax.pcolormesh(ps, rs, grid, cmap=cmap, vmin=-0.5, vmax=2.5, shading="nearest")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in cmap.colors]
    labels = list(PHASE_NAMES)
    if agreement is not None:
        p_edges, r_edges = _cell_edges(ps), _cell_edges(rs)
        for a, pk, rk in zip(as_numpy(agreement), p, r):
            if a < 1:
                i, j = np.searchsorted(ps, pk), np.searchsorted(rs, rk)
                ax.add_patch(plt.Rectangle((p_edges[i], r_edges[j]), p_edges[i + 1] - p_edges[i],
                                           r_edges[j + 1] - r_edges[j], fill=False, hatch="///", linewidth=0))
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="///"))
        labels.append("runs disagree")
    ax.set(xscale="log", yscale="log", xlabel="feature probability p = 1 - S (dense at right)",
           ylabel="relative importance r of the extra feature",
           title="how the extra feature is represented (2 features, 1 dimension)")
    ax.legend(handles, labels, loc="upper left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return fig


def _cell_edges(centres: np.ndarray) -> np.ndarray:
    """Edges of the log-spaced cells centred on `centres`."""
    logs = np.log10(centres)
    mids = (logs[1:] + logs[:-1]) / 2
    return 10 ** np.concatenate([[2 * logs[0] - mids[0]], mids, [2 * logs[-1] - mids[-1]]])


def _cosines(W_true: Float[Tensor, "hidden feature"], W_dec: Float[Tensor, "hidden latent"]) -> np.ndarray:
    t = W_true / W_true.norm(dim=0, keepdim=True).clamp_min(1e-8)
    d = W_dec / W_dec.norm(dim=0, keepdim=True).clamp_min(1e-8)
    return as_numpy(t.T @ d)  # [feature, latent]


def plot_recovery(W_true: Float[Tensor, "hidden feature"], dictionaries: dict[str, Tensor]) -> Figure:
    """Left: for each true feature, its best cosine with each dictionary's directions.
    Right: the cosine matrix of the first dictionary, latents sorted by best-matching feature."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
    n = W_true.shape[1]
    width = 0.8 / len(dictionaries)
    for k, (name, W_dec) in enumerate(dictionaries.items()):
        best = _cosines(W_true, W_dec).max(axis=1)
        ax0.bar(np.arange(n) + k * width, best, width, label=f"{name} (mean {best.mean():.2f})")
    ax0.set(xlabel="true feature", ylabel="best cosine similarity", ylim=(0, 1.05), title="feature recovery")
    ax0.legend(fontsize=8, loc="lower right")
    first_name, first = next(iter(dictionaries.items()))
    cos = _cosines(W_true, first)
    order = np.lexsort((-cos.max(axis=0), cos.argmax(axis=0)))
    im = ax1.imshow(cos[:, order], cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax1.set(xlabel=f"{first_name} latent (sorted)", ylabel="true feature", title="cosine similarity")
    fig.colorbar(im, ax=ax1)
    fig.tight_layout()
    return fig
