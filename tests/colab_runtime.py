"""A Colab-like fresh runtime: the Colab tests' machinery (tests/test_colab.py).

A Colab runtime already holds torch (its own build), numpy and the notebook stack, has
`google.colab` importable, and knows nothing of the course: a chapter's first cell must
install it. This module builds such a runtime as a plain virtual environment (never with
--system-site-packages), holding exactly what `colab_runtime.txt` lists plus a stub
`google.colab` package; builds it once and caches it under build/colab-runtime/ (keyed by
that file and the Python version); and gives each chapter its own copy of it, hard-linked
(seconds, no disk: nothing pip does in the copy changes a file in place).

The setup cell installs the course with `pip install "mechlab @ git+<repository>"`. Here
the repository is not reachable, so `git` is told (through GIT_CONFIG_* variables, which
only the test's kernel sees) to fetch that URL from a snapshot of this working tree: the
setup cell runs exactly as shipped, through pip's real git path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from autograder.chapters import REPO_ROOT
from autograder.source import repository_url

SPEC = Path(__file__).with_suffix(".txt")
CACHE = REPO_ROOT / "build" / "colab-runtime"
TORCH = "torch==2.13.0"  # the only torch this machine has; any other one is gigabytes of CUDA
COLAB_STUB = '"""Stand-in for Colab\'s own package: its presence is how notebooks detect Colab."""\n'


def key() -> str:
    """What the cached runtime depends on: the spec and this Python."""
    return hashlib.sha256((SPEC.read_text() + sys.version).encode()).hexdigest()[:12]


@contextmanager
def _locked(path: Path):
    """One builder at a time (pytest -n 2 runs two workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def python(runtime: Path) -> Path:
    return runtime / "bin" / "python"


def site_packages(runtime: Path) -> Path:
    return next((runtime / "lib").glob("python3*/site-packages"))


def base_runtime(log=print) -> Path:
    """The cached Colab-like runtime (built on first use: about 1.5 minutes, 1.4 GB)."""
    home = CACHE / key()
    with _locked(CACHE / ".lock"):
        if (home / ".complete").exists():
            return home / "venv"
        for old in CACHE.iterdir():  # other keys: an older spec or Python
            if old.is_dir():
                shutil.rmtree(old)
        venv = home / "venv"
        log(f"building the Colab-like runtime in {venv} from {SPEC.name}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "-r", str(SPEC)], check=True, env=pip_env(home))
        stub = site_packages(venv) / "google" / "colab"  # a namespace package beside google.protobuf
        stub.mkdir(parents=True)
        (stub / "__init__.py").write_text(COLAB_STUB)
        (home / ".complete").write_text(key())
        return venv


def fresh_runtime(base: Path, dest: Path) -> Path:
    """A copy of the base runtime for one chapter: hard links where the file system allows."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["cp", "-al", str(base), str(dest)], capture_output=True).returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        subprocess.run(["cp", "-a", str(base), str(dest)], check=True)
    return dest


def pip_env(workdir: Path) -> dict[str, str]:
    """The environment pip runs in, in the runtime: a constraint file that lets pip keep
    the installed torch and nothing else, so a dependency that wanted another torch
    fails the install at once instead of downloading gigabytes (on Colab it would
    reinstall torch: the test then fails, as it should)."""
    workdir.mkdir(parents=True, exist_ok=True)
    constraint = workdir / "torch-tripwire.txt"
    constraint.write_text(TORCH + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return env | {"PIP_CONSTRAINT": str(constraint), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def freeze(runtime: Path) -> dict[str, str]:
    """`pip freeze` of the runtime: {normalised name: version, or the requirement line}."""
    out = subprocess.run([str(python(runtime)), "-m", "pip", "freeze", "--all"], check=True,
                         capture_output=True, text=True, env=pip_env(runtime.parent / "pip")).stdout
    packages = {}
    for line in out.splitlines():
        name, _, version = line.partition("==") if "==" in line else line.partition(" @ ")
        packages[re.sub(r"[-_.]+", "-", name).lower()] = version
    return packages


@dataclass
class FreezeChange:
    removed: list[str]
    downgraded: list[str]
    upgraded: list[str]
    added: list[str]

    def __str__(self) -> str:
        return "; ".join(f"{what}: {', '.join(names)}" for what, names in vars(self).items() if names) or "none"


def compare(before: dict[str, str], after: dict[str, str]) -> FreezeChange:
    change = FreezeChange([], [], [], [])
    for name, old in before.items():
        if name not in after:
            change.removed.append(f"{name}=={old}")
        elif after[name] != old:
            try:
                down = Version(after[name]) < Version(old)
            except ValueError:  # not a version (a URL): any change counts as a downgrade
                down = True
            (change.downgraded if down else change.upgraded).append(f"{name} {old} -> {after[name]}")
    change.added = [f"{name}=={v}" for name, v in after.items() if name not in before]
    return change


def course_snapshot(dest: Path) -> Path:
    """This working tree as a one-commit git repository: the files a clone of the course's
    repository would hold (tracked and new files, nothing git ignores), uncommitted
    edits included."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-c", "user.name=colab-test", "-c", "user.email=colab-test@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "--quiet", "--initial-branch=main"], cwd=dest, check=True)
    subprocess.run(git + ["add", "--all"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "--quiet", "-m", "snapshot"], cwd=dest, check=True)
    return dest


def git_redirect(snapshot: Path) -> dict[str, str]:
    """Environment that makes git fetch the course's repository URL from `snapshot`
    (url.<snapshot>.insteadOf=<repository>, through GIT_CONFIG_COUNT, git >= 2.31)."""
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.{snapshot.as_uri()}.insteadOf",
            "GIT_CONFIG_VALUE_0": repository_url()}


def kernel_manager(runtime: Path, kernels: Path):
    """An AsyncKernelManager that starts IPython from the runtime (its own kernelspec)."""
    import json

    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec = kernels / "colab-runtime"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python(runtime)), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab-like runtime", "language": "python"}))
    return AsyncKernelManager(kernel_name="colab-runtime",
                              kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
