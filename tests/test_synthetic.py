"""The built-in motion dataset: layout, determinism, idempotence, motion-only classes, and the
``experiments/prepare.py`` command line end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedvssl_ray.data.decode import probe_video, read_frames
from fedvssl_ray.data.manifest import load_manifest
from fedvssl_ray.data.partition import read_partitions
from fedvssl_ray.data.prepare.common import PrepareError
from fedvssl_ray.data.synthetic import (
    SyntheticSpec,
    class_names,
    ensure_synthetic_dataset,
    render_video,
)

REPO = Path(__file__).resolve().parents[1]
TINY = dict(num_classes=4, videos_per_class=4, frames=16, width=64, height=48, seed=3, log=None)


def test_dataset_layout_and_manifests(tmp_path):
    root = ensure_synthetic_dataset(tmp_path / "s", **TINY)
    names = class_names(4)
    assert names == ["Translate000", "RotateCcw", "ZoomIn", "OrbitCcw"]
    assert sorted(p.name for p in (root / "raw").iterdir())[0] == "v_OrbitCcw_g01_c01.avi"
    lists = root / "ucfTrainTestlist"
    assert (lists / "classInd.txt").read_text().splitlines()[0] == "1 Translate000"
    assert (lists / "testlist01.txt").read_text().splitlines()[0] == (
        "Translate000/v_Translate000_g01_c01.avi"
    )
    train = load_manifest(root / "manifests" / "train_split1.parquet")
    test = load_manifest(root / "manifests" / "test_split1.parquet")
    assert (len(train.records), len(test.records), train.class_names) == (8, 8, names)
    record = train.records[0]
    assert (record.num_frames, record.width, record.height, record.codec) == (16, 64, 48, "mpeg4")
    assert probe_video(train.resolve(record)).fps == 25.0


def test_same_seed_same_files_and_idempotent(tmp_path):
    a = ensure_synthetic_dataset(tmp_path / "a", **TINY)
    b = ensure_synthetic_dataset(tmp_path / "b", **TINY)
    for path in sorted((a / "raw").iterdir()):
        assert path.read_bytes() == (b / "raw" / path.name).read_bytes()
    stamp = json.loads((a / "synthetic.json").read_text())
    assert stamp["seed"] == 3 and stamp["frames"] == 16
    before = {p.name: p.stat().st_mtime_ns for p in (a / "raw").iterdir()}
    ensure_synthetic_dataset(tmp_path / "a", **TINY)  # returns at once: nothing rewritten
    assert before == {p.name: p.stat().st_mtime_ns for p in (a / "raw").iterdir()}
    ensure_synthetic_dataset(tmp_path / "a", **{**TINY, "seed": 4})
    assert json.loads((a / "synthetic.json").read_text())["seed"] == 4
    changed = [
        p.name for p in (a / "raw").iterdir() if p.read_bytes() != (b / "raw" / p.name).read_bytes()
    ]
    assert len(changed) == 16


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(PrepareError, match="thesis.tex"):
        ensure_synthetic_dataset(tmp_path / "mine", **TINY)


def test_invalid_sizes_are_rejected():
    with pytest.raises(ValueError, match="videos_per_class"):
        SyntheticSpec(videos_per_class=2).validate()
    with pytest.raises(ValueError, match="test_groups"):
        SyntheticSpec(test_groups=0).validate()


def test_default_split_has_many_queries_and_at_least_one_train_group():
    spec = SyntheticSpec()
    assert (spec.groups, spec.num_test_groups) == (7, 4)  # 8 test and 6 train videos per class
    assert SyntheticSpec(videos_per_class=4).num_test_groups == 1
    assert SyntheticSpec(videos_per_class=5, test_groups=9).num_test_groups == 2
    with pytest.raises(ValueError, match="even"):
        SyntheticSpec(width=63).validate()


def test_a_single_frame_does_not_reveal_the_class_but_motion_does():
    spec = SyntheticSpec(num_classes=8, frames=24, width=64, height=48)
    videos = {c: [render_video(spec, c, v).astype(np.float32) for v in range(6)] for c in range(8)}
    # Per-class mean first-frame colour statistics are alike: what differs is the motion.
    stats = np.array([[v[0].mean() for v in vs] for vs in videos.values()])
    assert np.ptp(stats.mean(axis=1)) < 3 * stats.std()

    # Translation classes 0 (rightwards) and 4 (leftwards): their mean horizontal shift of
    # frame differences points the right way (diluted by the background's random pan, whose
    # many cell edges also move), while rotation and zoom (classes 1, 2) show no such drift.
    def horizontal_flow(video: np.ndarray) -> float:
        grey = video.mean(axis=-1)
        dt, dx = grey[1:] - grey[:-1], np.gradient(grey, axis=2)[:-1]
        return float(-(dt * dx).sum() / (dx * dx).sum())

    right = np.mean([horizontal_flow(v) for v in videos[0]])
    left = np.mean([horizontal_flow(v) for v in videos[4]])
    assert right > 0.07 and left < -0.07
    for still in (1, 2):
        assert abs(np.mean([horizontal_flow(v) for v in videos[still]])) < 0.05


def test_decoded_frames_match_the_rendered_ones(tmp_path):
    root = ensure_synthetic_dataset(tmp_path / "s", **TINY)
    record = load_manifest(root / "manifests" / "train_split1.parquet").records[0]
    decoded = read_frames(root / "raw" / record.path, [0, 15]).astype(int)
    rendered = render_video(SyntheticSpec(**{k: v for k, v in TINY.items() if k != "log"}), 0, 2)
    # lossy MPEG-4 at the codec's default bit rate (the mosaic's many cell edges cost ~17 levels)
    assert np.abs(decoded - rendered[[0, 15]].astype(int)).mean() < 20


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    """Run ``experiments/prepare.py`` with ``args`` as a user would."""
    script = str(REPO / "experiments" / "prepare.py")
    return subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=120
    )


def test_command_line_synthetic_then_partition(tmp_path):
    out = tmp_path / "s"
    sizes = ["--num-classes", "4", "--videos-per-class", "4", "--frames", "16",
             "--width", "64", "--height", "48"]
    done = run_prepare("synthetic", "--out", str(out), *sizes)
    assert done.returncode == 0, done.stderr
    assert "prepared 8/8" in done.stderr
    manifest = out / "manifests" / "train_split1.parquet"
    done = run_prepare("partition", "--manifest", str(manifest), "--num-clients", "3",
                       "--scheme", "iid")
    assert done.returncode == 0, done.stderr
    assert "client   1:" in done.stdout and "total 8 entries, 8 unique videos" in done.stdout
    parts = read_partitions(out / "partitions" / "iid-3", load_manifest(manifest).records)
    assert [len(p) for p in parts] == [2, 3, 3]
    done = run_prepare("partition", "--manifest", str(manifest), "--num-clients", "3",
                       "--scheme", "k400-noniid")
    assert done.returncode == 2 and "error: k400-noniid" in done.stderr


def test_a_run_remakes_a_dataset_of_an_older_generator_with_its_sizes(tmp_path):
    from fedvssl_ray.config import load_config
    from fedvssl_ray.data.shards import ensure_dataset

    root = tmp_path / "old"
    ensure_synthetic_dataset(root, num_classes=2, videos_per_class=4, frames=12, width=48,
                             height=32, test_groups=1, log=None)
    stamp = json.loads((root / "synthetic.json").read_text())
    (root / "synthetic.json").write_text(json.dumps({**stamp, "version": 1}))
    (root / "eval-cache").mkdir()  # stale evaluations go with the old videos
    ensure_dataset(load_config("synthetic", [f"data.root={root}"]))
    assert json.loads((root / "synthetic.json").read_text()) == stamp
    assert not (root / "eval-cache").exists()
    assert len(load_manifest(root / "manifests" / "train_split1.parquet").records) == 4


def test_show_clips_draws_a_clients_clips_with_their_patch_boxes(tmp_path, monkeypatch, capsys):
    """``experiments/show_clips.py`` as a user runs it (in-process, its folder on the path)."""
    import importlib.util

    from PIL import Image

    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    spec = importlib.util.spec_from_file_location("show_clips", REPO / "experiments" / "show_clips.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    root = ensure_synthetic_dataset(tmp_path / "s", **TINY)
    common = [f"data.root={root}", "num_clients=2", "clients_per_round=2"]
    out = tmp_path / "pics" / "clips.png"
    assert cli.main([*common, f"out={out}", "clips=2", "step=4", "zoom=2"]) == 0
    with Image.open(out) as image:  # 2 rows of 64x64 clips of 8 frames: 0 and 4, zoomed x2
        assert image.size == (2 * 128, 2 * 128)
    with pytest.raises(SystemExit) as stop:
        cli.main([*common, "client=5"])
    assert stop.value.code == 2 and "num_clients=2" in capsys.readouterr().err
