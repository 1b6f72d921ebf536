"""Self-grading in the learner's kernel: the same hidden tests and table as the grader."""

from __future__ import annotations

import pytest
import torch

import mechlab
import mechlab.runtime
from mechlab.superposition import reference as ref
from conftest import as_learner

TOTAL = sum(ref.POINTS.values())  # the chapter's points, as its source gives them


def test_grade_me_scores_what_the_notebook_defines(capsys):
    def toy_forward(W, b, x):  # the learner's own, written differently from the reference
        return torch.relu(torch.einsum("ihf,bih->bif", W, torch.einsum("ihf,bif->bih", W, x)) + b)

    namespace = {
        "toy_forward": toy_forward,
        "sae_loss": lambda *args: ref.sae_loss(*args) + 1.0,  # wrong, and its own reference besides
        "feature_dimensionality": ref.feature_dimensionality,  # the reference itself: no points
        "generate_batch": as_learner(ref.generate_batch),  # the reference's code object, copied
        "feature_phase": lambda *args: ref.feature_phase(*args),  # a wrapper around it
    }
    results = mechlab.grade_me("01_superposition", namespace)
    scores = {r.id: r.score for r in results}
    assert scores["toy_forward"] == 2.0
    assert scores["sae_loss"] == scores["feature_dimensionality"] == scores["generate_batch"] == 0.0
    assert scores["feature_phase"] == 0.0
    messages = {r.id: r.message for r in results}
    for name, number in [("generate_batch", 2), ("feature_phase", 7)]:
        assert f"uses the course's reference for exercise {number} ({name})" in messages[name]
    assert sum(scores.values()) == 2.0 and sum(r.max_score for r in results) == TOTAL
    out = capsys.readouterr().out
    assert out.startswith(f"chapter 01_superposition: 2 / {TOTAL:g} points (self-graded in this kernel)")
    assert "no function named train_sae" in out and "reference implementation" in out
    assert "re-executes the whole notebook from scratch" in out


def test_grade_me_knows_the_chapter_from_setup(capsys):
    mechlab.setup(seed=0, chapter="01_superposition")
    results = mechlab.grade_me(namespace={})
    assert len(results) == len(ref.POINTS) and all(r.score == 0 for r in results)


def test_grade_me_stays_out_of_the_graders_way(monkeypatch, capsys):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert mechlab.grade_me("01_superposition", {}) == []
    assert "instructor's grader" in capsys.readouterr().out


def test_grade_me_needs_a_chapter(monkeypatch):
    monkeypatch.setattr(mechlab.runtime, "_chapter", None)
    with pytest.raises(ValueError, match="setup cell"):
        mechlab.grade_me(namespace={})
