"""Chapter 4's data: corpus windows with their ground-truth labels, and an activation
store that holds a model's activations at one hook, in memory or on disk.

    windows = corpus_windows(n_tokens=400_000, seed=1)         # tokens [n, 64] and labels
    store = ActivationStore.collect(model, "blocks.1.hook_resid_pre", windows.tokens)
    for x in store.batches(4096, seed=0):                       # shuffled, normalised [4096, d_model]
        ...

The store drops the first position of every window: it is the beginning-of-sequence
token, whose residual stream is the same in every window and far from the rest, and
an SAE would spend latents on it. Every activation keeps the index of its window and
position, so a latent's activations can be traced back to tokens and labels.

Collected activations can be larger than memory (a bigger model, a longer corpus):
with `path=...` they are written to disk chunk by chunk and memory-mapped, and
`batches` shuffles within a buffer of chunks, so only the buffer is ever in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab import corpus, zoo
from mechlab.runtime import progress

N_CTX = 64  # the corpus models' context: BOS + 63 corpus tokens
SCALE_SAMPLE = 200_000  # activations the normalisation scale is computed from


@dataclass(frozen=True)
class Windows:
    """Windows of the corpus, each BOS + `N_CTX - 1` tokens, with every per-position label
    of `mechlab.corpus` (`labels[name]` is [n, N_CTX]; the BOS column has the labels of
    an "<eot>"), plus the document kind per position (`kind`: index into corpus.KINDS, -1
    at "<eot>")."""

    tokens: Int[Tensor, "batch pos"]
    labels: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.tokens)

    def words(self, row: int) -> list[str]:
        vocab = corpus.vocabulary()
        return [vocab[i] for i in self.tokens[row].tolist()]


def corpus_windows(n_tokens: int, seed: int = 1, n_ctx: int = N_CTX) -> Windows:
    """About `n_tokens` tokens of fresh corpus text (corpus seed `seed`, never one the
    model trained on: it trained on seed 0), cut into consecutive windows."""
    if seed == 0:
        raise ValueError("corpus seed 0 is corpus_2l's training text; use another seed for held-out text")
    docs = corpus.generate(corpus.CorpusConfig(seed=seed), n_tokens=n_tokens)
    words, labels = corpus.concatenate(docs)
    kinds = np.concatenate([np.full(len(d) + 1, corpus.KINDS.index(d.kind), dtype=np.int8) for d in docs])
    kinds[np.array(words) == corpus.EOT] = -1
    labels["kind"] = kinds
    width = n_ctx - 1
    n = len(words) // width
    ids = zoo.token_ids(words[: n * width]).reshape(n, width)
    eot = {name: arr[-1] for name, arr in labels.items()}  # the stream ends with an "<eot>"
    cut = {name: np.concatenate([np.full((n, 1), eot[name], dtype=arr.dtype),
                                 arr[: n * width].reshape(n, width)], axis=1) for name, arr in labels.items()}
    tokens = torch.cat([torch.full((n, 1), zoo.BOS_ID), torch.from_numpy(ids)], dim=1)
    return Windows(tokens, cut)


Collect = Callable[..., Float[Tensor, "batch pos d_model"]]  # (model, tokens, hook_name) -> activations


class ActivationStore:
    """A model's activations at one hook for every window and position but the first.

    `acts` is [n_windows, pos - 1, d_model] float32, a CPU tensor or a read-only view of a
    memory-mapped file; `scale` (see `normalisation_scale` in chapter 4) multiplies every
    batch `batches` gives, so the SAE sees activations with mean squared norm d_model.
    """

    def __init__(self, acts: np.ndarray | Tensor, hook_name: str, scale: float = 1.0) -> None:
        self.acts, self.hook_name, self.scale = acts, hook_name, scale

    @classmethod
    def collect(cls, model, hook_name: str, tokens: Int[Tensor, "batch pos"], *, collect: Collect | None = None,
                normalise: Callable[[Tensor], float] | None = None, batch_size: int = 128,
                path: str | Path | None = None, desc: str | None = None) -> "ActivationStore":  # fmt: skip
        """Run `model` over `tokens` in batches of `batch_size` windows, with a progress bar,
        keeping the activations at `hook_name` (BOS dropped). `collect(model, tokens,
        hook_name)` gets one batch's activations, and `normalise(acts)` the scale, from the
        first `SCALE_SAMPLE` activations (defaults: the chapter's reference
        `collect_activations` and `normalisation_scale`). With `path`, activations go to a
        float32 file written chunk by chunk and memory-mapped, never all in memory at once."""
        from mechlab.sparse_autoencoders import reference as ref

        collect = collect or ref.collect_activations
        normalise = normalise or ref.normalisation_scale
        n, pos = tokens.shape
        d_model = model.cfg.d_model
        shape = (n, pos - 1, d_model)
        out = (np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=shape) if path
               else torch.empty(shape))
        device = next(model.parameters()).device
        for start in progress(range(0, n, batch_size), desc=desc or f"collecting {hook_name}",
                              total=math.ceil(n / batch_size), unit="batch"):
            acts = collect(model, tokens[start:start + batch_size].to(device), hook_name)
            chunk = acts[:, 1:].detach().to("cpu", torch.float32)
            if path:
                out[start:start + len(chunk)] = chunk.numpy()
            else:
                out[start:start + len(chunk)] = chunk
        if path:
            out.flush()
            del out
            out = np.load(str(path), mmap_mode="r")
        store = cls(out, hook_name)
        store.scale = normalise(store.window(slice(0, math.ceil(SCALE_SAMPLE / (pos - 1)))).reshape(-1, d_model))
        return store

    @property
    def on_disk(self) -> bool:
        return isinstance(self.acts, np.ndarray)

    @property
    def d_model(self) -> int:
        return self.acts.shape[-1]

    def __len__(self) -> int:
        """The number of activations (windows x positions)."""
        return self.acts.shape[0] * self.acts.shape[1]

    def window(self, rows: slice | np.ndarray | Tensor) -> Float[Tensor, "batch pos d_model"]:
        """Unnormalised activations of whole windows (positions 1.., as stored)."""
        rows = rows.numpy() if isinstance(rows, Tensor) else rows
        a = self.acts[rows]
        return torch.from_numpy(np.array(a)) if self.on_disk else a  # a writable copy of the mapped rows

    def at(self, rows: np.ndarray, positions: np.ndarray) -> Float[Tensor, "n d_model"]:
        """Unnormalised activations at (window, position) pairs (positions as stored: BOS dropped)."""
        if self.on_disk:
            return torch.from_numpy(np.array(self.acts[rows, positions]))
        return self.acts[torch.as_tensor(rows), torch.as_tensor(positions)]

    def flat(self, limit: int | None = None) -> Float[Tensor, "n d_model"]:
        """The first `limit` activations (all by default), normalised, window by window."""
        rows = len(self.acts) if limit is None else min(len(self.acts), math.ceil(limit / self.acts.shape[1]))
        return self.window(slice(0, rows)).reshape(-1, self.d_model)[:limit] * self.scale

    def batches(self, batch_size: int, seed: int = 0, buffer_windows: int = 4096
                ) -> Iterator[Float[Tensor, "batch d_model"]]:  # fmt: skip
        """Endless shuffled batches of normalised activations. Windows are visited in a
        random order, `buffer_windows` at a time; the activations of each buffer are
        shuffled together and cut into batches (the remainder carries over), and after
        every pass the order is drawn again. Same seed, same batches."""
        g = torch.Generator().manual_seed(seed)
        n = len(self.acts)
        carry = torch.empty(0, self.d_model)
        while True:
            order = torch.randperm(n, generator=g)
            for start in range(0, n, buffer_windows):
                rows = order[start:start + buffer_windows].sort().values  # sorted: contiguous disk reads
                buffer = torch.cat([carry, self.window(rows).reshape(-1, self.d_model)])
                buffer = buffer[torch.randperm(len(buffer), generator=g)]
                usable = len(buffer) // batch_size * batch_size
                for i in range(0, usable, batch_size):
                    yield buffer[i:i + batch_size] * self.scale
                carry = buffer[usable:]
