"""Chapter 4's measurements of an SAE over an activation store: its latents and
reconstructions chunk by chunk on its own device (`encode`), and the numbers the
evaluation table and every committed SAE record (`measure`: L0, MSE, explained
variance, the CE numbers, dead and dense fractions, the shrinkage bias). The measuring
functions themselves are the learner's (`reconstruction_metrics`, `ce_loss_recovered`,
`relative_reconstruction_bias`), passed in; `zoo` passes the reference ones.

Activations are normalised with the SAE's own scale (`sae.scale`, set by `zoo.load`),
else the store's. Everything returned is on the CPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.sparse_autoencoders.activations import ActivationStore

DENSE = 0.1  # a latent firing on more than this fraction of inputs counts as dense

Metrics = Callable[..., tuple[float, float, float]]  # (x, x_hat, z) -> (l0, mse, explained variance)
CE = Callable[..., tuple[float, float, float, float]]  # (model, tokens, hook, reconstruct) -> 4 floats



# ---------------------------------------------------------------- running SAEs over a store


def sae_scale(sae, store: ActivationStore) -> float:
    """The factor that normalises the store's raw activations for `sae`: its own
    `scale` (committed SAEs), else the store's."""
    return float(getattr(sae, "scale", None) or store.scale)


def _check_hook(sae, store: ActivationStore) -> None:
    if sae.cfg.hook_name != store.hook_name:
        raise ValueError(f"this SAE reads {sae.cfg.hook_name!r} but the store holds {store.hook_name!r}: "
                         f"collect a store at the SAE's hook")


def _device(module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def encode(sae, x: Float[Tensor, "batch d_model"], chunk: int = 8192, decode: bool = True
           ) -> tuple[Float[Tensor, "batch d_sae"], Float[Tensor, "batch d_model"] | None]:  # fmt: skip
    """Latents (and reconstructions) of normalised activations `x`, chunk by chunk on the
    SAE's device; both returned on the CPU."""
    device = _device(sae)
    z = torch.empty(len(x), sae.cfg.d_sae)
    x_hat = torch.empty(len(x), x.shape[-1]) if decode else None
    for start in range(0, len(x), chunk):
        zc = sae.encode(x[start:start + chunk].to(device).float())
        z[start:start + chunk] = zc.cpu()
        if decode:
            x_hat[start:start + chunk] = sae.decode(zc).cpu()
    return z, x_hat


@dataclass
class _Stats:
    """What several plots need from one pass of an SAE over a whole store."""

    density: Float[Tensor, "d_sae"]  # fraction of activations on which each latent fires
    x_hat: Float[Tensor, "batch d_model"]  # reconstructions (normalised, the SAE's scale)
    scale: float


_STATS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # sae -> {store -> (fingerprint, _Stats)}


def _fingerprint(sae, store: ActivationStore) -> tuple:
    """Changes whenever the SAE's weights (trained, loaded, moved) or the store's scale change."""
    params = tuple((p.data_ptr(), p._version, str(p.device)) for p in sae.parameters())
    return params, store.scale, sae_scale(sae, store)


def _normalised(store: ActivationStore, scale: float) -> Float[Tensor, "batch d_model"]:
    """Every activation of the store, normalised with `scale` instead of the store's own."""
    return store.flat() / store.scale * scale


def _stats(sae, store: ActivationStore, x: Tensor | None = None, z: Tensor | None = None,
           x_hat: Tensor | None = None) -> _Stats:  # fmt: skip
    """Density and reconstructions of `sae` on every activation of `store` (cached per SAE
    and store until either changes)."""
    key = _fingerprint(sae, store)
    per_sae = _STATS.setdefault(sae, weakref.WeakKeyDictionary())
    hit = per_sae.get(store)
    if hit is not None and hit[0] == key:
        return hit[1]
    if z is None:
        _check_hook(sae, store)
        x = _normalised(store, sae_scale(sae, store))
        z, x_hat = encode(sae, x)
    stats = _Stats((z > 0).float().mean(0), x_hat, sae_scale(sae, store))
    per_sae[store] = (key, stats)
    return stats



def measure(sae, model, store: ActivationStore, tokens: Int[Tensor, "batch pos"], *, metrics: Metrics, ce: CE,
            bias: Callable[..., float] | None = None, ce_windows: int = 256) -> dict[str, float]:  # fmt: skip
    """One SAE's numbers, unrounded: L0, MSE and explained variance on every activation of
    `store` (from `metrics`), the CE numbers on the first `ce_windows` windows of `tokens`
    (from `ce`, with the SAE spliced in around its normalisation), the fractions of dead
    (never firing on the store) and dense (firing on more than 10%) latents, and, given
    `bias`, the relative reconstruction bias. `sae_zoo` records these in each checkpoint."""
    _check_hook(sae, store)
    scale = sae_scale(sae, store)
    x = _normalised(store, scale)
    z, x_hat = encode(sae, x)
    l0, mse, ev = metrics(x, x_hat, z)
    stats = _stats(sae, store, x, z, x_hat)
    del z
    sae_device = _device(sae)

    def reconstruct(a: Tensor) -> Tensor:
        with torch.no_grad():
            return (sae(a.to(sae_device) * scale) / scale).to(a.device)

    ce_clean, ce_sae, _, recovered = ce(model, tokens[:ce_windows].to(_device(model)), sae.cfg.hook_name, reconstruct)
    row = {"l0": l0, "mse": mse, "explained_variance": ev, "ce_clean": ce_clean, "ce_sae": ce_sae,
           "ce_increase": ce_sae - ce_clean, "ce_loss_recovered": recovered,
           "dead_fraction": float((stats.density == 0).float().mean()),
           "dense_fraction": float((stats.density > DENSE).float().mean())}
    if bias is not None:
        row["relative_reconstruction_bias"] = bias(x, x_hat)
    return row
