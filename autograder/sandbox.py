"""Each submission's kernel runs in a bubblewrap sandbox.

A learner's code runs in the grading kernel. Without a sandbox it runs as the
instructor's user: it can start a process with `setsid` that outlives grading,
write into the course's own files or another student's feedback, and reach the
network. Under `bwrap` (Debian's `bubblewrap`) the kernel gets:

- the whole file system read-only, except its own scratch folder (the folder the
  notebook executes in) and the folder of its connection sockets; a private
  `/tmp`, `/dev/shm` and home (`HOME` points into the private `/tmp`); the
  instructor's home and the class being graded (its hand-ins and output folder)
  hidden behind empty folders, with Python, its packages and the course bound back
  read-only where they live inside them (a cell's output reaches the learner's
  feedback, so what the kernel can read, the learner can read);
- no network (`--unshare-net`): the grader talks to it over Unix sockets
  (jupyter_client's `ipc` transport), which need none;
- its own PID namespace, a new session and `--die-with-parent`: when the kernel
  ends, every process it started ends with it, `setsid` or not.

The grading process itself stays outside, and it alone writes the gradebook, the
results and the feedback. Where bwrap cannot run (not installed, no user
namespaces, macOS), grading goes on unsandboxed with one warning, unless the
instructor asked for `--sandbox required`.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Bool, List, Unicode

MODES = ("auto", "required", "off")


def bwrap_path() -> str | None:
    """The bwrap program (MECHLAB_BWRAP overrides the search, e.g. for a test)."""
    return os.environ.get("MECHLAB_BWRAP") or shutil.which("bwrap")


@functools.lru_cache(maxsize=None)
def _probe(bwrap: str | None) -> str | None:
    if bwrap is None or not os.access(bwrap, os.X_OK):
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        proc = subprocess.run([bwrap, *_isolation(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                               "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap does not run here ({e})"
    if proc.returncode != 0:
        return f"bubblewrap does not run here: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    return None


def unavailable() -> str | None:
    """None when bwrap can sandbox a kernel on this machine, else why not."""
    return _probe(bwrap_path())


def _isolation() -> list[str]:
    # every namespace bwrap can make (user, ipc, pid, net, uts, cgroup), a new session (no
    # terminal to inject keystrokes into), and death when the process that started it dies
    return ["--unshare-all", "--new-session", "--die-with-parent"]


def bwrap_command(cmd: list[str], *, writable: list[Path], readable: list[Path] = (),
                  hidden: list[Path] = ()) -> list[str]:
    """`cmd` wrapped in bwrap: read-only /, private /tmp and home, `hidden` replaced by empty
    folders, then what the kernel needs bound back read-only (`readable`, the course; Python
    and its packages), and `writable` bound read-write."""
    home = "/tmp/home"
    args = [bwrap_path(), *_isolation(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--tmpfs", "/dev/shm", "--dir", home, "--setenv", "HOME", home,
            "--setenv", "TMPDIR", "/tmp", "--unsetenv", "JPY_PARENT_PID",  # its parent is the sandbox, not the grader
            "--setenv", "MPLCONFIGDIR", f"{home}/.matplotlib",
            "--setenv", "XDG_CACHE_HOME", f"{home}/.cache"]
    writable = [Path(p).resolve() for p in writable]
    # what the kernel needs, bound back (read-only) where a hidden folder covers it: Python,
    # its packages (sys.path, which holds an editable install of the course) and the course
    needed = [*readable, Path(sys.prefix), Path(sys.base_prefix), *(Path(p) for p in sys.path if p)]
    needed = sorted({p.resolve() for p in needed if p.exists()} - {Path("/")})
    hidden = sorted({Path(h).resolve() for h in hidden if Path(h).is_dir()} - {Path("/")})
    for folder in hidden:  # (a writable folder inside one is bound back below)
        args += ["--tmpfs", str(folder)]
    for path in needed:
        if any(path.is_relative_to(h) for h in [*hidden, Path("/tmp")]):  # covered by a tmpfs
            args += ["--ro-bind", str(path), str(path)]
    for folder in writable:
        args += ["--bind", str(folder), str(folder)]
    return [*args, "--", *cmd]


class SandboxedKernelManager(AsyncKernelManager):
    """An AsyncKernelManager (what nbclient expects) whose kernel runs under bwrap when
    `sandbox` is on. Either way the kernel's own output (its warnings, a crash's last
    words) goes to a log file in its runtime folder, not the instructor's terminal,
    unless `verbose`."""

    sandbox = Bool(False, help="Run the kernel under bubblewrap.").tag(config=True)
    hidden = List(Unicode(), help="Folders the kernel must not see (the class being graded).").tag(config=True)
    verbose = Bool(False, help="Let the kernel write to the grader's terminal.").tag(config=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # a private folder for the connection file and, sandboxed, the kernel's Unix sockets
        # (short: a socket path has at most 107 characters)
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="mechlab-kernel-"))
        self.connection_file = str(self.runtime_dir / "kernel.json")
        if self.sandbox:
            self.transport = "ipc"  # the kernel has no network, not even the host's loopback

    async def _async_pre_start_kernel(self, **kw):
        self.runtime_dir.mkdir(parents=True, exist_ok=True)  # again, when the manager starts a second kernel
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        if self.sandbox:
            # jupyter_client interrupts a kernel by signalling its process group; the sandboxed
            # kernel has a session of its own, so it is asked by message instead
            self.kernel_spec.interrupt_mode = "message"
            cwd = Path(kw.get("cwd") or os.getcwd())
            course = os.environ.get("MECHLAB_COURSE_ROOT")  # the course being graded (grade.py sets it)
            cmd = bwrap_command(cmd, writable=[cwd, self.runtime_dir], readable=[Path(course)] if course else [],
                                hidden=[Path.home(), *(Path(h) for h in self.hidden)])
        if not self.verbose:
            self._log = open(self.runtime_dir / "kernel.log", "ab")  # noqa: SIM115 (closed once started)
            kw.setdefault("stdout", self._log)
            kw.setdefault("stderr", self._log)
        return cmd, kw

    async def _async_post_start_kernel(self, **kw) -> None:
        await super()._async_post_start_kernel(**kw)
        if getattr(self, "_log", None) is not None:
            self._log.close()  # the kernel has its own copy of the descriptor
            self._log = None

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart)
        if not restart:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
