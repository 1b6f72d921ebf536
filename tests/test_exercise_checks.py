"""What every chapter's checks must do, for every exercise of every chapter: the
reference passes the visible check and the hidden test (one ✓ line each), the
reference object itself earns no points, and an unimplemented exercise is named as such."""

from __future__ import annotations

import pytest

from autograder.chapters import discover
from mechlab import chapters
from mechlab.checks import CheckFailed
from conftest import as_learner

EXERCISES = [(topic, name) for topic in chapters.topics() for name in chapters.reference(topic).__all__]


def _pair(topic: str):
    return chapters.checks(topic), chapters.reference(topic)


def test_every_chapter_is_covered():
    assert {topic for topic, _ in EXERCISES} == {c.topic for c in discover()}


@pytest.mark.parametrize("topic, name", EXERCISES, ids=lambda v: v)
def test_reference_passes_check_and_grade(topic, name, capsys):
    checks, ref = _pair(topic)
    learner = as_learner(getattr(ref, name))
    assert getattr(checks, f"check_{name}")(learner) is None
    assert getattr(checks, f"grade_{name}")(learner) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and all(line.startswith("✓") for line in out), out


@pytest.mark.parametrize("topic, name", EXERCISES, ids=lambda v: v)
def test_grade_refuses_the_reference_itself(topic, name):
    checks, ref = _pair(topic)
    with pytest.raises(CheckFailed, match="reference implementation"):
        getattr(checks, f"grade_{name}")(getattr(ref, name))


@pytest.mark.parametrize("topic, name", EXERCISES, ids=lambda v: v)
def test_unimplemented_fails_with_a_clear_message(topic, name):
    checks, _ = _pair(topic)

    def stub(*args, **kwargs):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not implemented"):
        getattr(checks, f"check_{name}")(stub)
