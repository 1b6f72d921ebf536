"""mechlab.runtime: what the notebooks rely on to stay quiet under the autograder."""

from __future__ import annotations

import sys

from mechlab.runtime import quiet_under_grading


def test_quiet_under_grading_swallows_stderr_only_while_grading(monkeypatch, capsys):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    with quiet_under_grading():
        print("progress", file=sys.stderr)
    assert capsys.readouterr().err == "progress\n"
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with quiet_under_grading():
        print("progress", file=sys.stderr)
        print("result")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == "result\n"


def test_progress_bars_are_off_inside_quiet_and_under_grading(monkeypatch):
    from mechlab.runtime import progress, quiet
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert not progress(range(3)).disable
    with quiet():
        with quiet():
            assert progress(range(3)).disable
        assert progress(range(3)).disable
    assert not progress(range(3)).disable  # nesting unwinds
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert progress(range(3)).disable
