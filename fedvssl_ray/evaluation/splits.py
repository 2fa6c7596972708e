"""The evaluation sets of a dataset: test-split queries against the train-split gallery.

``max_videos`` draws a seeded subset of the queries (``numpy.random.default_rng(seed)``, kept in
manifest order); the gallery is always the whole train split, so R@k and k-NN stay comparable
between a subset and a full evaluation (a smaller gallery would change what R@k measures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Config
from ..data.frame_zip import FRAME_ZIP_CODEC
from ..data.manifest import ManifestError, load_manifest
from ..data.shards import DatasetMissingError, ensure_dataset
from .spec import EvalVideo


def query_manifest_path(cfg: Config) -> Path:
    """The query split's manifest (Kinetics-400: its validation split)."""
    name = "val" if cfg.data.dataset == "kinetics400" else f"test_split{cfg.data.split}"
    return Path(cfg.data.root) / "manifests" / f"{name}.parquet"


def load_eval_videos(path: Path) -> list[EvalVideo]:
    """Every video of a manifest, in file order, with its resolved path."""
    manifest = load_manifest(path)
    return [
        EvalVideo(
            r.video_id, str(manifest.resolve(r)), r.num_frames, r.codec == FRAME_ZIP_CODEC, r.label
        )
        for r in manifest.records
    ]


def query_subset(num_queries: int, max_videos: int, seed: int) -> np.ndarray:
    """Indices of the queries to evaluate: all, or ``max_videos`` of them drawn with ``seed``."""
    if max_videos <= 0 or max_videos >= num_queries:
        return np.arange(num_queries)
    chosen = np.random.default_rng(seed).choice(num_queries, size=max_videos, replace=False)
    return np.sort(chosen)


def eval_videos(cfg: Config, max_videos: int = 0) -> tuple[list[EvalVideo], list[EvalVideo], int]:
    """(queries, gallery, test videos in the manifest); the synthetic dataset is made if missing."""
    train_path = ensure_dataset(cfg)
    test_path = query_manifest_path(cfg)
    if not test_path.is_file():
        raise DatasetMissingError(
            f"no test manifest at {test_path}: prepare the dataset with its test split "
            f"(python experiments/prepare.py {cfg.data.dataset} --out {cfg.data.root} ...)"
        )
    tests, trains = load_eval_videos(test_path), load_eval_videos(train_path)
    for path, videos in ((test_path, tests), (train_path, trains)):
        if not videos:
            raise ManifestError(f"{path}: no videos to evaluate")
    queries = [tests[i] for i in query_subset(len(tests), max_videos, cfg.seed)]
    return queries, trains, len(tests)
