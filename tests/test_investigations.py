"""No graded investigation can be answered by the course's own truth: under grading (and in
grade_me) a learner's function that runs the code that judges its investigation earns 0,
with a message that says so, while the reference solution, written in a notebook cell,
still passes (the solution notebooks' grading in test_chapters.py shows it in a real
kernel). Chapter 1's hidden models are also disguised afresh at every grading, so a
recipe looked up as data, by shape, gives a wrong answer."""

from __future__ import annotations

import pytest
import torch

from mechlab import chapters, zoo
from mechlab.checks import CheckFailed, self_grading
from conftest import as_notebook_cell


def _chapter_1(W, b):
    from mechlab.superposition import investigation

    truth = investigation.judge(W, b)  # the measurement that grades the answer
    return {"represented": [i for i, v in truth["features"].items() if v],
            "antipodal_pairs": [pair for pair, v in truth["pairs"].items() if v],
            "exclusive_pairs": [pair for pair, v in truth["exclusive"].items() if v]}


def _chapter_2(model):
    zoo.info("attn_only_3l")["metrics"]  # the head scores recorded in the checkpoint
    return {"previous_token": [(0, 2)], "induction": [(1, 0)]}


def _chapter_3(model, clean, corrupted, metric):
    from mechlab.activation_patching import checks

    checks._investigation_settings(True)  # the hidden batches
    return [("blocks.1.hook_mlp_out",)]


def _chapter_4(sae, store, windows):
    from mechlab.sparse_autoencoders import checks

    checks.fact_labels(windows)  # the labels that score an answer
    return {"city": 0, "job": 1, "pet": 2}


def _chapter_5(model, sae):
    from mechlab.steering import investigation

    investigation.unsteered(model)  # the held-out measurement
    return {"latent": 0, "value": 1.0}


def _chapter_6(model, transcoders, tokens):
    from mechlab.transcoders import investigation

    investigation.mean_share([0.5])  # what the ablation that judges an answer averages
    return [(0, 0, 0)]


def _chapter_7(base, tuned):
    from mechlab.model_diffing import investigation

    return investigation.truth("mystery_a")  # the recipe


LOOKUPS = {"superposition": _chapter_1, "induction_heads": _chapter_2, "activation_patching": _chapter_3,
           "sparse_autoencoders": _chapter_4, "steering": _chapter_5, "transcoders": _chapter_6,
           "model_diffing": _chapter_7}


def test_every_chapter_has_a_lookup_here():
    assert set(LOOKUPS) == set(chapters.topics()) - {"fixture"}


@pytest.mark.parametrize("topic", sorted(LOOKUPS))
def test_an_investigation_that_looks_up_the_truth_earns_nothing(topic):
    reference = chapters.reference(topic)
    name = list(reference.POINTS)[-1]  # each chapter's investigation is its last exercise
    grade = getattr(chapters.checks(topic), f"grade_{name}")
    with self_grading(), pytest.raises(CheckFailed, match="looks up the course's own truth.*judges this investigation"):
        grade(as_notebook_cell(LOOKUPS[topic]))


def test_outside_grading_the_truth_stays_open_to_explore():
    """The watch is on only while a hidden test runs: the notebook's own reveal cells call it."""
    from mechlab.superposition import investigation

    _chapter_1(*investigation.mystery_model(0))


def _by_recipe(W, b):
    """Chapter 1 answered from the recipes: the committed model of the same shape, judged."""
    from mechlab.superposition import investigation

    for index, recipe in enumerate(investigation.RECIPES):
        if (recipe.n_hidden, recipe.n_features) == tuple(W.shape):
            truth = investigation.judge(*investigation.mystery_model(index))
            return {"represented": [i for i, v in truth["features"].items() if v],
                    "antipodal_pairs": [p for p, v in truth["pairs"].items() if v],
                    "exclusive_pairs": [p for p, v in truth["exclusive"].items() if v]}


def test_chapter_1_answers_looked_up_by_shape_are_wrong_on_the_disguised_models():
    from mechlab.superposition import checks

    with pytest.raises(CheckFailed, match="mystery model"):  # outside grading: the lookup is not watched
        checks.grade_investigate_toy_model(_by_recipe)


def test_chapter_1_disguise_is_the_same_model_up_to_a_symmetry():
    from mechlab.superposition import investigation

    W, b = investigation.mystery_model(0)
    W2, b2, perm = investigation.disguised(W, b, torch.Generator().manual_seed(3))
    assert torch.allclose(W2.T @ W2, (W.T @ W)[perm][:, perm], atol=1e-5)
    truth, truth2 = investigation.judge(W, b), investigation.judge(W2, b2)
    assert {i: truth["features"][int(perm[i])] for i in range(len(perm))} == truth2["features"]
