"""Reference solutions of chapter 4: Training sparse autoencoders.

GENERATED from solutions/04_sparse_autoencoders.py by `python -m autograder build`: do not edit.
"""


import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mechlab import corpus
from mechlab.runtime import progress


@dataclass(frozen=True)
class SAEConfig:
    """One SAE: its shape, architecture and the sparsity setting that architecture uses."""

    d_in: int  # the activation's size (d_model)
    d_sae: int  # number of latents (the dictionary's width)
    architecture: str  # "relu", "topk" or "jumprelu"
    hook_name: str = "blocks.1.hook_resid_pre"  # where its activations come from
    l1_coeff: float = 5.0  # relu: weight of the decoder-norm-weighted L1 penalty
    k: int = 8  # topk: latents kept per input
    k_aux: int = 64  # topk: dead latents the auxiliary loss uses (Gao et al.: d_model / 2)
    aux_coeff: float = 1 / 32  # topk: weight of the auxiliary loss (Gao et al.)
    l0_coeff: float = 1.0  # jumprelu: weight of the L0 penalty
    init_threshold: float = 1.0  # jumprelu: starting threshold (the normalised data's scale, not 0.001: see text)
    bandwidth: float = 0.1  # jumprelu: width of the straight-through estimator's window
    seed: int = 0  # initialisation


@dataclass
class SAELoss:
    loss: Float[Tensor, ""]  # what the optimiser minimises
    mse: Float[Tensor, ""]  # mean over the batch of the squared reconstruction error
    latents: Float[Tensor, "batch d_sae"]


class SAE(nn.Module):
    """A sparse autoencoder on normalised activations (see `SAEConfig` for the architectures)."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        if cfg.architecture not in ("relu", "topk", "jumprelu"):
            raise ValueError(f"architecture must be 'relu', 'topk' or 'jumprelu', got {cfg.architecture!r}")
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        W_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=g)
        # rows of norm 1, or 0.1 for the L1 SAE (Anthropic's April 2024 update: its decoder norms are free)
        W_dec *= (0.1 if cfg.architecture == "relu" else 1.0) / W_dec.norm(dim=-1, keepdim=True)
        self.W_enc = nn.Parameter(W_dec.T.clone())  # tied initialisation
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.architecture == "jumprelu":
            # log-parametrised, so the threshold stays positive
            self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.init_threshold)))

    @property
    def threshold(self) -> Float[Tensor, "d_sae"]:
        return self.log_threshold.exp()

    def pre_acts(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activation(self, pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        if self.cfg.architecture == "relu":
            return torch.relu(pre)
        if self.cfg.architecture == "topk":
            return topk_activation(pre, self.cfg.k)
        return jumprelu(pre, self.threshold, self.cfg.bandwidth)

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return self.activation(self.pre_acts(x))

    def decode(self, z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_in"]:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_in"]:
        return self.decode(self.encode(x))

    def loss(self, x: Float[Tensor, "batch d_in"], dead_mask: Bool[Tensor, "d_sae"] | None = None) -> SAELoss:
        """The training loss on one batch. `dead_mask` (TopK only) marks the latents that
        count as dead, for the auxiliary loss."""
        pre = self.pre_acts(x)
        z = self.activation(pre)
        x_hat = self.decode(z)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        cfg = self.cfg
        if cfg.architecture == "relu":
            loss = relu_sae_loss(x, z, x_hat, self.W_dec, cfg.l1_coeff)
        elif cfg.architecture == "topk":
            loss = mse
            if dead_mask is not None and dead_mask.any():
                # the dead latents learn to predict what the live ones missed (not to change it: detached)
                loss = loss + cfg.aux_coeff * auxk_loss((x - x_hat).detach(), pre, self.W_dec, dead_mask, cfg.k_aux)
        else:
            loss = mse + cfg.l0_coeff * jumprelu_l0(pre, self.threshold, cfg.bandwidth)
        return SAELoss(loss, mse.detach(), z)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """After each optimiser step: unit-norm decoder rows (TopK, JumpReLU); the ReLU SAE's
        weighted L1 makes the norm part of the latent's cost, so it stays free."""
        if self.cfg.architecture != "relu":
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def collect_activations(model, tokens: Int[Tensor, "batch pos"], hook_name: str) -> Float[Tensor, "batch pos d_model"]:
    """The model's activations at `hook_name`, as a detached float32 CPU tensor."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return cache[hook_name].detach().float().cpu()


def normalisation_scale(acts: Float[Tensor, "... d_model"]) -> float:
    """s such that the mean squared norm of s * acts is d_model."""
    mean_squared_norm = acts.double().pow(2).sum(-1).mean().item()
    return math.sqrt(acts.shape[-1] / mean_squared_norm)


def relu_sae_loss(
    x: Float[Tensor, "batch d_in"],
    latents: Float[Tensor, "batch d_sae"],
    reconstruction: Float[Tensor, "batch d_in"],
    W_dec: Float[Tensor, "d_sae d_in"],
    l1_coeff: float,
) -> Float[Tensor, ""]:
    """Mean over the batch of ‖x - x̂‖² + l1_coeff · Σ_i z_i ‖W_dec[i]‖."""
    squared_error = (reconstruction - x).pow(2).sum(-1)
    penalty = (latents * W_dec.norm(dim=-1)).sum(-1)
    return (squared_error + l1_coeff * penalty).mean()


def topk_activation(pre: Float[Tensor, "batch d_sae"], k: int) -> Float[Tensor, "batch d_sae"]:
    """ReLU of each row's k largest pre-activations, zeros elsewhere."""
    top = pre.topk(min(k, pre.shape[-1]), dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def auxk_loss(
    residual: Float[Tensor, "batch d_in"],
    pre: Float[Tensor, "batch d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    dead_mask: Bool[Tensor, "d_sae"],
    k_aux: int,
) -> Float[Tensor, ""]:
    """Mean over the batch of ‖e - ê‖², ê decoded from the top-k_aux dead latents."""
    k = min(k_aux, int(dead_mask.sum()))
    if k == 0:
        return pre.new_zeros(())
    z_aux = topk_activation(torch.where(dead_mask, pre, -torch.inf), k)
    residual_hat = z_aux @ W_dec
    return (residual - residual_hat).pow(2).sum(-1).mean()


class JumpReLUFunction(torch.autograd.Function):
    """π · H(π - θ), with the straight-through pseudo-derivative for θ (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        above = pre - threshold
        in_window = above.abs() < ctx.bandwidth / 2
        grad_pre = grad_output * (above > 0)
        # -θ/ε is the same for every input: sum over the batch first, then scale
        grad_threshold = -(threshold / ctx.bandwidth) * (grad_output * in_window).sum(0)
        return grad_pre, grad_threshold, None


def jumprelu(pre: Float[Tensor, "batch d_sae"], threshold: Float[Tensor, "d_sae"], bandwidth: float
             ) -> Float[Tensor, "batch d_sae"]:  # fmt: skip
    """JumpReLU_θ(π), differentiable in π and (through the straight-through estimator) in θ."""
    return JumpReLUFunction.apply(pre, threshold, bandwidth)


class StepFunction(torch.autograd.Function):
    """H(π - θ), with the straight-through pseudo-derivative for θ."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        in_window = (pre - threshold).abs() < ctx.bandwidth / 2
        grad_threshold = -(grad_output * in_window).sum(0) / ctx.bandwidth
        return None, grad_threshold, None  # None: no gradient to `pre` (as zeros, without the tensor)


def jumprelu_l0(pre: Float[Tensor, "batch d_sae"], threshold: Float[Tensor, "d_sae"], bandwidth: float
                ) -> Float[Tensor, ""]:  # fmt: skip
    """Mean over the batch of the number of latents above threshold (differentiable in θ)."""
    return StepFunction.apply(pre, threshold, bandwidth).sum(-1).mean()


def train_sae(
    sae: SAE,
    batches: Iterator[Float[Tensor, "batch d_in"]],
    *,
    steps: int,
    lr: float,
    warmup_steps: int,
    dead_after: int,
) -> dict[str, Float[Tensor, "step"]]:
    """Train `sae` in place with Adam and a linear warm-up; return the per-step history."""
    device = sae.W_dec.device
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps))
    since_fired = torch.zeros(sae.cfg.d_sae, device=device)
    history: dict[str, list[float]] = {"loss": [], "mse": [], "l0": [], "dead_fraction": []}
    bar = progress(range(steps), desc=f"training {sae.cfg.architecture} SAE")
    for _ in bar:
        x = next(batches).to(device)
        out = sae.loss(x, since_fired >= dead_after)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        scheduler.step()
        sae.normalise_decoder()
        active = out.latents.detach() > 0
        since_fired = torch.where(active.any(dim=0), 0, since_fired + len(x))
        history["loss"].append(out.loss.item())
        history["mse"].append(out.mse.item())
        history["l0"].append(active.sum(-1).float().mean().item())
        history["dead_fraction"].append((since_fired >= dead_after).float().mean().item())
        bar.set_postfix(mse=f"{history['mse'][-1]:.3f}", l0=f"{history['l0'][-1]:.1f}", refresh=False)
    return {name: torch.tensor(values, dtype=torch.float32) for name, values in history.items()}


def reconstruction_metrics(
    x: Float[Tensor, "batch d_in"], reconstruction: Float[Tensor, "batch d_in"], latents: Float[Tensor, "batch d_sae"]
) -> tuple[float, float, float]:
    """(L0, MSE, explained variance) of one batch."""
    l0 = (latents != 0).sum(-1).float().mean().item()
    squared_error = (x - reconstruction).pow(2).sum(-1).mean()
    variance = (x - x.mean(0)).pow(2).sum(-1).mean()
    return l0, squared_error.item(), (1 - squared_error / variance).item()


def ce_loss_recovered(
    model,
    tokens: Int[Tensor, "batch pos"],
    hook_name: str,
    reconstruct: Callable[[Float[Tensor, "batch pos d_model"]], Float[Tensor, "batch pos d_model"]],
) -> tuple[float, float, float, float]:
    """(CE clean, CE with the SAE spliced in, CE zero-ablated, CE loss recovered)."""
    def next_token_loss(logits: Tensor) -> float:
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).item()

    def splice(activation: Tensor, hook) -> Tensor:
        return torch.cat([activation[:, :1], reconstruct(activation[:, 1:])], dim=1)

    def zero(activation: Tensor, hook) -> Tensor:
        return torch.cat([activation[:, :1], torch.zeros_like(activation[:, 1:])], dim=1)

    with torch.no_grad():
        ce_clean = next_token_loss(model(tokens))
        ce_sae = next_token_loss(model.run_with_hooks(tokens, fwd_hooks=[(hook_name, splice)]))
        ce_zero = next_token_loss(model.run_with_hooks(tokens, fwd_hooks=[(hook_name, zero)]))
    return ce_clean, ce_sae, ce_zero, (ce_zero - ce_sae) / (ce_zero - ce_clean)


def relative_reconstruction_bias(x: Float[Tensor, "batch d_in"], reconstruction: Float[Tensor, "batch d_in"]) -> float:
    """γ = E[x̂·x̂] / E[x̂·x]: below 1 when the reconstruction is shrunk."""
    return ((reconstruction * reconstruction).sum(-1).mean() / (reconstruction * x).sum(-1).mean()).item()


def top_activations(acts: Float[Tensor, "batch pos"], k: int
                    ) -> tuple[Float[Tensor, "k"], Int[Tensor, "k"], Int[Tensor, "k"]]:  # fmt: skip
    """The k largest entries of `acts`, largest first, with their (row, position)."""
    top = acts.flatten().topk(k)
    return top.values, top.indices // acts.shape[1], top.indices % acts.shape[1]


def detection_scores(fires: Bool[Tensor, "n d_sae"], labels: Bool[Tensor, "n"]
                     ) -> tuple[Float[Tensor, "d_sae"], Float[Tensor, "d_sae"], Float[Tensor, "d_sae"]]:  # fmt: skip
    """Precision, recall and F1 of every latent as a detector of `labels` (0 where undefined)."""
    tp = (fires & labels[:, None]).sum(0).float()
    fired = fires.sum(0).float()
    positives = labels.sum().float()

    def ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
        return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-12), torch.zeros_like(numerator))

    precision = ratio(tp, fired)
    recall = ratio(tp, positives.expand_as(tp))
    f1 = ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1


def held_out_f1(
    z: Float[Tensor, "n d_sae"], truth: Bool[Tensor, "n"], rows: Int[Tensor, "n"], *, n_splits: int, seed: int,
    detection_scores: Callable = detection_scores,
) -> tuple[float, float, int]:
    """Mean and standard deviation, over `n_splits` random halves of the windows, of the
    held-out F1 of the latent chosen on the other half; and the latent chosen most often."""
    generator = torch.Generator().manual_seed(seed)
    n_windows = int(rows.max()) + 1
    f1s, latents = [], []
    for _ in range(n_splits):
        half = torch.zeros(n_windows, dtype=torch.bool)
        half[torch.randperm(n_windows, generator=generator)[: n_windows // 2]] = True
        a = half[rows]
        _, _, f1_a = detection_scores(z[a] > 0, truth[a])
        latent = int(f1_a.argmax())
        _, _, f1_b = detection_scores(z[~a][:, latent:latent + 1] > 0, truth[~a])
        f1s.append(float(f1_b[0]))
        latents.append(latent)
    f1s = torch.tensor(f1s)
    return f1s.mean().item(), f1s.std().item(), max(set(latents), key=latents.count)


def investigate_facts(sae, store, windows) -> dict[str, int]:
    """For each kind of fact, the latent of `sae` that best signals that a value of that kind comes next."""
    word_class = windows.labels["word_class"]  # [n, 64]: store position p is token p + 1
    next_class = torch.as_tensor(word_class[:, 2:]).reshape(-1)  # the token after store positions 0 .. pos-3
    x = store.window(slice(None))[:, :-1].reshape(-1, store.d_model) * sae.scale  # the last has no next token
    with torch.no_grad():
        fires = torch.cat([sae.encode(chunk.to(sae.W_dec.device)).cpu() > 0 for chunk in x.split(8192)])
    answer = {}
    for kind in ("city", "job", "pet"):
        labels = next_class == corpus.WORD_CLASSES.index(kind)
        answer[kind] = int(detection_scores(fires, labels)[2].argmax())
    return answer


__all__ = ['collect_activations', 'normalisation_scale', 'relu_sae_loss', 'topk_activation', 'auxk_loss', 'jumprelu', 'jumprelu_l0', 'train_sae', 'reconstruction_metrics', 'ce_loss_recovered', 'relative_reconstruction_bias', 'top_activations', 'detection_scores', 'held_out_f1', 'investigate_facts']
CHAPTER = '04_sparse_autoencoders'
CPU_LIMIT = 600  # CPU seconds per cell under grading
POINTS = {'collect_activations': 1, 'normalisation_scale': 1, 'relu_sae_loss': 2, 'topk_activation': 2, 'auxk_loss': 3, 'jumprelu': 3, 'jumprelu_l0': 2, 'train_sae': 3, 'reconstruction_metrics': 2, 'ce_loss_recovered': 3, 'relative_reconstruction_bias': 1, 'top_activations': 2, 'detection_scores': 2, 'held_out_f1': 4, 'investigate_facts': 6}
