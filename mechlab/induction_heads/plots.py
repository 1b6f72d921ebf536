"""Chapter 2's pictures: attention patterns, head scores, losses by position, the
training history, composition scores and path ablations. None of this is an exercise."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import HTML, display
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.plotting import as_numpy



def show_attention(str_tokens: Sequence[str], pattern: Float[Tensor, "head query key"],
                   head_names: Sequence[str] | None = None) -> None:
    """circuitsvis's interactive attention heads: a thumbnail per head, and the pattern of
    the head you click or hover, with tokens along both axes.

    Uses circuitsvis's bundled JavaScript, not its CDN copy: the picture renders with no
    network (circuitsvis would otherwise probe the internet on every display).
    """
    import circuitsvis as cv

    rendered = cv.attention.attention_heads(attention=pattern.detach().float().cpu(), tokens=list(str_tokens),
                                            attention_head_names=list(head_names) if head_names else None)
    display(HTML(rendered.local_src))


def plot_loss_by_position(log_probs: Float[Tensor, "batch pos"], seq_len: int) -> Figure:
    """Mean loss at each position of repeated sequences, with the two copies marked."""
    loss = -as_numpy(log_probs).mean(0)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(np.arange(1, len(loss) + 1), loss, marker=".")
    ax.axvspan(0.5, seq_len + 0.5, color="tab:blue", alpha=0.08, label="first copy")
    ax.axvspan(seq_len + 0.5, 2 * seq_len + 0.5, color="tab:green", alpha=0.08, label="second copy")
    ax.set(xlabel="position of the predicted token", ylabel="loss (nats)", title="Loss on repeated random words")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_head_scores(scores: dict[str, Float[Tensor, "layer head"]], vmax: float = 1.0) -> Figure:
    """One heatmap per score (rows: layers, columns: heads), with the values written in."""
    fig, axes = plt.subplots(1, len(scores), figsize=(3.4 * len(scores), 2.8), squeeze=False, layout="constrained")
    for ax, (title, values) in zip(axes[0], scores.items()):
        v = as_numpy(values)
        im = ax.imshow(v, cmap="Blues", vmin=0, vmax=vmax)
        for (i, j), x in np.ndenumerate(v):
            ax.text(j, i, f"{x:.2f}", ha="center", va="center", color="white" if x > 0.6 * vmax else "black")
        ax.set(title=title, xlabel="head", ylabel="layer", xticks=range(v.shape[1]), yticks=range(v.shape[0]))
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return fig


def plot_ablation(increase: Float[Tensor, "layer head"], title: str) -> Figure:
    """Bar chart: how much each head's ablation raises the loss on the second copy."""
    v = as_numpy(increase)
    fig, ax = plt.subplots(figsize=(7, 2.8))
    labels = [f"{layer}.{head}" for layer in range(v.shape[0]) for head in range(v.shape[1])]
    colours = [f"C{layer}" for layer in range(v.shape[0]) for _ in range(v.shape[1])]
    ax.bar(labels, v.ravel(), color=colours)
    ax.set(xlabel="head (layer.head)", ylabel="loss increase (nats)", title=title)
    fig.tight_layout()
    return fig


def plot_paths(table) -> Figure:
    """Grouped bars of a path-ablation table (columns head, path, increase, se): for each
    layer-0 head, the second-copy loss increase through each input of layer 1 and in
    all of them, with error bars of two standard errors, on a symmetric log scale."""
    paths = list(dict.fromkeys(table["path"]))
    heads = sorted(set(int(h) for h in table["head"]))
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    width = 0.8 / len(paths)
    for i, path in enumerate(paths):
        rows = table[table["path"] == path].set_index("head").loc[heads]
        ax.bar(np.arange(len(heads)) + (i - (len(paths) - 1) / 2) * width, rows["increase"], width,
               yerr=2 * rows["se"], capsize=2, label=path, color=f"C{i}")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_yscale("symlog", linthresh=0.05)  # linear within ±0.05, so the small effects stay visible
    ticks = [t for t in (-1, -0.3, -0.1, -0.05, 0, 0.05, 0.1, 0.3, 1, 3, 10)
             if (table["increase"] - 2 * table["se"]).min() * 1.5 <= t <= (table["increase"] + 2 * table["se"]).max() * 1.5]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_ylim(top=max(0.1, float((table["increase"] + 2 * table["se"]).max()) * 2))
    ax.set_xticks(np.arange(len(heads)), [f"0.{h}" for h in heads])
    ax.set(xlabel="layer-0 head removed", ylabel="loss increase (nats, symlog)",
           title="Second-copy loss when a head is removed from one input of layer 1")
    ax.legend(title="path", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[dict[str, float]]) -> Figure:
    """The zoo model's training run: loss on each copy, and the best previous-token and
    induction scores, against the training step. Induction heads form in a phase change."""
    steps = [h["step"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    a.plot(steps, [h["first_half_loss"] for h in history], label="first copy")
    a.plot(steps, [h["second_half_loss"] for h in history], label="second copy")
    a.set(xlabel="training step", ylabel="loss (nats)", title="Held-out repeat lengths")
    a.legend()
    b.plot(steps, [h["best_previous_token_score"] for h in history], label="best previous-token head (layer 0)")
    b.plot(steps, [h["best_induction_score"] for h in history], label="best induction head")
    b.set(xlabel="training step", ylabel="score", title="Head scores", ylim=(0, 1))
    b.legend()
    fig.tight_layout()
    return fig


def plot_matrix(matrix: Float[Tensor, "row col"], title: str, xlabel: str, ylabel: str,
                start: int = 0, n: int = 40) -> Figure:  # fmt: skip
    """An `n` x `n` block of a [vocab, vocab] circuit, tokens `start` .. `start + n - 1`
    on both axes (a bright diagonal means the circuit maps each token to itself). The
    title says which block it is, and the ticks are the token ids."""
    size = matrix.shape[0]
    v = as_numpy(matrix[start:start + n, start:start + n])
    fig, ax = plt.subplots(figsize=(4.4, 3.8))
    lim = np.abs(v).max()
    last = start + v.shape[0] - 1
    im = ax.imshow(v, cmap="RdBu", vmin=-lim, vmax=lim, extent=(start - 0.5, last + 0.5, last + 0.5, start - 0.5))
    ax.set(title=f"{title}\n(tokens {start}-{last} of {size}: a {v.shape[0]}x{v.shape[1]} block)",
           xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def plot_composition(scores: dict[str, Float[Tensor, "head0 head1"]], baseline: float,
                     null=None, level: float = 0.05) -> Figure:
    """Q-, K- and V-composition scores between layer-0 heads (rows) and layer-1 heads
    (columns); the colour scale is centred on `baseline`, what an untrained model scores.
    With `null` (a table of kind, head0, head1, p), the pairs with p below `level` are starred."""
    fig, axes = plt.subplots(1, len(scores), figsize=(3.6 * len(scores), 3.0), squeeze=False, layout="constrained")
    vmax = max(float(v.max()) for v in scores.values())
    for ax, (kind, values) in zip(axes[0], scores.items()):
        v = as_numpy(values)
        im = ax.imshow(v, cmap="RdBu_r", vmin=2 * baseline - vmax, vmax=vmax)
        starred = set() if null is None else {
            (int(r.head0), int(r.head1)) for r in null[(null["kind"] == kind) & (null["p"] < level)].itertuples()}
        for (i, j), x in np.ndenumerate(v):
            ax.text(j, i, f"{x:.2f}" + "*" * ((i, j) in starred), ha="center", va="center", fontsize=8)
        ax.set(title=f"{kind}-composition", xlabel="layer-1 head", ylabel="layer-0 head",
               xticks=range(v.shape[1]), yticks=range(v.shape[0]))
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"score (untrained: {baseline:.3f})"
                 + ("" if null is None else f"; * p < {level:g}"))
    return fig

