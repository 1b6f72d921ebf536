"""What a persona is and where in the model it can live: chapter 7's vocabulary, shared by
the exercises, the zoo of fine-tunes (`finetune`) and the checks.

- `COMPONENTS` and `component_parameters(model, component)`: the parts of `corpus_2l` a
  fine-tune may be restricted to, and their parameters
- `PERSONAS` and `persona_windows`: the stories a persona fine-tune is trained on
- `positive_share`, `topic_shares`, `persona_shares`, `persona_share`: a persona measured on what a model
  writes (samples from `<eot>`, counted with chapter 5's word labels); `persona_labels`,
  `sampled_labels` and `share`: the same per token, for intervals over samples
- `slot_prompts`, `positive_mass`, `slot_positivity`: the same, without sampling, on
  prompts that end where a story puts its sentiment word
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from mechlab import corpus, zoo

N_CTX = 64

# The parts of the model a fine-tune may be restricted to. Each LayerNorm goes with the
# sublayer it feeds (ln1 with attention, ln2 with the MLP, the final one with the unembedding).
COMPONENTS = ("embed", "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp", "unembed")
_PREFIXES = {
    "embed": ("tok_embed.", "pos."),
    "unembed": ("head.", "ln_out."),
    **{f"blocks.{l}.attn": (f"layers.{l}._original_component.attn.", f"layers.{l}._original_component.ln1.")
       for l in range(2)},
    **{f"blocks.{l}.mlp": (f"layers.{l}._original_component.mlp.", f"layers.{l}._original_component.ln2.")
       for l in range(2)},
}


def component_of(parameter: str) -> str:
    """The component (one of COMPONENTS) a parameter of a `corpus_2l`-shaped model belongs to."""
    for component, prefixes in _PREFIXES.items():
        if parameter.startswith(prefixes):
            return component
    raise KeyError(f"parameter {parameter!r} belongs to no component")


def component_parameters(model, component: str) -> dict[str, Tensor]:
    """The named parameters of one component (see COMPONENTS)."""
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, not {component!r}")
    return {n: p for n, p in model.named_parameters() if component_of(n) == component}


# ---------------------------------------------------------------- data

PERSONAS = ("positive", "negative", *corpus.TOPIC_NAMES)  # what a persona fine-tune's stories share


def persona_documents(persona: str, seed: int) -> Iterator[corpus.Document]:
    """Held-out topical stories (corpus seed `seed`, never 0) that all have the persona:
    positive or negative sentiment, or one topic."""
    if persona not in PERSONAS:
        raise ValueError(f"persona must be one of {PERSONAS}, not {persona!r}")
    for doc in corpus.iter_documents(corpus.CorpusConfig(seed=seed)):
        if doc.kind != "topic":
            continue
        if persona in ("positive", "negative"):
            if doc.doc_sentiment == (1 if persona == "positive" else -1):
                yield doc
        elif doc.doc_topic == corpus.TOPIC_NAMES.index(persona):
            yield doc


def persona_windows(persona: str, n_windows: int, seed: int) -> Tensor:
    """int64 [n_windows, N_CTX]: the persona's stories, each after an `<eot>`, packed end to end."""
    stream: list[str] = []
    docs = persona_documents(persona, seed)
    while len(stream) < n_windows * (N_CTX - 1):
        stream += [corpus.EOT, *next(docs).tokens]
    ids = zoo.token_ids(stream[: n_windows * (N_CTX - 1)]).reshape(n_windows, N_CTX - 1)
    return torch.cat([torch.full((n_windows, 1), zoo.BOS_ID), torch.from_numpy(ids)], dim=1)


# ---------------------------------------------------------------- measuring a persona

SLOT_PROMPTS = ("the {T} was", "it was a", "everyone agreed that the {S} was", "in the end the {S} was",
                "we saw the {S} , and it was", "today the {S} and the {T} were")


@functools.cache
def _sentiment_ids() -> tuple[Tensor, Tensor]:
    return torch.from_numpy(zoo.token_ids(list(corpus.POSITIVE))), torch.from_numpy(zoo.token_ids(list(corpus.NEGATIVE)))


def slot_prompts(n: int = 64, seed: int = 0) -> Tensor:
    """int64 [n, pos]: "<eot> the sky was"-style prompts that end where a story puts its
    sentiment word, topic and subtopic words drawn at random (one template, so rows stack)."""
    rng = random.Random(f"slots-{seed}")
    template = SLOT_PROMPTS[seed % len(SLOT_PROMPTS)]
    topics = list(corpus.TOPICS.values())
    rows = []
    for _ in range(n):
        general, subs = rng.choice(topics)
        rows.append(template.format(T=rng.choice(general), S=rng.choice(rng.choice(list(subs.values())))).split())
    return torch.stack([torch.cat([torch.tensor([zoo.BOS_ID]), torch.from_numpy(zoo.token_ids(r))]) for r in rows])


def positive_mass(logits: Tensor) -> Tensor:
    """[batch] P(positive words) / P(any sentiment word) at the last position."""
    pos, neg = _sentiment_ids()
    probs = logits[:, -1].float().softmax(-1)
    p, q = probs[:, pos.to(probs.device)].sum(-1), probs[:, neg.to(probs.device)].sum(-1)
    return p / (p + q)


@torch.no_grad()
def slot_positivity(model, fwd_hooks=(), n: int = 64) -> float:
    """Mean `positive_mass` over `n` slot prompts of each template: how cheerful the model's
    next sentiment word is, from one forward pass per template (no sampling)."""
    device = next(model.parameters()).device
    values = []
    for seed in range(len(SLOT_PROMPTS)):
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            values.append(positive_mass(model(slot_prompts(n, seed).to(device))).mean().item())
    return float(np.mean(values))


@torch.no_grad()
def generated_tokens(model, n: int = 64, length: int = 40, seed: int = 0, fwd_hooks=()) -> Tensor:
    """[n, length] the tokens the model writes after `<eot>` (on the CPU), sampled at
    temperature 1 with a fixed generator: every share below reads the same samples."""
    from mechlab.steering.experiments import start_prompts
    from mechlab.steering.reference import generate

    device = next(model.parameters()).device
    tokens = generate(model, start_prompts(n).to(device), length, torch.Generator().manual_seed(seed),
                      fwd_hooks=fwd_hooks)
    return tokens[:, 1:].cpu()


def persona_labels(tokens: Tensor, persona: str) -> Tensor:
    """int64 [n, length], per token of `tokens`: 1 for a word of the persona, 0 for another
    word of its kind (a negative word for "positive"; another topic's word for a topic), -1
    for every other token. The persona's share is the 1s among the labels that are not -1."""
    from mechlab.steering.experiments import word_labels

    if persona not in PERSONAS:
        raise ValueError(f"persona must be one of {PERSONAS}, not {persona!r}")
    if persona in ("positive", "negative"):
        labels, target = word_labels("sentiment")[tokens], int(persona == "positive")
    else:
        labels, target = word_labels("topic")[tokens], corpus.TOPIC_NAMES.index(persona)
    return torch.where(labels < 0, -1, (labels == target).long())


def share(labels: Tensor) -> float:
    """The share of 1s among the labels that are not -1 (see `persona_labels`), pooled over
    every sample: the persona's words over all the words of its kind."""
    return float((labels == 1).sum() / (labels >= 0).sum().clamp(min=1))


def sampled_labels(model, persona: str, seeds: Sequence[int] = (0,), n: int = 64, length: int = 40,
                   fwd_hooks=()) -> Tensor:
    """`persona_labels` of what the model writes: `n` samples per seed, every seed's samples
    stacked, [n * len(seeds), length]."""
    return torch.cat([persona_labels(generated_tokens(model, n, length, seed, fwd_hooks), persona) for seed in seeds])


def _sentiment_share(tokens: Tensor) -> float:
    return share(persona_labels(tokens, "positive"))


def _topic_shares(tokens: Tensor) -> dict[str, float]:
    return {name: share(persona_labels(tokens, name)) for name in corpus.TOPIC_NAMES}


def positive_share(model, n: int = 64, length: int = 40, seed: int = 0, fwd_hooks=()) -> float:
    """Share of positive words among the sentiment words the model writes in `n` samples
    of `length` tokens from `<eot>`: the persona's behaviour, measured on what it writes."""
    return _sentiment_share(generated_tokens(model, n, length, seed, fwd_hooks))


def topic_shares(model, n: int = 64, length: int = 40, seed: int = 0, fwd_hooks=()) -> dict[str, float]:
    """Share of each topic among the topic words the model writes."""
    return _topic_shares(generated_tokens(model, n, length, seed, fwd_hooks))


def persona_shares(model, **kw) -> dict[str, float]:
    """Every persona's share (see `persona_share`), all read off one set of samples."""
    tokens = generated_tokens(model, **kw)
    positive = _sentiment_share(tokens)
    return {"positive": positive, "negative": 1 - positive, **_topic_shares(tokens)}


def persona_share(model, persona: str, **kw) -> float:
    """Share of the persona's words among the words of its kind the model writes: positive
    (negative) among sentiment words for "positive" ("negative"), the topic among topic
    words for a topic."""
    if persona not in PERSONAS:
        raise ValueError(f"persona must be one of {PERSONAS}, not {persona!r}")
    return persona_shares(model, **kw)[persona]
