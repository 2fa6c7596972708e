"""Representation evaluation without Ray: multi-clip video features, retrieval R@k, k-NN.

``evaluate_backbone(weights, cfg)`` is the entry point; the metric functions are pure numpy.
Importing this package does not load torch (only feature extraction and weight loading do).
"""

from .evaluate import TASKS, Extractor, evaluate_backbone, local_extractor, parse_tasks
from .metrics import RECALL_KS, cosine_similarity, knn_predict, knn_top1, retrieval_recall
from .report import format_result
from .spec import EvalVideo, Extracted, FeatureSpec

__all__ = [
    "RECALL_KS",
    "TASKS",
    "EvalVideo",
    "Extracted",
    "Extractor",
    "FeatureSpec",
    "cosine_similarity",
    "evaluate_backbone",
    "format_result",
    "knn_predict",
    "knn_top1",
    "local_extractor",
    "parse_tasks",
    "retrieval_recall",
]
