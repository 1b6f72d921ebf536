"""Reference solutions of chapter 1: Toy models of superposition.

GENERATED from solutions/01_superposition.py by `python -m autograder build`: do not edit.
"""


from collections.abc import Callable

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.runtime import progress
from mechlab.superposition import toy_models as sp


def toy_forward(
    W: Float[Tensor, "instance hidden feature"],
    b: Float[Tensor, "instance feature"],
    x: Float[Tensor, "batch instance feature"],
) -> Float[Tensor, "batch instance feature"]:
    """The ReLU output model: x' = ReLU(Wᵀ W x + b), for each instance separately."""
    h = einops.einsum(W, x, "instance hidden feature, batch instance feature -> batch instance hidden")
    out = einops.einsum(W, h, "instance hidden feature, batch instance hidden -> batch instance feature")
    return torch.relu(out + b)


def generate_batch(
    batch_size: int,
    feature_probability: Float[Tensor, "instance"],
    n_features: int,
    generator: torch.Generator,
) -> Float[Tensor, "batch instance feature"]:
    """Sparse features: each entry is U[0, 1) with probability p of its instance, else 0."""
    shape = (batch_size, feature_probability.shape[0], n_features)
    device = feature_probability.device
    values = torch.rand(shape, generator=generator, device=device)
    active = torch.rand(shape, generator=generator, device=device) < feature_probability[:, None]
    return torch.where(active, values, torch.zeros_like(values))


def importance_weighted_loss(
    x: Float[Tensor, "batch instance feature"],
    x_hat: Float[Tensor, "batch instance feature"],
    importance: Float[Tensor, "instance feature"],
) -> Float[Tensor, "instance"]:
    """Per-instance loss: importance-weighted squared error, summed over features, mean over batch."""
    return (importance * (x - x_hat) ** 2).sum(-1).mean(0)


def train_toy_models(
    W: Float[Tensor, "instance hidden feature"],
    b: Float[Tensor, "instance feature"],
    feature_probability: Float[Tensor, "instance"],
    importance: Float[Tensor, "instance feature"],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    forward: Callable = toy_forward,
    generate: Callable = generate_batch,
    loss_fn: Callable = importance_weighted_loss,
) -> Float[Tensor, "step instance"]:
    """Train W and b in place with Adam on fresh batches; return the per-instance loss history."""
    W.requires_grad_(True)
    b.requires_grad_(True)
    optimizer = torch.optim.Adam([W, b], lr=lr)
    n_features = W.shape[-1]
    history = []
    for _ in progress(range(steps), desc="training toy models"):
        x = generate(batch_size, feature_probability, n_features, generator)
        loss = loss_fn(x, forward(W, b, x), importance)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        history.append(loss.detach())
    return torch.stack(history).cpu()


def feature_norms_and_interference(
    W: Float[Tensor, "instance hidden feature"],
) -> tuple[Float[Tensor, "instance feature"], Float[Tensor, "instance feature"]]:
    """‖W_i‖ and Σ_{j≠i} (Ŵ_i · W_j)² for every feature of every instance."""
    norms = W.norm(dim=1)
    W_hat = W / norms.clamp_min(1e-8)[:, None, :]
    dots = einops.einsum(W_hat, W, "instance hidden f1, instance hidden f2 -> instance f1 f2")
    off_diagonal = 1 - torch.eye(W.shape[-1], device=W.device, dtype=W.dtype)
    interference = (dots**2 * off_diagonal).sum(-1)
    return norms, interference


def feature_dimensionality(
    W: Float[Tensor, "instance hidden feature"],
) -> Float[Tensor, "instance feature"]:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²: the fraction of a dimension feature i gets (0 if W_i = 0)."""
    norms = W.norm(dim=1)
    W_hat = W / norms.clamp_min(1e-8)[:, None, :]
    dots = einops.einsum(W_hat, W, "instance hidden f1, instance hidden f2 -> instance f1 f2")
    ratio = norms**2 / (dots**2).sum(-1).clamp_min(1e-16)
    return torch.where(norms > 1e-8, ratio, torch.zeros_like(ratio))


def feature_phase(
    W: Float[Tensor, "instance hidden feature"],
    feature: int,
    *,
    norm_threshold: float = 0.5,
    interference_threshold: float = 0.25,
) -> Int[Tensor, "instance"]:
    """0 = not represented, 1 = dedicated dimension, 2 = in superposition, for one feature per instance."""
    w = W[:, :, feature]
    norm = w.norm(dim=-1)
    w_hat = w / norm.clamp_min(1e-8)[:, None]
    dots = einops.einsum(w_hat, W, "instance hidden, instance hidden feature -> instance feature")
    others = torch.ones(W.shape[-1], dtype=torch.bool, device=W.device)
    others[feature] = False
    interference = (dots[:, others] ** 2).sum(-1)
    phase = torch.where(interference < interference_threshold, 1, 2)
    return torch.where(norm < norm_threshold, 0, phase).long()


def phase_diagram(
    feature_probability: Float[Tensor, "cell"],
    relative_importance: Float[Tensor, "cell"],
    *,
    restarts: int,
    steps: int,
    generator: torch.Generator,
    train: Callable = train_toy_models,
    classify: Callable = feature_phase,
) -> tuple[Int[Tensor, "cell"], Float[Tensor, "cell"]]:
    """Per cell: the phase of feature 1 in the lowest-loss of `restarts` trained 2-in-1 toy
    models, and the share of the runs that ended in that phase."""
    device = feature_probability.device
    p = feature_probability.repeat_interleave(restarts)
    r = relative_importance.repeat_interleave(restarts)
    W, b = sp.init_toy_weights(sp.ToyConfig(n_features=2, n_hidden=1, n_instances=len(p)), generator, device=device)
    importance = torch.stack([torch.ones_like(r), r], dim=-1)
    history = train(W, b, p, importance, steps=steps, batch_size=256, lr=1e-2, generator=generator)
    final_loss = history[-max(steps // 10, 1):].mean(0).to(device)
    final_loss = einops.rearrange(final_loss, "(cell restart) -> cell restart", restart=restarts)
    runs = einops.rearrange(classify(W.detach(), 1), "(cell restart) -> cell restart", restart=restarts)
    phases = runs.gather(1, final_loss.argmin(dim=-1, keepdim=True)).squeeze(1)
    agreement = (runs == phases[:, None]).float().mean(dim=-1)
    return phases.long(), agreement


def sae_forward(
    h: Float[Tensor, "batch hidden"],
    W_enc: Float[Tensor, "hidden latent"],
    b_enc: Float[Tensor, "latent"],
    W_dec: Float[Tensor, "hidden latent"],
    b_dec: Float[Tensor, "hidden"],
) -> tuple[Float[Tensor, "batch latent"], Float[Tensor, "batch hidden"]]:
    """Encode h into non-negative latents (after subtracting b_dec) and decode them back."""
    pre = einops.einsum(h - b_dec, W_enc, "batch hidden, hidden latent -> batch latent") + b_enc
    latents = torch.relu(pre)
    reconstruction = einops.einsum(latents, W_dec, "batch latent, hidden latent -> batch hidden") + b_dec
    return latents, reconstruction


def sae_loss(
    h: Float[Tensor, "batch hidden"],
    latents: Float[Tensor, "batch latent"],
    reconstruction: Float[Tensor, "batch hidden"],
    l1_coeff: float,
) -> Float[Tensor, ""]:
    """Mean over the batch of the squared reconstruction error (summed over hidden) + l1_coeff · ‖z‖₁."""
    reconstruction_error = ((reconstruction - h) ** 2).sum(-1)
    sparsity = latents.abs().sum(-1)
    return (reconstruction_error + l1_coeff * sparsity).mean()


def train_sae(
    sample_hidden: Callable[[int], Tensor],
    W_enc: Float[Tensor, "hidden latent"],
    b_enc: Float[Tensor, "latent"],
    W_dec: Float[Tensor, "hidden latent"],
    b_dec: Float[Tensor, "hidden"],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    l1_coeff: float,
    forward: Callable = sae_forward,
    loss_fn: Callable = sae_loss,
) -> Float[Tensor, "step"]:
    """Train the SAE's parameters in place with Adam, keeping decoder columns at unit norm."""
    params = [W_enc, b_enc, W_dec, b_dec]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    history = []
    for _ in progress(range(steps), desc="training SAE"):
        h = sample_hidden(batch_size)
        latents, reconstruction = forward(h, W_enc, b_enc, W_dec, b_dec)
        loss = loss_fn(h, latents, reconstruction, l1_coeff)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=0, keepdim=True).clamp_min(1e-8)
        history.append(loss.detach())
    return torch.stack(history).cpu()


def feature_recovery_score(
    W_dec: Float[Tensor, "hidden latent"],
    W_true: Float[Tensor, "hidden feature"],
) -> float:
    """Mean over true features of the best (signed) cosine similarity with any decoder direction."""
    dec_hat = W_dec / W_dec.norm(dim=0, keepdim=True).clamp_min(1e-8)
    true_hat = W_true / W_true.norm(dim=0, keepdim=True).clamp_min(1e-8)
    cos = einops.einsum(true_hat, dec_hat, "hidden feature, hidden latent -> feature latent")
    return cos.max(dim=-1).values.mean().item()


def investigate_toy_model(
    W: Float[Tensor, "hidden feature"],
    b: Float[Tensor, "feature"],
) -> dict[str, list]:
    """The features the toy model represents, its antipodal pairs, and which of those pairs are
    never active together, measured from its weights."""
    norms = W.norm(dim=0)
    W_hat = W / norms.clamp_min(1e-8)
    cosines = W_hat.T @ W_hat
    represented = [i for i in range(W.shape[1]) if norms[i] > 0.5]
    pairs = [(i, j) for i in represented for j in represented if i < j and cosines[i, j] < -0.9]
    # When both features of an antipodal pair fire, each one's output is x_i - x_j: the model
    # guards against that by raising the pair's ReLU threshold (its biases), which it has no
    # reason to do for a pair that never fires together.
    exclusive = [(i, j) for i, j in pairs if (b[i] + b[j]).item() / 2 < 0.01]
    return {"represented": represented, "antipodal_pairs": pairs, "exclusive_pairs": exclusive}


__all__ = ['toy_forward', 'generate_batch', 'importance_weighted_loss', 'train_toy_models', 'feature_norms_and_interference', 'feature_dimensionality', 'feature_phase', 'phase_diagram', 'sae_forward', 'sae_loss', 'train_sae', 'feature_recovery_score', 'investigate_toy_model']
CHAPTER = '01_superposition'
CPU_LIMIT = 120  # CPU seconds per cell under grading
POINTS = {'toy_forward': 2, 'generate_batch': 2, 'importance_weighted_loss': 1, 'train_toy_models': 3, 'feature_norms_and_interference': 2, 'feature_dimensionality': 2, 'feature_phase': 2, 'phase_diagram': 4, 'sae_forward': 2, 'sae_loss': 1, 'train_sae': 3, 'feature_recovery_score': 2, 'investigate_toy_model': 6}
