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



def _toy_forward(burn: float = 0.0, calls: list | None = None):
    """A right toy_forward of the learner's own that burns `burn` s of CPU time per call."""
    import time

    def toy_forward(W, b, x):
        if calls is not None:
            calls.append(1)
        end = time.process_time() + burn
        while time.process_time() < end:
            pass
        return torch.relu(torch.einsum("ihf,bih->bif", W, torch.einsum("ihf,bif->bih", W, x)) + b)
    return toy_forward


def test_grade_me_counts_cpu_time_as_the_grader_does(monkeypatch):
    """Over the chapter's CPU limit per cell the exercise fails, as under grading; over half of it
    it passes with a warning; each result carries the CPU seconds measured."""
    calls: list = []
    fast = mechlab.grade_me("01_superposition", {"toy_forward": _toy_forward(calls=calls)})[0]
    assert fast.score == 2.0 and fast.message == "passed" and fast.cpu_seconds is not None, fast
    n = len(calls)  # the hidden test's calls of the function
    monkeypatch.setattr(ref, "CPU_LIMIT", 1)
    slow = mechlab.grade_me("01_superposition", {"toy_forward": _toy_forward(1.5 / n)})[0]
    assert slow.score == 0.0 and "over the grader's limit" in slow.message and slow.cpu_seconds > 1, slow
    monkeypatch.setattr(ref, "CPU_LIMIT", 4)
    warned = mechlab.grade_me("01_superposition", {"toy_forward": _toy_forward(2.5 / n)})[0]
    assert warned.score == 2.0 and "close to the grader's limit" in warned.message, warned
