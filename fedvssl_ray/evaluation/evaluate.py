"""Evaluate a backbone's representation: retrieval R@k and k-NN top-1, test queries vs train gallery.

:func:`evaluate_backbone` runs wherever it is called (a script, an evaluation actor, a test):
features come from an *extractor*, by default :func:`.features.extract_features` in this
process; the Ray Data pipeline of ``fedvssl_ray.actors.evaluation`` is another. One feature pass
serves every task. Videos that fail to decode are skipped, named and counted in the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ..aggregation import Weights
from ..config import Config
from .metrics import RECALL_KS, knn_top1, retrieval_recall
from .spec import EvalVideo, Extracted, FeatureSpec
from .splits import eval_videos

TASKS = ("retrieval", "knn")
EventSink = Callable[[dict[str, Any]], None]


class Extractor(Protocol):
    """Computes the features of ``videos`` with ``weights`` (reporting (done, total) as it goes)."""

    def __call__(
        self,
        videos: Sequence[EvalVideo],
        weights: Weights,
        spec: FeatureSpec,
        progress: Callable[[int, int], None],
    ) -> Extracted: ...


def parse_tasks(text: str) -> tuple[str, ...]:
    """``retrieval``, ``knn``, a comma-separated list of them, or ``all`` -> task names in order."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return TASKS
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(
            f"unknown task {text!r}; choose one of {list(TASKS)}, a comma list of them, or all"
        )
    return tuple(t for t in TASKS if t in names)


def local_extractor(device: str) -> Extractor:
    """The in-process extractor on ``device``."""
    # imported here: torch loads only where features are computed
    from .features import extract_features

    def extract(videos, weights, spec, progress):
        return extract_features(videos, weights, spec, device=device, progress=progress)

    return extract


def extract_with_progress(
    extractor: Extractor,
    videos: Sequence[EvalVideo],
    weights: Weights,
    spec: FeatureSpec,
    emit: EventSink,
    **counts: int,
) -> tuple[np.ndarray, dict[int, str], np.ndarray, float]:
    """Run ``extractor`` over ``videos`` with ``eval_start`` / ``eval_features`` events;
    returns its outputs and errors, the mask of videos that decoded, and the seconds taken."""
    emit({"type": "eval_start", **counts, "features": spec.describe()})
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        emit({"type": "eval_features", "done": done, "total": total,
              "elapsed_s": time.perf_counter() - started})

    outputs, errors = extractor(videos, weights, spec, report)
    ok = np.array([i not in errors for i in range(len(videos))], bool)
    return outputs, errors, ok, time.perf_counter() - started


def evaluate_backbone(
    weights: Weights | None,
    cfg: Config,
    tasks: Sequence[str] | str = TASKS,
    *,
    max_videos: int = 0,
    progress: EventSink | None = None,
    extractor: Extractor | None = None,
) -> dict[str, Any]:
    """Retrieval and/or k-NN metrics of ``weights`` (``backbone.*``; None: the seeded init).

    :param tasks: names from :data:`TASKS`, or a text :func:`parse_tasks` reads (``"all"``).
    :param max_videos: evaluate a seeded subset of this many test queries (0: all); the gallery
        is always the whole train split.
    :param progress: receives ``{"type": "eval_start", ...}`` then ``{"type": "eval_features",
        "done", "total", "elapsed_s"}`` events.
    :param extractor: where features are computed; default: this process (GPU if
        ``eval.num_gpus > 0`` and one is visible).
    :returns: plain data (JSON-ready): the metrics, the feature definition, the video counts and
        the skipped videos.
    """
    tasks = parse_tasks(tasks if isinstance(tasks, str) else ",".join(tasks))
    if weights is None:
        from .weights import initial_backbone_weights  # torch: see local_extractor

        weights = initial_backbone_weights(cfg)
    if extractor is None:
        from .features import eval_device

        extractor = local_extractor(eval_device(cfg.eval.num_gpus))
    emit = progress or (lambda event: None)
    spec = FeatureSpec.from_config(cfg)
    queries, gallery, num_tests = eval_videos(cfg, max_videos)
    videos = [*queries, *gallery]
    feats, errors, ok, extract_s = extract_with_progress(
        extractor, videos, weights, spec, emit, queries=len(queries), gallery=len(gallery)
    )
    labels = np.array([v.label for v in videos], np.int64)
    is_query = np.arange(len(videos)) < len(queries)
    q, g = ok & is_query, ok & ~is_query
    result: dict[str, Any] = {
        "tasks": list(tasks),
        "dataset": cfg.data.dataset,
        "data_root": cfg.data.root,
        "split": cfg.data.split,
        "features": spec.describe(),
        "queries": int(q.sum()),
        "gallery": int(g.sum()),
        "test_videos": num_tests,
        "max_videos": max_videos,
        "seed": cfg.seed,
        "skipped": [
            {"video_id": videos[i].video_id, "split": "test" if is_query[i] else "train",
             "reason": reason}
            for i, reason in sorted(errors.items())
        ],
        "extract_s": round(extract_s, 3),
        "videos_per_s": round(len(videos) / extract_s, 3) if extract_s > 0 else None,
    }
    if "retrieval" in tasks:
        recall = retrieval_recall(feats[q], labels[q], feats[g], labels[g], RECALL_KS)
        result["retrieval"] = {f"R@{k}": value for k, value in recall.items()}
        result["retrieval_k_cap"] = min(max(RECALL_KS), int(g.sum()))
    if "knn" in tasks:
        result["knn"] = {
            "k": min(cfg.eval.knn_k, int(g.sum())),
            "weighting": "sum of cosine similarities per class; ties: lowest class id",
            "top1": knn_top1(feats[q], labels[q], feats[g], labels[g], cfg.eval.knn_k),
        }
    return result
