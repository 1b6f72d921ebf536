"""A throwaway nbgrader course directory for one chapter, driven through nbgrader's own API.

nbgrader's steps and directory model are used as they are: `source/` holds the
chapter's source notebook, `generate_assignment` writes `release/` and the
gradebook (with the grade cells' source, which autograding restores into every
submission), `submitted/<student>/` holds what is graded, `autograde` executes
it into `autograded/` and the gradebook, `generate_feedback` writes `feedback/`.
The course's additions are configuration: the chapter's per-cell limits (CPU time),
restoring deleted test cells, output caps, surviving a dead kernel, and
feedback without hidden tests.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor, ClearMetadataPreprocessor
from nbgrader.api import Gradebook
from nbgrader.apps import NbGraderAPI
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import (
    AssignLatePenalties, CheckCellMetadata, ClearOutput, GetGrades,
    IgnorePattern, LimitOutput, OverwriteKernelspec, SaveAutoGrades,
)
from sqlalchemy.exc import SAWarning
from traitlets.config import Config

from autograder.chapters import Chapter
from autograder.execute import CellLimits, ResilientExecute
from autograder.sandbox import SandboxedKernelManager
from autograder.preprocessors import (
    AppendMissingGradeCells, CapOutputSize, DeduplicateGradeIds, HideHiddenTests, PrepareTestCells,
    ProvideReferences, RecoverCellMetadata, RestoreHiddenTests,
)

COURSE_ID = "mechlab"

# nbgrader runs `alembic` as a program, and the python3 kernelspec that ipykernel
# installs into a virtual environment starts plain `python`: both must come from
# this environment even when it was not activated (`.venv/bin/python -m autograder`).
# nbgrader 0.9.6's gradebook trips SQLAlchemy 2's autoflush warnings on every autograde.
warnings.filterwarnings("ignore", category=SAWarning)
_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")
# ... and the `python3` kernel must be this environment's, even if the user has
# another one registered in ~/.local/share/jupyter (JUPYTER_PATH comes first).
_KERNELS = str(Path(sys.prefix) / "share" / "jupyter")
if os.environ.get("JUPYTER_PATH", "").split(os.pathsep)[0] != _KERNELS:
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [_KERNELS, os.environ.get("JUPYTER_PATH")]))


class NbgraderFailed(RuntimeError):
    """An nbgrader step did not succeed; the message carries nbgrader's log."""


def course_config(root: Path, limits: CellLimits, db: Path | None = None, *, sandbox: bool = False,
                  hidden: tuple[Path, ...] = (), verbose: bool = False) -> Config:
    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = COURSE_ID
    c.CourseDirectory.db_url = f"sqlite:///{db or root / 'gradebook.db'}"
    c.Exchange.root = str(root / "exchange")  # unused, but nbgrader checks it exists
    # per cell: CPU time of the kernel's process tree, not nbgrader's wall-clock 30 s (execute.py);
    # nbclient's own timeout stays above the wall-clock backstop, which ResilientExecute enforces
    c.ResilientExecute.cpu_limit = limits.cpu
    c.ResilientExecute.wall_limit = limits.wall
    c.ResilientExecute.idle_limit = limits.idle
    c.Execute.timeout = int(limits.wall) + 60
    c.Execute.interrupt_on_timeout = True
    c.Execute.startup_timeout = 120
    c.Execute.kernel_manager_class = SandboxedKernelManager  # see sandbox.py
    c.SandboxedKernelManager.sandbox = sandbox
    c.SandboxedKernelManager.hidden = [str(h) for h in hidden]
    c.SandboxedKernelManager.verbose = verbose
    c.OverwriteCells.add_missing_cells = True  # a deleted test cell is restored, not skipped
    c.LimitOutput.max_lines = 500
    # nbgrader's own lists, with the course's preprocessors put in (see preprocessors.py).
    c.Autograde.sanitize_preprocessors = [
        ClearOutput, RecoverCellMetadata, DeduplicateGradeIds, OverwriteKernelspec, RestoreHiddenTests,
        AppendMissingGradeCells, PrepareTestCells, ProvideReferences, CheckCellMetadata,
    ]
    c.Autograde.autograde_preprocessors = [
        ResilientExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, CapOutputSize,
        SaveAutoGrades, AssignLatePenalties, CheckCellMetadata,
    ]
    c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
    return c


class ThrowawayCourse:
    """One chapter as an nbgrader assignment under `root` (a temporary directory)."""

    def __init__(self, chapter: Chapter, root: Path, limits: CellLimits, db: Path | None = None,
                 **execution) -> None:
        self.chapter = chapter
        self.root = Path(root)
        (self.root / "exchange").mkdir(parents=True, exist_ok=True)
        config = course_config(self.root, limits, db, **execution)
        self.api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
        self.db_url = config.CourseDirectory.db_url

    @property
    def name(self) -> str:
        return self.chapter.name

    def _path(self, step: str, *parts: str) -> Path:
        return self.root.joinpath(step, *parts)

    @staticmethod
    def _check(result: dict, step: str) -> dict:
        if not result["success"]:
            raise NbgraderFailed(f"nbgrader {step} failed:\n{result.get('error', '')}\n{result.get('log', '')}")
        return result

    def generate_assignment(self, source_text: str) -> Path:
        """Register the chapter (gradebook, checksums) from its source notebook's text,
        and write its release notebook; returns the release's path."""
        dest = self._path("source", self.name, f"{self.name}.ipynb")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(source_text)
        self._check(self.api.generate_assignment(self.name), "generate_assignment")
        return self._path("release", self.name, f"{self.name}.ipynb")

    def submit(self, notebook: Path, student: str) -> None:
        dest = self._path("submitted", student, self.name, f"{self.name}.ipynb")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(notebook, dest)

    def autograde(self, student: str) -> dict:
        """nbgrader's two-pass autograde; returns nbgrader's result dict (success, log, error)."""
        return self.api.autograde(self.name, student)

    def autograded_notebook(self, student: str) -> Path:
        return self._path("autograded", student, self.name, f"{self.name}.ipynb")

    def scores(self, student: str) -> dict[str, tuple[float, float]]:
        """grade id -> (score, max score) from the gradebook."""
        with Gradebook(self.db_url, COURSE_ID) as gb:
            nb = gb.find_submission_notebook(self.name, self.name, student)
            # the autograded score only, within [0, max]: `Grade.score` prefers a manual score,
            # and a learner's kernel can reach this throwaway gradebook and write one
            return {g.name: (min(max(float(g.auto_score or 0.0), 0.0), float(g.max_score)), float(g.max_score))
                    for g in nb.grades}

    def generate_feedback(self, student: str) -> Path:
        self._check(self.api.generate_feedback(self.name, student), "generate_feedback")
        return self._path("feedback", student, self.name, f"{self.name}.html")
