"""nbgrader's Execute, except that a kernel that dies or hangs costs only the cell that did it.

On its own, nbgrader aborts a notebook whose kernel dies (`os._exit`, a segfault, the
out-of-memory killer): every exercise reads 0 and the graded copy is deleted. And a
cell that ignores the interrupt sent at the timeout (`signal.signal(SIGINT, SIG_IGN)`,
or a loop inside C code) leaves the kernel busy, so every later cell times out too,
and the notebook may never finish.

Here the cell that killed or hung the kernel gets an error output (`KernelDied` or
`KernelUnresponsive`), so the exercise it belongs to fails with a message that says
why; a fresh kernel is started, the cells before it are replayed silently to rebuild
the state, and execution goes on. Exercises are graded in isolation, so the rest are
graded as usual. A notebook that keeps breaking its kernel gets `MAX_RESTARTS` fresh
kernels; after that, its remaining cells are marked as not run.

A cell's limit counts what the submission used, not what the machine had to spare
(nbclient's own timeout is wall-clock time, so on a busy machine a correct notebook
timed out). `CellLimits`: the CPU time of the kernel's whole process tree (threads and
subprocesses included, read with psutil from outside the kernel, where a learner's
cell cannot reach it); a much longer wall-clock backstop; and a shorter limit on time
spent using no CPU at all (a `time.sleep(10**6)`, a blocked read), so that waiting
forever costs as little as spinning forever. Every executed cell records what it
used in its metadata (`mechlab.cpu_seconds`, `mechlab.wall_seconds`).
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from dataclasses import dataclass
from queue import Empty
from time import monotonic

import psutil
from jupyter_core.utils import ensure_async, run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.client import timestamp
from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute
from traitlets import Float

KERNEL_DIED = "KernelDied"
KERNEL_UNRESPONSIVE = "KernelUnresponsive"
NOT_RUN = "NotRun"
MAX_RESTARTS = 5
PROBE_SECONDS = 10  # how long a kernel may take to answer after an interrupted timeout
POLL_SECONDS = (0.25, 1.0)  # how often a running cell's CPU time is read: in its first 5 s, then after
IDLE_SHARE = 0.01  # a cell using under 1% of one core is waiting, not computing
USAGE = "mechlab"  # cell metadata key: what the cell used


@dataclass(frozen=True)
class CellLimits:
    """What one cell may use under grading: `cpu` seconds of CPU time of the kernel's
    process tree; `wall` seconds of wall-clock time (the backstop for what burns little
    CPU); `idle` seconds in a row using (almost) no CPU."""

    cpu: float
    wall: float
    idle: float

    @classmethod
    def for_cpu(cls, cpu: float, wall: float | None = None, idle: float | None = None) -> CellLimits:
        """The defaults: the backstop at 10x the CPU limit, idleness at 60 s (or the CPU limit,
        if that is shorter)."""
        return cls(cpu, wall if wall is not None else 10 * cpu, idle if idle is not None else min(60.0, cpu))

    def describe(self) -> str:
        return (f"{self.cpu:g} s of CPU time per cell (the kernel and everything it starts), "
                f"{self.wall:g} s of wall-clock time, {self.idle:g} s in a row without using the CPU")


def tree_cpu_seconds(process: psutil.Process) -> float:
    """CPU time (user + system) of `process` and all its descendants, including children
    they have already waited for; a process that ends while it is read is skipped."""
    try:
        processes = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class CellMeter:
    """What one cell has used since it started, and which limit it broke, if any."""

    def __init__(self, pid: int | None, limits: CellLimits) -> None:
        self.limits = limits
        try:
            self.process = psutil.Process(pid) if pid else None
        except psutil.Error:
            self.process = None
        self.start_wall = monotonic()
        self.start_cpu = self._tree()
        self.cpu = 0.0
        self.samples: deque[tuple[float, float]] = deque([(self.start_wall, 0.0)])

    def _tree(self) -> float:
        return tree_cpu_seconds(self.process) if self.process is not None else 0.0

    def read(self) -> None:
        # a process that ended between two reads may drop out of the sum: never count down
        self.cpu = max(self.cpu, self._tree() - self.start_cpu)
        now = monotonic()
        self.samples.append((now, self.cpu))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.limits.idle:
            self.samples.popleft()

    @property
    def wall(self) -> float:
        return monotonic() - self.start_wall

    def exceeded(self) -> str | None:
        """Why the cell must stop now, or None."""
        self.read()
        if self.process is not None and self.cpu > self.limits.cpu:
            return (f"the cell used {self.cpu:.0f} s of CPU time, over the limit of {self.limits.cpu:g} s per cell "
                    f"(after {self.wall:.0f} s of wall-clock time): an endless loop, or work far slower than "
                    "the reference")
        first_wall, first_cpu = self.samples[0]
        waited = self.samples[-1][0] - first_wall
        if self.process is not None and waited >= self.limits.idle \
                and self.cpu - first_cpu < IDLE_SHARE * waited:
            return (f"the cell used no CPU for {waited:.0f} s (limit {self.limits.idle:g} s): it was waiting "
                    f"(a sleep, a lock, a read that never ends), not computing; {self.cpu:.1f} s of CPU in all")
        if self.wall > self.limits.wall:
            return (f"the cell ran {self.wall:.0f} s of wall-clock time, the backstop of {self.limits.wall:g} s, "
                    f"using {self.cpu:.0f} s of CPU time: it mostly waited, or ran far slower than the reference")
        return None

    def usage(self) -> dict:
        self.read()
        return {"cpu_seconds": round(self.cpu, 2), "wall_seconds": round(self.wall, 2)}


class _KernelLost(Exception):
    """The kernel died, or did not come back after an interrupt: start a new one."""

    def __init__(self, ename: str, why: str) -> None:
        super().__init__(why)
        self.ename, self.why = ename, why


def timeout_error(cell):
    """The CellTimeoutError output of a cell the executor stopped at a limit (its value says
    which limit and by how much), or None."""
    return next((o for o in cell.get("outputs", []) if o.output_type == "error"
                 and o.get("ename") == "CellTimeoutError"), None)


def _failed_hard(cell) -> bool:
    """Cells not worth replaying: they killed or hung the kernel, or hit the timeout."""
    return any(o.output_type == "error" and o.get("ename") in (KERNEL_DIED, KERNEL_UNRESPONSIVE, NOT_RUN,
                                                                 "CellTimeoutError")
               for o in cell.get("outputs", []))


def _in_slices(get_msg, seconds: float = 1.0):
    """`channel.get_msg` that waits at most `seconds` per poll, as often as `timeout` allows."""
    async def get(timeout: float | None = None, **kwargs):
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            left = seconds if deadline is None else min(seconds, max(0.0, deadline - monotonic()))
            try:
                return await ensure_async(get_msg(timeout=left, **kwargs))
            except Empty:
                if deadline is not None and monotonic() >= deadline:
                    raise
    return get


class PromptClient(NotebookClient):
    """nbclient's NotebookClient, except that it waits for a cell's reply in polls of a second.
    nbclient waits in one poll as long as the cell's timeout, and when the cell makes or
    moves an ipywidget that poll can miss the reply and sleep to the end (nbclient issue
    #312): 120 s for a cell that took 3, about one run in three on a loaded machine. For
    running notebooks outside grading (the widget tests, the benchmarks); the grader's
    `ResilientExecute` polls in short slices anyway, to read the cell's CPU time."""

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        kc.shell_channel.get_msg = _in_slices(kc.shell_channel.get_msg)
        return kc


class ResilientExecute(Execute):
    cpu_limit = Float(None, allow_none=True, help="CPU seconds per cell (the kernel's process tree); "
                      "None: nbclient's wall-clock `timeout` alone").tag(config=True)
    wall_limit = Float(None, allow_none=True, help="Wall-clock seconds per cell (default 10x cpu_limit)").tag(config=True)
    idle_limit = Float(None, allow_none=True, help="Seconds in a row without CPU use per cell "
                       "(default 60, or cpu_limit if shorter)").tag(config=True)

    @property
    def limits(self) -> CellLimits | None:
        return None if self.cpu_limit is None else CellLimits.for_cpu(self.cpu_limit, self.wall_limit, self.idle_limit)

    def preprocess(self, nb, resources=None, km=None):
        NotebookClient.__init__(self, nb, km)
        for cell in nb.cells:  # what a submission claims it used is not read, only what it did
            cell.get("metadata", {}).pop(USAGE, None)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        start, kernels = 0, 0
        while start < len(self.nb.cells):
            if kernels > MAX_RESTARTS:
                self._mark_not_run(start)
                break
            kernels += 1
            with self.setup_kernel():
                info = self.wait_for_reply(self.kc.kernel_info())
                self.nb.metadata["language_info"] = info["content"]["language_info"]
                start = self._run(start, resources)
        self.set_widgets_metadata()
        return self.nb, self.resources

    def _run(self, start: int, resources) -> int:
        """Replay the cells before `start` into a fresh kernel, then execute from `start`.
        Returns where to go on after losing the kernel, or the number of cells when done."""
        for index in range(start):
            cell = self.nb.cells[index]
            if cell.cell_type == "code" and not _failed_hard(cell):
                try:  # on a copy: the outputs recorded the first time stay as they were
                    self._execute(copy.deepcopy(cell), resources, index)
                except _KernelLost as lost:
                    self._record(cell, lost, replay=True)
                    return start
        for index in range(start, len(self.nb.cells)):
            try:
                self._execute(self.nb.cells[index], resources, index)
            except _KernelLost as lost:
                self._record(self.nb.cells[index], lost, replay=False)
                return index + 1
        return len(self.nb.cells)

    def _execute(self, cell, resources, index: int) -> None:
        """Execute one cell; raise _KernelLost when the kernel died or stays busy after
        the interrupt that nbclient sends at the timeout."""
        try:
            self.preprocess_cell(cell, resources, index)
        except DeadKernelError:
            raise _KernelLost(KERNEL_DIED, "the kernel died (os._exit, a crash, or running out of memory)") from None
        except CellTimeoutError:
            raise _KernelLost(KERNEL_UNRESPONSIVE, "the cell did not finish in time") from None
        timed_out = timeout_error(cell)
        if timed_out is not None and not self._responsive():
            raise _KernelLost(KERNEL_UNRESPONSIVE, f"{timed_out.get('evalue') or 'the cell hit its limit'}, and "
                                                   "it ignored the interrupt (a loop that catches or blocks "
                                                   "KeyboardInterrupt?)")

    def _kernel_pid(self) -> int | None:
        return getattr(getattr(self.km, "provisioner", None), "pid", None)

    async def _async_poll_for_reply(self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive):
        """nbclient's wait for a cell's reply, with `limits` in place of its wall-clock
        timeout: the cell's usage is read every POLL_SECONDS, and a cell over a limit is
        interrupted as nbclient interrupts at its timeout, with an error that says which
        limit it broke and by how much. What the cell used goes into its metadata."""
        if self.limits is None:
            return await super()._async_poll_for_reply(msg_id, cell, timeout, task_poll_output_msg,
                                                       task_poll_kernel_alive)
        meter = CellMeter(self._kernel_pid(), self.limits)
        reply = None
        while True:
            if reply is not None:
                msg = reply
            else:
                try:  # (reading a process tree scans /proc: a long cell is read once a second)
                    poll = POLL_SECONDS[0] if meter.wall < 5 else POLL_SECONDS[1]
                    msg = await ensure_async(self.kc.shell_channel.get_msg(timeout=poll))
                except Empty:
                    why = meter.exceeded()
                    if why is None:
                        continue
                    task_poll_kernel_alive.cancel()
                    await self._async_check_alive()
                    self.log.error("Interrupting the kernel: %s", why)
                    await ensure_async(self.km.interrupt_kernel())
                    reply = {"parent_header": {"msg_id": msg_id}, "content": {
                        "status": "error", "ename": "CellTimeoutError", "evalue": why,
                        "traceback": [f"\x1b[0;31mCellTimeoutError\x1b[0m: {why}"]}}
                    continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if self.record_timing and "header" in msg:
                cell["metadata"]["execution"]["shell.execute_reply"] = timestamp(msg)
            try:
                await asyncio.wait_for(task_poll_output_msg, self.iopub_timeout)
            except (asyncio.TimeoutError, Empty):
                if self.raise_on_iopub_timeout:
                    task_poll_kernel_alive.cancel()
                    raise CellTimeoutError.error_from_timeout_and_cell(
                        "Timeout waiting for IOPub output", self.iopub_timeout, cell) from None
                self.log.warning("Timeout waiting for IOPub output")
            task_poll_kernel_alive.cancel()
            cell.setdefault("metadata", {})[USAGE] = meter.usage()
            return msg

    def _responsive(self) -> bool:
        """Does the kernel answer a kernel_info request within PROBE_SECONDS? A kernel still
        busy with the interrupted cell does not (shell requests wait for it)."""
        msg_id = self.kc.kernel_info()
        deadline = monotonic() + PROBE_SECONDS
        while (left := deadline - monotonic()) > 0:
            try:
                msg = run_sync(self.kc.shell_channel.get_msg)(timeout=left)
            except Empty:
                return False
            if msg["parent_header"].get("msg_id") == msg_id:
                return True
        return False

    def _record(self, cell, lost: _KernelLost, *, replay: bool) -> None:
        when = "while its cell was replayed after an earlier crash" if replay else "while running this cell"
        self.log.warning("%s %s; restarting the kernel", lost.why, when)
        cell.outputs.append(new_output(
            "error", ename=lost.ename,
            evalue=f"{lost.why} {when}; the kernel was restarted and the rest of the notebook was graded",
            traceback=[]))

    def _mark_not_run(self, start: int) -> None:
        self.log.warning("the kernel was lost %d times; the remaining cells are not run", MAX_RESTARTS + 1)
        for cell in self.nb.cells[start:]:
            if cell.cell_type == "code":
                cell.outputs.append(new_output(
                    "error", ename=NOT_RUN, traceback=[],
                    evalue=f"not run: the notebook lost its kernel {MAX_RESTARTS + 1} times before this cell"))
