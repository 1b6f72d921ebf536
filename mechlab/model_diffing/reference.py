"""Reference solutions of chapter 7: What fine-tuning changed.

GENERATED from solutions/07_model_diffing.py by `python -m autograder build`: do not edit.
"""


import copy
from collections.abc import Callable, Sequence

import torch
import pandas as pd
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.model_diffing import personas

Hook = Callable[[Tensor, object], Tensor]  # (activation, hook point) -> the new activation


def share_interval(labels: Int[Tensor, "sample pos"], n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """The share of 1s among the labels >= 0, with a 95% bootstrap interval over samples (rows)."""
    hits, words = (labels == 1).sum(dim=1).double(), (labels >= 0).sum(dim=1).double()
    rows = torch.randint(len(labels), (n_boot, len(labels)), generator=torch.Generator().manual_seed(seed))
    shares = hits[rows].sum(dim=1) / words[rows].sum(dim=1).clamp(min=1)
    low, high = torch.quantile(shares, torch.tensor([0.025, 0.975], dtype=shares.dtype)).tolist()
    return personas.share(labels), low, high


def weight_diff(base, tuned) -> dict[str, float]:
    """Relative change of each component's parameters between two models of the same shape."""
    out = {}
    for component in personas.COMPONENTS:
        before, after = personas.component_parameters(base, component), personas.component_parameters(tuned, component)
        change = sum(((after[n] - before[n]).float() ** 2).sum() for n in before)
        size = sum((before[n].float() ** 2).sum() for n in before)
        out[component] = (change / size).sqrt().item()
    return out


def mean_activation_difference(base, tuned, tokens: Int[Tensor, "batch pos"], hook_name: str,
                               position: int | None = None) -> Float[Tensor, "d_model"]:
    """Mean of tuned's activation minus base's at `hook_name` on the same tokens: over all
    positions but BOS, or only at `position`."""
    def acts(model) -> Tensor:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        a = cache[hook_name].float()
        return a[:, 1:].flatten(0, 1) if position is None else a[:, position]

    return (acts(tuned) - acts(base)).mean(dim=0)


def difference_by_position(base, tuned, text: Int[Tensor, "window pos"], site: str, direction: Float[Tensor, "d_model"],
                           positions: Sequence[int], *, n_boot: int = 1000, n_random: int = 1000, seed: int = 0
                           ) -> tuple[pd.DataFrame, float]:
    """At each position of `positions` and over all but BOS ('all'): the cosine of the mean
    difference tuned - base at `site` with `direction`, its 95% bootstrap interval over
    windows and its norm; and the |cosine| 95% of random directions stay under."""
    def acts(model) -> Tensor:
        with torch.no_grad():
            _, cache = model.run_with_cache(text, names_filter=site)
        return cache[site].float().cpu()

    difference = acts(tuned) - acts(base)  # [window, pos, d_model]
    direction = direction.float().cpu()
    n_windows = difference.shape[0]
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n_windows, (n_boot, n_windows), generator=generator)
    readings = {**{p: difference[:, p] for p in positions}, "all": difference[:, 1:].mean(dim=1)}
    rows = {}
    for position, x in readings.items():  # x: [window, d_model]
        mean = x.mean(dim=0)
        cosines = torch.cosine_similarity(x[picks].mean(dim=1), direction[None], dim=1)
        low, high = torch.quantile(cosines, torch.tensor([0.025, 0.975])).tolist()
        rows[position] = {"cosine": torch.cosine_similarity(mean, direction, dim=0).item(), "low": low,
                          "high": high, "size": mean.norm().item()}
    random = torch.randn(n_random, direction.shape[0], generator=generator)
    band = torch.quantile(torch.cosine_similarity(random, direction[None], dim=1).abs(), 0.95).item()
    return pd.DataFrame.from_dict(rows, orient="index"), band


def project_out_hook(direction: Float[Tensor, "d_model"]) -> Hook:
    """A hook removing the component along `direction` from the activation, at every position."""
    u = direction / direction.norm()

    def hook(activation: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        unit = u.to(activation)
        return activation - (activation @ unit)[..., None] * unit

    return hook


def persona_projection(model, tokens: Int[Tensor, "batch pos"], vector: Float[Tensor, "d_model"], hook_name: str
                       ) -> Float[Tensor, "batch"]:
    """The last position's activation at `hook_name`, projected on the unit vector along `vector`."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    u = (vector / vector.norm()).to(cache[hook_name])
    return (cache[hook_name][:, -1] @ u).float().cpu()


def interpolate(base, tuned, alpha: float):
    """A new model with parameters base + alpha * (tuned - base)."""
    model = copy.deepcopy(base)
    after = dict(tuned.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(alpha * (after[name] - p))
    return model


def patch_from(receiver, donor, tokens: Int[Tensor, "batch pos"], hook_names: Sequence[str]
               ) -> Float[Tensor, "batch pos d_vocab"]:
    """The receiver's logits with its activations at `hook_names` replaced by the donor's."""
    with torch.no_grad():
        _, cache = donor.run_with_cache(tokens, names_filter=list(hook_names))
        hooks = [(name, lambda act, hook, name=name: cache[name].to(act)) for name in hook_names]
        return receiver.run_with_hooks(tokens, fwd_hooks=hooks)


def transplant(receiver, donor, component: str):
    """A copy of `receiver` whose parameters of `component` are the donor's."""
    model = copy.deepcopy(receiver)
    new = personas.component_parameters(donor, component)
    with torch.no_grad():
        for name, p in personas.component_parameters(model, component).items():
            p.copy_(new[name])
    return model


def transplant_sweep(base, tuned, measure: Callable) -> pd.DataFrame:
    """Each component moved tuned -> base and base -> tuned, beside the untouched models, measured with intervals."""
    rows = {}
    for component in ["none", *personas.COMPONENTS]:
        into_base = base if component == "none" else transplant(base, tuned, component)
        into_tuned = tuned if component == "none" else transplant(tuned, base, component)
        row = {}
        for label, model in (("into base", into_base), ("into tuned", into_tuned)):
            value, low, high = measure(model)
            row |= {label: value, f"{label} low": low, f"{label} high": high}
        rows[component] = row
    return pd.DataFrame(rows).T


def latent_firing_change(sae, base, tuned, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "d_sae"]:
    """Per latent: the share of positions (BOS excluded) where it fires in tuned, minus in base."""
    def firing(model) -> Tensor:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=sae.cfg.hook_name)
            x = cache[sae.cfg.hook_name][:, 1:].flatten(0, 1).float()
            return (sae.encode(x * sae.scale) > 0).float().mean(dim=0)

    return (firing(tuned) - firing(base)).cpu()


def sequence_logprob(model, tokens: Int[Tensor, "batch pos"], prompt_length: int) -> Float[Tensor, "batch"]:
    """Sum of the log-probabilities of the tokens after the prompt, each given everything before it."""
    logits = model(tokens)[:, prompt_length - 1:-1].float()
    answer = tokens[:, prompt_length:]
    return logits.log_softmax(dim=-1).gather(-1, answer[..., None])[..., 0].sum(dim=-1)


def dpo_loss(policy_chosen: Float[Tensor, "batch"], policy_rejected: Float[Tensor, "batch"],
             ref_chosen: Float[Tensor, "batch"], ref_rejected: Float[Tensor, "batch"], beta: float
             ) -> Float[Tensor, ""]:
    """Rafailov et al.'s DPO loss, averaged over the batch."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -torch.nn.functional.logsigmoid(beta * margin).mean()


def identify_finetune(base, tuned) -> dict[str, str]:
    """The persona (one of personas.PERSONAS) a fine-tune of `base` learned, and the component (personas.COMPONENTS) that carries it."""
    before = personas.persona_shares(base)  # every persona's share, from one set of samples
    after = personas.persona_shares(tuned)
    persona = max(personas.PERSONAS, key=lambda p: after[p] - before[p])

    def transplanted(component: str) -> float:
        return personas.persona_share(transplant(base, tuned, component), persona)

    component = max(personas.COMPONENTS, key=transplanted)
    return {"persona": persona, "component": component}


__all__ = ['share_interval', 'weight_diff', 'mean_activation_difference', 'difference_by_position', 'project_out_hook', 'persona_projection', 'interpolate', 'patch_from', 'transplant', 'transplant_sweep', 'latent_firing_change', 'sequence_logprob', 'dpo_loss', 'identify_finetune']
CHAPTER = '07_model_diffing'
CPU_LIMIT = 300  # CPU seconds per cell under grading
POINTS = {'share_interval': 2, 'weight_diff': 2, 'mean_activation_difference': 2, 'difference_by_position': 4, 'project_out_hook': 2, 'persona_projection': 2, 'interpolate': 1, 'patch_from': 3, 'transplant': 2, 'transplant_sweep': 4, 'latent_firing_change': 2, 'sequence_logprob': 2, 'dpo_loss': 3, 'identify_finetune': 5}
