"""Where the course runs: device choice, seeding, and quiet output under the autograder.

nbgrader fails a test cell on *any* text written to stderr, and a tqdm bar or a
warning writes there. Everything that could make noise goes through this module,
which goes quiet when `NBGRADER_EXECUTION` is set (nbgrader sets it while it
autogrades).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

T = TypeVar("T")


def under_grading() -> bool:
    """True while nbgrader (or `python -m autograder grade`) executes the notebook."""
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def pick_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU. `MECHLAB_DEVICE=cpu` overrides."""
    requested = os.environ.get("MECHLAB_DEVICE")
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_threads() -> int:
    """How many threads torch should use here: the cores no other process is using (by the
    load average, or the runnable processes now if more), at least one, and never more than
    this kernel's share (`MECHLAB_THREADS`, which the grader sets to its cores per grading
    slot, else `OMP_NUM_THREADS`). Two busy cores shared by two threads each make a cell
    many times slower than one thread would, and under grading the spin of idle threads
    counts as CPU time."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        share = int(os.environ.get("MECHLAB_THREADS") or os.environ.get("OMP_NUM_THREADS") or cores)
    except ValueError:
        share = cores
    try:
        busy = os.getloadavg()[0]
        with open("/proc/loadavg") as f:  # "0.13 0.07 0.02 RUNNING/TOTAL PID": RUNNING counts this process
            busy = max(busy, int(f.read().split()[3].split("/")[0]) - 1)
    except (OSError, AttributeError, ValueError, IndexError):
        pass
    return max(1, min(share, cores, int(cores - busy + 0.5)))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a chapter reruns identically."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


_chapter: str | None = None


def current_chapter() -> str | None:
    """The chapter whose setup cell ran last in this kernel (e.g. "01_superposition")."""
    return _chapter


def setup(seed: int = 0, chapter: str | None = None) -> torch.device:
    """The first call of every chapter: seed everything, pick the device, quiet noise
    under grading. Returns the device the chapter should use."""
    global _chapter
    import mechlab.pristine  # noqa: F401  before any learner code runs: see its docstring
    _chapter = chapter or _chapter
    seed_everything(seed)
    device = pick_device()
    threads = torch_threads()
    torch.set_num_threads(threads)
    if under_grading():
        warnings.simplefilter("ignore")
    print(f"mechlab: device={device.type}, seed={seed}, torch {torch.__version__}, "
          f"{threads} CPU thread{'s' * (threads != 1)}")
    return device


_quiet_depth = 0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No progress bars from `progress` inside: for checks that run a training loop (the
    learner's, or the reference's) on a toy problem, where a bar is only clutter."""
    global _quiet_depth
    _quiet_depth += 1
    try:
        yield
    finally:
        _quiet_depth -= 1


def progress(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """A tqdm progress bar that disappears under grading (stderr would fail the cell) and
    inside `quiet()`.

    In a notebook it is a widget (tqdm.auto). A front end that cannot draw widgets shows
    the bar's text as it was when the cell started ("0/12") and never updates it; with
    `MECHLAB_PROGRESS=text` in the environment the bar is plain text on stdout instead,
    which every front end redraws as it moves."""
    kwargs.setdefault("disable", under_grading() or _quiet_depth > 0)
    kwargs.setdefault("mininterval", 0.5)
    if os.environ.get("MECHLAB_PROGRESS", "").lower() == "text":
        import sys

        from tqdm.std import tqdm as text_bar

        kwargs.setdefault("file", sys.stdout)
        return text_bar(iterable, **kwargs)
    return tqdm(iterable, **kwargs)


@contextlib.contextmanager
def quiet_under_grading() -> Iterator[None]:
    """Swallow stderr while the autograder runs the notebook (progress bars that library
    code writes, e.g. `transformer_lens.patching`'s); a no-op otherwise."""
    if not under_grading():
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield
