"""Attribution graphs through transcoders, for one prompt of `corpus_2l` (chapter 6).

The **local replacement model** of a prompt (Ameisen et al. 2025, "Circuit Tracing")
replaces each MLP by its transcoder plus an *error* vector per position, the
difference between the MLP's real output and the transcoder's on this prompt, so its
output equals the model's exactly; and it freezes every nonlinearity that is not a
node: the attention patterns and the LayerNorm scales, at their values on this prompt.
What is left is linear in the **nodes**:

- one *embedding* node per position (token plus position embedding),
- one *latent* node per active transcoder latent at each (layer, position),
- one *error* node per (layer, position).

`LocalReplacement` gives every node a coefficient (all ones) that scales what it writes
into the residual stream; `run()` is the frozen forward pass from those coefficients to
the active latents' pre-activations and the logits. Because the run is linear, the
derivative of a target with respect to a node's coefficient *is* that node's direct
effect on the target: its activation times the gradient, the graph's edge weight.

`attribution_graph` assembles the square adjacency (rows: targets, columns: sources;
latents are both, embeddings and errors only sources, the logit target only a target),
its influence (chapter 6's `node_influence`), pruning, and the two scores of the paper.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechlab import corpus, zoo
from mechlab.transcoders import reference as ref
from mechlab.transcoders.reference import LocalReplacement, Node

Target = Callable[[Tensor], Tensor]  # logits [pos, d_vocab] -> a scalar


# ---------------------------------------------------------------- targets


@functools.cache
def city_ids() -> Int[Tensor, "n_cities"]:
    return torch.from_numpy(zoo.token_ids(list(corpus.CITIES)))


def city_target(city: str) -> Target:
    """The logit of `city` at the last position minus the mean logit of the 12 cities: how
    much the model prefers this city to the others (the decision fact recall makes)."""
    index = corpus.CITIES.index(city)

    def target(logits: Tensor) -> Tensor:
        cities = logits[-1, city_ids().to(logits.device)]
        return cities[index] - cities.mean()

    return target


def logit_diff_target(good: int, bad: int) -> Target:
    """logit[good] - logit[bad] at the last position (IOI: the indirect object against the subject)."""
    return lambda logits: logits[-1, good] - logits[-1, bad]


# ---------------------------------------------------------------- the graph


@dataclass
class Graph:
    """An attribution graph: `nodes` (sources, then the target last), `adjacency` [N, N]
    (row: target node, column: source node, entry: the source's direct effect on the
    target's pre-activation, or on the target's value for the last row), `influence` [N]
    (each node's influence on the target through all paths, normalised), and the
    replacement it came from."""

    replacement: LocalReplacement
    nodes: list[Node]
    adjacency: Float[Tensor, "N N"]
    influence: Float[Tensor, "N"]
    target_value: float
    constant: Float[Tensor, "n_latents_plus_1"]  # what the rows do not explain: biases (pre or target at c = 0)
    target_fn: Target
    name: str = ""

    @property
    def words(self) -> list[str]:
        return self.replacement.words

    @property
    def n_latents(self) -> int:
        return self.replacement.n_latents

    def mask(self, kind: str) -> Bool[Tensor, "N"]:
        return torch.tensor([n.kind == kind for n in self.nodes])

    def label(self, i: int) -> str:
        return self.nodes[i].label(self.words)


def bias_constant(replacement: LocalReplacement, target: Target) -> Float[Tensor, "n_latents_plus_1"]:
    """What the graph's rows do not explain: each active latent's pre-activation, and the
    target, with every node switched off (the biases' contribution)."""
    with torch.no_grad():
        pre, logits = replacement.run(torch.zeros_like(replacement.coefficients))
    return torch.cat([pre, target(logits)[None]])


def target_weights(n: int) -> Float[Tensor, "n"]:
    """The output weights of a graph of `n` nodes whose last node is its one target."""
    weights = torch.zeros(n)
    weights[-1] = 1.0
    return weights


def reach(adjacency: Float[Tensor, "N N"]) -> Float[Tensor, "N"]:
    """Each node's influence on the target through paths of every length, the target itself
    counting 1: w^T (I - Â)^-1, from the reference `node_influence`."""
    weights = target_weights(len(adjacency))
    return ref.node_influence(adjacency, weights) + weights


def attribution_graph(model, transcoders: Sequence, tokens: Int[Tensor, "pos"], target: Target, *,
                      adjacency: Callable | None = None, influence: Callable | None = None,
                      freeze: Callable | None = None, name: str = "") -> Graph:
    """The attribution graph of `target` on one prompt, with chapter 6's functions
    (defaults: the reference `adjacency_matrix`, `node_influence`, `freeze_hooks`)."""
    adjacency, influence = adjacency or ref.adjacency_matrix, influence or ref.node_influence
    lr = LocalReplacement(model, transcoders, tokens, freeze)
    rows = adjacency(lr, target).detach().cpu()
    n_src = len(lr.nodes)
    A = torch.zeros(n_src + 1, n_src + 1)
    A[: lr.n_latents, :n_src] = rows[: lr.n_latents]
    A[-1, :n_src] = rows[-1]
    value = float(target(lr.clean_logits))  # the run at coefficients one is the model
    nodes = lr.nodes + [Node("target", model.cfg.n_layers, len(lr.tokens) - 1, value=value)]
    return Graph(lr, nodes, A, influence(A, target_weights(len(A))).detach().cpu(), value,
                 bias_constant(lr, target).cpu(), target, name)


def normalised(adjacency: Float[Tensor, "N N"]) -> Float[Tensor, "N N"]:
    """|A| with each row divided by its sum (rows without inputs stay zero)."""
    a = adjacency.abs()
    return a / a.sum(-1, keepdim=True).clamp_min(1e-10)


def scores(graph: Graph) -> dict[str, float]:
    """Circuit Tracing's two scores of a graph (section 4 of the paper):

    - *replacement score*: of all the influence that reaches the target from the nodes
      with no inputs (embeddings and errors), the share that starts at an embedding:
      1 when no path runs through an error node;
    - *completeness score*: the share of every node's input that comes from non-error
      nodes, weighted by the node's influence on the target (the target counted with weight 1;
      nodes without inputs count as complete).

    Both as circuit-tracer's `compute_graph_scores` computes them, on the unpruned graph."""
    An = normalised(graph.adjacency)
    through = reach(graph.adjacency)
    errors, embeddings = graph.mask("error"), graph.mask("embedding")
    replacement = float(through[embeddings].sum() / (through[embeddings].sum() + through[errors].sum()))
    non_error = 1 - An[:, errors].sum(-1)  # 1 for nodes without inputs (embeddings, errors), as circuit-tracer counts
    completeness = float((non_error * through).sum() / through.sum())
    return {"replacement": replacement, "completeness": completeness}


def prune(graph: Graph, node_share: float = 0.8, edge_share: float = 0.98
          ) -> tuple[Bool[Tensor, "N"], Bool[Tensor, "N N"]]:
    """Circuit Tracing's pruning: keep the nodes that carry `node_share` of the influence on
    the target (embeddings and the target always kept), then, on the graph of those nodes,
    the edges that carry `edge_share` of the edge influence (an edge's normalised weight
    times its target node's influence, the target counting 1); then, until nothing
    changes, nodes left without a kept outgoing edge are dropped, and latents without a
    kept incoming one (as circuit-tracer's `prune_graph`). Both cut-offs are the reference
    `prune_nodes`."""
    N = len(graph.nodes)
    keep = ref.prune_nodes(graph.influence.clamp_min(0), node_share)
    keep |= graph.mask("embedding") | graph.mask("target")
    A = graph.adjacency * keep[:, None] * keep[None, :]
    edge_scores = normalised(A) * reach(A)[:, None]
    edges = ref.prune_nodes(edge_scores.flatten(), edge_share).reshape(N, N) & (A != 0)
    latents = graph.mask("latent")
    for _ in range(N):  # drop nodes that lost every outgoing kept edge, and latents that lost every incoming one
        reaches = keep & (edges.any(0) | graph.mask("target") | graph.mask("embedding")) & (~latents | edges.any(1))
        if torch.equal(reaches, keep):
            break
        keep = reaches
        edges &= keep[:, None] & keep[None, :]
    return keep, edges


def latent_triples(nodes: Sequence[Node], indices: Sequence[int]) -> list[tuple[int, int, int]]:
    """(layer, position, latent) of the nodes at `indices`: the form an ablation takes."""
    return [(nodes[i].layer, nodes[i].position, nodes[i].latent) for i in indices]


def top_nodes(graph: Graph, k: int = 10, kinds: Sequence[str] = ("latent", "error", "embedding")) -> list[int]:
    """The `k` nodes of the given kinds with the largest influence on the target."""
    allowed = torch.tensor([n.kind in kinds for n in graph.nodes])
    order = graph.influence.masked_fill(~allowed, -1).argsort(descending=True)
    return [int(i) for i in order[: min(k, int(allowed.sum()))]]


# ---------------------------------------------------------------- interventions


def total_effects(replacement: LocalReplacement, target: Target) -> Float[Tensor, "n_sources"]:
    """Each source node's total linear effect on the target in the local replacement model:
    the derivative of the target with respect to the node's coefficient, through every
    path (downstream latents follow their pre-activations). Removing a node changes the
    target by about minus this."""
    c = replacement.coefficients
    _, logits = replacement.run(propagate=True)
    (grad,) = torch.autograd.grad(target(logits), c)
    return grad.detach()


def logit_lens(model, transcoder, latent: int, k: int = 5) -> list[tuple[str, float]]:
    """The tokens a latent's decoder direction promotes most through the unembedding
    (the final LayerNorm left out)."""
    direction = transcoder.W_dec[latent].detach() / transcoder.out_scale
    scores = direction @ model.W_U.detach()
    top = scores.topk(k)
    return [(w, float(v)) for w, v in zip(model.to_str_tokens(top.indices), top.values)]


# ---------------------------------------------------------------- fact recall against the world


def recall_prompt(model, person, template: str = "{p} lives in") -> Int[Tensor, "pos"]:
    return model.to_tokens(template.format(p=person.name))[0]


def recall_graph(model, transcoders, person, template: str = "{p} lives in", **functions) -> Graph:
    return attribution_graph(model, transcoders, recall_prompt(model, person, template), city_target(person.city),
                             name=person.name, **functions)


def city_of_latent(model, transcoder, latent: int) -> str | None:
    """The city a latent's logit lens promotes most, if a city is among its top 3 tokens."""
    for word, _ in logit_lens(model, transcoder, latent, k=3):
        if word in corpus.CITIES:
            return word
    return None


def explained_share(graph: Graph, keep: Bool[Tensor, "N"]) -> float:
    """How much of the target the kept nodes write on their own: the target with only the
    kept source nodes switched on (each latent at its activation on the prompt), less the
    biases' constant, over the same with every node on."""
    lr = graph.replacement
    with torch.no_grad():
        kept = float(graph.target_fn(lr.run(keep[: len(lr.nodes)].float().to(lr.coefficients.device))[1]))
    zero = float(graph.constant[-1])
    return (kept - zero) / (graph.target_value - zero)


def recall_table(model, transcoders, people, templates: Sequence[str] = ("{p} lives in",), **functions):
    """One row per (person, template): the graph's target, scores, the share the pruned graph
    explains, and the city of its most influential latent that promotes a city (its logit
    lens), against the person's city."""
    import pandas as pd

    rows = []
    for person in people:
        for template in templates:
            g = recall_graph(model, transcoders, person, template, **functions)
            keep, _ = prune(g)
            found = next(((i, c) for i in top_nodes(g, g.n_latents, ("latent",))
                          if (c := city_of_latent(model, transcoders[g.nodes[i].layer], g.nodes[i].latent))), (None, None))
            i, city = found
            rows.append({"person": person.name, "template": template, "city": person.city,
                         "target": g.target_value, **scores(g), "kept nodes": int(keep.sum()),
                         "explained by pruned graph": explained_share(g, keep),
                         "top city latent": g.label(i) if i is not None else None, "its city": city,
                         "right city": city == person.city,
                         "latent layer": g.nodes[i].layer if i is not None else -1,
                         "latent id": g.nodes[i].latent if i is not None else -1})
    return pd.DataFrame(rows)


TEMPLATES = tuple(t.replace(" {v} .", "") for t in corpus.FACT_TEMPLATES["city"])  # "{p} lives in", ...


def last_position_latents(model, transcoders, people, templates: Sequence[str] = TEMPLATES
                          ) -> tuple[list[Float[Tensor, "n d_sae"]], Int[Tensor, "n"]]:
    """Each layer's transcoder latents at the last position of every (person, template)
    recall prompt, and the index of the person's city in `corpus.CITIES` for each prompt."""
    acts = [[] for _ in transcoders]
    cities = []
    names = [f"blocks.{tc.cfg.layer}.ln2.hook_out" for tc in transcoders]  # every MLP's input, in one run
    for person in people:
        for template in templates:
            tokens = recall_prompt(model, person, template)[None].to(next(model.parameters()).device)
            with torch.no_grad():
                _, cache = model.run_with_cache(tokens, names_filter=names)
                for tc, name in zip(transcoders, names):
                    acts[tc.cfg.layer].append(tc.encode(cache[name][0, -1]).cpu())
            cities.append(corpus.CITIES.index(person.city))
    return [torch.stack(a) for a in acts], torch.tensor(cities)


def city_f1(acts: Float[Tensor, "n d_sae"], cities: Int[Tensor, "n"]) -> Float[Tensor, "n_cities d_sae"]:
    """Each latent's F1 as a detector of each city (firing at the last position of a recall
    prompt whose answer is that city), with chapter 4's `detection_scores`."""
    from mechlab.sparse_autoencoders.reference import detection_scores

    fires = acts > 0
    return torch.stack([detection_scores(fires, cities == c)[2] for c in range(len(corpus.CITIES))])


def hedge_target() -> Target:
    """The logit of "some" (as in "lives in some town") minus the mean city logit."""
    some = int(zoo.token_ids(["some"])[0])

    def target(logits: Tensor) -> Tensor:
        return logits[-1, some] - logits[-1, city_ids().to(logits.device)].mean()

    return target


# ---------------------------------------------------------------- interventions in the real model


def circuit_tracer_changes(model, transcoders, prompts: Sequence[tuple[Tensor, Target]], ablations):
    """circuit-tracer's protocol for checking a graph, on ablations already chosen (rows with
    `prompt`, `layer`, `position`, `latent`, as chapter 6's `intervention_test` returns them,
    `prompt` indexing `prompts`): the change of each prompt's target when the latent is
    ablated with the real MLPs computing everything downstream, attention frozen and live.
    Returns `ablations` with those two columns added."""
    import pandas as pd

    changes = {}
    for p, rows in ablations.groupby("prompt"):
        tokens, target = prompts[p]
        lr = LocalReplacement(model, transcoders, tokens)
        base = float(target(lr.clean_logits))
        patterns = [hook for hook in lr.frozen if hook[0].endswith("attn.hook_pattern")]
        for index, row in rows.iterrows():
            node = [(int(row.layer), int(row.position), int(row.latent))]
            changes[index] = {column: float(target(ablate_with_live_mlps(model, transcoders, lr.tokens, node,
                                                                         frozen))) - base
                              for column, frozen in (("real MLPs, attention frozen", patterns),
                                                     ("real MLPs, attention live", ()))}
    return ablations.join(pd.DataFrame.from_dict(changes, orient="index"))


def run_with_mlps(model, tokens: Int[Tensor, "pos"], rewrite: dict[int, Callable], extra_hooks: Sequence = ()
                  ) -> Float[Tensor, "pos d_vocab"]:
    """The logits of one prompt with the output of each MLP of a layer in `rewrite`
    replaced by `rewrite[layer](x, out)`: `x` is the MLP's input in this run, `out` its
    output (both `[pos, d_model]`)."""
    inputs, hooks = {}, list(extra_hooks)
    for layer, fn in rewrite.items():
        def keep(t, hook, layer=layer):
            inputs[layer] = t[0]
            return t

        def replace(t, hook, layer=layer, fn=fn):
            return fn(inputs[layer], t[0])[None]

        hooks += [(f"blocks.{layer}.ln2.hook_out", keep), (f"blocks.{layer}.hook_mlp_out", replace)]
    with torch.no_grad():
        return model.run_with_hooks(tokens[None], fwd_hooks=hooks)[0]


def ablate_with_live_mlps(model, transcoders, tokens: Int[Tensor, "pos"], nodes, frozen_patterns: Sequence = ()
                          ) -> Float[Tensor, "pos d_vocab"]:
    """circuit-tracer's protocol for checking a graph: the real model with its real MLPs, each
    ablated latent's current output (activation times decoder row) subtracted from its
    MLP's output, everything downstream recomputed, with the attention patterns frozen by
    `frozen_patterns` (hooks, e.g. a `LocalReplacement`'s) or, without them, live."""
    def subtract(tc, mine):
        def fn(x, out):
            z = tc.encode(x)
            removed = torch.zeros_like(z)
            for p, i in mine:
                removed[p, i] = z[p, i]
            return out - removed @ tc.W_dec / tc.out_scale
        return fn

    rewrite = {layer: subtract(tc, [(p, i) for l, p, i in nodes if l == layer])
               for layer, tc in enumerate(transcoders) if any(l == layer for l, _, _ in nodes)}
    return run_with_mlps(model, tokens, rewrite, frozen_patterns)


def plot_interventions(table) -> "plt.Figure":
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    groups = table.groupby("kind", sort=False) if "kind" in table else [("all", table)]
    for kind, rows in groups:
        ax.scatter(rows["predicted"], rows["real"], s=12, alpha=0.6, label=f"{kind} latents")
    lo = min(table["predicted"].min(), table["real"].min())
    hi = max(table["predicted"].max(), table["real"].max())
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="real = predicted")
    ax.set_xlabel("predicted change of the target (graph)")
    ax.set_ylabel("real change (attention live)")
    ax.set_title("ablating one latent")
    ax.legend()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- IOI: what a frozen-attention graph cannot see


def embedding_gradient(replacement: LocalReplacement, target: Target) -> Float[Tensor, "pos d_model"]:
    """The gradient of the target with respect to each position's embedding vector in the
    local replacement model (attention and LayerNorm frozen)."""
    original = replacement.embedding
    replacement.embedding = original.clone().requires_grad_(True)
    try:
        _, logits = replacement.run(torch.ones_like(replacement.coefficients))
        (grad,) = torch.autograd.grad(target(logits), replacement.embedding)
    finally:
        replacement.embedding = original
    return grad


def ioi_comparison(model, transcoders, prompts, **functions) -> dict[str, float]:
    """On IOI prompts (target: logit of the indirect object minus the subject's): the share
    of the graph's influence at the indirect object's position, the subject's first and
    second mentions and the last position; and the change of the target when the second
    mention of the subject is replaced by a third name, in the real model and as the graph
    predicts it (linearly, through frozen attention)."""
    shares, real, predicted, base = [], [], [], []
    for prompt in prompts:
        tokens = model.to_tokens(prompt.text)[0]
        words = model.to_str_tokens(tokens)
        io, s = (int(t) for t in zoo.token_ids([prompt.correct, prompt.distractor]))
        target = logit_diff_target(io, s)
        g = attribution_graph(model, transcoders, tokens, target, **functions)
        s_at = [i for i, w in enumerate(words) if w == prompt.distractor]
        io_at = [i for i, w in enumerate(words) if w == prompt.correct]
        infl = g.influence[:-1]

        def share(positions: list[int]) -> float:
            return float(sum(infl[i] for i, n in enumerate(g.nodes[:-1]) if n.position in positions) / infl.sum())

        shares.append((share(io_at), share(s_at[:1]), share(s_at[1:]), share([len(words) - 1])))
        third = next(n for n in corpus.FIRST_NAMES if n not in words)
        c = int(zoo.token_ids([third])[0])
        corrupted = tokens.clone()
        corrupted[s_at[1]] = c
        clean_value = g.target_value
        with torch.no_grad():
            real.append(float(target(model(corrupted[None])[0])) - clean_value)
        grad = embedding_gradient(g.replacement, target)
        predicted.append(float(grad[s_at[1]] @ (model.W_E[c] - model.W_E[tokens[s_at[1]]])))
        base.append(clean_value)
    mean = np.array(shares).mean(0)
    return {"influence at IO": mean[0], "influence at S1": mean[1], "influence at S2": mean[2],
            "influence at the end": mean[3], "logit difference": float(np.mean(base)),
            "real change, S2 replaced": float(np.mean(real)), "graph's predicted change": float(np.mean(predicted))}


def borrowed(name: str, city: str | None) -> bool:
    """Whether `city` is the city of another known person sharing a first or last name with `name`."""
    from mechlab.steering.experiments import borrowed_city

    return city is not None and borrowed_city(tuple(name.split()), city)


class _Named:
    """A (first, last) pair dressed as a person for the prompt helpers (its city unused)."""

    def __init__(self, pair: tuple[str, str]) -> None:
        self.name, self.city = " ".join(pair), corpus.CITIES[0]


def hedge_summary(model, transcoders, **functions) -> dict[str, float | str]:
    """The graphs of the hedge (target: "some" minus the mean city logit) for every hedged
    name, "first last lives in": which latent promoting "some" or "town" has the most
    influence in each, and how that latent fires at the last position for known people,
    hedged names and names the corpus never describes."""
    world = corpus.build_world()
    counts: dict[tuple[int, int], int] = {}
    for pair in world.hedged:
        g = attribution_graph(model, transcoders, recall_prompt(model, _Named(pair)), hedge_target(), **functions)
        for i in top_nodes(g, g.n_latents, ("latent",)):
            node = g.nodes[i]
            if {"some", "town"} & {w for w, _ in logit_lens(model, transcoders[node.layer], node.latent, 3)}:
                counts[(node.layer, node.latent)] = counts.get((node.layer, node.latent), 0) + 1
                break
    (layer, latent), n = max(counts.items(), key=lambda kv: kv[1])
    groups = {"known people": list(world.known), "hedged names": [_Named(p) for p in world.hedged],
              "never-described names": [_Named(p) for p in world.unknown if p not in world.hedged]}
    out: dict[str, float | str] = {"hedged names": len(world.hedged), "latent": f"L{layer} #{latent}",
                                   "graphs where it is the top hedge latent": n}
    for group, people in groups.items():
        acts, _ = last_position_latents(model, transcoders, people, TEMPLATES[:1])
        a = acts[layer][:, latent]
        out[f"fires for {group}"] = float((a > 0).float().mean())
        out[f"mean activation for {group}"] = float(a.mean())
    return out
