"""The persistent client actor: a thin Ray shell over :class:`ClientWorker`."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

import numpy as np
import ray

from ..aggregation import Weights
from ..config import Config
from ..training.messages import ClientResult, NeedHead


class ClientActor:
    """Serves the clients the driver sends it; keeps model, heads and clip streams between rounds.

    ``crash_on`` lists (client, round) pairs at which the actor process exits abruptly: a fault
    drill for tests and for checking a deployment's recovery, never set by a config file.
    """

    def __init__(
        self,
        cfg: Config,
        stream_factory: Callable[[int], object],
        crash_on: Iterable[tuple[int, int]] = (),
    ) -> None:
        # imported here: torch loads in client processes only, never in the driver or launcher
        from ..training.client import ClientWorker

        self.worker = ClientWorker(
            cfg, stream_factory, max_cached_clients=cfg.client.max_cached_clients
        )
        self.crash_on = {(int(c), int(r)) for c, r in crash_on}

    def ready(self) -> dict[str, float]:
        """Called once after creation: the actor's pid and start-up memory."""
        return {"pid": os.getpid(), "rss_mb": peak_rss_mb()}

    def initial_global(self) -> Weights:
        """The shared weights of the seeded init (the round-0 global)."""
        return self.worker.initial_global()

    def train(
        self,
        global_weights: Mapping[str, np.ndarray],
        round_idx: int,
        client_id: int,
        *,
        head_version: int = 0,
        head: Mapping[str, np.ndarray] | None = None,
        threads: int = 0,
    ) -> tuple[ClientResult | NeedHead, Weights | None]:
        """One local round of ``client_id`` (see :meth:`ClientWorker.train`), and apart from
        the result its new head: called with ``num_returns=2``, the head stays in this node's
        object store until the driver's writer fetches it, off the round's critical path."""
        if (client_id, round_idx) in self.crash_on:
            os._exit(1)
        result = self.worker.train(
            global_weights, round_idx, client_id, head_version=head_version, head=head,
            threads=threads,
        )
        if isinstance(result, NeedHead):
            return result, None
        return replace(result, head=None), result.head

    def memory(self) -> dict[str, float]:
        """Peak resident memory of this actor process and the clients it caches."""
        return {"peak_rss_mb": peak_rss_mb(), "cached_clients": len(self.worker.streams)}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


RemoteClientActor = ray.remote(ClientActor)
