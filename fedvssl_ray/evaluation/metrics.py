"""Representation metrics on video features: retrieval recall R@k and k-NN top-1 (numpy only).

Both compare L2-normalised features by cosine similarity: test-split videos are the queries,
train-split videos the gallery. Retrieval follows the common protocol of video retrieval
(Xu et al., CVPR 2019, "Self-supervised spatiotemporal learning via video clip order
prediction"; FEDVSSL.md §9): a query is a hit at k when any of its k most similar gallery videos
has its class, and R@k is the fraction of hits. Ties in similarity keep the gallery order (the
lower gallery index ranks first), so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_KS = (1, 5, 10, 20, 50)


def l2_normalize(feats: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``feats`` ``[N, C]`` scaled to unit L2 norm (float64; an all-zero row stays zero)."""
    feats = np.asarray(feats, np.float64)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), eps)


def cosine_similarity(query_feats: np.ndarray, gallery_feats: np.ndarray) -> np.ndarray:
    """``[Q, C]`` x ``[G, C]`` -> ``[Q, G]`` cosine similarities."""
    return l2_normalize(query_feats) @ l2_normalize(gallery_feats).T


def _ranked(similarity: np.ndarray, k: int) -> np.ndarray:
    """``[Q, k]`` gallery indices by falling similarity; equal similarities keep gallery order."""
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def _check(query_feats, query_labels, gallery_feats, gallery_labels) -> None:
    if len(query_feats) != len(query_labels) or len(gallery_feats) != len(gallery_labels):
        raise ValueError(
            f"features and labels differ in length: queries {len(query_feats)} vs "
            f"{len(query_labels)}, gallery {len(gallery_feats)} vs {len(gallery_labels)}"
        )
    if len(query_feats) == 0 or len(gallery_feats) == 0:
        raise ValueError(
            f"need at least one query and one gallery video, got {len(query_feats)} and "
            f"{len(gallery_feats)}"
        )


def retrieval_recall(
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = RECALL_KS,
) -> dict[int, float]:
    """R@k for each ``k`` in ``ks``: the fraction of queries with their class in the top k.

    ``k`` is capped at the gallery size (R@k is then 1 whenever the class is in the gallery).
    """
    _check(query_feats, query_labels, gallery_feats, gallery_labels)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    depth = min(max(ks), len(gallery_labels))
    ranked = _ranked(cosine_similarity(query_feats, gallery_feats), depth)
    match = gallery_labels[ranked] == query_labels[:, None]  # [Q, depth]
    first_hit = np.where(match.any(axis=1), match.argmax(axis=1), depth)  # rank of the first hit
    return {int(k): float(np.mean(first_hit < min(k, depth))) for k in ks}


def knn_predict(
    query_feats: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_labels: np.ndarray,
    k: int = 20,
) -> np.ndarray:
    """Class of each query by a similarity-weighted vote of its ``k`` nearest gallery videos.

    A class scores the sum of the cosine similarities of its neighbours among the k; classes
    with no neighbour cannot win. Equal scores go to the lowest class id. ``k`` is capped at
    the gallery size.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gallery_labels = np.asarray(gallery_labels, np.int64)
    similarity = cosine_similarity(query_feats, gallery_feats)
    ranked = _ranked(similarity, min(k, len(gallery_labels)))
    neighbour_sims = np.take_along_axis(similarity, ranked, axis=1)
    neighbour_labels = gallery_labels[ranked]
    num_classes = int(gallery_labels.max()) + 1
    votes = np.zeros((len(ranked), num_classes))
    rows = np.repeat(np.arange(len(ranked)), ranked.shape[1])
    np.add.at(votes, (rows, neighbour_labels.ravel()), neighbour_sims.ravel())
    present = np.zeros_like(votes, dtype=bool)
    present[rows, neighbour_labels.ravel()] = True
    return np.where(present, votes, -np.inf).argmax(axis=1)  # argmax: first (lowest) id on ties


def knn_top1(
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_labels: np.ndarray,
    k: int = 20,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` on the queries."""
    _check(query_feats, query_labels, gallery_feats, gallery_labels)
    predicted = knn_predict(query_feats, gallery_feats, gallery_labels, k)
    return float(np.mean(predicted == np.asarray(query_labels)))
