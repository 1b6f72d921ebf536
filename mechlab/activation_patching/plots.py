"""Chapter 3's data and pictures: batches of indirect-object (IOI) prompts that share one
layout, and heatmaps of patching results. None of this is an exercise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.plotting import as_numpy

from mechlab import corpus, zoo


@dataclass(frozen=True)
class IOIBatch:
    """IOI prompts from one template, so every position means the same thing in every row."""

    tokens: Int[Tensor, "batch pos"]  # BOS + prompt
    correct: Int[Tensor, "batch"]  # the indirect object: the right answer
    distractor: Int[Tensor, "batch"]  # the subject, mentioned twice
    labels: tuple[str, ...]  # one per position, for plots
    prompts: tuple[corpus.IOIPrompt, ...]

    def to(self, device: str | torch.device) -> "IOIBatch":
        return IOIBatch(self.tokens.to(device), self.correct.to(device), self.distractor.to(device),
                        self.labels, self.prompts)


def ioi_batch(n: int, seed: int = 0, template: int = 0) -> IOIBatch:
    """`n` IOI prompts of one training template (half of them ABBA, half BABA, at random)."""
    prompts = corpus.ioi_prompts(n, seed=seed, template=template)
    tokens = torch.from_numpy(np.stack([np.concatenate([[zoo.BOS_ID], zoo.token_ids(p.tokens)]) for p in prompts]))
    return IOIBatch(tokens, torch.from_numpy(zoo.token_ids([p.correct for p in prompts])),
                    torch.from_numpy(zoo.token_ids([p.distractor for p in prompts])),
                    _labels(corpus.IOI_TEMPLATES[template], len(prompts[0].tokens)), tuple(prompts))


def _labels(template: str, length: int) -> tuple[str, ...]:
    """Position labels from the template: names by role, other slots by kind."""
    names = {"{X}": "name 1", "{Y}": "name 2", "{SUBJ}": "S2 (subject again)", "{PL}": "[place]",
             "{OBJ}": "[object]", "{IO}": "[answer]"}
    words = [names.get(w, w) for w in template.split()][:length]
    words[-1] = f"{words[-1]} (end)"
    return ("<eot>", *words)



def heatmap(values: Float[Tensor, "row col"], title: str, xlabels: Sequence[str] | None = None,
            ylabels: Sequence[str] | None = None, xlabel: str = "", ylabel: str = "",
            ax: plt.Axes | None = None, annotate: bool = True) -> Figure:  # fmt: skip
    """A diverging heatmap centred on 0 (red: restores the clean behaviour, blue: the opposite)."""
    v = as_numpy(values)
    fig = ax.figure if ax is not None else plt.figure(figsize=(max(4.0, 0.5 * v.shape[1] + 2), 0.45 * v.shape[0] + 1.6),
                                                      layout="constrained")
    ax = ax or fig.add_subplot()
    lim = max(float(np.abs(v).max()), 1e-6)
    im = ax.imshow(v, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    if annotate and v.size <= 400:
        for (i, j), x in np.ndenumerate(v):
            ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(x) > 0.6 * lim else "black")
    ax.set_xticks(range(v.shape[1]), xlabels if xlabels is not None else range(v.shape[1]),
                  rotation=60 if xlabels is not None else 0, ha="right" if xlabels is not None else "center")
    ax.set_yticks(range(v.shape[0]), ylabels if ylabels is not None else range(v.shape[0]))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def heads_by_position(values: Float[Tensor, "layer head pos"], labels: Sequence[str], title: str) -> Figure:
    """Per-head, per-position patching: one row per head (layer.head)."""
    n_layers, n_heads, _ = values.shape
    rows = values.reshape(n_layers * n_heads, -1)
    names = [f"{layer}.{head}" for layer in range(n_layers) for head in range(n_heads)]
    return heatmap(rows, title, labels, names, "position", "head", annotate=False)


def scatter_compare(estimate: Float[Tensor, "layer head"], actual: Float[Tensor, "layer head"],
                    title: str) -> Figure:  # fmt: skip
    """Attribution patching (y) against real activation patching (x), one point per head."""
    x, y = as_numpy(actual).ravel(), as_numpy(estimate).ravel()
    n_heads = actual.shape[1]
    fig, ax = plt.subplots(figsize=(4.6, 4.2), layout="constrained")
    ax.scatter(x, y)
    for i, (a, b) in enumerate(zip(x, y)):
        ax.annotate(f"{i // n_heads}.{i % n_heads}", (a, b), fontsize=8, xytext=(3, 3), textcoords="offset points")
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="y = x")
    ax.set(xlabel="activation patching", ylabel="attribution patching", title=title)
    ax.legend()
    return fig
