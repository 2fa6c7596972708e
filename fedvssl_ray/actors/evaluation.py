"""Representation evaluation on Ray: features by a Ray Data pipeline, metrics by the Ray-free core.

Rows ``(index, video)`` flow through two stages, in order (``preserve_order``):

1. decode + sample + transform (:func:`~fedvssl_ray.evaluation.features.decode_videos`) in
   plain Ray Data tasks that reserve no CPU (``num_cpus=0``) and run at most ``decode_workers``
   at once, so they can never wait behind actors that hold every CPU (RAY.md, Ray Data);
2. the backbone forward (:class:`~fedvssl_ray.evaluation.features.FeatureModel`) in a pool of
   ``eval.workers`` actors (0: one per GPU when ``eval.num_gpus > 0`` and the cluster has GPUs,
   else 1), each reserving ``eval.num_cpus`` / ``eval.num_gpus``.

A decode task takes one block of about ``VIDEOS_PER_TASK`` videos, a whole number of the
forward groups (``FeatureSpec.videos_per_forward`` videos) that the actors and the in-process
extractor both use, so the features agree with the in-process ones. The weights are put in the
object store once and every actor reads them from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from ..aggregation import Weights
from ..config import Config, ConfigError
from ..evaluation import TASKS, EvalVideo, Extracted, FeatureSpec, evaluate_backbone

COLUMNS = ("video_id", "path", "num_frames", "frame_zip", "label")
VIDEOS_PER_TASK = 4  # videos a decode task handles (rounded up to whole forward groups)


def _videos_of(batch: dict[str, np.ndarray]) -> list[EvalVideo]:
    columns = [batch[name].tolist() for name in COLUMNS]
    return [EvalVideo(*row) for row in zip(*columns, strict=True)]


def _decode_task(batch: dict[str, np.ndarray], *, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Ray Data map: video rows -> ``clips [B, N, 3, T, S, S]`` and ``error`` ("" if decoded)."""
    import torch  # imported here: torch loads in Ray workers, never in a torch-free caller

    from ..evaluation.features import decode_videos

    torch.set_num_threads(1)  # the resize is the one torch op; parallelism comes from tasks
    clips, errors = decode_videos(_videos_of(batch), spec)
    return {"index": batch["index"], "clips": clips, "error": np.array(errors, dtype=object)}


class BackboneWorker:
    """Ray Data actor: clips of a group of videos -> their features (zeros where ``error``)."""

    def __init__(self, weights: list, spec: FeatureSpec, device: str, threads: int) -> None:
        import torch

        from ..evaluation.features import make_model

        torch.set_num_threads(threads)
        self.model = make_model(ray.get(weights[0]), spec, device)
        self.channels = self.model.out_dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], bool)
        feats = np.zeros((len(ok), self.channels), np.float32)
        if ok.any():
            feats[ok] = self.model(batch["clips"][ok])
        return {"index": batch["index"], "feature": feats, "error": batch["error"]}


def pool_size(cfg: Config) -> int:
    """Backbone actors: ``eval.workers``, else one per GPU when GPUs are asked for, else 1."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if cfg.eval.num_gpus > 0 and not gpus:  # the actors would wait for a GPU forever
        raise ConfigError(f"eval.num_gpus={cfg.eval.num_gpus} but the Ray cluster has no GPU")
    if cfg.eval.workers:
        return cfg.eval.workers
    return gpus if cfg.eval.num_gpus > 0 else 1


class RayExtractor:
    """Computes features with the Ray Data pipeline; use as ``evaluate_backbone(extractor=...)``."""

    def __init__(self, cfg: Config) -> None:
        self.workers = pool_size(cfg)
        self.num_cpus, self.num_gpus = cfg.eval.num_cpus, cfg.eval.num_gpus
        cpus = int(ray.cluster_resources().get("CPU", 1))
        # decode tasks reserve no CPU: bound them by the cores the actors leave
        self.decode_workers = max(1, cpus - math.ceil(self.workers * self.num_cpus))

    def dataset(self, videos: Sequence[EvalVideo], weights_ref: Any, spec: FeatureSpec) -> Any:
        """The pipeline over ``videos``: rows ``index``, ``feature`` [C], ``error``."""
        group = spec.videos_per_forward
        per_task = group * math.ceil(VIDEOS_PER_TASK / group)
        rows = [{"index": i, **v._asdict()} for i, v in enumerate(videos)]
        # one block per decode task, each a whole number of forward groups
        ds = ray.data.from_arrow(
            [pa.Table.from_pylist(rows[i : i + per_task]) for i in range(0, len(rows), per_task)]
        )
        ds.context.execution_options.preserve_order = True
        ds.context.enable_progress_bars = False  # progress is reported through the callback
        device = "cuda" if self.num_gpus > 0 else "cpu"
        threads = max(1, math.floor(self.num_cpus))
        return ds.map_batches(
            _decode_task, batch_size=None, fn_kwargs={"spec": spec},
            compute=ray.data.TaskPoolStrategy(size=self.decode_workers), num_cpus=0,
        ).map_batches(
            BackboneWorker, batch_size=group,
            fn_constructor_kwargs={"weights": [weights_ref], "spec": spec, "device": device,
                                   "threads": threads},
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=self.num_cpus, num_gpus=self.num_gpus,
        )

    def __call__(
        self,
        videos: Sequence[EvalVideo],
        weights: Weights,
        spec: FeatureSpec,
        progress: Callable[[int, int], None],
    ) -> Extracted:
        weights_ref = ray.put(dict(weights))
        indices, parts, errors = [], [], {}
        for batch in self.dataset(videos, weights_ref, spec).iter_batches(batch_size=None):
            index = batch["index"].astype(np.int64)
            indices.append(index)
            parts.append(batch["feature"])
            errors.update({int(i): str(e) for i, e in zip(index, batch["error"], strict=True) if e})
            progress(sum(map(len, indices)), len(videos))
        feats = np.empty((len(videos), parts[0].shape[1]), np.float32)
        feats[np.concatenate(indices)] = np.concatenate(parts)
        return Extracted(feats, errors)


def evaluate_on_ray(
    weights: Weights | None,
    cfg: Config,
    tasks: Sequence[str] = TASKS,
    *,
    max_videos: int = 0,
    progress: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """:func:`~fedvssl_ray.evaluation.evaluate_backbone` with features from the Ray Data pipeline."""
    return evaluate_backbone(
        weights, cfg, tasks, max_videos=max_videos, progress=progress,
        extractor=RayExtractor(cfg),
    )
