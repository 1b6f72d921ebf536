"""nbgrader's Execute, except that a kernel that dies costs only the cell that killed it.

On its own, nbgrader aborts a notebook whose kernel dies (`os._exit`, a segfault, the
out-of-memory killer): every exercise reads 0 and the graded copy is deleted. Here
the cell that killed the kernel gets a `KernelDied` error (so the exercise it
belongs to fails, with a message that says why), a fresh kernel is started, the
cells before it are replayed silently to rebuild the state, and execution goes on.
Exercises are graded in isolation, so the rest are graded as usual.
"""

from __future__ import annotations

import copy

from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute

KERNEL_DIED = "KernelDied"


def _failed_hard(cell) -> bool:
    """Cells not worth replaying: they killed the kernel or hit the timeout."""
    return any(o.output_type == "error" and o.get("ename") in (KERNEL_DIED, "CellTimeoutError")
               for o in cell.get("outputs", []))


class ResilientExecute(Execute):
    def preprocess(self, nb, resources=None, km=None):
        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        start = 0
        while start < len(self.nb.cells):
            with self.setup_kernel():
                info = self.wait_for_reply(self.kc.kernel_info())
                self.nb.metadata["language_info"] = info["content"]["language_info"]
                start = self._run(start, resources)
        self.set_widgets_metadata()
        return self.nb, self.resources

    def _run(self, start: int, resources) -> int:
        """Replay the cells before `start` into a fresh kernel, then execute from `start`.
        Returns where to go on after a kernel death, or the number of cells when done."""
        for index in range(start):
            cell = self.nb.cells[index]
            if cell.cell_type == "code" and not _failed_hard(cell):
                try:  # on a copy: the outputs recorded the first time stay as they were
                    self.preprocess_cell(copy.deepcopy(cell), resources, index)
                except DeadKernelError:
                    self._record_death(cell, replay=True)
                    return start
        for index in range(start, len(self.nb.cells)):
            try:
                self.preprocess_cell(self.nb.cells[index], resources, index)
            except DeadKernelError:
                self._record_death(self.nb.cells[index], replay=False)
                return index + 1
        return len(self.nb.cells)

    def _record_death(self, cell, *, replay: bool) -> None:
        when = "while its cell was replayed after an earlier crash" if replay else "while running this cell"
        self.log.warning("kernel died %s; restarting it", when)
        cell.outputs.append(new_output(
            "error", ename=KERNEL_DIED,
            evalue=(f"the kernel died {when} (os._exit, a crash, or running out of memory); "
                    "it was restarted and the rest of the notebook was graded"),
            traceback=[]))
