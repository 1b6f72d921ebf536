"""Chapter 5's graded investigation: steer the course model towards a topic the chapter
never steered towards (weather), far enough to matter and cheaply enough to keep it.

The learner answers with a *setting*, not a number: a vector to add at one residual
site, or an SAE latent to clamp. The grader builds the hooks itself, with the course's
own code, and measures the setting on generations and text the learner never saw:

    setting = {"site": "blocks.0.hook_resid_mid", "vector": v}     # v added at every position after BOS
    setting = {"latent": 197, "value": 5.0}                          # clamp at the SAE's site, error kept
    result = measure(model, sae, setting)                            # success and extra loss, held out
    result.passes                                                    # both within the bars below

The truth is measured, not planted: the corpus generator's word lists say which topic a
generation is about (`experiments.word_labels`), and the extra loss on held-out corpus
text says what the setting costs. Because the hooks are the grader's, an answer cannot
steer only when it is being measured for success (a hook that looks at the sequence's
length, say); it is one fixed intervention, measured twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mechlab.checks import CheckFailed, checked_array, seeded
from mechlab.pristine import type_ as _type
from mechlab.steering import experiments as st
from mechlab.steering import reference as ref

TARGET = "weather"  # a topic the chapter does not steer towards (it steers towards food)
MIN_SUCCESS = 0.35  # at least this share of held-out generations about the target (unsteered: 0.14)
MAX_EXTRA_LOSS = 0.06  # nats of extra loss on held-out ordinary text, at most
N_GENERATIONS, GEN_LENGTH, GENERATION_SEED = 256, 24, 2024  # held out: the chapter samples from seeds 0 and 1
N_WINDOWS, TEXT_SEED = 32, 21  # held-out corpus windows for the damage (the chapter's text is seed 3)
SAE_ID, SAE_SITE = "topk_k8_w1024", "blocks.1.hook_resid_pre"  # chapter 4's TopK SAE, as in section 5
AFTER_BOS = slice(1, None)  # vectors and clamps act at every position but BOS, as in the chapter
VECTOR_KEYS, CLAMP_KEYS = {"site", "vector"}, {"latent", "value"}


@dataclass(frozen=True)
class Setting:
    """A validated answer: a vector at a site, or a clamped latent (at the SAE's site)."""

    site: str
    vector: torch.Tensor | None = None  # [d_model], CPU float32, a copy the learner cannot reach
    latent: int | None = None
    value: float | None = None

    def describe(self) -> str:
        if self.vector is not None:
            return f"a vector of norm {self.vector.norm():.2f} at {self.site}"
        return f"latent {self.latent} clamped to {self.value:.2f} at {self.site}"


@dataclass(frozen=True)
class Measurement:
    success: float  # share of the held-out generations about the target
    extra_loss: float  # nats, on the held-out windows

    @property
    def passes(self) -> bool:
        return self.success >= MIN_SUCCESS and self.extra_loss <= MAX_EXTRA_LOSS

    def report(self) -> str:
        return (f"{self.success:.0%} of {N_GENERATIONS} held-out generations about {TARGET} (the bar: at least "
                f"{MIN_SUCCESS:.0%}), for {self.extra_loss:.3f} nats of extra loss on {N_WINDOWS} held-out windows "
                f"(the budget: at most {MAX_EXTRA_LOSS})")


def _number(value: Any) -> bool:
    return _type(value) in (int, float) and math.isfinite(value)


def validate(answer: Any, model, sae) -> Setting:
    """The answer as a `Setting`, or a CheckFailed saying what is malformed (nothing about
    whether it steers well: that is the hidden test's measurement)."""
    name = "investigate_steering's answer"
    if _type(answer) is not dict:
        raise CheckFailed(f"{name} should be a dict, got {_type(answer).__name__}: {{'site': ..., 'vector': ...}} "
                          "or {'latent': ..., 'value': ...}")
    keys = set(answer)
    if keys == VECTOR_KEYS:
        sites = st.residual_sites(model)
        site = answer["site"]
        if _type(site) is not str or site not in sites:
            raise CheckFailed(f"{name}: 'site' must be one of the residual sites {sites}, got {site!r}")
        vector = checked_array(answer["vector"], f"{name}['vector']", (model.cfg.d_model,))
        if not (vector == vector).all() or not abs(vector).max() < float("inf"):
            raise CheckFailed(f"{name}['vector'] has NaN or infinite entries")
        return Setting(site, vector=torch.tensor(vector, dtype=torch.float32))
    if keys == CLAMP_KEYS or keys == CLAMP_KEYS | {"site"}:
        if "site" in answer and answer["site"] != SAE_SITE:
            raise CheckFailed(f"{name}: a latent is clamped at the SAE's own site, {SAE_SITE}, not {answer['site']!r}")
        latent, value = answer["latent"], answer["value"]
        if _type(latent) is not int or not 0 <= latent < sae.cfg.d_sae:
            raise CheckFailed(f"{name}: 'latent' must be a Python int from 0 to {sae.cfg.d_sae - 1}, got {latent!r}")
        if not _number(value):
            raise CheckFailed(f"{name}: 'value' must be a finite Python float, got {value!r}")
        return Setting(SAE_SITE, latent=latent, value=float(value))
    raise CheckFailed(f"{name} has the keys {sorted(keys)}; expected {sorted(VECTOR_KEYS)} (a vector added at every "
                      f"position after BOS) or {sorted(CLAMP_KEYS)} (an SAE latent clamped at {SAE_SITE})")


def hooks(setting: Setting, sae) -> list:
    """The forward hooks the grader attaches for `setting` (the course's own hooks)."""
    if setting.vector is not None:
        return [(setting.site, ref.steering_hook(setting.vector, 1.0, AFTER_BOS))]
    return [(setting.site, ref.clamp_latent_hook(sae, setting.latent, setting.value, sae.scale))]


def measure(model, sae, setting: Setting) -> Measurement:
    """Success on held-out generations and the extra loss on held-out text, with `setting`'s
    hooks: the truth the hidden test compares the bars with. Deterministic on the CPU."""
    device = model.W_U.device  # the grader's model is on the CPU; a notebook's may be on a GPU
    fwd_hooks = hooks(setting, sae)
    tokens = ref.generate(model, st.start_prompts(N_GENERATIONS).to(device), GEN_LENGTH, seeded(GENERATION_SEED),
                          fwd_hooks=fwd_hooks)
    success = ref.success_rate(tokens, st.word_labels("topic"), st.label_index("topic", TARGET), 1)
    text = st.ordinary_text(N_WINDOWS, seed=TEXT_SEED).to(device)
    return Measurement(success, ref.extra_loss(model, text, fwd_hooks))


def unsteered(model) -> float:
    """The share of held-out generations about the target with no steering."""
    tokens = ref.generate(model, st.start_prompts(N_GENERATIONS).to(model.W_U.device), GEN_LENGTH,
                          seeded(GENERATION_SEED))
    return ref.success_rate(tokens, st.word_labels("topic"), st.label_index("topic", TARGET), 1)
