"""Representation evaluation: metrics on hand-made features, the test-clip features, checkpoint
loading, the in-process and Ray Data extractors, and ``experiments/evaluate.py``."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from videos import full_decode, write_video

from fedvssl_ray.checkpoint import save_arrays
from fedvssl_ray.config import ConfigError, load_config
from fedvssl_ray.data.clips import eval_indices
from fedvssl_ray.data.synthetic import ensure_synthetic_dataset
from fedvssl_ray.data.transforms import EvalPreset
from fedvssl_ray.evaluation import (
    FeatureSpec,
    evaluate_backbone,
    knn_predict,
    knn_top1,
    parse_tasks,
    retrieval_recall,
)
from fedvssl_ray.evaluation.features import (
    FeatureModel,
    decode_videos,
    extract_features,
    video_clips,
)
from fedvssl_ray.evaluation.spec import EvalVideo
from fedvssl_ray.evaluation.splits import eval_videos
from fedvssl_ray.evaluation.weights import (
    BackboneCheckpointError,
    initial_backbone_weights,
    load_backbone_checkpoint,
)
from fedvssl_ray.training.client import ClientWorker

REPO = Path(__file__).resolve().parents[1]
CORRUPT = "ZoomIn/v_ZoomIn_g02_c01"  # a train video overwritten with garbage


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """3 classes x 4 videos (6 test, 6 train) of 24 frames at 64x48; one train video corrupt."""
    root = tmp_path_factory.mktemp("tiny-eval")
    ensure_synthetic_dataset(
        root, num_classes=3, videos_per_class=4, frames=24, width=64, height=48, seed=1, log=None
    )
    (root / "raw" / f"{CORRUPT.split('/')[1]}.avi").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    return root


def tiny_config(root, *extra: str):
    return load_config(
        "synthetic",
        [
            f"data.root={root}", "data.crop_size=32", "data.clip_len=8", "eval.num_clips=3",
            "eval.batch_size=6", "eval.knn_k=3", *extra,
        ],
    )


# -- metrics ---------------------------------------------------------------------------------


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_retrieval_recall_by_hand():
    gallery = np.array([unit(0), unit(40), unit(60)])
    gallery_labels = np.array([1, 0, 2])
    # query 0 ranks the gallery 0, 1, 2: first hit (class 0) at rank 2
    # query 1 ranks it 2, 1, 0: first hit (class 1) at rank 3; scale does not matter
    queries = np.array([[2.0, 0.0], [0.0, 5.0]])
    recall = retrieval_recall(queries, np.array([0, 1]), gallery, gallery_labels, (1, 2, 3, 50))
    assert recall == {1: 0.0, 2: 0.5, 3: 1.0, 50: 1.0}  # k=50 is capped at the 3 gallery videos


def test_retrieval_ties_keep_gallery_order():
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    recall = retrieval_recall(
        np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([5, 7]), gallery, np.array([5, 7, 7]), (1, 2)
    )
    assert recall == {1: 0.5, 2: 1.0}  # the second query's class is second among equals
    with pytest.raises(ValueError, match="at least one"):
        retrieval_recall(np.zeros((0, 2)), np.zeros(0), gallery, np.array([5, 7, 7]))


def test_knn_weighted_votes_ties_and_negative_similarities():
    gallery = np.array([unit(10), unit(20), unit(30), unit(90)])
    labels = np.array([1, 0, 0, 2])
    query = np.array(unit(0))[None]
    # neighbours 1 (cos 10), 0 (cos 20), 0 (cos 30): class 0 sums 1.81 > 0.98 of class 1
    assert knn_predict(query, gallery, labels, k=3).tolist() == [0]
    assert knn_predict(query, gallery, labels, k=1).tolist() == [1]
    tied = knn_predict(query, np.array([unit(10), unit(-10)]), np.array([3, 2]), k=2)
    assert tied.tolist() == [2]  # equal scores: lowest class id
    # every neighbour is dissimilar (negative votes): a class with no neighbour (0) must not win
    far = np.array([unit(170), unit(175), unit(180)])
    assert knn_predict(query, far, np.array([1, 2, 0]), k=2).tolist() == [1]
    assert knn_top1(np.vstack([query, query]), np.array([0, 1]), gallery, labels, k=3) == 0.5


def test_parse_tasks():
    assert parse_tasks("all") == ("retrieval", "knn")
    assert parse_tasks("knn, retrieval") == ("retrieval", "knn")
    assert parse_tasks("knn") == ("knn",)
    with pytest.raises(ValueError, match="unknown task 'recall'"):
        parse_tasks("recall")


# -- features --------------------------------------------------------------------------------


def test_uniform_clips_with_centre_crop(tmp_path):
    path = write_video(tmp_path / "v.avi", 30)
    spec = FeatureSpec("r3d10_narrow", num_clips=3, clip_len=4, crop_size=32)
    clips = video_clips(EvalVideo("v", str(path), 30, False, 0), spec, EvalPreset(crop_size=32))
    assert clips.shape == (3, 3, 4, 32, 32) and clips.dtype == np.float32
    idx = eval_indices(30, num_clips=3, clip_len=4, stride=2)
    assert idx[:, 0].tolist() == [3, 11, 19]  # d = 30 - 8 + 1 = 23: floor(23 (2x+1) / 6)
    frames = np.stack(full_decode(path))
    for clip, rows in zip(clips, idx, strict=True):
        np.testing.assert_array_equal(clip, EvalPreset(crop_size=32)(frames[rows]))


def test_a_video_that_fails_to_decode_is_skipped_and_named(tmp_path, caplog):
    good = write_video(tmp_path / "good.avi", 20)
    (tmp_path / "bad.avi").write_bytes(b"not a video")
    videos = [
        EvalVideo("bad", str(tmp_path / "bad.avi"), 20, False, 0),
        EvalVideo("good", str(good), 20, False, 1),
    ]
    spec = FeatureSpec("r3d10_narrow", num_clips=2, clip_len=8, crop_size=32)
    with caplog.at_level(logging.WARNING):
        clips, errors = decode_videos(videos, spec)
    assert errors[0] and "bad" in errors[0] and errors[1] == ""
    assert "skip bad" in caplog.text
    assert not clips[0].any() and clips[1].any()


def test_video_feature_is_the_mean_of_pooled_clip_features(tmp_path):
    cfg = load_config("synthetic", ["data.clip_len=8", "data.crop_size=32"])
    spec = FeatureSpec("r3d10_narrow", num_clips=2, clip_len=8, crop_size=32, batch_size=1)
    model = FeatureModel(initial_backbone_weights(cfg), spec)
    clips = np.random.default_rng(0).standard_normal((1, 2, 3, 8, 32, 32)).astype(np.float32)
    feats = model(clips)
    assert feats.shape == (1, 128)
    per_clip = [model(clips[:, i : i + 1]) for i in range(2)]
    np.testing.assert_allclose(feats, (per_clip[0] + per_clip[1]) / 2, rtol=1e-5, atol=1e-6)


def test_feature_model_ignores_a_head_and_refuses_a_partial_backbone():
    cfg = load_config("synthetic", ["data.clip_len=8", "data.crop_size=32"])
    spec = FeatureSpec("r3d10_narrow", num_clips=1, clip_len=8, crop_size=32)
    weights = initial_backbone_weights(cfg)
    FeatureModel({**weights, "head.fc1.bias": np.zeros(4, np.float32)}, spec)
    del weights["backbone.stem.0.weight"]
    with pytest.raises(ValueError, match=r"lack 1 .* \(e.g. backbone.stem.0.weight\)"):
        FeatureModel(weights, spec)


# -- weights ---------------------------------------------------------------------------------


def test_none_is_the_round0_global_of_a_run_with_the_same_seed():
    cfg = load_config("synthetic", ["seed=11", "data.clip_len=8"])
    init = initial_backbone_weights(cfg)
    round0 = ClientWorker(cfg, lambda client: None).initial_global()
    assert init.keys() == round0.keys() and all(k.startswith("backbone.") for k in init)
    for key in init:
        np.testing.assert_array_equal(init[key], round0[key], err_msg=key)


def test_checkpoints_load_by_name_and_bad_ones_say_why(tmp_path):
    cfg = load_config("synthetic", ["data.clip_len=8"])
    weights = initial_backbone_weights(cfg)
    good = tmp_path / "round-0003.npz"
    save_arrays(good, {**weights, "head.fc1.weight": np.zeros((2, 2), np.float32)}, {"round": 3})
    loaded, meta = load_backbone_checkpoint(good, "r3d10_narrow")
    assert loaded.keys() == weights.keys() and meta == {"round": 3}  # the head is ignored

    with pytest.raises(BackboneCheckpointError, match="missing.npz: no such checkpoint"):
        load_backbone_checkpoint(tmp_path / "missing.npz", "r3d10_narrow")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(BackboneCheckpointError, match="junk.npz"):
        load_backbone_checkpoint(tmp_path / "junk.npz", "r3d10_narrow")
    headless = tmp_path / "head-only.npz"
    save_arrays(headless, {"head.fc1.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(BackboneCheckpointError, match=r"head-only.npz: expected the \d+ backbone"):
        load_backbone_checkpoint(headless, "r3d10_narrow")
    shrunk = tmp_path / "shrunk.npz"
    save_arrays(shrunk, {**weights, "backbone.stem.0.weight": np.zeros((1, 3, 3, 7, 7), np.float32)})
    with pytest.raises(BackboneCheckpointError, match="mis-shaped .*backbone.stem.0.weight"):
        load_backbone_checkpoint(shrunk, "r3d10_narrow")
    with pytest.raises(BackboneCheckpointError, match="it matches model.backbone=r3d10_narrow"):
        load_backbone_checkpoint(good, "r3d_18")


# -- evaluation end to end -------------------------------------------------------------------


def test_evaluate_backbone_in_process(tiny_root):
    cfg = tiny_config(tiny_root)
    events = []
    result = evaluate_backbone(None, cfg, max_videos=0, progress=events.append)
    assert (result["queries"], result["gallery"], result["test_videos"]) == (6, 5, 6)
    assert [s["video_id"] for s in result["skipped"]] == [CORRUPT]
    assert result["skipped"][0]["split"] == "train"
    assert set(result["retrieval"]) == {"R@1", "R@5", "R@10", "R@20", "R@50"}
    assert result["retrieval_k_cap"] == 5 and result["retrieval"]["R@50"] == 1.0
    assert result["knn"]["k"] == 3 and 0.0 <= result["knn"]["top1"] <= 1.0
    f = result["features"]
    assert (f["layer"], f["backbone_mode"], f["clips_per_video"]) == ("layer4", "pretrain", 3)
    assert events[0]["type"] == "eval_start" and events[-1]["done"] == events[-1]["total"] == 12
    json.dumps(result)  # plain data

    subset = evaluate_backbone(None, cfg, ("knn",), max_videos=4)
    assert subset["queries"] == 4 and "retrieval" not in subset
    queries, _, _ = eval_videos(cfg, max_videos=4)
    assert queries == eval_videos(cfg, max_videos=4)[0]  # the same seeded subset every time


@pytest.mark.ray
@pytest.mark.slow
def test_ray_data_features_equal_in_process_features(ray_cluster, tiny_root):
    from fedvssl_ray.actors.evaluation import RayExtractor

    cfg = tiny_config(tiny_root)
    queries, gallery, _ = eval_videos(cfg)
    videos = [*queries, *gallery]
    weights = initial_backbone_weights(cfg)
    spec = FeatureSpec.from_config(cfg)
    local = extract_features(videos, weights, spec)
    done = []
    remote = RayExtractor(cfg)(videos, weights, spec, lambda d, t: done.append((d, t)))
    assert remote.errors.keys() == local.errors.keys() and len(local.errors) == 1
    assert done[-1] == (12, 12)
    np.testing.assert_allclose(remote.feats, local.feats, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="eval.num_gpus=1.0 but the Ray cluster has no GPU"):
        RayExtractor(tiny_config(tiny_root, "eval.num_gpus=1"))


def load_cli(monkeypatch):
    """``experiments/evaluate.py`` as a module (its directory on the path, as when run)."""
    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "experiments" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_line_local_run_and_user_errors(tiny_root, tmp_path, capsys, monkeypatch):
    cli = load_cli(monkeypatch)
    common = [f"data.root={tiny_root}", "data.crop_size=32", "data.clip_len=8", "eval.num_clips=2"]
    out = tmp_path / "none.json"
    assert cli.main(["checkpoint=none", "task=retrieval", f"out={out}", *common, "--local"]) == 0
    printed = capsys.readouterr().out
    assert "retrieval R@1" in printed and "retrieval R@50" in printed and "k-NN" not in printed
    assert "skipped videos        1" in printed
    saved = json.loads(out.read_text())
    assert saved["checkpoint"] == "none" and saved["engine"] == "local"
    assert saved["features"]["clips_per_video"] == 2 and saved["queries"] == 6

    def exit_code(*argv: str) -> int:
        with pytest.raises(SystemExit) as stop:
            cli.main([*common, *argv, "--local"])
        return stop.value.code

    assert exit_code(f"checkpoint={tmp_path / 'nope.npz'}") == 2
    assert "nope.npz: no such checkpoint" in capsys.readouterr().err
    assert exit_code("checkpoint=none", "task=recall") == 2
    assert "unknown task 'recall'" in capsys.readouterr().err
    assert exit_code("task=knn") == 2
    assert "checkpoint=PATH|none is required" in capsys.readouterr().err
    assert exit_code("checkpoint=none", f"data.root={tmp_path / 'empty'}", "data.dataset=ucf101") == 2
    assert "no manifest" in capsys.readouterr().err
