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


def test_progress_bars_can_be_plain_text_for_front_ends_without_widgets(monkeypatch, capsys):
    """MECHLAB_PROGRESS=text: a bar that writes its moving text to stdout, not a widget whose
    text a front end without widgets would show frozen at the start."""
    from tqdm.notebook import tqdm as widget_bar

    from mechlab.runtime import progress
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.setenv("MECHLAB_PROGRESS", "text")
    bar = progress(range(3), desc="sweeping", mininterval=0)
    assert not isinstance(bar, widget_bar)
    assert list(bar) == [0, 1, 2]
    captured = capsys.readouterr()
    assert "sweeping: 100%" in captured.out and "3/3" in captured.out and captured.err == ""
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert progress(range(3)).disable  # still off under grading


def test_torch_threads_are_the_free_cores_within_the_kernels_share(monkeypatch):
    """As many threads as cores no other process uses, at least one, at most the share the
    grader gives each grading slot (MECHLAB_THREADS, else OMP_NUM_THREADS)."""
    import os

    from mechlab import runtime

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    real_open = open

    def proc_loadavg(running: int):
        def fake(path, *args, **kwargs):
            if path == "/proc/loadavg":
                import io
                return io.StringIO(f"0.00 0.00 0.00 {running}/300 1234\n")
            return real_open(path, *args, **kwargs)
        return fake

    monkeypatch.delenv("MECHLAB_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("builtins.open", proc_loadavg(1))  # only this process runs
    assert runtime.torch_threads() == cores
    monkeypatch.setenv("MECHLAB_THREADS", "1")
    assert runtime.torch_threads() == 1
    monkeypatch.delenv("MECHLAB_THREADS")
    monkeypatch.setattr("builtins.open", proc_loadavg(1 + 4 * cores))  # every core busy four times over
    assert runtime.torch_threads() == 1
    monkeypatch.setattr("builtins.open", proc_loadavg(1))
    monkeypatch.setattr(os, "getloadavg", lambda: (cores - 1.0, 0.0, 0.0))  # all cores but one busy a minute long
    assert runtime.torch_threads() == 1
