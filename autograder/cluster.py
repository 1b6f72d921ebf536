"""Grading a class on a Dask cluster: `grade class.zip --out grades/ --scheduler tcp://HOST:8786`.

The scheduler and its workers are Dask's own (`dask scheduler`, `dask worker`, or
dask-jobqueue on Slurm/PBS, dask-kubernetes): nothing of ours runs a cluster. This
module is what crosses it:

- the client (the instructor's `grade` command) does what must happen once: reading
  the zip, matching students, resuming, grades.csv, the gradebook, the feedback, the
  integrity report (classroom.py); it sends each submission's bytes to the cluster;
- on a worker, `grade_on_worker` first compares the worker's course with the client's
  (the digests grading already trusts, by path relative to the course), refuses to
  grade with other tests when they differ, then grades exactly as a local run does
  (`classroom.grade_one`: its own process, memory and time limits, the sandbox) and
  returns the result with its feedback page;
- a worker lost mid-grading (killed, out of memory, preempted) is Dask's to handle: the
  scheduler gives its submissions to another worker. After `retries` lost workers on
  the same submission the scheduler gives up (`KilledWorker`), and that submission ends
  as "grading infrastructure failed: ...", never as a 0: nothing is stored for it, so
  running the same command again grades it (resume works as for a local run).
Each attempt is logged to the scheduler (`mechlab-attempt` events), so a submission
graded on a second worker says so in its log (results/KEY.log) and on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from autograder.grade import COURSE_CODE, ReleaseCache, changed_files, tree_digests

log = logging.getLogger("autograder")

INFRASTRUCTURE_FAILED = "grading infrastructure failed"
ATTEMPT_EVENT = "mechlab-attempt"


class InfrastructureError(RuntimeError):
    """A worker could not grade (another course, no sandbox): not the learner's doing."""


def portable_digests(root: Path) -> dict[str, str]:
    """What grading trusts (classroom.course_digests), keyed by path relative to the
    course, so that two machines with the same course agree wherever it is installed."""
    import autograder
    import mechlab

    folders = {f"course/{part}": (root / part).resolve() for part in COURSE_CODE}
    folders |= {f"installed/{p.__name__}": Path(p.__file__).parent.resolve() for p in (mechlab, autograder)}
    seen, digests = set(), {}
    for label, folder in sorted(folders.items()):
        if folder in seen or not folder.is_dir():
            continue
        seen.add(folder)
        digests |= {f"{label.split('/', 1)[1]}/{name}": digest for name, digest in tree_digests(folder).items()}
    return digests


def course_differences(expected: dict[str, str], root: Path) -> list[str]:
    return changed_files(expected, portable_digests(root))


def _worker_root(root: str) -> Path:
    """The client's course folder when this machine has it (workers on the same machine or
    a shared file system), else the course this worker has installed."""
    from autograder.chapters import REPO_ROOT

    return Path(root) if (Path(root) / "solutions").is_dir() else REPO_ROOT


_RELEASES: dict[tuple[str, str], ReleaseCache] = {}  # per worker process: (root, course digest) -> cache


def _releases(root: Path, expected: dict[str, str]) -> ReleaseCache:
    """Each worker generates the chapters' nbgrader assignments once (as the client does
    for a local run) and keeps them for every submission it grades."""
    import hashlib

    from autograder.chapters import discover

    key = (str(root), hashlib.sha256(repr(sorted(expected.items())).encode()).hexdigest())
    if key not in _RELEASES:
        folder = Path(tempfile.mkdtemp(prefix="mechlab-worker-releases-"))
        _RELEASES[key] = ReleaseCache.build(discover(root), folder)
    return _RELEASES[key]


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0].split("://")[-1]


def grade_on_worker(notebook: bytes, file_name: str, key: str, root: str, expected: dict[str, str], *,
                    memory_gb: float, wall_seconds: float, sandbox: str, slots: dict[str, int]) -> dict:
    """Runs on a Dask worker: grade one submission, or refuse (InfrastructureError)."""
    from distributed import get_worker

    from autograder.classroom import Submission, grade_one

    worker = get_worker()
    worker.log_event(ATTEMPT_EVENT, {"key": key, "worker": worker.address})
    course = _worker_root(root)
    differ = course_differences(expected, course)
    if differ:
        raise InfrastructureError(
            f"worker {worker.address} refused: its course is not the client's ({len(differ)} file(s) differ: "
            f"{', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}); install the same course there")
    if sandbox == "required":
        from autograder.sandbox import unavailable

        why = unavailable()
        if why:
            raise InfrastructureError(f"worker {worker.address} cannot sandbox a kernel: {why}")
    # torch threads per grading: the machine's cores shared by every grading slot on it
    # (several worker processes on one machine each know only their own threads)
    threads = max(1, (os.cpu_count() or 1) // max(1, slots.get(_host(worker.address), worker.state.nthreads)))
    with tempfile.TemporaryDirectory(prefix="mechlab-worker-") as tmp:
        tmp = Path(tmp)
        path = tmp / "in" / file_name
        path.parent.mkdir()
        path.write_bytes(notebook)
        results = tmp / "results"
        results.mkdir()
        sub = Submission(path, file_name, key)
        result = grade_one(sub, course, results, _releases(course, expected), memory_gb=memory_gb,
                           wall_seconds=wall_seconds, threads=threads, sandbox=sandbox, hidden=(tmp,))
        page = results / f"{sub.key}.html"
        failure_log = results / f"{sub.key}.log"
        return {"result": result, "feedback_html": page.read_text() if page.is_file() else None,
                "log": failure_log.read_text() if failure_log.is_file() else None, "worker": worker.address}


@dataclass
class Cluster:
    """The client's side: one Dask client, the workers checked, a bound on retries."""

    address: str
    retries: int = 2

    def __post_init__(self) -> None:
        from distributed import Client

        self.client = Client(self.address, timeout="30s")

        def allowed_failures(n: int, dask_scheduler=None) -> None:  # (sent by value: the scheduler
            dask_scheduler.allowed_failures = n                        # needs no course installed)

        try:  # a submission whose grading keeps killing workers is given up after this many
            self.client.run_on_scheduler(allowed_failures, self.retries)
        except Exception as e:
            log.warning("could not set the scheduler's allowed failures to --retries %d (%s): it keeps its "
                        "own (distributed.scheduler.allowed-failures, 3 by default)", self.retries, e)

    def check_workers(self, root: Path) -> None:
        """Refuse to start when a worker's course differs from this machine's (a worker that
        joins later is checked by each task it runs)."""
        expected = portable_digests(root)
        answers = self.client.run(_differences_on_worker, expected, str(root))
        wrong = {w: d for w, d in answers.items() if d}
        if not self.client.scheduler_info()["workers"]:
            raise InfrastructureError(f"no workers are connected to {self.address}")
        if wrong:
            raise InfrastructureError("; ".join(
                f"worker {w} has another course ({len(d)} file(s) differ: {', '.join(d[:3])})"
                for w, d in sorted(wrong.items())) + ": install the same course there, or stop those workers")

    def submit_all(self, subs, root: Path, *, memory_gb: float, wall_seconds: float, sandbox: str) -> dict:
        expected = portable_digests(root)
        slots: dict[str, int] = {}  # host -> gradings it runs at once, over all its workers
        for address, info in self.client.scheduler_info()["workers"].items():
            slots[_host(address)] = slots.get(_host(address), 0) + info.get("nthreads", 1)
        futures = {}
        for sub in subs:
            futures[self.client.submit(grade_on_worker, sub.path.read_bytes(), sub.path.name, sub.key, str(root),
                                       expected, memory_gb=memory_gb, wall_seconds=wall_seconds, sandbox=sandbox,
                                       slots=slots, key=f"grade-{sub.key}", pure=False)] = sub
        return futures

    def completed(self, futures) -> Iterator:
        from distributed import as_completed

        yield from as_completed(list(futures))

    def outcome(self, future, sub, results_dir: Path) -> dict:
        """The result of one submission, its feedback page and log written where a local run
        writes them; an infrastructure failure as a result that is not a grade."""
        from distributed import KilledWorker

        attempts = [e["worker"] for _, e in self.client.get_events(ATTEMPT_EVENT) if e.get("key") == sub.key]
        try:
            answer = future.result()
        except KilledWorker as e:
            return self._not_graded(sub, results_dir, attempts, f"{len(attempts)} worker(s) were lost while "
                                    f"grading it (the last: {getattr(getattr(e, 'last_worker', None), 'address', '?')}); "
                                    "run the same command again to retry it")
        except InfrastructureError as e:
            return self._not_graded(sub, results_dir, attempts, str(e))
        except Exception as e:  # the worker's side failed (not the learner's code: that runs in a kernel)
            return self._not_graded(sub, results_dir, attempts, f"the worker failed: {type(e).__name__}: {e}")
        result = answer["result"]
        lines = []
        if len(attempts) > 1:
            lines.append(f"graded on attempt {len(attempts)}: retried after losing worker(s) "
                         f"{', '.join(attempts[:-1])}; graded by {answer['worker']}")
            log.warning("%s: %s", sub.where, lines[0])
        if answer["log"]:
            lines.append(answer["log"])
        if lines:
            (results_dir / f"{sub.key}.log").write_text("\n".join(lines) + "\n")
        if answer["feedback_html"] is not None:
            (results_dir / f"{sub.key}.html").write_text(answer["feedback_html"])
        result["feedback"] = f"results/{sub.key}.html" if answer["feedback_html"] is not None else None
        return result

    def _not_graded(self, sub, results_dir: Path, attempts: list[str], why: str) -> dict:
        status = f"{INFRASTRUCTURE_FAILED}: {why}"
        (results_dir / f"{sub.key}.log").write_text(
            f"{status}\nattempts: {', '.join(attempts) or 'none started'}\n")
        log.error("%s: %s", sub.where, status)
        return {"chapter": None, "score": 0.0, "max_score": 0.0, "exercises": [], "feedback": None,
                "status": status, "cell_errors": [], "not_graded": True}

    def cancel(self, futures) -> None:
        self.client.cancel(list(futures))

    def close(self) -> None:
        self.client.close()


def _differences_on_worker(expected: dict[str, str], root: str) -> list[str]:
    return course_differences(expected, _worker_root(root))


class LocalCluster:
    """A Dask scheduler and workers on 127.0.0.1, as separate `dask scheduler` and `dask
    worker` processes (what an instructor starts by hand; see the README's "large
    classes"), for the tests and the benchmark. Workers run one submission at a time and
    without a nanny, so killing one is final, as when a machine is lost."""

    def __init__(self, folder: Path, workers: int = 0) -> None:
        self.workers: dict[str, subprocess.Popen] = {}
        self.file = folder / "scheduler.json"
        self.file.unlink(missing_ok=True)  # an earlier cluster's: its address is dead
        self.scheduler = self._start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                      "--port", "0", "--no-dashboard", "--scheduler-file", str(self.file)])
        deadline = time.monotonic() + 60
        while not self.file.exists():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                self.stop()
                raise RuntimeError("the Dask scheduler did not start")
            time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        for n in range(workers):
            self.add_worker(f"w{n + 1}")

    @staticmethod
    def _start(cmd: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, **kwargs)

    def add_worker(self, name: str, course: Path | None = None) -> subprocess.Popen:
        """A worker whose course is the one installed here, or the one at `course`."""
        from distributed import Client

        from autograder.chapters import REPO_ROOT

        course = course or REPO_ROOT
        proc = self._start([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(self.file),
                            "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                            "--name", name], cwd=course, env={**os.environ, "PYTHONPATH": str(course)})
        self.workers[name] = proc
        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(len(self.workers), timeout=60)
        return proc

    def stop(self) -> None:
        for proc in [*self.workers.values(), self.scheduler]:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
