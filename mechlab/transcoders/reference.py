"""Reference solutions of chapter 6: Transcoders and attribution graphs.

GENERATED from solutions/06_transcoders.py by `python -m autograder build`: do not edit.
"""


from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mechlab import corpus, zoo
from mechlab.runtime import progress
from mechlab.sparse_autoencoders.reference import SAELoss, auxk_loss, topk_activation


@dataclass(frozen=True)
class TranscoderConfig:
    d_in: int  # d_model
    d_sae: int  # number of latents (the name chapter 4's training loop reads)
    layer: int  # the MLP it replaces
    k: int = 16  # latents kept per input
    skip: bool = False  # a linear skip connection x W_skip beside the latents
    k_aux: int = 64  # dead latents the auxiliary loss uses
    aux_coeff: float = 1 / 32
    seed: int = 0
    architecture: str = "topk"  # what chapter 4's training loop prints


class Transcoder(nn.Module):
    """A TopK transcoder for the MLP of `cfg.layer`: reads `blocks.{layer}.ln2.hook_out`,
    predicts `blocks.{layer}.hook_mlp_out`."""

    def __init__(self, cfg: TranscoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        W_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=g)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_in)) if cfg.skip else None
        self.register_buffer("in_scale", torch.tensor(1.0))  # set from the data before training
        self.register_buffer("out_scale", torch.tensor(1.0))

    def pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Pre-activations from the MLP's input in the model's units."""
        return (x * self.in_scale) @ self.W_enc + self.b_enc

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return topk_activation(self.pre_acts(x), self.cfg.k)

    def decode(self, z: Float[Tensor, "... d_sae"], x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """The predicted MLP output, in the model's units, from latents `z` (and the input
        `x`, which the skip connection reads)."""
        y = z @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            y = y + (x * self.in_scale) @ self.W_skip
        return y / self.out_scale

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        y_hat, _ = transcode(x * self.in_scale, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.cfg.k,
                             self.W_skip)
        return y_hat / self.out_scale

    def loss(self, pairs: Float[Tensor, "batch 2 d_in"], dead_mask: Bool[Tensor, "d_sae"] | None = None) -> SAELoss:
        x, y = pairs[:, 0] * self.in_scale, pairs[:, 1] * self.out_scale
        y_hat, z = transcode(x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.cfg.k, self.W_skip)
        mse = (y_hat - y).pow(2).sum(-1).mean()
        loss = mse
        if dead_mask is not None and dead_mask.any():
            pre = x @ self.W_enc + self.b_enc
            loss = loss + self.cfg.aux_coeff * auxk_loss((y - y_hat).detach(), pre, self.W_dec, dead_mask,
                                                         self.cfg.k_aux)
        return SAELoss(loss, mse.detach(), z)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)


@dataclass(frozen=True)
class Node:
    """A node of an attribution graph."""

    kind: str  # "latent", "error", "embedding" or "target"
    layer: int  # -1 for embeddings, n_layers for the target
    position: int
    latent: int = -1  # latent nodes only
    value: float = 0.0  # a latent's activation; the norm of an error or embedding vector

    def label(self, words: Sequence[str]) -> str:
        at = f"{words[self.position]!r}@{self.position}"
        return {"latent": f"L{self.layer} #{self.latent} {at}", "error": f"L{self.layer} error {at}",
                "embedding": f"embedding {at}"}.get(self.kind, f"target {at}")


class LocalReplacement:
    """The local replacement model of `model` with `transcoders` (one per layer, in order)
    on one prompt `tokens` (`[pos]`).

    - `nodes`: the source nodes: active latents (layer by layer, then by position and
      latent id), then errors (layer, position), then embeddings (position); the first
      `n_latents` are latents.
    - `coefficients`: ones, one per node, with `requires_grad`: what a node writes is
      multiplied by its coefficient.
    - `run(coefficients=None, propagate=False)` -> `(pre, logits)`: the active latents'
      pre-activations `[n_latents]` and the logits `[pos, d_vocab]`, with the attention
      patterns and LayerNorm scales frozen by `freeze(cache, n_layers)` (default: your
      `freeze_hooks`). At coefficients one the logits are the model's. With
      `propagate=True` an active latent writes its *live* pre-activation (an active TopK
      latent's activation is its pre-activation), so derivatives become total effects
      through the latents downstream instead of direct effects.
    - `errors[layer]` (`[pos, d_model]`): the MLP's output minus the transcoder's.
    """

    def __init__(self, model, transcoders: Sequence[Transcoder], tokens: Int[Tensor, "pos"],
                 freeze: Callable | None = None) -> None:
        self.model, self.transcoders = model, list(transcoders)
        self.tokens = torch.as_tensor(tokens).reshape(-1).to(next(model.parameters()).device)
        n_layers, pos = model.cfg.n_layers, len(self.tokens)
        if [tc.cfg.layer for tc in self.transcoders] != list(range(n_layers)):
            raise ValueError(f"give one transcoder per layer, in order, not for layers "
                             f"{[tc.cfg.layer for tc in self.transcoders]}")
        wanted = ("hook_scale", "hook_pattern", "ln2.hook_out", "hook_mlp_out", "blocks.0.hook_resid_pre")
        with torch.no_grad():
            logits, cache = model.run_with_cache(self.tokens[None], names_filter=lambda n: n.endswith(wanted))
        self.clean_logits = logits[0]
        self.frozen = list((freeze or freeze_hooks)(cache, n_layers))
        self.embedding = cache["blocks.0.hook_resid_pre"][0]
        self.active, self.activations, self.errors = [], [], []
        with torch.no_grad():
            for layer, tc in enumerate(self.transcoders):
                x = cache[f"blocks.{layer}.ln2.hook_out"][0]
                z = tc.encode(x)
                self.active.append((z > 0).nonzero())  # [n, 2]: (position, latent)
                self.activations.append(z[z > 0])
                self.errors.append(cache[f"blocks.{layer}.hook_mlp_out"][0] - tc.decode(z, x))
        self.nodes = [Node("latent", l, p, i, a) for l in range(n_layers)
                      for (p, i), a in zip(self.active[l].tolist(), self.activations[l].tolist())]
        self.n_latents = len(self.nodes)
        self.nodes += [Node("error", l, p, value=float(self.errors[l][p].norm()))
                       for l in range(n_layers) for p in range(pos)]
        self.nodes += [Node("embedding", -1, p, value=float(self.embedding[p].norm())) for p in range(pos)]
        starts = torch.tensor([0] + [len(a) for a in self.active]).cumsum(0).tolist()
        self.latent_slices = [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]
        self.error_slices = [slice(self.n_latents + l * pos, self.n_latents + (l + 1) * pos) for l in range(n_layers)]
        self.embedding_slice = slice(self.n_latents + n_layers * pos, len(self.nodes))
        self.coefficients = torch.ones(len(self.nodes), device=self.tokens.device, requires_grad=True)

    @property
    def words(self) -> list[str]:
        return self.model.to_str_tokens(self.tokens)

    def run(self, coefficients: Tensor | None = None, propagate: bool = False
            ) -> tuple[Float[Tensor, "n_latents"], Float[Tensor, "pos d_vocab"]]:
        c = self.coefficients if coefficients is None else coefficients
        pre, inputs = [], {}
        embedding = c[self.embedding_slice, None] * self.embedding
        hooks = self.frozen + [("blocks.0.hook_resid_pre", lambda t, hook: embedding[None])]
        for layer, tc in enumerate(self.transcoders):
            where = (self.active[layer][:, 0], self.active[layer][:, 1])

            def read(t, hook, layer=layer, tc=tc, where=where):
                inputs[layer] = t[0]
                pre.append(tc.pre_acts(t[0])[where])  # the active latents' pre-activations
                return t

            def write(t, hook, layer=layer, tc=tc, where=where):
                values = pre[layer] if propagate else self.activations[layer]
                z = torch.zeros(len(self.tokens), tc.cfg.d_sae, device=t.device)
                z = z.index_put(where, c[self.latent_slices[layer]] * values)
                error = c[self.error_slices[layer], None] * self.errors[layer]
                return (tc.decode(z, inputs[layer]) + error)[None]

            hooks += [(f"blocks.{layer}.ln2.hook_out", read), (f"blocks.{layer}.hook_mlp_out", write)]
        logits = self.model.run_with_hooks(self.tokens[None], fwd_hooks=hooks)[0]
        return torch.cat(pre), logits


def collect_mlp_io(model, tokens: Int[Tensor, "batch pos"], layer: int
                   ) -> tuple[Float[Tensor, "batch pos d_model"], Float[Tensor, "batch pos d_model"]]:
    """The input (`blocks.{layer}.ln2.hook_out`) and output (`blocks.{layer}.hook_mlp_out`) of one MLP."""
    names = [f"blocks.{layer}.ln2.hook_out", f"blocks.{layer}.hook_mlp_out"]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return tuple(cache[n].detach().float().cpu() for n in names)


def transcode(x: Float[Tensor, "batch d_in"], W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, "d_sae"],
              W_dec: Float[Tensor, "d_sae d_out"], b_dec: Float[Tensor, "d_out"], k: int,
              W_skip: Float[Tensor, "d_in d_out"] | None = None
              ) -> tuple[Float[Tensor, "batch d_out"], Float[Tensor, "batch d_sae"]]:
    """A TopK transcoder's prediction of the MLP's output, and its latents."""
    z = topk_activation(x @ W_enc + b_enc, k)
    y_hat = z @ W_dec + b_dec
    if W_skip is not None:
        y_hat = y_hat + x @ W_skip
    return y_hat, z


def variance_explained(prediction: Float[Tensor, "batch d"], target: Float[Tensor, "batch d"]) -> float:
    """1 - sum of squared errors / sum of squared deviations of the target from its mean."""
    error = (target - prediction).pow(2).sum()
    spread = (target - target.mean(0)).pow(2).sum()
    return float(1 - error / spread)


def replacement_loss(model, tokens: Int[Tensor, "batch pos"], transcoders: Sequence[Transcoder]) -> float:
    """The model's loss with each transcoder's MLP replaced by the transcoder."""
    inputs = {}
    hooks = []
    for tc in transcoders:
        layer = tc.cfg.layer

        def keep(t, hook, layer=layer):
            inputs[layer] = t
            return t

        def replace(t, hook, tc=tc, layer=layer):
            return tc(inputs[layer])

        hooks += [(f"blocks.{layer}.ln2.hook_out", keep), (f"blocks.{layer}.hook_mlp_out", replace)]
    with torch.no_grad():
        return float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks))


def freeze_hooks(cache, n_layers: int) -> list[tuple[str, Callable]]:
    """Hooks that replace every LayerNorm scale and every attention pattern by its value in `cache`."""
    names = [f"blocks.{l}.{ln}.hook_scale" for l in range(n_layers) for ln in ("ln1", "ln2")]
    names += ["ln_final.hook_scale"] + [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
    return [(name, lambda t, hook, name=name: cache[name].detach()) for name in names]


def adjacency_matrix(replacement, target: Callable[[Tensor], Tensor]) -> Float[Tensor, "n_targets n_sources"]:
    """Row i < n_latents: d pre[i] / d coefficients; last row: d target(logits) / d coefficients."""
    pre, logits = replacement.run()
    outputs = [*pre, target(logits)]
    rows = [torch.autograd.grad(out, replacement.coefficients, retain_graph=True)[0] for out in outputs]
    return torch.stack(rows)


def node_influence(adjacency: Float[Tensor, "N N"], weights: Float[Tensor, "N"]) -> Float[Tensor, "N"]:
    """Each node's influence on the weighted outputs, through paths of every length in the normalised graph."""
    a = adjacency.abs()
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-10)
    eye = torch.eye(len(a), dtype=a.dtype, device=a.device)
    return weights @ torch.linalg.inv(eye - a) - weights


def prune_nodes(scores: Float[Tensor, "n"], share: float) -> Bool[Tensor, "n"]:
    """The fewest largest entries whose sum reaches `share` of the total (ties at the cut-off kept)."""
    total = scores.sum()
    if total <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    ordered = scores.sort(descending=True).values
    reached = (ordered.cumsum(0) >= share * total).nonzero()
    cutoff = ordered[reached[0, 0]] if len(reached) else ordered[-1]
    return scores >= cutoff


def ablate_latents(model, transcoders: Sequence[Transcoder], tokens: Int[Tensor, "pos"],
                   errors: Sequence[Float[Tensor, "pos d_model"]], nodes: Sequence[tuple[int, int, int]]
                   ) -> Float[Tensor, "pos d_vocab"]:
    """Logits of the model with MLPs replaced by transcoders plus frozen errors, and the given latents zeroed."""
    inputs = {}
    hooks = []
    for layer, tc in enumerate(transcoders):
        def keep(t, hook, layer=layer):
            inputs[layer] = t[0]
            return t

        def replace(t, hook, layer=layer, tc=tc):
            x = inputs[layer]
            z = tc.encode(x).clone()
            for node_layer, position, latent in nodes:
                if node_layer == layer:
                    z[position, latent] = 0.0
            return (tc.decode(z, x) + errors[layer])[None]

        hooks += [(f"blocks.{layer}.ln2.hook_out", keep), (f"blocks.{layer}.hook_mlp_out", replace)]
    with torch.no_grad():
        return model.run_with_hooks(tokens[None], fwd_hooks=hooks)[0]


def intervention_test(model, transcoders: Sequence[Transcoder], prompts: Sequence[tuple[Tensor, Callable]], *,
                      k: int, n_random: int, seed: int, ablate: Callable = ablate_latents,
                      replacement: Callable = LocalReplacement) -> pd.DataFrame:
    """For each prompt, the k latents of largest |total effect| and n_random others at random,
    each ablated alone in the real model: the graph's predicted change beside the real one."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for p, (tokens, target) in enumerate(progress(prompts, desc="interventions")):
        lr = replacement(model, transcoders, tokens)
        with torch.enable_grad():
            _, logits = lr.run(propagate=True)
            (grad,) = torch.autograd.grad(target(logits), lr.coefficients)
        effects = grad[: lr.n_latents].detach()
        base = float(target(lr.clean_logits))
        order = effects.abs().argsort(descending=True)
        rest = order[k:]
        chosen = [("top", order[:k]), ("random", rest[torch.randperm(len(rest), generator=generator)[:n_random]])]
        for kind, indices in chosen:
            for i in indices.tolist():
                node = lr.nodes[i]
                logits = ablate(model, transcoders, lr.tokens, lr.errors, [(node.layer, node.position, node.latent)])
                rows.append({"prompt": p, "kind": kind, "layer": node.layer, "position": node.position,
                             "latent": node.latent, "predicted": -float(effects[i]), "real": float(target(logits)) - base})
    return pd.DataFrame(rows)


def explain_recall(model, transcoders: Sequence[Transcoder], tokens: Int[Tensor, "pos"]) -> list[tuple[int, int, int]]:
    """At most 6 latents (layer, position, latent) that carry the model's preference for the person's city."""
    cities = torch.from_numpy(zoo.token_ids(list(corpus.CITIES))).to(tokens.device)
    lr = LocalReplacement(model, transcoders, tokens)
    city = int(lr.clean_logits[-1, cities].argmax())

    def target(logits: Tensor) -> Tensor:
        return logits[-1, cities[city]] - logits[-1, cities].mean()

    # the graph narrows the search: the 12 latents of largest |total effect| ...
    _, logits = lr.run(propagate=True)
    (effects,) = torch.autograd.grad(target(logits), lr.coefficients)
    top = effects[: lr.n_latents].abs().argsort(descending=True)[:12].tolist()
    candidates = [(lr.nodes[i].layer, lr.nodes[i].position, lr.nodes[i].latent) for i in top]
    # ... and the real model chooses: effects do not add, so add the latent whose removal,
    # together with those already chosen, lowers the target most
    chosen = []
    with torch.no_grad():
        for _ in range(6):
            remaining = [c for c in candidates if c not in chosen]
            after = [float(target(ablate_latents(model, transcoders, tokens, lr.errors, chosen + [c])))
                     for c in remaining]
            chosen.append(remaining[int(torch.tensor(after).argmin())])
    return chosen


__all__ = ['collect_mlp_io', 'transcode', 'variance_explained', 'replacement_loss', 'freeze_hooks', 'adjacency_matrix', 'node_influence', 'prune_nodes', 'ablate_latents', 'intervention_test', 'explain_recall']
CHAPTER = '06_transcoders'
CPU_LIMIT = 240  # CPU seconds per cell under grading
POINTS = {'collect_mlp_io': 1, 'transcode': 2, 'variance_explained': 1, 'replacement_loss': 2, 'freeze_hooks': 2, 'adjacency_matrix': 3, 'node_influence': 2, 'prune_nodes': 1, 'ablate_latents': 2, 'intervention_test': 4, 'explain_recall': 5}
