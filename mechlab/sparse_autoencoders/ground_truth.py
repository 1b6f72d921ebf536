"""Chapter 4's ground truth: which positions of the corpus windows carry which label, and
the yardsticks a latent is scored against (a linear probe, the best raw dimension).
`mechlab.sparse_autoencoders.plots.ground_truth_table` puts them together with an SAE's latents.

The labels are scored where the model needs them, with the evidence inside the model's
64-token window:

- topic: "the" / "a" in a topical document after at least one topic or subtopic word of
  that document earlier in the window (positives, one binary label per topic), and "the" /
  "a" in bio and IOI documents (negatives of every label);
- subtopic: the same, but the earlier word must be a *subtopic* word: a general topic word
  ("game") does not say which subtopic ("football" or "tennis") the document is about, and
  at such positions (a fifth of the topical ones) the committed SAEs' best subtopic latents
  fire 0-8% of the time, so they would only measure the label's noise;
- sentiment: the token just before a sentiment word, with an earlier sentiment word of the
  same document in the window (labels "positive", "negative");
- known person: the last name of a two-token name whose first name is in the window,
  known (the corpus gives facts about this person) or unknown (label "known person").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechlab import corpus, zoo
from mechlab.sparse_autoencoders.activations import Windows

GROUPS = ("topic", "subtopic", "sentiment", "known person")


@dataclass(frozen=True)
class LabelSet:
    """The positions of one group of labels and each position's class.

    `mask[r, p]` selects store position p of window r (token position p + 1); `classes`
    holds, for the selected positions in row-major order, an index into `names` or -1
    ("none": a negative of every label). `reported` are the classes scored as labels."""

    group: str
    mask: Bool[np.ndarray, "batch pos"]
    classes: Int[np.ndarray, "batch"]
    names: tuple[str, ...]
    reported: tuple[int, ...]

    @property
    def rows(self) -> np.ndarray:
        return self.mask.nonzero()[0]

    @property
    def positions(self) -> np.ndarray:
        return self.mask.nonzero()[1]


def _seen_in_window(hits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """For every token position: how many `hits` came strictly earlier in the same document
    *and* in the same window (the model sees nothing outside its window)."""
    before = np.cumsum(hits, axis=1) - hits
    eot = tokens == zoo.token_ids([corpus.EOT])[0]
    starts = np.zeros_like(eot)
    starts[:, 0] = True
    starts[:, 1:] = eot[:, :-1]  # a document starts after every <eot>
    index = np.where(starts, np.arange(tokens.shape[1])[None], 0)
    first = np.maximum.accumulate(index, axis=1)  # where each position's document starts in the window
    return before - np.take_along_axis(before, first, axis=1)


def label_sets(windows: Windows) -> dict[str, LabelSet]:
    """The four groups of ground-truth labels (see the module docstring), over store positions."""
    L, tokens = windows.labels, windows.tokens.numpy()
    C = {name: i for i, name in enumerate(corpus.WORD_CLASSES)}
    R = {name: i for i, name in enumerate(corpus.NAME_ROLES)}
    wc, kind = L["word_class"], L["kind"]
    det = np.isin(tokens, zoo.token_ids(["the", "a"]))
    in_topic_doc = kind == corpus.KINDS.index("topic")
    negatives = det & ((kind == corpus.KINDS.index("bio")) | (kind == corpus.KINDS.index("ioi")))
    topic_seen = _seen_in_window((wc == C["topic"]) | (wc == C["subtopic"]), tokens) >= 1
    topic_mask = (det & in_topic_doc & topic_seen) | negatives
    subtopic_mask = (det & in_topic_doc & (_seen_in_window(wc == C["subtopic"], tokens) >= 1)) | negatives
    sentiment_word = wc == C["sentiment"]
    next_is_sentiment = np.zeros_like(sentiment_word)
    next_is_sentiment[:, :-1] = sentiment_word[:, 1:]
    sentiment_mask = next_is_sentiment & (_seen_in_window(sentiment_word, tokens) >= 1)
    named = np.isin(L["name_role"], [R["known_person"], R["unknown_person"]])
    first_before = np.zeros_like(named)
    first_before[:, 1:] = wc[:, :-1] == C["first_name"]
    first_before[:, 1] = False  # position 1's first name would be the BOS slot: not a name
    person_mask = (wc == C["last_name"]) & named & first_before

    def cut(mask: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = mask[:, 1:]
        return m, values[:, 1:][m].astype(np.int64)

    sets = {}
    m, topic = cut(topic_mask, L["topic"])
    sets["topic"] = LabelSet("topic", m, topic, corpus.TOPIC_NAMES, tuple(range(len(corpus.TOPIC_NAMES))))
    m, sub = cut(subtopic_mask, L["subtopic"])
    sets["subtopic"] = LabelSet("subtopic", m, sub, corpus.SUBTOPIC_NAMES, tuple(range(len(corpus.SUBTOPIC_NAMES))))
    m, sentiment = cut(sentiment_mask, L["sentiment"])
    sets["sentiment"] = LabelSet("sentiment", m, np.where(sentiment > 0, 0, 1), ("positive", "negative"), (0, 1))
    m, role = cut(person_mask, L["name_role"])
    sets["known person"] = LabelSet("known person", m, np.where(role == R["known_person"], 0, 1),
                                    ("known person", "unknown person"), (0,))
    return sets


def window_halves(n_windows: int, seed: int = 0) -> Bool[Tensor, "batch"]:
    """A seeded random half of the windows (True: half A, where latents and baselines are
    chosen; False: half B, where they are scored). Whole windows go to one side, so
    neighbouring positions of one document never straddle the split."""
    g = torch.Generator().manual_seed(seed)
    half = torch.zeros(n_windows, dtype=torch.bool)
    half[torch.randperm(n_windows, generator=g)[: n_windows // 2]] = True
    return half


def _f1(pred: Bool[Tensor, "batch"], truth: Bool[Tensor, "batch"]) -> float:
    tp = (pred & truth).sum().item()
    denominator = pred.sum().item() + truth.sum().item()
    return 2 * tp / denominator if denominator else 0.0


def fit_probe(x: Float[Tensor, "batch d_model"], classes: Int[Tensor, "batch"], n_classes: int, l2: float = 1e-3,
              steps: int = 200) -> Callable[[Tensor], Int[Tensor, "batch"]]:  # fmt: skip
    """A multinomial logistic regression (standardised inputs, full-batch L-BFGS, L2 penalty
    `l2` on the weights); returns its class prediction."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    W = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ W + b, classes) + l2 * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    W, b = W.detach(), b.detach()
    return lambda x_new: ((x_new - mu) / sd @ W + b).argmax(-1)


def best_raw_dimension(x: Float[Tensor, "batch d_model"], truth: Bool[Tensor, "batch"]) -> tuple[int, float, float]:
    """The residual-stream coordinate, sign and threshold whose detector sign * x[:, dim] >
    threshold has the best F1 on (x, truth), searching every threshold between two
    consecutive values. Returns (dim, sign, threshold)."""
    signed = torch.cat([x, -x], dim=1)  # column d + d_model is -x[:, d]
    values, order = signed.sort(0)  # ascending; "fires" = the top n - r entries of a column
    y = truth[order].float()
    n = len(x)
    suffix = y.flip(0).cumsum(0).flip(0)  # suffix[r] = positives among entries r..n-1
    fired = torch.arange(n, 0, -1, dtype=torch.float32)[:, None]
    f1 = 2 * suffix / (fired + truth.sum())
    r, column = divmod(int(f1.argmax()), f1.shape[1])
    threshold = -math.inf if r == 0 else float((values[r - 1, column] + values[r, column]) / 2)
    d_model = x.shape[1]
    return column % d_model, (1.0 if column < d_model else -1.0), threshold
