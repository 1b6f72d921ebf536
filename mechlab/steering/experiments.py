"""Chapter 5's helpers: contrast pairs and prompts from the corpus, word labels for
measuring what generated text is about, the known/unknown names split, the sweeps'
plots and the steering panel.

None of this is an exercise: the learner's functions (`contrast_vector`,
`steering_hook`, `generate`, `success_rate`, `extra_loss`, ...) are passed in and do
the work; this module builds their inputs from the corpus's ground truth and draws
what they return.

    pos, neg = contrast_pairs("topic", "food", n=64, seed=0)
    labels = word_labels("topic")                  # [d_vocab] topic id per token, -1 for others
    table = sweep(...)                             # success and damage over sites and coefficients
    plot_sweep(table, "food")

Conventions. Tokens carry the beginning-of-sequence token `<eot>` first, as
`model.to_tokens` writes them. A *relative* coefficient `c` means the vector is
rescaled to `c` times the mean norm of the residual stream at the site where it is
added (`residual_norm` in the chapter): a push of the same size relative to what is
already there, which makes sites comparable (not equal: see the chapter). Everything
returned is on the CPU; models may live on a GPU.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from torch import Tensor

from mechlab import corpus, zoo
from mechlab.runtime import progress

PROPERTIES = ("topic", "sentiment")
SENTIMENT_NAMES = ("negative", "positive")  # label values 0 and 1 of `word_labels("sentiment")`

# Topical templates that name nobody: a pair differs only in its topic (or sentiment) words.
_PAIR_TEMPLATES = tuple(t for t in corpus.TOPIC_TEMPLATES if "{N1}" not in t)


def residual_sites(model) -> list[str]:
    """Every place a vector can be added to the residual stream, from the embedding to the
    last layer's output: blocks.0.hook_resid_pre, blocks.0.hook_resid_mid, ...,
    blocks.{L-1}.hook_resid_post (no resid_mid in attention-only models, whose blocks
    have nothing between the attention layer and the block's output)."""
    sites = []
    for layer in range(model.cfg.n_layers):
        sites += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_mid"]
    sites.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    return [site for site in sites if site in model.hook_dict]


def short_site(hook_name: str) -> str:
    """"blocks.1.hook_resid_pre" -> "1.resid_pre"."""
    return hook_name.removeprefix("blocks.").replace("hook_", "")


# ---------------------------------------------------------------- data from the corpus


def _labels_of(prop: str) -> tuple[str, ...]:
    if prop == "topic":
        return corpus.TOPIC_NAMES
    if prop == "sentiment":
        return SENTIMENT_NAMES
    raise ValueError(f"property must be one of {PROPERTIES}, not {prop!r}")


def label_index(prop: str, target: str | int) -> int:
    """The label id of `target` ("food" -> 1 for topics, "positive" -> 1 for sentiment)."""
    names = _labels_of(prop)
    if isinstance(target, int):
        return target
    if target not in names:
        raise ValueError(f"{prop} must be one of {names}, not {target!r}")
    return names.index(target)


def contrast_pairs(prop: str, target: str | int, n: int, seed: int = 0, sentences: int = 3
                   ) -> tuple[Int[Tensor, "n pos"], Int[Tensor, "n pos"]]:  # fmt: skip
    """`n` contrast pairs of short corpus-style documents, as two aligned token tensors.

    Row i of both tensors is the same `sentences` templates with the same slots filled,
    except the property: for "topic", the first has `target`'s topic and subtopic words
    and the second another topic's (drawn per pair); for "sentiment", the first has
    positive words ("positive" target) and the second negative ones, or the other way
    round. All rows share one sequence of templates, so positions line up and the
    tensors stack."""
    t = label_index(prop, target)
    rng = random.Random(f"pairs-{prop}-{t}-{seed}")
    templates = [rng.choice(_PAIR_TEMPLATES) for _ in range(sentences)]
    topics = list(corpus.TOPICS.values())
    rows_a, rows_b = [], []
    for _ in range(n):
        if prop == "topic":
            a_topic, b_topic = t, rng.choice([i for i in range(len(topics)) if i != t])
            polar_a = polar_b = rng.choice((corpus.POSITIVE, corpus.NEGATIVE))
        else:
            a_topic = b_topic = rng.randrange(len(topics))
            polar_a, polar_b = (corpus.POSITIVE, corpus.NEGATIVE) if t == 1 else (corpus.NEGATIVE, corpus.POSITIVE)
        sub_a = rng.randrange(3)
        words_a, words_b = [], []
        for template in templates:
            i_t, i_s, i_p = rng.randrange(8), rng.randrange(4), rng.randrange(8)
            for words, topic, polar in ((words_a, a_topic, polar_a), (words_b, b_topic, polar_b)):
                general, subs = topics[topic]
                words += template.format(T=general[i_t], S=list(subs.values())[sub_a][i_s], P=polar[i_p]).split()
        rows_a.append(words_a)
        rows_b.append(words_b)
    return _tokens(rows_a), _tokens(rows_b)


def _tokens(rows: Sequence[Sequence[str]]) -> Int[Tensor, "n pos"]:
    return torch.stack([torch.cat([torch.tensor([zoo.BOS_ID]), torch.from_numpy(zoo.token_ids(list(r)))])
                        for r in rows])


def word_labels(prop: str) -> Int[Tensor, "d_vocab"]:
    """The label of every token in the vocabulary, -1 for tokens that carry none: for
    "topic", the topic id (0-4) of each topic and subtopic word; for "sentiment", 1 for a
    positive word and 0 for a negative one. This is the corpus generator's own word list,
    so it is the ground truth of what a piece of text is about."""
    _labels_of(prop)  # a clear error for an unknown property
    groups: list[Sequence[str]] = (
        [list(general) + [w for ws in subs.values() for w in ws] for general, subs in corpus.TOPICS.values()]
        if prop == "topic" else [corpus.NEGATIVE, corpus.POSITIVE])
    labels = torch.full((len(corpus.vocabulary()),), -1)
    for label, words in enumerate(groups):
        labels[torch.from_numpy(zoo.token_ids(list(words)))] = label
    return labels


def start_prompts(n: int) -> Int[Tensor, "n 1"]:
    """`n` empty prompts (only the beginning-of-sequence token): the model picks what to
    write about, so any topic in the continuation is the steering's doing or chance."""
    return torch.full((n, 1), zoo.BOS_ID)


@dataclass(frozen=True)
class Names:
    """Known people and unknown pairs (two tokens each), split into the names a
    direction is fitted on and held-out names it is tested on."""

    known_train: list[tuple[str, str]]
    unknown_train: list[tuple[str, str]]
    known_test: list[tuple[str, str]]
    unknown_test: list[tuple[str, str]]
    hedged: frozenset[tuple[str, str]]  # unknown pairs the corpus writes hedges about


def entity_split(n_known: int = 8, n_unknown: int = 16, seed: int = 0) -> Names:
    """`n_known` known people and `n_unknown` unknown pairs to fit on; the rest held out."""
    world = corpus.build_world()
    rng = np.random.default_rng(seed)
    known = [(p.first, p.last) for p in world.known]
    unknown = list(world.unknown)
    k, u = rng.permutation(len(known)), rng.permutation(len(unknown))
    return Names([known[i] for i in k[:n_known]], [unknown[i] for i in u[:n_unknown]],
                 [known[i] for i in k[n_known:]], [unknown[i] for i in u[n_unknown:]], frozenset(world.hedged))


def name_prompts(names: Sequence[tuple[str, str]], suffix: str = "") -> Int[Tensor, "n pos"]:
    """"<eot> first last" + suffix for each name; the last name sits at position 2."""
    return _tokens([[first, last, *suffix.split()] for first, last in names])


def answer_tokens() -> tuple[int, Int[Tensor, "n_cities"]]:
    """The hedge token ("some", as in "lives in some town") and the city tokens: what
    follows "first last lives in" in the corpus."""
    return int(zoo.token_ids(["some"])[0]), torch.from_numpy(zoo.token_ids(list(corpus.CITIES)))


def borrowed_city(name: tuple[str, str], city: str) -> bool:
    """Whether `city` is the city of *another* known person who shares a first or last name
    with `name`: the answer a name gets when the model confuses it with them."""
    return any(city == p.city and (p.first == name[0] or p.last == name[1]) and (p.first, p.last) != tuple(name)
               for p in corpus.build_world().known)


def ordinary_text(n_windows: int = 32, seed: int = 3) -> Int[Tensor, "n 64"]:
    """Held-out corpus windows (never trained on) to measure what steering breaks."""
    from mechlab.sparse_autoencoders.activations import corpus_windows

    return corpus_windows(n_windows * 64, seed=seed).tokens[:n_windows]


def topic_text(prop_target: str, n: int = 32, length: int = 30, seed: int = 5) -> Int[Tensor, "n length_plus_1"]:
    """`n` held-out topical documents about topic `prop_target` ("food"), each cut to its
    first `length` tokens, BOS first: text on which steering towards that topic agrees with
    what is written."""
    t = label_index("topic", prop_target)
    rows = []
    for doc in corpus.iter_documents(corpus.CorpusConfig(seed=seed)):
        if doc.kind == "topic" and doc.doc_topic == t and len(doc) >= length:
            rows.append(doc.tokens[:length])
            if len(rows) == n:
                return _tokens(rows)
    raise AssertionError("unreachable: the corpus is endless")


def relative(vector: Float[Tensor, "d_model"], norm: float, coefficient: float) -> Float[Tensor, "d_model"]:
    """`vector` rescaled to `coefficient` times `norm` (a residual stream's mean norm)."""
    return vector / vector.norm() * norm * coefficient


def decode(model, tokens: Int[Tensor, "pos"]) -> str:
    """Generated tokens as text, with documents on separate lines (`<eot>` shown as ¶)."""
    words = [("¶" if w == corpus.EOT else w) for w in model.to_str_tokens(tokens)]
    return " ".join(words).replace("¶ ", "¶\n  ").strip()


# ---------------------------------------------------------------- sweeps and plots


def sweep(run: Callable[[str, float], dict[str, float]], sites: Sequence[str], coefficients: Sequence[float],
          desc: str = "steering sweep") -> pd.DataFrame:  # fmt: skip
    """`run(site, coefficient)` -> measurements, over every site and coefficient, with a
    progress bar; one row per setting."""
    rows = []
    settings = [(s, c) for s in sites for c in coefficients]
    for site, c in progress(settings, desc=desc):
        rows.append({"site": site, "coefficient": c, **run(site, c)})
    return pd.DataFrame(rows)


def best_setting(table: pd.DataFrame, max_extra_loss: float = 0.1) -> pd.Series:
    """The row with the highest success among those that cost at most `max_extra_loss`
    nats on ordinary text (ties: the smaller coefficient)."""
    ok = table[table["extra_loss"] <= max_extra_loss]
    if ok.empty:
        raise ValueError(f"no setting costs less than {max_extra_loss} nats")
    return ok.sort_values(["success", "coefficient"], ascending=[False, True]).iloc[0]


def generation_loss(model, tokens: Int[Tensor, "batch pos"], prompt_length: int) -> float:
    """The *unsteered* model's mean loss on the generated tokens (after the prompt): how
    unlike the corpus the generations read. Call it outside any steering hooks."""
    with torch.no_grad():
        logits = model(tokens)[:, prompt_length - 1:-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, prompt_length:].flatten()).item()


def plot_sweep(table: pd.DataFrame, target: str, baseline: float) -> Figure:
    """Success rate, extra loss, the generations' loss and repetition against the relative
    coefficient, one line per site."""
    columns = [("success", f"generations about {target}"), ("extra_loss", "extra loss on ordinary text (nats)"),
               ("generation_loss", "unsteered model's loss on generations"),
               ("repetition", "repeated bigrams in generations")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6), layout="constrained")
    for site, rows in table.groupby("site", sort=False):
        for ax, (column, _) in zip(axes, columns):
            ax.plot(rows["coefficient"], rows[column], marker="o", label=short_site(site))
    for ax, (_, title) in zip(axes, columns):
        ax.set_title(title)
        ax.set_xlabel("coefficient (× residual norm)")
    axes[0].axhline(baseline, color="grey", ls=":", label="no steering")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_yscale("symlog", linthresh=0.1)
    axes[0].legend(fontsize=8)
    return fig


def plot_tradeoff(curves: dict[str, pd.DataFrame], target: str) -> Figure:
    """Success against extra loss for several ways of steering: the further up and left,
    the better. Extra losses below 0.001 nats (including zero and small negative ones)
    are drawn at 0.001, the left edge of the log axis."""
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for label, rows in curves.items():
        ax.plot(rows["extra_loss"].clip(lower=1e-3), rows["success"], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("extra loss on ordinary text (nats, log scale; ≤ 0.001 drawn at 0.001)")
    ax.set_ylabel(f"generations about {target}")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("effect against damage")
    return fig


def plot_probe(table: pd.DataFrame, target: str) -> Figure:
    """The probe's reading and the success rate against the coefficient."""
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    for label, rows in table.groupby("method", sort=False):
        ax.plot(rows["coefficient"], rows["probe"], marker="o", label=f"{label}: probe P({target})")
        ax.plot(rows["coefficient"], rows["success"], marker="x", ls="--", label=f"{label}: generations about {target}")
    ax.set_xlabel("coefficient (× residual norm)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return fig


def plot_entity(table: pd.DataFrame) -> Figure:
    """P(hedge) and the probability mass on cities against the coefficient, one panel per
    group of held-out names, for the entity direction and the random control."""
    groups = list(table["names"].unique())
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), layout="constrained", sharey=True)
    for ax, group in zip(np.atleast_1d(axes), groups):
        rows = table[table["names"] == group]
        for (direction, column), style in zip([(d, c) for d in ("entity", "random") for c in ("hedge", "cities")],
                                              ["-o", "-s", ":o", ":s"]):
            r = rows[rows["direction"] == direction]
            ax.plot(r["coefficient"], r[column], style, label=f"{direction} direction: P({column})")
        ax.set_title(f"held-out {group} names: '... lives in' →")
        ax.set_xlabel("coefficient (× residual norm; negative = subtract)")
        ax.axvline(0, color="grey", lw=0.5)
    np.atleast_1d(axes)[0].set_ylabel("probability")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    return fig


def plot_scores(scores: Float[Tensor, "n"], groups: Sequence[str], title: str) -> Figure:
    """Projections of names onto a direction, one histogram per group."""
    s = scores.detach().float().cpu().numpy()
    labels = np.asarray(groups)
    fig, ax = plt.subplots(figsize=(6, 2.6), layout="constrained")
    bins = np.linspace(s.min(), s.max(), 25)
    for group in dict.fromkeys(groups):
        ax.hist(s[labels == group], bins=bins, alpha=0.6, label=f"{group} names")
    ax.set_title(title)
    ax.set_xlabel("projection onto the direction")
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- the steering panel


def steering_panel(model, steers: dict[str, Callable[[float], list]], measure: Callable[[list], dict[str, float]],
                   sample: Callable[[list], list[str]], coefficients: tuple[float, float, float] = (-2.0, 2.0, 0.25),
                   start: float = 0.5):  # fmt: skip
    """Pick a way of steering, move its coefficient, and see sample generations and the
    measurements change. `steers[name](coefficient)` returns the forward hooks for that
    setting, `measure(hooks)` a dict of numbers (e.g. success rate and extra loss) and
    `sample(hooks)` a few generated texts. Works in JupyterLab and Colab (plain ipywidgets)."""
    import html

    import ipywidgets
    from IPython.display import HTML, display

    low, high, step = coefficients
    menu = ipywidgets.Dropdown(options=list(steers), description="steer with", layout=ipywidgets.Layout(width="360px"),
                               style={"description_width": "initial"})
    slider = ipywidgets.FloatSlider(value=start, min=low, max=high, step=step, description="coefficient",
                                    continuous_update=False, readout_format=".2f",
                                    layout=ipywidgets.Layout(width="420px"))
    out = ipywidgets.Output()

    def draw(_=None) -> None:
        hooks = steers[menu.value](slider.value)
        numbers = measure(hooks)
        texts = sample(hooks)
        summary = " &nbsp; ".join(f"<b>{html.escape(k)}</b>: {v:.3f}" for k, v in numbers.items())
        lines = "".join(f"<li><code>{html.escape(t)}</code></li>" for t in texts)
        out.clear_output(wait=True)
        with out:
            display(HTML(f"<div style='font-size:13px'>{summary}<ol>{lines}</ol></div>"))

    menu.observe(draw, names="value")
    slider.observe(draw, names="value")
    draw()
    return ipywidgets.VBox([ipywidgets.HBox([menu, slider]), out])
