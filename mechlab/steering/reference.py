"""Reference solutions of chapter 5: Steering.

GENERATED from solutions/05_steering.py by `python -m autograder build`: do not edit.
"""


from collections.abc import Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.runtime import progress

Hook = Callable[[Tensor, object], Tensor]  # (activation, hook point) -> the new activation
FwdHooks = Sequence[tuple[str, Hook]]  # [(hook name, hook function)], as model.hooks() takes them


def generate(
    model,
    prompt: Int[Tensor, "batch pos"],
    n_new: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    fwd_hooks: FwdHooks = (),
) -> Int[Tensor, "batch pos_plus_new"]:
    """The prompt followed by `n_new` tokens sampled from softmax(logits / temperature)
    with `generator` (greedy when temperature is 0), every forward pass with `fwd_hooks`."""
    tokens = prompt
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        for _ in range(n_new):
            logits = model(tokens)[:, -1].float()
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                next_token = torch.multinomial(probs, 1, generator=generator)
            tokens = torch.cat([tokens, next_token.to(tokens.device)], dim=1)
    return tokens


def success_rate(
    tokens: Int[Tensor, "batch pos"], labels: Int[Tensor, "d_vocab"], target: int, prompt_length: int
) -> float:
    """Fraction of rows whose generated tokens hold strictly more `target`-labelled tokens
    than tokens of any other label."""
    generated = labels.to(tokens.device)[tokens[:, prompt_length:]]
    n_labels = int(labels.max()) + 1
    counts = torch.stack([(generated == k).sum(dim=-1) for k in range(n_labels)], dim=-1)
    others = torch.cat([counts[:, :target], counts[:, target + 1:]], dim=-1).max(dim=-1).values
    return (counts[:, target] > others).float().mean().item()


def contrast_vector(
    model, pos_tokens: Int[Tensor, "batch pos"], neg_tokens: Int[Tensor, "batch pos"], hook_name: str,
    position: int | None = None,
) -> Float[Tensor, "d_model"]:
    """Mean activation at `hook_name` over `pos_tokens` minus the mean over `neg_tokens`
    (all positions but BOS, or only `position`)."""
    def mean_activation(tokens: Tensor) -> Tensor:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        acts = cache[hook_name]
        acts = acts[:, 1:] if position is None else acts[:, position]
        return acts.reshape(-1, acts.shape[-1]).mean(dim=0)

    return mean_activation(pos_tokens) - mean_activation(neg_tokens)


def residual_norm(model, tokens: Int[Tensor, "batch pos"], hook_name: str) -> float:
    """Mean L2 norm of the activations at `hook_name`, over the batch and all positions but BOS."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return cache[hook_name][:, 1:].norm(dim=-1).mean().item()


def steering_hook(vector: Float[Tensor, "d_model"], coefficient: float, positions: int | slice | None = None) -> Hook:
    """A hook that adds coefficient * vector to the activation at `positions` (None: all)."""
    where = slice(None) if positions is None else positions

    def hook(activation: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        steered = activation.clone()
        steered[:, where] += coefficient * vector.to(activation)
        return steered

    return hook


def extra_loss(model, tokens: Int[Tensor, "batch pos"], fwd_hooks: FwdHooks) -> float:
    """Mean next-token loss on `tokens` with `fwd_hooks` attached, minus without."""
    def loss(logits: Tensor) -> Tensor:
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())

    with torch.no_grad():
        clean = loss(model(tokens))
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            steered = loss(model(tokens))
    return (steered - clean).item()


def repetition(tokens: Int[Tensor, "batch pos"], prompt_length: int) -> float:
    """Mean over rows of the fraction of generated bigrams that repeat an earlier one."""
    generated = tokens[:, prompt_length:]
    bigrams = generated[:, :-1] * (int(tokens.max()) + 1) + generated[:, 1:]
    repeated = [1 - torch.unique(row).numel() / row.numel() for row in bigrams]
    return sum(repeated) / len(repeated)


def clamp_latent_hook(sae, latent: int, value: float, scale: float) -> Hook:
    """A hook that replaces the activation by the SAE's reconstruction with `latent`
    clamped to `value`, plus the reconstruction error (BOS untouched)."""
    def hook(activation: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        x = activation[:, 1:] * scale
        z = sae.encode(x)
        error = x - sae.decode(z)
        clamped = z.clone()
        clamped[..., latent] = value
        steered = (sae.decode(clamped) + error) / scale
        return torch.cat([activation[:, :1], steered.to(activation.dtype)], dim=1)

    return hook


def steering_curve(
    measure: Callable[[list], dict[str, float]],
    site: str,
    vector: Float[Tensor, "d_model"],
    norm: float,
    coefficients: Sequence[float],
    *,
    n_random: int,
    seed: int,
    hook: Callable = steering_hook,
) -> pd.DataFrame:
    """`measure` of pushes along `vector` and along `n_random` random directions, each
    rescaled to coefficient x `norm` at `site` (every position but BOS); one row per
    direction and coefficient."""
    generator = torch.Generator().manual_seed(seed)
    directions = {"vector": vector}
    for k in range(n_random):
        directions[f"random {k + 1}"] = torch.randn(vector.shape[-1], generator=generator).to(vector)
    settings = [(name, c) for name in directions for c in coefficients]
    rows = []
    for name, c in progress(settings, desc="steering curves"):
        direction = directions[name]
        push = direction / direction.norm() * norm * c
        rows.append({"direction": name, "coefficient": c,
                     "cosine": torch.cosine_similarity(direction, vector, dim=0).item(),
                     **measure([(site, hook(push, 1.0, slice(1, None)))])})
    return pd.DataFrame(rows)


def fit_probe(
    x: Float[Tensor, "n d"], y: Tensor, steps: int = 300, lr: float = 0.05, l2: float = 1e-3
) -> tuple[Float[Tensor, "d"], Float[Tensor, ""]]:
    """Logistic regression (w, b) from zeros: `steps` full-batch Adam steps on the mean BCE plus l2·‖w‖²."""
    w = torch.zeros(x.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros((), device=x.device, requires_grad=True)
    optimiser = torch.optim.Adam([w, b], lr=lr)
    target = y.float()
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, target) + l2 * (w**2).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return w.detach(), b.detach()


def auroc(scores: Float[Tensor, "n"], labels: Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counted as half."""
    pos, neg = scores[labels.bool()], scores[~labels.bool()]
    higher = (pos[:, None] > neg[None, :]).float().mean()
    ties = (pos[:, None] == neg[None, :]).float().mean()
    return (higher + ties / 2).item()


def answer_probabilities(
    model, tokens: Int[Tensor, "batch pos"], hedge: int, cities: Int[Tensor, "n"], fwd_hooks: FwdHooks = ()
) -> tuple[float, float]:
    """Mean P(hedge) and mean total P(cities) at the last position, with `fwd_hooks` attached."""
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        probs = model(tokens)[:, -1].float().softmax(dim=-1)
    return probs[:, hedge].mean().item(), probs[:, cities.to(probs.device)].sum(dim=-1).mean().item()


def investigate_steering(model, sae) -> dict:
    """The setting that steers the course model towards weather within the budget."""
    from mechlab.steering import experiments as st

    site = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"  # cheapest per unit of success in the sweep
    device = model.W_U.device
    weather, others = st.contrast_pairs("topic", "weather", n=64, seed=0)
    vector = contrast_vector(model, weather.to(device), others.to(device), site)
    norm = residual_norm(model, st.ordinary_text(32).to(device), site)
    return {"site": site, "vector": st.relative(vector, norm, 0.35)}


__all__ = ['generate', 'success_rate', 'contrast_vector', 'residual_norm', 'steering_hook', 'extra_loss', 'repetition', 'clamp_latent_hook', 'steering_curve', 'fit_probe', 'auroc', 'answer_probabilities', 'investigate_steering']
CHAPTER = '05_steering'
CPU_LIMIT = 240  # CPU seconds per cell under grading
POINTS = {'generate': 3, 'success_rate': 2, 'contrast_vector': 2, 'residual_norm': 1, 'steering_hook': 2, 'extra_loss': 1, 'repetition': 1, 'clamp_latent_hook': 3, 'steering_curve': 4, 'fit_probe': 2, 'auroc': 2, 'answer_probabilities': 1, 'investigate_steering': 5}
