"""A human-readable table of an evaluation result (the dict :func:`evaluate_backbone` returns)."""

from __future__ import annotations

from typing import Any


def format_result(result: dict[str, Any]) -> str:
    """Metrics, video counts, skipped videos and the feature definition, one item per line."""
    f = result["features"]
    lines = [f"{'checkpoint':<22}{result.get('checkpoint', '(in memory)')}"]
    if "retrieval" in result:
        for name, value in result["retrieval"].items():
            lines.append(f"{'retrieval ' + name:<22}{100 * value:6.2f} %")
        if result["retrieval_k_cap"] < 50:
            lines.append(f"{'':<22}(k capped at the gallery size, {result['retrieval_k_cap']})")
    if "knn" in result:
        knn = result["knn"]
        lines.append(f"{'k-NN top-1 (k=' + str(knn['k']) + ')':<22}{100 * knn['top1']:6.2f} %")
    subset = f" (seeded subset of {result['test_videos']})" if result["max_videos"] else ""
    lines += [
        f"{'queries (test)':<22}{result['queries']}{subset}",
        f"{'gallery (train)':<22}{result['gallery']}",
        f"{'skipped videos':<22}{len(result['skipped'])}",
        *(f"{'':<22}{s['split']}: {s['video_id']}: {s['reason']}" for s in result["skipped"]),
        f"{'dataset':<22}{result['dataset']} split {result['split']} ({result['data_root']})",
        f"{'features':<22}{f['backbone']} ({f['backbone_mode']} mode) {f['layer']}, {f['pooling']}",
        f"{'clips':<22}{f['clips_per_video']} per video, {f['clip_len']} frames at stride "
        f"{f['frame_stride']}, {f['spatial']}",
        f"{'feature time':<22}{result['extract_s']:.1f} s ({result['videos_per_s']} videos/s)",
    ]
    return "\n".join(lines)
