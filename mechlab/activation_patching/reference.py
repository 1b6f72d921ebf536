"""Reference solutions of chapter 3: Activation patching.

GENERATED from solutions/03_activation_patching.py by `python -m autograder build`: do not edit.
"""


import functools
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab import corpus, zoo

Metric = Callable[[Tensor], Tensor]  # logits [batch, pos, d_vocab] -> a 0-dimensional tensor


def replace_subject(
    tokens: Int[Tensor, "batch pos"], subject: Int[Tensor, "batch"], indirect_object: Int[Tensor, "batch"]
) -> Int[Tensor, "batch pos"]:
    """A copy of `tokens` with each row's last `subject` token replaced by its `indirect_object`."""
    corrupted = tokens.clone()
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    last = torch.where(tokens == subject[:, None], positions, -1).max(dim=1).values
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    corrupted[rows, last] = indirect_object
    return corrupted


def logit_diff(
    logits: Float[Tensor, "batch pos d_vocab"], correct: Int[Tensor, "batch"], distractor: Int[Tensor, "batch"]
) -> Float[Tensor, ""]:
    """Mean over the batch of logit(correct) - logit(distractor) at the last position."""
    last = logits[:, -1]
    rows = torch.arange(last.shape[0], device=last.device)
    return (last[rows, correct] - last[rows, distractor]).mean()


def patching_metric(
    logits: Float[Tensor, "batch pos d_vocab"],
    correct: Int[Tensor, "batch"],
    distractor: Int[Tensor, "batch"],
    clean_diff: float,
    corrupted_diff: float,
) -> Float[Tensor, ""]:
    """0 when the logit difference is the corrupted run's, 1 when it is the clean run's."""
    return (logit_diff(logits, correct, distractor) - corrupted_diff) / (clean_diff - corrupted_diff)


def patch_residual_stream(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, metric: Metric
) -> Float[Tensor, "layer pos"]:
    """metric after patching the clean resid_pre of each (layer, position) into the corrupted run."""
    n_layers, n_pos = model.cfg.n_layers, corrupted_tokens.shape[1]
    out = torch.zeros(n_layers, n_pos)
    with torch.no_grad():
        for layer in range(n_layers):
            name = f"blocks.{layer}.hook_resid_pre"
            for pos in range(n_pos):
                def patch(resid, hook, pos=pos, name=name):
                    resid = resid.clone()
                    resid[:, pos] = clean_cache[name][:, pos]
                    return resid

                out[layer, pos] = metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, patch)])).item()
    return out


def patch_head_outputs(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, metric: Metric
) -> Float[Tensor, "layer head"]:
    """metric after patching each head's clean z (all positions) into the corrupted run."""
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_z"
            for head in range(model.cfg.n_heads):
                def patch(z, hook, head=head, name=name):
                    z = z.clone()
                    z[:, :, head] = clean_cache[name][:, :, head]
                    return z

                out[layer, head] = metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, patch)])).item()
    return out


def patch_head_outputs_by_position(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, metric: Metric
) -> Float[Tensor, "layer head pos"]:
    """metric after patching one head's clean z at one position into the corrupted run."""
    n_pos = corrupted_tokens.shape[1]
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, n_pos)
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_z"
            for head in range(model.cfg.n_heads):
                for pos in range(n_pos):
                    def patch(z, hook, head=head, pos=pos, name=name):
                        z = z.clone()
                        z[:, pos, head] = clean_cache[name][:, pos, head]
                        return z

                    logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, patch)])
                    out[layer, head, pos] = metric(logits).item()
    return out


def patch_pattern_and_value(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, metric: Metric
) -> Float[Tensor, "2 layer head"]:
    """[metric with each head's clean pattern, metric with each head's clean values]."""
    out = torch.zeros(2, model.cfg.n_layers, model.cfg.n_heads)
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            pattern_name, value_name = f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_v"
            for head in range(model.cfg.n_heads):
                def patch_pattern(pattern, hook, head=head, name=pattern_name):
                    pattern = pattern.clone()
                    pattern[:, head] = clean_cache[name][:, head]
                    return pattern

                def patch_value(v, hook, head=head, name=value_name):
                    v = v.clone()
                    v[:, :, head] = clean_cache[name][:, :, head]
                    return v

                for row, hook in enumerate([(pattern_name, patch_pattern), (value_name, patch_value)]):
                    out[row, layer, head] = metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[hook])).item()
    return out


def path_patch(
    model,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache,
    corrupted_cache,
    sender: tuple[int, int],
    receivers: list[tuple[int, int]],
    component: str,
    metric: Metric,
) -> float:
    """metric after patching the sender's clean output into the receivers' `component` input only."""
    if component not in ("q", "k", "v"):
        raise ValueError(f"component must be 'q', 'k' or 'v', got {component!r}")
    sender_layer, sender_head = sender
    if not receivers or any(layer <= sender_layer for layer, _ in receivers):
        raise ValueError(f"receivers must be heads in layers after the sender's ({sender_layer}), got {receivers}")
    receiver_layers = sorted({layer for layer, _ in receivers})
    saved: dict[int, Tensor] = {}

    def freeze_heads(z, hook, layer):
        z = corrupted_cache[f"blocks.{layer}.attn.hook_z"].clone()
        if layer == sender_layer:
            z[:, :, sender_head] = clean_cache[f"blocks.{layer}.attn.hook_z"][:, :, sender_head]
        return z

    def freeze_mlp(out, hook, layer):
        return corrupted_cache[f"blocks.{layer}.hook_mlp_out"].clone()

    def save(act, hook, layer):
        saved[layer] = act.clone()
        return act

    def patch_receivers(act, hook, layer):
        act = act.clone()
        for r_layer, r_head in receivers:
            if r_layer == layer:
                act[:, :, r_head] = saved[layer][:, :, r_head]
        return act

    layers = range(model.cfg.n_layers)
    step_1 = [(f"blocks.{l}.attn.hook_z", functools.partial(freeze_heads, layer=l)) for l in layers]
    if not model.cfg.attn_only:
        step_1 += [(f"blocks.{l}.hook_mlp_out", functools.partial(freeze_mlp, layer=l)) for l in layers]
    step_1 += [(f"blocks.{l}.attn.hook_{component}", functools.partial(save, layer=l)) for l in receiver_layers]
    step_2 = [(f"blocks.{l}.attn.hook_{component}", functools.partial(patch_receivers, layer=l))
              for l in receiver_layers]
    with torch.no_grad():
        model.run_with_hooks(corrupted_tokens, fwd_hooks=step_1)
        return metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=step_2)).item()


def attribution_patch_heads(
    model, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"], metric: Metric
) -> Float[Tensor, "layer head"]:
    """First-order estimate of patching each head's clean z into the corrupted run."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, clean = model.run_with_cache(clean_tokens, names_filter=names)
    activations: dict[str, Tensor] = {}
    gradients: dict[str, Tensor] = {}

    def save_activation(z, hook, name):
        activations[name] = z.detach()

    def save_gradient(grad, hook, name):
        gradients[name] = grad.detach()

    fwd = [(name, functools.partial(save_activation, name=name)) for name in names]
    bwd = [(name, functools.partial(save_gradient, name=name)) for name in names]
    with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        metric(model(corrupted_tokens)).backward()
    model.zero_grad(set_to_none=True)
    return torch.stack([((clean[name] - activations[name]) * gradients[name]).sum(dim=(0, 1, 3))
                        for name in names]).cpu()


def noise_head_outputs(
    model, clean_tokens: Int[Tensor, "batch pos"], corrupted_cache, metric: Metric
) -> Float[Tensor, "layer head"]:
    """metric after patching each head's corrupted z (all positions) into the clean run."""
    # Noising is patching the other way round: exercise 5's function, run on the clean
    # prompts and patched from the corrupted cache, already computes it.
    return patch_head_outputs(model, clean_tokens, corrupted_cache, metric)


def investigate_fact_recall(
    model, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"], metric: Metric
) -> list[tuple]:
    """At most 8 components (("head", layer, head, pos) or ("mlp", layer, pos)) that carry the person's city."""
    # The prompts handed in change only the last name, so nothing that carries the first
    # name differs between the two runs, and patching on them cannot see it. First build a
    # corruption that changes both names: pair each prompt with the next one of the batch
    # whose person differs in both names and in the city the model answers.
    last = int((clean_tokens[0] != corrupted_tokens[0]).nonzero()[-1])  # the last name's position
    first = last - 1
    cities = torch.tensor(zoo.token_ids(list(corpus.CITIES)), device=clean_tokens.device)
    with torch.no_grad():
        clean_logits = model(clean_tokens)
        answer = cities[clean_logits[:, -1, cities].argmax(dim=-1)]
        n = len(clean_tokens)
        differs = lambda i, j: bool((clean_tokens[i, [first, last]] != clean_tokens[j, [first, last]]).all()
                                    and answer[i] != answer[j])
        twin = torch.tensor([next(j for j in [*range(i + 1, n), *range(i)] if differs(i, j)) for i in range(n)],
                            device=clean_tokens.device)
        corrupted, distractor = clean_tokens[twin], answer[twin]
        metric = functools.partial(patching_metric, correct=answer, distractor=distractor,
                                   clean_diff=logit_diff(clean_logits, answer, distractor).item(),
                                   corrupted_diff=logit_diff(model(corrupted), answer, distractor).item())

        # Then every head and MLP output at every position, patched alone from clean into
        # that corruption; the 8 with the largest effects form a complete route here
        # (measured on all three templates and all three corruptions).
        _, clean_cache = model.run_with_cache(clean_tokens)
        effects: dict[tuple, float] = {}
        for layer in range(model.cfg.n_layers):
            z_name, mlp_name = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"
            for pos in range(clean_tokens.shape[1]):
                def patch_mlp(out, hook, pos=pos, name=mlp_name):
                    out = out.clone()
                    out[:, pos] = clean_cache[name][:, pos]
                    return out

                logits = model.run_with_hooks(corrupted, fwd_hooks=[(mlp_name, patch_mlp)])
                effects[("mlp", layer, pos)] = metric(logits).item()
                for head in range(model.cfg.n_heads):
                    def patch_head(z, hook, pos=pos, head=head, name=z_name):
                        z = z.clone()
                        z[:, pos, head] = clean_cache[name][:, pos, head]
                        return z

                    logits = model.run_with_hooks(corrupted, fwd_hooks=[(z_name, patch_head)])
                    effects[("head", layer, head, pos)] = metric(logits).item()
    return sorted(effects, key=effects.get, reverse=True)[:8]


__all__ = ['replace_subject', 'logit_diff', 'patching_metric', 'patch_residual_stream', 'patch_head_outputs', 'patch_head_outputs_by_position', 'patch_pattern_and_value', 'path_patch', 'attribution_patch_heads', 'noise_head_outputs', 'investigate_fact_recall']
CHAPTER = '03_activation_patching'
CPU_LIMIT = 180  # CPU seconds per cell under grading
POINTS = {'replace_subject': 1, 'logit_diff': 1, 'patching_metric': 1, 'patch_residual_stream': 3, 'patch_head_outputs': 2, 'patch_head_outputs_by_position': 2, 'patch_pattern_and_value': 2, 'path_patch': 3, 'attribution_patch_heads': 3, 'noise_head_outputs': 2, 'investigate_fact_recall': 5}
