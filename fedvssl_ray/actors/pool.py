"""The Ray runner: a pool of persistent client actors trained in parallel each round.

Clients have a stable home actor (so its cached shard and head are reused); a round's clients
are spread so that no actor idles while another has work queued, and an actor whose peers ran
out of work gets their torch threads for its next client. One ``ray.put`` of the global per
round; results are gathered with ``ray.wait`` and an optional deadline. A client whose actor dies
or raises is dropped from the round; the actor restarts (``max_restarts``) and its clients'
heads are sent again from the driver on their next round. A client's new head is a second
return of its call: owned by the driver (so it outlives an actor crash) but left in the object
store where it was made, and fetched only by the driver's background writer.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from ..aggregation import Weights
from ..config import Config, ConfigError
from ..training.messages import ClientResult, NeedHead
from ..training.rounds import EventSink, HeadSource, RoundOutcome
from .client_actor import RemoteClientActor
from .cluster import (
    actors_that_fit,
    alive_nodes,
    check_client_resources,
    check_eval_resources,
    cluster_can_grow,
)


def plan_actors(cfg: Config, cluster_cpus: float, cluster_gpus: float) -> int:
    """How many client actors to start: config, else as many as the cluster holds at once (GPU
    actors: ``client.num_gpus`` and ``client.num_cpus`` each, so 0.2 puts five on a GPU; CPU
    actors: at least one core each), at most one per sampled client. Shares are counted as
    :func:`actors_that_fit` counts them, so 1 GPU / 0.2 is 5, not float ``1 // 0.2 == 4``."""
    c = cfg.client
    if c.num_actors:
        return min(c.num_actors, cfg.num_clients)
    cluster = [{"CPU": cluster_cpus, "GPU": cluster_gpus}]
    if c.num_gpus > 0:
        fit = actors_that_fit(cluster, c.num_cpus, c.num_gpus)
    else:
        fit = actors_that_fit(cluster, max(1.0, c.num_cpus), 0.0)
    return max(1, min(fit, cfg.clients_per_round))


def assign_round(
    client_ids: Sequence[int], steps: Mapping[int, int], home: Mapping[int, int], num_actors: int
) -> list[list[int]]:
    """Queues of clients per actor: home actors where that keeps the load even, else the
    least-loaded actor (longest clients placed first)."""
    total = sum(steps[c] for c in client_ids)
    target = max(math.ceil(total / num_actors), max((steps[c] for c in client_ids), default=0))
    queues: list[list[int]] = [[] for _ in range(num_actors)]
    load = [0] * num_actors
    for c in sorted(client_ids, key=lambda c: (-steps[c], c)):
        actor = home[c]
        if load[actor] + steps[c] > target:
            actor = min(range(num_actors), key=lambda a: (load[a], a))
        queues[actor].append(c)
        load[actor] += steps[c]
    return [sorted(q) for q in queues]


def thread_plan(
    queues: Sequence[Sequence[int]], steps: Mapping[int, int], budget: int
) -> dict[int, int]:
    """Torch threads per client of a round: the budget divided among the actors still working
    when the client starts (by planned steps). Fixed by the plan alone, never by timing, so the
    same config always computes the same numbers."""
    totals = [sum(steps[c] for c in queue) for queue in queues]
    threads = {}
    for queue in queues:
        offset = 0
        for client_id in queue:
            busy = sum(1 for total in totals if total > offset)
            threads[client_id] = max(1, budget // max(1, busy))
            offset += steps[client_id]
    return threads


def plan_threads(
    cfg: Config, queues: Sequence[Sequence[int]], steps: Mapping[int, int], budget: int,
    single_node: bool,
) -> dict[int, int]:
    """Torch threads per client of a round: ``client.torch_threads`` if set; else GPU actors,
    and actors spread over several nodes, use the CPUs they reserved (``client.num_cpus``,
    at least one thread), and CPU actors on one node share its ``budget`` (:func:`thread_plan`)."""
    c = cfg.client
    if c.torch_threads:
        return {client: c.torch_threads for queue in queues for client in queue}
    if c.num_gpus > 0 or not single_node:
        share = max(1, math.floor(c.num_cpus + 1e-9))
        return {client: share for queue in queues for client in queue}
    return thread_plan(queues, steps, budget)


@dataclass(frozen=True)
class RemoteHead:
    """A client's head in the object store (a :class:`~fedvssl_ray.training.messages.HeadRef`)."""

    ref: ray.ObjectRef

    def fetch(self) -> Weights:
        return ray.get(self.ref)


class RayRunner:
    """Creates the client actors once and trains each round's clients on them."""

    def __init__(
        self,
        cfg: Config,
        stream_factory: Callable[[int], object],
        client_steps: Mapping[int, int],
        crash_on: Iterable[tuple[int, int]] = (),
    ) -> None:
        self.cfg = cfg
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
        self.num_actors = plan_actors(cfg, cpus, gpus)
        try:
            nodes = alive_nodes()
            check_client_resources(cfg, nodes, self.num_actors)
            check_eval_resources(cfg, nodes, self.num_actors)
        except ConfigError as err:
            if not cluster_can_grow():
                raise
            print(f"warning: {err}; waiting for the autoscaler to add nodes", file=sys.stderr)
        # on one node the actors share the machine's cores (an idle actor's threads go to the
        # busy ones); across nodes each keeps its own CPU share
        self.single_node = sum(1 for node in ray.nodes() if node.get("Alive")) <= 1
        self.thread_budget = int(cpus)
        self.client_steps = dict(client_steps)
        options = {
            "num_cpus": cfg.client.num_cpus,
            "num_gpus": cfg.client.num_gpus,
            "max_restarts": -1,
            "max_task_retries": 0,  # an update is never computed twice
        }
        crash = list(crash_on)
        self.actors = [
            RemoteClientActor.options(**options).remote(cfg, stream_factory, crash)
            for _ in range(self.num_actors)
        ]
        self.home = {c: c % self.num_actors for c in range(cfg.num_clients)}
        self.restarting: set[int] = set()  # actors that died and have not answered since

    def wait_ready(self) -> None:
        """Block until every actor finished its constructor (created concurrently, not waited
        for at creation, so start-up overlaps with the driver's own)."""
        ray.get([a.ready.remote() for a in self.actors])

    def initial_global(self) -> Weights:
        return ray.get(self.actors[0].initial_global.remote())

    def run_round(
        self, global_weights: Weights, round_idx: int, client_ids: Sequence[int],
        heads: HeadSource, emit: EventSink,
    ) -> RoundOutcome:
        start = time.perf_counter()
        global_ref = ray.put(global_weights)
        broadcast_s = time.perf_counter() - start
        queues = assign_round(client_ids, self.client_steps, self.home, self.num_actors)
        threads = plan_threads(
            self.cfg, queues, self.client_steps, self.thread_budget, self.single_node
        )
        pending: dict[ray.ObjectRef, tuple[int, int, ray.ObjectRef]] = {}
        results: list[ClientResult] = []
        failures: dict[int, str] = {}
        deadline = start + self.cfg.round_timeout_s if self.cfg.round_timeout_s else None

        def dispatch(actor: int, client_id: int, head=None) -> None:
            if actor in self.restarting and not self._await_restart(actor):
                failures[client_id] = "client actor did not come back after a crash"
                return
            ref, head_ref = self.actors[actor].train.options(num_returns=2).remote(
                global_ref, round_idx, client_id, head_version=heads.version(client_id),
                head=head, threads=threads[client_id],
            )
            pending[ref] = (actor, client_id, head_ref)

        for actor, queue in enumerate(queues):
            if queue:
                dispatch(actor, queue.pop(0))
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            if not ready:
                self._expire(pending, queues, failures, round_idx, emit)
                break
            actor, client_id, head_ref = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except (RayActorError, RayTaskError) as err:  # the ref is ready: no timeout
                if isinstance(err, RayActorError):
                    self.restarting.add(actor)
                failures[client_id] = _describe(err)
                emit({"type": "client_failed", "round": round_idx, "client": client_id,
                      "error": failures[client_id]})
            else:
                if isinstance(result, NeedHead):
                    dispatch(actor, client_id, head=self._head_ref(heads, client_id))
                    continue
                results.append(replace(result, head=RemoteHead(head_ref)))
                emit({"type": "client_done", "round": round_idx, "client": client_id,
                      "loss": result.update.loss, "done": len(results) + len(failures),
                      "total": len(client_ids)})
            if queues[actor]:
                dispatch(actor, queues[actor].pop(0))
        timings = {"broadcast_s": broadcast_s, "train_s": time.perf_counter() - start - broadcast_s}
        return RoundOutcome(results, failures, timings)

    @staticmethod
    def _head_ref(heads: HeadSource, client_id: int) -> ray.ObjectRef:
        """The client's latest head for a resend: its object while its write is pending, else
        the weights read from the run directory, put once."""
        head = heads.get(client_id)
        return head.ref if isinstance(head, RemoteHead) else ray.put(head)

    def _await_restart(self, actor: int, timeout_s: float = 120.0) -> bool:
        """Wait until a crashed actor answers again (its constructor re-ran)."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            try:
                ray.get(self.actors[actor].ready.remote(), timeout=timeout_s)
            except (RayActorError, GetTimeoutError):
                time.sleep(0.5)
                continue
            self.restarting.discard(actor)
            return True
        return False

    def _expire(self, pending, queues, failures, round_idx: int, emit: EventSink) -> None:
        """The deadline passed: drop late and queued clients; restart the late actors."""
        late = {c: f"timed out after round_timeout_s={self.cfg.round_timeout_s}"
                for _, c, _ in pending.values()}
        late.update({c: "not started before the round deadline" for q in queues for c in q})
        for actor in {a for a, _, _ in pending.values()}:
            ray.kill(self.actors[actor], no_restart=False)
            self.restarting.add(actor)
        for queue in queues:
            queue.clear()
        pending.clear()
        failures.update(late)
        for client_id, message in late.items():
            emit({"type": "client_failed", "round": round_idx, "client": client_id,
                  "error": message})

    def memory(self) -> list[dict[str, float]]:
        """Peak memory per actor (for the scaling benchmark); an actor that is dead or still
        restarting reports an empty record, never an error: the run is already complete."""
        records = []
        for ref in [a.memory.remote() for a in self.actors]:
            try:
                records.append(ray.get(ref, timeout=5))
            except (RayActorError, GetTimeoutError):
                records.append({})
        return records

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def _describe(err: Exception) -> str:
    if isinstance(err, RayActorError):
        return f"client actor died: {str(err).splitlines()[0][:300]}"
    if isinstance(err, RayTaskError):
        cause = err.cause if getattr(err, "cause", None) is not None else err
        return f"{type(cause).__name__}: {str(cause).splitlines()[-1][:300]}"
    return f"{type(err).__name__}: {err}"
