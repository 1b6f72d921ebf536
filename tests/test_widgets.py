"""The chapters' ipywidgets really draw, and respond, in a real kernel.

nbclient plays the front end here: it keeps the state of Output widgets and syncs
their outputs back to the kernel, so moving a slider in one cell and reading the
widget's output in the next checks the whole round trip. (Rendering in a browser
is the browser tests' job.)"""

from __future__ import annotations

import nbformat
from autograder.execute import PromptClient
from nbformat.v4 import new_code_cell, new_notebook

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def run(*sources: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    PromptClient(nb, timeout=120, kernel_name="python3").execute()
    for cell in nb.cells:
        errors = [o for o in cell.outputs if o.output_type == "error" or o.get("name") == "stderr"]
        assert not errors, errors
    return nb


# Kernel-side helper for panels drawn into an ipywidgets Output `out`: the HTML it shows now.
SHOWN_HTML = ("def shown():\n"
              "    return ''.join(o['data'].get('text/html', '') for o in out.outputs if 'data' in o)\n")


def text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs)


def test_superposition_slider_redraws_the_chosen_model():
    nb = run(
        "import torch\n"
        "from mechlab.superposition import toy_models as sp\n"
        "from mechlab.superposition.reference import feature_norms_and_interference\n"
        "W = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0))\n"
        "panel = sp.explore_toy_models(W, torch.tensor([1.0, 0.1, 0.01]), feature_norms_and_interference)\n"
        "panel",
        "slider, out = panel.children[0], panel.children[-1]\n"
        "first = [o['data']['image/png'] for o in out.outputs if 'image/png' in o.get('data', {})]\n"
        "print('drawn at start:', len(first))\n"
        "slider.value = 2",
        "now = [o['data']['image/png'] for o in out.outputs if 'image/png' in o.get('data', {})]\n"
        "print('drawn after the move:', len(now), '| changed:', now != first)",
    )
    assert "drawn at start: 1" in text(nb.cells[1])
    assert "drawn after the move: 1 | changed: True" in text(nb.cells[2])
    # and the saved notebook carries the widget state a front end needs to show it
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]
    assert {"IntSliderModel", "OutputModel"} <= {m["model_name"] for m in state.values()}


def test_attribution_graph_viewer_redraws_when_the_share_moves_and_shows_the_picked_node():
    nb = run(
        "import torch\n"
        "from mechlab import corpus, zoo\n"
        "from mechlab.transcoders import graph as ag, viewer, zoo as tc_zoo\n"
        "model = zoo.load('corpus_2l')\n"
        "tcs = tc_zoo.load_pair('w1024')\n"
        "mary = next(p for p in corpus.build_world().known if p.name == 'mary brown')\n"
        "panel = viewer.show(ag.recall_graph(model, tcs, mary), model, tcs)\n"
        "(slider, menu), out = panel.children[0].children, panel.children[-1]\n"
        + SHOWN_HTML + "panel",
        "first = shown()\n"
        "print('edges drawn at start:', first.count('<line'), '| nodes in the menu:', len(menu.options))\n"
        "slider.value = 0.95",
        "now = shown()\n"
        "print('edges drawn after the move:', now.count('<line'), '| more:', now.count('<line') > first.count('<line'))\n"
        "menu.value = [v for label, v in menu.options if label.startswith('L0 #')][0]",
        "print('latent shown:', 'logit lens' in shown() and shown().count('<b>') > 2)",
    )
    assert "edges drawn at start:" in text(nb.cells[1])
    assert "| more: True" in text(nb.cells[2])
    assert "latent shown: True" in text(nb.cells[3])
