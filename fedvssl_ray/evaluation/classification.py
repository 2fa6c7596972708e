"""The 10-clip test of a fine-tuned classifier (CTP.md §7, FEDVSSL.md §8): top-1, top-5, mean
class accuracy on the test split.

Each test video gives ``num_clips`` uniformly spaced clips (:func:`~fedvssl_ray.data.clips.
eval_indices`) of ``clip_len`` frames at the fine-tuning stride, resized to 171x128 (scaled
by ``crop_size/112``) and centre-cropped (:class:`~fedvssl_ray.data.transforms.EvalPreset`);
the classifier's clip logits are averaged per video and turned into scores by a softmax.
The clips and the forward pass are the feature pipeline's (:mod:`.features`, or the Ray Data
pipeline of ``fedvssl_ray.actors.evaluation``) with ``FeatureSpec(output="logits")``. Scores
are computed afresh on every call (nothing is cached).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..aggregation import Weights
from ..config import Config, finetune_data
from .evaluate import Extractor, extract_with_progress, local_extractor
from .spec import EvalVideo, FeatureSpec
from .splits import load_eval_videos, query_manifest_path

TOP_KS = (1, 5)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[V, C]`` (computed stably in float64)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def video_scores(clip_logits: np.ndarray) -> np.ndarray:
    """``[V, N, C]`` clip logits -> ``[V, C]`` scores: softmax of the mean over the N clips."""
    return softmax(np.asarray(clip_logits, np.float64).mean(axis=1))


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of videos whose label is among the ``k`` highest scores (ties: lower class id
    ranks first)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranked = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return float(np.mean((ranked == np.asarray(labels)[:, None]).any(axis=1)))


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of each class present in ``labels``, averaged over those classes."""
    labels = np.asarray(labels)
    predicted = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, 0]
    per_class = [float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)]
    return float(np.mean(per_class))


def classifier_spec(cfg: Config) -> FeatureSpec:
    """How a test video is scored: ``eval.num_clips`` clips of the fine-tuning clip length and
    stride, ``eval.batch_size`` clips per forward, the classifier's (finetune-mode) strides."""
    data = finetune_data(cfg).data
    return FeatureSpec(
        backbone=cfg.model.backbone,
        num_clips=cfg.eval.num_clips,
        clip_len=data.clip_len,
        crop_size=data.crop_size,
        batch_size=cfg.eval.batch_size,
        mode="finetune",
        stride=cfg.finetune.stride,
        output="logits",
    )


def classifier_test_videos(cfg: Config) -> list[EvalVideo]:
    """The test split of the fine-tuning dataset (Kinetics-400: its validation split)."""
    return load_eval_videos(query_manifest_path(finetune_data(cfg)))


def evaluate_classifier(
    weights: Weights,
    cfg: Config,
    *,
    videos: Sequence[EvalVideo] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    extractor: Extractor | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 / mean class accuracy of a classifier (``backbone.*`` + ``cls_head.*``).

    :param videos: the videos to test (default: the fine-tuning dataset's test split).
    :param progress: receives ``{"type": "eval_start", ...}`` and ``{"type": "eval_features",
        "done", "total", "elapsed_s"}`` events (the retrieval evaluation's events).
    :param extractor: where the logits are computed (default: this process).
    :returns: plain data (JSON-ready): metrics, counts, skipped videos, the test definition.
    """
    if extractor is None:
        from .features import eval_device

        extractor = local_extractor(eval_device(cfg.eval.num_gpus))
    emit = progress or (lambda event: None)
    spec = classifier_spec(cfg)
    videos = list(classifier_test_videos(cfg) if videos is None else videos)
    if not videos:
        raise ValueError("no test videos")
    mean_logits, errors, ok, extract_s = extract_with_progress(
        extractor, videos, weights, spec, emit, queries=len(videos), gallery=0
    )
    labels = np.array([v.label for v in videos], np.int64)
    num_classes = mean_logits.shape[1]
    if labels.max() >= num_classes:
        raise ValueError(
            f"test labels go up to {labels.max()}, but the classifier has {num_classes} classes "
            "(fine-tuned on another dataset?)"
        )
    scores = softmax(mean_logits[ok])
    data = finetune_data(cfg).data
    result: dict[str, Any] = {
        "task": "test",
        "dataset": data.dataset,
        "data_root": data.root,
        "split": data.split,
        "test": spec.describe(),
        "videos": int(ok.sum()),
        "num_classes": int(num_classes),
        "skipped": [
            {"video_id": videos[i].video_id, "reason": reason} for i, reason in sorted(errors.items())
        ],
        "extract_s": round(extract_s, 3),
        "videos_per_s": round(len(videos) / extract_s, 3) if extract_s > 0 else None,
    }
    if ok.any():
        result.update({f"top{k}": topk_accuracy(scores, labels[ok], k) for k in TOP_KS})
        result["mean_class_accuracy"] = mean_class_accuracy(scores, labels[ok])
    return result


def format_test_result(result: dict[str, Any]) -> str:
    """The test figures as a small table, one item per line."""
    t = result["test"]

    def pct(key: str) -> str:
        value = result.get(key)
        return "n/a" if value is None else f"{100 * value:6.2f} %"

    lines = [
        f"{'checkpoint':<22}{result.get('checkpoint', '(in memory)')}",
        f"{'top-1':<22}{pct('top1')}",
        f"{'top-5':<22}{pct('top5')}",
        f"{'mean class accuracy':<22}{pct('mean_class_accuracy')}",
        f"{'test videos':<22}{result['videos']} ({result['num_classes']} classes)",
        f"{'skipped videos':<22}{len(result['skipped'])}",
        *(f"{'':<22}{s['video_id']}: {s['reason']}" for s in result["skipped"]),
        f"{'dataset':<22}{result['dataset']} split {result['split']} ({result['data_root']})",
        f"{'clips':<22}{t['clips_per_video']} per video, {t['clip_len']} frames at stride "
        f"{t['frame_stride']}, {t['spatial']}; {t['pooling']}",
        f"{'test time':<22}{result['extract_s']:.1f} s ({result['videos_per_s']} videos/s)",
    ]
    return "\n".join(lines)
