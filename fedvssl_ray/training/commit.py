"""Persisting rounds off the critical path: one writer thread commits finished rounds in order.

The round loop hands each finished round (global, accepted heads, strategy state, metrics line)
to a :class:`BackgroundWriter` and trains the next round while it is written. A round counts
only once its commit marker is written, and :func:`write_round` writes the marker last, after
every file it names is fsynced, so a process killed at any moment resumes from the last round
whose writes are all durable. The writer runs its jobs one at a time in submission order; the
first failure (a full disk: a :class:`~fedvssl_ray.run_dir.RunDirError` naming the resumable
round) stops every later job, so no round is committed after one that failed, and is raised in
the round loop at its next call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from ..aggregation import Weights
from ..run_dir import RunDir
from .messages import Head, head_weights


class HeadSource:
    """Each client's latest head on the driver side: pending (handed to the writer, not yet
    committed) or in the run directory. Read by the round loop, released by the writer."""

    def __init__(self, run_dir: RunDir, versions: Mapping[int, int]) -> None:
        self.run_dir = run_dir
        self.versions = dict(versions)
        self._pending: dict[int, tuple[int, Head]] = {}
        self._lock = threading.Lock()

    def version(self, client_id: int) -> int:
        return self.versions.get(client_id, 0)

    def record(self, round_idx: int, heads: Mapping[int, Head]) -> None:
        """The accepted heads of ``round_idx``: the clients' latest, held until committed."""
        with self._lock:
            for client_id, head in heads.items():
                self.versions[client_id] = round_idx
                self._pending[client_id] = (round_idx, head)

    def committed(self, round_idx: int, client_ids: Iterable[int]) -> None:
        """Release the heads of a committed round (unless a later round replaced them)."""
        with self._lock:
            for client_id in client_ids:
                if self._pending.get(client_id, (None,))[0] == round_idx:
                    del self._pending[client_id]

    def get(self, client_id: int) -> Head:
        """The head at :meth:`version` (never asked for version 0, the common init): as handed
        to the writer while its write is pending, else read from the run directory."""
        version = self.version(client_id)
        with self._lock:
            pending = self._pending.get(client_id)
        if pending is not None and pending[0] == version:
            return pending[1]
        return self.run_dir.load_head(client_id, version)


@dataclass
class RoundCommit:
    """Everything one round writes, snapshotted when the round loop hands it over."""

    round_idx: int
    global_weights: Weights
    heads: dict[int, Head]
    strategy_arrays: Weights
    record: dict[str, Any]
    head_versions: dict[int, int]
    strategy_state: dict[str, Any]
    elapsed_s: float
    global_is_initial: bool


def write_round(run_dir: RunDir, commit: RoundCommit, heads: HeadSource) -> None:
    """Write a round's arrays and metrics line, then its commit marker; then release its heads.

    Heads are fetched here (from the client actors' object store on the Ray engine), one at a
    time, so the round loop never waits for them and at most one remote head is held at once.
    """
    started = time.perf_counter()
    fetch_s = 0.0
    for client_id, head in commit.heads.items():
        fetched = time.perf_counter()
        weights = head_weights(head)
        fetch_s += time.perf_counter() - fetched
        run_dir.save_head(client_id, commit.round_idx, weights)
    run_dir.save_round(commit.round_idx, commit.global_weights, {}, commit.strategy_arrays)
    commit.record["time"].update(head_fetch_s=fetch_s, write_s=time.perf_counter() - started)
    run_dir.append_metrics(commit.record)  # before the marker: a resume drops unmarked lines
    run_dir.mark_complete(
        commit.round_idx, commit.head_versions, commit.strategy_state, commit.elapsed_s,
        global_is_initial=commit.global_is_initial,
    )
    heads.committed(commit.round_idx, commit.heads)


class BackgroundWriter:
    """Runs write jobs on one thread, in submission order; the first failure stops the rest
    and is raised by the next :meth:`submit`, :meth:`drain` or :meth:`close`."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-dir-writer")
        self._futures: list[Future] = []
        self._error: Exception | None = None
        self._raised = False

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` after every earlier one (raises an earlier job's failure instead)."""
        self.check()
        self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(self._executor.submit(self._run, job))

    def drain(self) -> None:
        """Wait until every queued job is done; raises a failure."""
        wait(self._futures)
        self._futures.clear()
        self.check()

    def close(self) -> None:
        """Finish the queued jobs and stop the thread; raises a failure not raised yet."""
        self._executor.shutdown(wait=True)
        self._futures.clear()
        self.check()

    def check(self) -> None:
        """Raise the first job's failure (once)."""
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def _run(self, job: Callable[[], None]) -> None:
        if self._error is not None:
            return  # a failed job came first: writing later rounds would commit past it
        try:
            job()
        except Exception as err:  # handed to the round loop, which stops the run with it
            self._error = err
