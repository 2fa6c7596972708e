"""The driver actor: runs the federated round loop on Ray and streams progress to the script.

:func:`start_driver` creates the client actors and the driver actor at the same time, so their
processes start (and import torch, build models) concurrently; the driver itself never loads
torch: it only samples, aggregates numpy arrays and writes the run directory (on one background
thread while the next round trains; client heads come to it from the object store only there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..config import Config
from ..data.shards import ClientShards
from ..run_dir import RunDir
from ..training.rounds import FederatedRun
from .client_actor import peak_rss_mb
from .eval_actor import RayEvaluator
from .pool import RayRunner


class Driver:
    """Owns the round loop over a client pool; ``events`` can be polled while ``run`` runs."""

    def __init__(
        self, cfg: Config, run_dir: str, runner: RayRunner, shards_summary: str,
        evaluator: RayEvaluator | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = RunDir(run_dir)
        self.runner: RayRunner | None = runner
        self.evaluator = evaluator
        self.shards_summary = shards_summary
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.final_memory: dict[str, Any] = {}

    def _emit(self, event: dict[str, Any]) -> None:
        event = {"t": time.time(), **event}
        with self._lock:
            self._events.append(event)

    def events(self, cursor: int) -> tuple[list[dict[str, Any]], int]:
        """Progress events after ``cursor``, and the new cursor."""
        with self._lock:
            return self._events[cursor:], len(self._events)

    def run(self) -> dict[str, Any]:
        """Wait for the client actors, then run (or resume) every round."""
        if self.runner is None:
            raise RuntimeError("this driver already ran; start a new one")
        started = time.perf_counter()
        self._emit({"type": "shards", "summary": self.shards_summary})
        try:
            self.runner.wait_ready()
            self._emit({"type": "actors_ready", "num_actors": self.runner.num_actors,
                        "wait_s": time.perf_counter() - started})
            summary = FederatedRun(
                self.cfg, self.run_dir, self.runner, self._emit, self.evaluator
            ).run()
            self.final_memory = self.memory()
            return summary
        finally:
            self.runner.close()
            self.runner = None
            if self.evaluator is not None:
                self.evaluator.close()

    def memory(self) -> dict[str, Any]:
        """Peak resident memory (MB) of the driver and of every client actor; after ``run``
        ended, the figures taken just before its actors were released."""
        if self.runner is None:
            return self.final_memory
        return {"driver_peak_rss_mb": peak_rss_mb(), "actors": self.runner.memory()}


RemoteDriver = ray.remote(Driver)


def start_driver(
    cfg: Config, run_dir: str | Path, crash_on: Iterable[tuple[int, int]] = ()
) -> ray.actor.ActorHandle:
    """Create the client actors, the evaluation actor (with ``eval.every``) and the driver actor
    (on this node, which writes the run directory; it holds no CPU) without waiting for any of
    them to start."""
    shards = ClientShards.from_config(cfg)
    runner = RayRunner(cfg, shards.stream_factory(), shards.steps_per_client(), crash_on)
    evaluator = RayEvaluator(cfg) if cfg.eval.every else None
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return RemoteDriver.options(
        num_cpus=0, max_concurrency=4, scheduling_strategy=here
    ).remote(cfg, str(run_dir), runner, shards.summary(), evaluator)


def run_on_ray(
    driver: ray.actor.ActorHandle,
    on_event: Callable[[dict[str, Any]], None],
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Run the driver to completion, passing each progress event to ``on_event``."""
    done = driver.run.remote()
    cursor = 0
    while True:
        finished, _ = ray.wait([done], timeout=poll_s)
        events, cursor = ray.get(driver.events.remote(cursor))
        for event in events:
            on_event(event)
        if finished:
            return ray.get(done)
