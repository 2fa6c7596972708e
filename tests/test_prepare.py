"""Preparation from the real datasets' layouts (tiny look-alikes): labels, splits, quirks,
skipped and missing videos, resume, and the parallel probe path."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from videos import make_ucf_layout, write_frame_zip, write_video

from fedvssl_ray.data.manifest import load_manifest, read_annotation_json
from fedvssl_ray.data.prepare import common
from fedvssl_ray.data.prepare.common import MIN_FRAMES, MISSING, PrepareError
from fedvssl_ray.data.prepare.hmdb51 import prepare_hmdb51
from fedvssl_ray.data.prepare.kinetics400 import prepare_kinetics400
from fedvssl_ray.data.prepare.seed import prepare_seed
from fedvssl_ray.data.prepare.ucf101 import prepare_ucf101

CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]


def by_id(manifest_path):
    return {r.video_id: r for r in load_manifest(manifest_path).records}


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_ucf101_layouts_with_crlf_and_case_quirk(tmp_path, nested):
    raw, lists = make_ucf_layout(
        tmp_path,
        CLASSES,
        groups=3,
        nested=nested,
        crlf=True,
        file_case={"HandstandPushups": "HandStandPushups"},
    )
    reports = prepare_ucf101(raw, tmp_path, tmp_path / "out", workers=1, log=None)
    assert [(r.split, r.total, r.prepared) for r in reports] == [
        ("train_split1", 6, 6),
        ("test_split1", 3, 3),
    ]
    train = by_id(tmp_path / "out" / "manifests" / "train_split1.parquet")
    quirk = train["HandstandPushups/v_HandStandPushups_g02_c01"]
    assert (quirk.label, quirk.class_name, quirk.num_frames, quirk.codec) == (
        1,
        "HandstandPushups",
        8,
        "mpeg4",
    )
    assert {r.label for r in train.values()} == {0, 1, 2}
    test = by_id(tmp_path / "out" / "manifests" / "test_split1.parquet")
    assert all("_g01_" in vid for vid in test)
    manifest = load_manifest(tmp_path / "out" / "manifests" / "test_split1.parquet")
    assert manifest.class_names == CLASSES
    assert all(manifest.resolve(r).is_file() for r in manifest.records)
    annotations = read_annotation_json(tmp_path / "out" / "annotations" / "train_split_1.json")
    assert ("YoYo/v_YoYo_g03_c01", 2) in annotations


def test_ucf101_clear_errors_for_missing_inputs(tmp_path):
    raw, lists = make_ucf_layout(tmp_path, CLASSES[:1])
    with pytest.raises(PrepareError, match="classInd.txt"):
        prepare_ucf101(raw, tmp_path / "elsewhere", tmp_path / "out", log=None)
    with pytest.raises(PrepareError, match="video folder not found"):
        prepare_ucf101(tmp_path / "no_raw", lists, tmp_path / "out", log=None)
    (lists / "testlist01.txt").unlink()
    with pytest.raises(PrepareError, match="testlist01.txt"):
        prepare_ucf101(raw, lists, tmp_path / "out", log=None)


def test_corrupt_and_missing_videos_are_skipped_and_a_rerun_reuses_the_probes(tmp_path):
    raw, lists = make_ucf_layout(tmp_path, CLASSES, groups=3)
    (raw / "v_YoYo_g02_c01.avi").write_bytes(b"garbage" * 100)
    (raw / "v_ApplyEyeMakeup_g03_c01.avi").unlink()
    first = prepare_ucf101(raw, lists, tmp_path / "out", workers=1, log=None)[0]
    assert (first.total, first.prepared, first.probed, first.missing) == (6, 4, 5, 1)
    reasons = dict(first.skipped)
    assert reasons["ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01"] == MISSING
    assert "not a readable media container" in reasons["v_YoYo_g02_c01.avi"]
    assert "skipped v_YoYo_g02_c01.avi" in first.summary()
    again = prepare_ucf101(raw, lists, tmp_path / "out", workers=1, log=None)[0]
    assert (again.probed, again.cached, again.prepared) == (0, 5, 4)
    write_video(raw / "v_YoYo_g02_c01.avi", MIN_FRAMES + 1)  # repaired: size/mtime change -> probed again
    third = prepare_ucf101(raw, lists, tmp_path / "out", workers=1, log=None)[0]
    assert (third.probed, third.prepared) == (1, 5)


def test_progress_lines_and_parallel_probing(tmp_path, monkeypatch, capsys):
    raw, lists = make_ucf_layout(tmp_path, CLASSES, groups=3)
    monkeypatch.setattr(common, "_MIN_FILES_FOR_PROCESSES", 1)
    monkeypatch.setattr(common, "_CHUNK", 2)
    reports = prepare_ucf101(raw, lists, tmp_path / "out", workers=2, log=sys.stderr)
    assert [r.prepared for r in reports] == [6, 3]
    err = capsys.readouterr().err
    assert "[train_split1] 6/6 videos" in err and "ETA" in err and "prepared 6/6" in err


def test_hmdb51_spaces_in_names_tags_and_sorted_class_ids(tmp_path):
    raw, splits = tmp_path / "hmdb51_org", tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    names = {
        "shoot_bow": ["Robin Hood (1991) shoot_bow_f_cm_np1_ba_med_0.avi", "bow #2.avi", "x.avi"],
        "brush_hair": ["April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "b c.avi", "y.avi"],
    }
    for cls, files in names.items():
        for i, f in enumerate(files):
            write_video(raw / cls / f, MIN_FRAMES, seed=i)
        lines = [f"{files[0]} 1 ", f"{files[1]} 2 ", f"{files[2]} 0 "]
        (splits / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
    reports = prepare_hmdb51(raw, tmp_path, tmp_path / "out", workers=1, log=None)
    assert [(r.split, r.prepared) for r in reports] == [("train_split1", 2), ("test_split1", 2)]
    train = by_id(tmp_path / "out" / "manifests" / "train_split1.parquet")
    robin = train["shoot_bow/Robin Hood (1991) shoot_bow_f_cm_np1_ba_med_0"]
    assert (robin.label, robin.class_name) == (1, "shoot_bow")  # brush_hair < shoot_bow
    assert train["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0"].label == 0
    test = by_id(tmp_path / "out" / "manifests" / "test_split1.parquet")
    assert set(test) == {"shoot_bow/bow #2", "brush_hair/b c"}


def test_kinetics_csv_with_quoted_labels_and_missing_clips(tmp_path):
    raw = tmp_path / "k400"
    rows = [
        ('"passing American football (in game)"', "abcDEF12345", 5, 15, "train"),
        ('"dancing, ballet"', "zyx_-987654", 0, 10, "train"),
        ('"dancing, ballet"', "missing0001", 30, 40, "train"),
        ("abseiling", "AAAAAAAAAAA", 12, 22, "val"),
    ]
    for label, ytid, start, end, split in rows[:2] + rows[3:]:
        write_video(raw / split / label.strip('"') / f"{ytid}_{start:06d}_{end:06d}.mp4", MIN_FRAMES)
    csv_path = tmp_path / "kinetics400.csv"
    csv_path.write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        + "".join(f"{lab},{y},{s},{e},{sp},0\n" for lab, y, s, e, sp in rows)
    )
    reports = prepare_kinetics400(raw, tmp_path / "out", csv_paths=[csv_path], workers=1, log=None)
    summary = {r.split: (r.total, r.prepared, r.missing) for r in reports}
    assert summary == {"train": (3, 2, 1), "val": (1, 1, 0)}
    manifest = load_manifest(tmp_path / "out" / "manifests" / "train.parquet")
    assert manifest.class_names == [
        "abseiling",
        "dancing, ballet",
        "passing American football (in game)",
    ]
    football = by_id(manifest.path)["passing American football (in game)/abcDEF12345_000005_000015"]
    assert football.label == 2 and football.path.endswith(".mp4")
    assert json.loads((tmp_path / "out" / "annotations" / "val.json").read_text())[0]["label"] == 1


def test_kinetics_plain_list_files(tmp_path):
    raw = tmp_path / "clips"
    write_video(raw / "abseiling" / "a1.mp4", MIN_FRAMES)
    write_video(raw / "zumba" / "z1.mp4", MIN_FRAMES)
    ids = tmp_path / "train_in_official.txt"
    ids.write_text("abseiling/a1 1\nzumba/z1 400\n")
    (report,) = prepare_kinetics400(raw, tmp_path / "o1", list_path=ids, workers=1, log=None)
    manifest = load_manifest(tmp_path / "o1" / "manifests" / "train.parquet")
    assert report.prepared == 2 and manifest.num_classes == 400
    assert [(r.video_id, r.label) for r in manifest.records] == [
        ("abseiling/a1", 0),
        ("zumba/z1", 399),
    ]
    named = tmp_path / "list.csv"
    named.write_text("abseiling/a1.mp4,abseiling\nzumba/z1.mp4,zumba\n")
    prepare_kinetics400(raw, tmp_path / "o2", list_path=named, workers=1, log=None)
    assert load_manifest(tmp_path / "o2" / "manifests" / "train.parquet").class_names == [
        "abseiling",
        "zumba",
    ]


def test_seed_prepared_frame_archives_import_as_they_are(tmp_path):
    root = tmp_path / "seed"
    frames = np.zeros((MIN_FRAMES, 48, 64, 3), np.uint8)
    items = {
        "train": [("YoYo/v_YoYo_g08_c01", 3)],
        "test": [("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", 1)],
    }
    for kind, entries in items.items():
        for name, _ in entries:
            write_frame_zip(root / "zips" / f"{name}.zip", frames)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{kind}_split_1.json").write_text(
            json.dumps([{"name": n, "label": lab} for n, lab in entries], indent=2)
        )
    reports = prepare_seed(root, tmp_path / "out", workers=1, log=None)
    assert [r.prepared for r in reports] == [1, 1]
    (record,) = load_manifest(tmp_path / "out" / "manifests" / "train_split1.parquet").records
    assert (record.label, record.class_name, record.num_frames, record.codec) == (
        2,
        "YoYo",
        MIN_FRAMES,
        "jpeg-zip",
    )
