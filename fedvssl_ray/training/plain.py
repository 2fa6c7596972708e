"""The plain loop: the same rounds and local training, sequentially in this process, no Ray.

It is the reference the Ray engine must match weight for weight, and the baseline of the
engine-overhead benchmark (one process using all cores' torch threads).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial

import torch

from ..config import Config
from ..models import Weights
from ..run_dir import RunDir
from .client import ClientWorker, StreamFactory
from .evaluator import InlineEvaluator
from .messages import ClientResult, NeedHead
from .rounds import EventSink, FederatedRun, HeadSource, RoundOutcome


def train_client(
    call: Callable[..., ClientResult | NeedHead], client_id: int, heads: HeadSource
) -> ClientResult:
    """Call ``call(head_version=..., head=...)``; resend the head if the worker evicted it."""
    version = heads.version(client_id)
    result = call(head_version=version, head=None)
    if isinstance(result, NeedHead):
        result = call(head_version=version, head=heads.get(client_id))
    return result


class PlainRunner:
    """Trains each sampled client in turn with one in-process :class:`ClientWorker`."""

    def __init__(self, cfg: Config, stream_factory: StreamFactory) -> None:
        self.threads = cfg.client.torch_threads or torch.get_num_threads()
        self.worker = ClientWorker(cfg, stream_factory, max_cached_clients=cfg.num_clients)

    def initial_global(self) -> Weights:
        return self.worker.initial_global()

    def run_round(
        self, global_weights: Weights, round_idx: int, client_ids: Sequence[int],
        heads: HeadSource, emit: EventSink,
    ) -> RoundOutcome:
        results, failures = [], {}
        start = time.perf_counter()
        for done, client_id in enumerate(client_ids, 1):
            call = partial(
                self.worker.train, global_weights, round_idx, client_id, threads=self.threads
            )
            try:
                result = train_client(call, client_id, heads)
            except Exception as err:  # a failing client is dropped from the round, not fatal
                failures[client_id] = f"{type(err).__name__}: {err}"
                emit({"type": "client_failed", "round": round_idx, "client": client_id,
                      "error": failures[client_id], "trace": traceback.format_exc(limit=3)})
                continue
            results.append(result)
            emit({"type": "client_done", "round": round_idx, "client": client_id,
                  "loss": result.update.loss, "done": done, "total": len(client_ids)})
        return RoundOutcome(results, failures, {"train_s": time.perf_counter() - start})

    def close(self) -> None:
        """Nothing to release: the worker lives in this process."""


def run_plain(
    cfg: Config, run_dir: RunDir, stream_factory: StreamFactory, emit: EventSink | None = None
) -> dict:
    """Run the whole federated schedule in this process (evaluations included, between
    rounds); returns the summary."""
    runner = PlainRunner(cfg, stream_factory)
    evaluator = InlineEvaluator(cfg) if cfg.eval.every else None
    return FederatedRun(cfg, run_dir, runner, emit, evaluator).run()
