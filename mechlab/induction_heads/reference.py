"""Reference solutions of chapter 2: Induction heads.

GENERATED from solutions/02_induction_heads.py by `python -m autograder build`: do not edit.
"""


from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor
import pandas as pd
from transformer_lens import FactoredMatrix

from mechlab.zoo import BOS_ID, FIRST_WORD_ID


def correct_log_probs(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos_minus_1"]:
    """Log-probability of each next token: out[b, i] = log p(tokens[b, i + 1] | tokens[b, :i + 1])."""
    log_probs = logits.log_softmax(dim=-1)
    return log_probs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


def generate_repeated_tokens(
    batch: int, seq_len: int, d_vocab: int, generator: torch.Generator
) -> Int[Tensor, "batch full_len"]:
    """[BOS, w_1 .. w_seq_len, w_1 .. w_seq_len] for each row, words uniform over FIRST_WORD_ID .. d_vocab - 1."""
    words = torch.randint(FIRST_WORD_ID, d_vocab, (batch, seq_len), generator=generator)
    bos = torch.full((batch, 1), BOS_ID, dtype=words.dtype)
    return torch.cat([bos, words, words], dim=1)


def loss_by_half(log_probs: Float[Tensor, "batch two_seq_len"], seq_len: int) -> Float[Tensor, "2"]:
    """[mean loss on the first copy, mean loss on the second copy]."""
    return torch.stack([-log_probs[:, :seq_len].mean(), -log_probs[:, seq_len:].mean()])


def previous_token_score(pattern: Float[Tensor, "batch head query key"]) -> Float[Tensor, "head"]:
    """Mean attention from each position to the one just before it (positions 1 onwards)."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1))


def repeat_scores(pattern: Float[Tensor, "batch head query key"], seq_len: int) -> Float[Tensor, "2 head"]:
    """[duplicate-token score, induction score] per head, over the second copy of a repeated sequence."""
    q = torch.arange(seq_len + 1, 2 * seq_len + 1, device=pattern.device)
    duplicate = pattern[:, :, q, q - seq_len].mean(dim=(0, -1))
    induction = pattern[:, :, q, q - seq_len + 1].mean(dim=(0, -1))
    return torch.stack([duplicate, induction])


def ablation_losses(
    model, tokens: Int[Tensor, "batch full_len"], seq_len: int, mean: bool = False
) -> Float[Tensor, "layer head"]:
    """Increase of the second-copy loss when each head alone is zero- (or mean-) ablated."""
    with torch.no_grad():
        clean = loss_by_half(correct_log_probs(model(tokens), tokens), seq_len)[1]
        increase = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):
                def ablate(z, hook, head=head):
                    z = z.clone()
                    z[:, :, head] = z[:, :, head].mean(dim=0) if mean else 0.0
                    return z

                logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
                ablated = loss_by_half(correct_log_probs(logits, tokens), seq_len)[1]
                increase[layer, head] = (ablated - clean).item()
    return increase


def full_ov_circuit(model, layer: int, head: int) -> FactoredMatrix:
    """W_E W_V[layer, head] W_O[layer, head] W_U as a [d_vocab, d_vocab] FactoredMatrix."""
    return FactoredMatrix(model.W_E @ model.W_V[layer, head], model.W_O[layer, head] @ model.W_U)


def copying_scores(circuit: FactoredMatrix) -> tuple[float, float]:
    """(Σλ / Σ|λ| over the eigenvalues, fraction of rows whose largest entry is on the diagonal)."""
    eig = circuit.eigenvalues
    eigen_score = (eig.sum() / eig.abs().sum()).real.item()
    full = circuit.AB
    top1 = (full.argmax(dim=-1) == torch.arange(full.shape[0], device=full.device)).float().mean().item()
    return eigen_score, top1


def induction_qk_circuit(model, prev_head: int, induction_head: int) -> FactoredMatrix:
    """[d_vocab, d_vocab]: query token (rows) against the previous token at the key (columns),
    through the OV circuit of layer-0 head `prev_head` and the QK circuit of layer-1 head `induction_head`."""
    W_E = model.W_E
    query_side = W_E @ model.W_Q[1, induction_head]
    key_side = W_E @ model.W_V[0, prev_head] @ model.W_O[0, prev_head] @ model.W_K[1, induction_head]
    return FactoredMatrix(query_side, key_side.T)


def composition_scores(model, kind: str) -> Float[Tensor, "head0 head1"]:
    """comp(W_OV of layer-0 head i, the Q/K/V-side matrix of layer-1 head j) for every (i, j)."""
    if kind not in ("Q", "K", "V"):
        raise ValueError(f"kind must be 'Q', 'K' or 'V', got {kind!r}")
    n_heads = model.cfg.n_heads
    scores = torch.zeros(n_heads, n_heads)
    with torch.no_grad():
        for i in range(n_heads):
            A = model.OV[0, i]
            for j in range(n_heads):
                B = {"Q": model.QK[1, j], "K": model.QK[1, j].T, "V": model.OV[1, j]}[kind]
                scores[i, j] = ((A @ B).norm() / (A.norm() * B.norm())).item()
    return scores


def composition_null(model, untrained: Callable[[int], object], n_models: int = 20) -> pd.DataFrame:
    """Every Q-, K- and V-composition score between layers 0 and 1, with the share p of untrained
    models (seeds 0 .. n_models - 1) whose strongest score of that kind reaches it, as (1 + k) / (1 + n)."""
    kinds = ("Q", "K", "V")
    maxima = {kind: [] for kind in kinds}
    for seed in range(n_models):
        chance = untrained(seed)
        for kind in kinds:
            maxima[kind].append(composition_scores(chance, kind).max())
    rows = []
    for kind in kinds:
        null = torch.stack(maxima[kind])
        scores = composition_scores(model, kind)
        for i in range(scores.shape[0]):
            for j in range(scores.shape[1]):
                reaching = int((null >= scores[i, j]).sum())
                rows.append({"kind": kind, "head0": i, "head1": j, "score": scores[i, j].item(),
                             "p": (1 + reaching) / (1 + n_models)})
    return pd.DataFrame(rows)


def direct_logit_attribution(
    model, cache, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "component batch pos_minus_1"]:
    """Each part's direct contribution to the logit of the next token: part 0 the embeddings,
    then head (layer, head) at 1 + layer * n_heads + head; biases left out."""
    parts = [cache["hook_embed"] + cache["hook_pos_embed"]]
    for layer in range(model.cfg.n_layers):
        parts += list(torch.einsum("bphd,hdm->hbpm", cache["z", layer], model.W_O[layer]))
    stacked = torch.stack(parts)[:, :, :-1]  # [component, batch, pos - 1, d_model]
    centred = stacked - stacked.mean(dim=-1, keepdim=True)
    scaled = centred / cache["ln_final.hook_scale"][:, :-1]
    return torch.einsum("cbpm,mbp->cbp", scaled, model.W_U[:, tokens[:, 1:]])


def path_ablation(model, tokens: Int[Tensor, "batch full_len"], seq_len: int) -> pd.DataFrame:
    """For each layer-0 head and each input of layer 1 (q, k, v) or all of them ('all'): the mean
    increase of the second-copy loss, over sequences, when that head is zero-ablated for that input
    alone, and its standard error over sequences."""
    def per_sequence_loss(logits: Tensor) -> Tensor:
        return -correct_log_probs(logits, tokens)[:, seq_len:].mean(dim=1)

    inputs = {path: f"blocks.1.attn.hook_{path}" for path in ("q", "k", "v")}
    rows = []
    with torch.no_grad():
        clean = per_sequence_loss(model(tokens))
        for head in range(model.cfg.n_heads):
            def zero_head(z, hook, head=head):
                z = z.clone()
                z[:, :, head] = 0.0
                return z

            with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", zero_head)]):
                ablated_logits, ablated = model.run_with_cache(tokens, names_filter=lambda name: name in inputs.values())
            runs = {path: model.run_with_hooks(tokens, fwd_hooks=[(name, lambda act, hook, name=name: ablated[name])])
                    for path, name in inputs.items()}
            runs["all"] = ablated_logits
            for path, logits in runs.items():
                increase = per_sequence_loss(logits) - clean
                rows.append({"head": head, "path": path, "increase": increase.mean().item(),
                             "se": (increase.std() / len(increase) ** 0.5).item()})
    return pd.DataFrame(rows)


def find_induction_circuit(model) -> dict[str, list[tuple[int, int]]]:
    """{"previous_token": [(layer, head), ...], "induction": [(layer, head), ...]} for `model`."""
    generator = torch.Generator().manual_seed(2)
    device = model.W_E.device
    layers = range(model.cfg.n_layers)
    scores = {"previous_token": [], "induction": []}
    with torch.no_grad():
        for seq_len in (11, 19, 27):  # repeat lengths the zoo's models never train on
            tokens = generate_repeated_tokens(32, seq_len, model.cfg.d_vocab, generator).to(device)
            _, cache = model.run_with_cache(tokens)
            scores["previous_token"].append(torch.stack([previous_token_score(cache["pattern", l]) for l in layers]))
            scores["induction"].append(torch.stack([repeat_scores(cache["pattern", l], seq_len)[1] for l in layers]))
    cut_off = {"previous_token": 0.5, "induction": 0.4}  # the middle of the gap between clear and not
    return {kind: [(int(layer), int(head)) for layer, head in torch.nonzero(torch.stack(s).mean(0) >= cut_off[kind])]
            for kind, s in scores.items()}


__all__ = ['correct_log_probs', 'generate_repeated_tokens', 'loss_by_half', 'previous_token_score', 'repeat_scores', 'ablation_losses', 'full_ov_circuit', 'copying_scores', 'induction_qk_circuit', 'composition_scores', 'composition_null', 'direct_logit_attribution', 'path_ablation', 'find_induction_circuit']
CHAPTER = '02_induction_heads'
CPU_LIMIT = 120  # CPU seconds per cell under grading
POINTS = {'correct_log_probs': 1, 'generate_repeated_tokens': 1, 'loss_by_half': 1, 'previous_token_score': 2, 'repeat_scores': 2, 'ablation_losses': 3, 'full_ov_circuit': 2, 'copying_scores': 2, 'induction_qk_circuit': 2, 'composition_scores': 2, 'composition_null': 3, 'direct_logit_attribution': 2, 'path_ablation': 4, 'find_induction_circuit': 5}
