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
"""

from __future__ import annotations

import copy
from queue import Empty
from time import monotonic

from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute

KERNEL_DIED = "KernelDied"
KERNEL_UNRESPONSIVE = "KernelUnresponsive"
NOT_RUN = "NotRun"
MAX_RESTARTS = 5
PROBE_SECONDS = 10  # how long a kernel may take to answer after an interrupted timeout


class _KernelLost(Exception):
    """The kernel died, or did not come back after an interrupt: start a new one."""

    def __init__(self, ename: str, why: str) -> None:
        super().__init__(why)
        self.ename, self.why = ename, why


def _failed_hard(cell) -> bool:
    """Cells not worth replaying: they killed or hung the kernel, or hit the timeout."""
    return any(o.output_type == "error" and o.get("ename") in (KERNEL_DIED, KERNEL_UNRESPONSIVE, NOT_RUN,
                                                                 "CellTimeoutError")
               for o in cell.get("outputs", []))


class ResilientExecute(Execute):
    def preprocess(self, nb, resources=None, km=None):
        NotebookClient.__init__(self, nb, km)
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
        timed_out = any(o.output_type == "error" and o.get("ename") == "CellTimeoutError"
                        for o in cell.get("outputs", []))
        if timed_out and not self._responsive():
            raise _KernelLost(KERNEL_UNRESPONSIVE, f"the cell hit the {self.timeout} s limit and ignored the "
                                                   "interrupt (a loop that catches or blocks KeyboardInterrupt?)")

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
