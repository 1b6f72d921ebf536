"""The interactive attribution graph of chapter 6: an SVG of the pruned graph (positions
across, layers up; edge width the weight, blue adding and red subtracting), a slider for
the share of influence the kept nodes carry, and a menu of the kept nodes that shows one
node's logit lens and its top-activating contexts on held-out corpus text.

    viewer.show(graph, model, transcoders)   # an ipywidgets panel

`svg(graph, keep, edges)` is the picture alone, as a string.
"""

from __future__ import annotations

import functools
import html

import ipywidgets as widgets
import torch
from IPython.display import HTML, display

from mechlab.transcoders import graph as ag

CELL_W, ROW_H, MARGIN = 150, 120, 50
PER_ROW, LABELLED = 5, 3  # nodes side by side in one cell before wrapping; labelled nodes per cell
CONTEXT_TOKENS = 20_000  # held-out text (corpus seed 2) the top contexts come from
BEFORE = 8  # tokens of context shown before the top activation


def _row(node: ag.Node, n_layers: int) -> int:
    return {"embedding": 0, "target": n_layers + 1}.get(node.kind, node.layer + 1)


def _layout(graph: ag.Graph, keep: torch.Tensor) -> dict[int, tuple[float, float]]:
    n_layers = graph.replacement.model.cfg.n_layers
    cells: dict[tuple[int, int], list[int]] = {}
    for i in torch.nonzero(keep).flatten().tolist():
        node = graph.nodes[i]
        cells.setdefault((_row(node, n_layers), node.position), []).append(i)
    where = {}
    for (row, position), members in cells.items():
        members.sort(key=lambda i: (graph.nodes[i].kind != "latent", -float(graph.influence[i])))
        for j, i in enumerate(members):
            line, slot = divmod(j, PER_ROW)
            in_line = min(PER_ROW, len(members) - line * PER_ROW)
            dx = (slot - (in_line - 1) / 2) * 26.0
            where[i] = (MARGIN + position * CELL_W + CELL_W / 2 + dx, MARGIN + (n_layers + 1 - row) * ROW_H - 30 * line)
    return where


def _rank_in_cell(graph: ag.Graph, i: int, where: dict) -> int:
    node = graph.nodes[i]
    same = [j for j in where if graph.nodes[j].kind == "latent" and graph.nodes[j].layer == node.layer
            and graph.nodes[j].position == node.position]
    return sorted(same, key=lambda j: -float(graph.influence[j])).index(i)


def svg(graph: ag.Graph, keep: torch.Tensor, edges: torch.Tensor, selected: int | None = None) -> str:
    """The pruned graph as an SVG string."""
    n_layers = graph.replacement.model.cfg.n_layers
    words = graph.words
    where = _layout(graph, keep)
    width = 2 * MARGIN + len(words) * CELL_W
    height = 2 * MARGIN + (n_layers + 1) * ROW_H + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'style="background:white;font-family:sans-serif;font-size:11px">']
    for row, name in enumerate(["embeddings", *[f"layer {l}" for l in range(n_layers)], "target"]):
        y = MARGIN + (n_layers + 1 - row) * ROW_H
        parts.append(f'<text x="2" y="{y - 14}" fill="#888">{name}</text>')
    weights = graph.adjacency * edges
    biggest = float(weights.abs().max()) or 1.0
    for t, s in torch.nonzero(edges).tolist():
        if s in where and t in where:
            w = float(weights[t, s])
            (x1, y1), (x2, y2) = where[s], where[t]
            colour = "#3b6fd4" if w > 0 else "#d43b3b"
            parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
                         f'stroke-opacity="0.55" stroke-width="{0.5 + 5 * abs(w) / biggest:.2f}"/>')
    top = float(graph.influence[keep].max()) or 1.0
    for i, (x, y) in where.items():
        node = graph.nodes[i]
        r = 5 + 7 * max(0.0, float(graph.influence[i])) / top if node.kind != "target" else 10
        title = html.escape(f"{graph.label(i)}: influence {float(graph.influence[i]):.3f}")
        stroke = ' stroke="black" stroke-width="3"' if i == selected else ""
        if node.kind == "error":
            parts.append(f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" '
                         f'fill="#bbbbbb"{stroke}><title>{title}</title></rect>')
        else:
            fill = {"latent": "#f2a93b", "embedding": "#7fb77e", "target": "#9b6fd4"}[node.kind]
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{fill}"{stroke}>'
                         f'<title>{title}</title></circle>')
        if node.kind == "latent" and (i == selected or _rank_in_cell(graph, i, where) < LABELLED):
            parts.append(f'<text x="{x:.1f}" y="{y + r + 11:.1f}" text-anchor="middle">#{node.latent}</text>')
    parts.append(f'<text x="{width - 8}" y="16" text-anchor="end" fill="#555">circles: latents (orange), '
                 f'embeddings (green), target (purple); squares: errors; size: influence; hover for details</text>')
    for p, word in enumerate(words):
        parts.append(f'<text x="{MARGIN + p * CELL_W + CELL_W / 2}" y="{height - 8}" text-anchor="middle" '
                     f'font-size="13px">{html.escape(word)}</text>')
    parts.append("</svg>")
    return "".join(parts)


@functools.cache
def _contexts(model, transcoder) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens of held-out text, and each latent's 5 top (activation, flat index) on it."""
    from mechlab.sparse_autoencoders import activations
    from mechlab.transcoders import reference as ref

    tokens = activations.corpus_windows(CONTEXT_TOKENS, seed=2).tokens
    x, _ = ref.collect_mlp_io(model, tokens.to(next(model.parameters()).device), transcoder.cfg.layer)
    with torch.no_grad():
        z = transcoder.encode(x.to(transcoder.W_dec.device)).reshape(-1, transcoder.cfg.d_sae).cpu()
    top = z.topk(5, dim=0)
    return tokens, top.values, top.indices


def node_html(graph: ag.Graph, i: int, model, transcoders) -> str:
    """One node: what it is, its influence and direct effect, and for a latent its logit
    lens and top-activating contexts."""
    node = graph.nodes[i]
    lines = [f"<b>{html.escape(graph.label(i))}</b>: influence on the target {float(graph.influence[i]):.3f}",
             f"direct effect on the target {float(graph.adjacency[-1, i]):+.3f}"]
    if node.kind == "latent":
        tc = transcoders[node.layer]
        lines.append(f"activation here {node.value:.2f}")
        lens = ", ".join(f"{html.escape(w)} ({v:+.2f})" for w, v in ag.logit_lens(model, tc, node.latent))
        lines.append(f"logit lens (tokens its output promotes): {lens}")
        tokens, values, flat = _contexts(model, tc)
        pos = tokens.shape[1]
        vocab = model.to_str_tokens(torch.arange(model.cfg.d_vocab))
        for v, f in zip(values[:, node.latent].tolist(), flat[:, node.latent].tolist()):
            if v <= 0:
                break
            row, p = divmod(f, pos)
            before = " ".join(vocab[t] for t in tokens[row, max(1, p - BEFORE):p].tolist())
            lines.append(f"&nbsp;&nbsp;{v:.2f}: … {html.escape(before)} <b>{html.escape(vocab[tokens[row, p]])}</b>")
    return "<br>".join(lines)


def show(graph: ag.Graph, model, transcoders, share: float = 0.8) -> widgets.VBox:
    """The panel: slider (node share), node menu, picture and node details."""
    slider = widgets.FloatSlider(value=share, min=0.5, max=0.99, step=0.01, description="node share",
                                 continuous_update=False, readout_format=".2f")
    menu = widgets.Dropdown(description="node", layout=widgets.Layout(width="420px"))
    out = widgets.Output()
    state = {}

    def draw(_=None) -> None:
        keep, edges = ag.prune(graph, slider.value)
        state["keep"], state["edges"] = keep, edges
        order = sorted(torch.nonzero(keep).flatten().tolist(), key=lambda i: -float(graph.influence[i]))
        options = [(graph.label(i), i) for i in order if graph.nodes[i].kind != "target"]
        current = menu.value
        menu.unobserve(pick, "value")
        menu.options = options
        menu.value = current if current in dict(options).values() else (options[0][1] if options else None)
        menu.observe(pick, "value")
        pick()

    def pick(_=None) -> None:
        keep, edges = state["keep"], state["edges"]
        with out:
            out.clear_output(wait=True)
            display(HTML(f"<div>{int(keep.sum())} nodes, {int(edges.sum())} edges kept</div>"
                         + svg(graph, keep, edges, menu.value)
                         + (f"<div style='margin-top:6px'>{node_html(graph, menu.value, model, transcoders)}</div>"
                            if menu.value is not None else "")))

    slider.observe(draw, "value")
    menu.observe(pick, "value")
    draw()
    return widgets.VBox([widgets.HBox([slider, menu]), out])
