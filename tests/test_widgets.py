"""The chapters' ipywidgets really draw, and respond, in a real kernel.

nbclient plays the front end here: it keeps the state of Output widgets and syncs
their outputs back to the kernel, so moving a slider in one cell and reading the
widget's output in the next checks the whole round trip. (Rendering in a browser
is the browser tests' job.)"""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def run(*sources: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
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
