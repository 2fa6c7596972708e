"""The client side of a round, without Ray: load the global, swap in the client's head, train.

A :class:`ClientWorker` serves one or more clients. It builds the CtP model once, keeps each
client's own CtP head and clip stream (with its cached shard) between rounds, and bounds how many
idle clients it keeps: an evicted client's head comes back from the caller on its next round, and
its stream is rebuilt without the videos already found bad.
The Ray actor in ``fedvssl_ray.actors`` is a thin shell over this class, and the plain loop uses
it directly, so both run exactly the same code.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

import numpy as np
import torch

from ..aggregation import ClientUpdate, make_strategy, windowed_mean_loss
from ..config import Config
from ..data.device_augment import Batch
from ..models import (
    CtpModel,
    Weights,
    build_ctp_model,
    get_weights,
    keys_with_prefix,
    set_weights,
)
from .local import LocalParams, LocalStats, train_local
from .messages import ClientResult, NeedHead, client_seed
from .precision import choose_precision
from .strategy_params import strategy_params


class ClientStream(Protocol):
    """What the worker needs of a client's clips (:class:`~fedvssl_ray.data.pipeline.ClipStream`)."""

    @property
    def num_videos(self) -> int: ...

    def batches(self, round: int, epoch: int = 0) -> Iterable[Batch]: ...

    def bad_video_ids(self) -> set[str]: ...

    def exclude(self, video_ids: Iterable[str]) -> None: ...


StreamFactory = Callable[[int], ClientStream]  # client id -> that client's stream


class ClientWorker:
    """Runs local CtP rounds for the clients assigned to it; Ray-free."""

    def __init__(
        self,
        cfg: Config,
        stream_factory: StreamFactory,
        *,
        device: str | None = None,
        max_cached_clients: int = 16,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if cfg.client.num_gpus > 0 else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"client.num_gpus={cfg.client.num_gpus:g} but torch {torch.__version__} sees no "
                f"CUDA device in this process (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); set client.num_gpus=0 to train on CPU"
            )
        self.precision = choose_precision(self.device, cfg.client.mixed_precision)
        self.channels_last = cfg.client.channels_last and self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # a round repeats a few batch shapes
        self.model = seeded_ctp_model(cfg).to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last_3d)
        self.head_keys = keys_with_prefix(self.model, "head")
        self.init_head = get_weights(self.model, self.head_keys)  # common init on every client
        strategy = make_strategy(cfg.strategy.name, **strategy_params(cfg))
        self.upload_keys = strategy.upload_keys(list(self.model.state_dict()))
        self.shared_keys = strategy.shared_keys(list(self.model.state_dict()))
        self.stream_factory = stream_factory
        self.max_cached_clients = max(1, max_cached_clients)
        self.heads: OrderedDict[int, tuple[int, Weights]] = OrderedDict()
        self.streams: OrderedDict[int, ClientStream] = OrderedDict()
        self.bad_videos: dict[int, set[str]] = {}  # of evicted streams, excluded when rebuilt
        self.params = LocalParams.from_config(cfg.client)

    def train(
        self,
        global_weights: Mapping[str, np.ndarray],
        round_idx: int,
        client_id: int,
        *,
        head_version: int = 0,
        head: Mapping[str, np.ndarray] | None = None,
        threads: int = 0,
    ) -> ClientResult | NeedHead:
        """One local round of ``client_id`` from ``global_weights`` (shared keys only).

        ``head_version`` is the round of the client's latest head (0: never trained, use the
        common init); ``head`` carries those weights when the worker may not hold them.
        """
        started = time.perf_counter()
        local_head = self._head_for(client_id, head_version, head)
        if local_head is None:
            return NeedHead(client_id, head_version)
        if threads > 0:
            torch.set_num_threads(threads)
        # replay: every round repeats round 1's clips and augmentations (compatibility mode)
        data_round = 1 if self.cfg.client.replay else round_idx
        torch.manual_seed(client_seed(self.cfg.seed, client_id, data_round))
        set_weights(self.model, local_head)
        set_weights(self.model, global_weights)  # after the head: shared="all" overrides it
        stream = self._stream_for(client_id)
        loaded = time.perf_counter()
        batches = round_batches(stream, data_round, self.cfg.client.local_epochs)
        stats = train_local(
            self.model, batches, self.params, self.device, precision=self.precision,
            channels_last=self.channels_last,
        )
        loss = self._reported_loss(stats, client_id)
        trained = time.perf_counter()
        new_head = get_weights(self.model, self.head_keys)
        self._remember(self.heads, client_id, (round_idx, new_head))
        update = ClientUpdate(
            client_id=client_id,
            weights=get_weights(self.model, self.upload_keys),
            num_examples=stream.num_videos,
            loss=loss,
        )
        done = time.perf_counter()
        timings = {
            "load_s": loaded - started,
            "train_s": trained - loaded,
            "data_wait_s": stats.data_s,
            "export_s": done - trained,
            "threads": float(torch.get_num_threads()),
        }
        return ClientResult(update, new_head, stats.steps, timings, zero_loss=stats.zero_loss)

    def _reported_loss(self, stats: LocalStats, client_id: int) -> float:
        """L_k: the mean over all steps, or in flower-compat mode the baseline's windowed mean.

        The baseline logs the batch-size-weighted mean of every ``loss_window`` steps and
        reports the mean of those logs; it crashes with fewer steps than one window, and so
        does this (the round loop drops the client and reports why).
        """
        if self.cfg.strategy.name != "flower-compat":
            return stats.mean_loss
        window = self.cfg.strategy.loss_window
        if stats.steps < window:
            raise ValueError(
                f"client {client_id} ran {stats.steps} local steps, fewer than "
                f"strategy.loss_window={window}: the flower-compat loss has no complete window "
                "(the Flower baseline fails here too); lower strategy.loss_window"
            )
        return windowed_mean_loss(stats.losses, batch_sizes=stats.batch_sizes, window=window)

    def initial_global(self) -> Weights:
        """The round-0 global: the shared entries of the seeded init (identical on every client).

        Built afresh, since this worker's own model may have trained already.
        """
        return get_weights(seeded_ctp_model(self.cfg), self.shared_keys)

    def _head_for(
        self, client_id: int, version: int, head: Mapping[str, np.ndarray] | None
    ) -> Mapping[str, np.ndarray] | None:
        held = self.heads.get(client_id)
        if held is not None and held[0] == version:
            self.heads.move_to_end(client_id)
            return held[1]
        if head is not None:
            return head
        if version == 0:
            return self.init_head
        return None

    def _stream_for(self, client_id: int) -> ClientStream:
        """The client's cached stream, or a new one that leaves out its known-bad videos."""
        stream = self.streams.get(client_id)
        if stream is None:
            stream = self.stream_factory(client_id)
            if self.bad_videos.get(client_id):
                stream.exclude(self.bad_videos[client_id])
        for evicted_id, evicted in self._remember(self.streams, client_id, stream):
            self.bad_videos[evicted_id] = evicted.bad_video_ids()
        return stream

    def _remember(
        self, cache: OrderedDict, client_id: int, value: object
    ) -> list[tuple[int, object]]:
        """Store ``value`` as the newest entry; returns the least recent entries evicted."""
        cache[client_id] = value
        cache.move_to_end(client_id)
        evicted = []
        while len(cache) > self.max_cached_clients:
            evicted.append(cache.popitem(last=False))
        return evicted


def seeded_ctp_model(cfg: Config) -> CtpModel:
    """The run's CtP model at its seeded init: identical on every client."""
    return build_ctp_model(
        cfg.model.backbone, num_frames=cfg.data.clip_len, seed=cfg.seed,
        head_init_std=cfg.model.head_init_std,
    )


def round_batches(stream: ClientStream, round_idx: int, epochs: int) -> Iterator[Batch]:
    """Every local epoch's batches in order; each epoch's plan is made once the previous one ends
    (so a video that failed in one epoch is left out of the next)."""
    for epoch in range(epochs):
        yield from stream.batches(round_idx, epoch)
