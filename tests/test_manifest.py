"""Parquet manifests (round trip, stored root, validation) and the original annotation formats."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedvssl_ray.data.manifest import (
    ManifestError,
    VideoRecord,
    load_manifest,
    read_annotation_json,
    read_annotation_txt,
    read_manifest,
    read_manifest_table,
    resolve_video_path,
    write_annotation_json,
    write_manifest,
)


def records(n: int = 3) -> list[VideoRecord]:
    return [
        VideoRecord(
            f"Class{i % 2}/v_Class{i % 2}_g0{i}_c01",
            f"v_Class{i % 2}_g0{i}_c01.avi",
            i % 2,
            f"Class{i % 2}",
            100 + i,
            25.0,
            320,
            240,
            "mpeg4",
            1000 * (i + 1),
        )
        for i in range(n)
    ]


def test_round_trip_keeps_rows_order_and_metadata(tmp_path):
    path = write_manifest(
        tmp_path / "ds" / "manifests" / "train_split1.parquet",
        records(),
        root=tmp_path / "ds" / "raw",
        dataset="ucf101",
        split="train_split1",
        class_names=["Class0", "Class1", "Unused"],
    )
    assert read_manifest(path) == records()
    manifest = load_manifest(path)
    assert (manifest.dataset, manifest.split, manifest.num_classes) == ("ucf101", "train_split1", 3)
    assert manifest.resolve(records()[1]) == (tmp_path / "ds" / "raw" / records()[1].path).resolve()
    assert read_manifest_table(path).num_rows == 3


def test_root_inside_the_dataset_is_stored_relative_so_the_folder_can_move(tmp_path):
    write_manifest(
        tmp_path / "a" / "manifests" / "m.parquet",
        records(),
        root=tmp_path / "a" / "raw",
        dataset="x",
        split="s",
        class_names=["Class0", "Class1"],
    )
    (tmp_path / "a").rename(tmp_path / "b")
    moved = tmp_path / "b" / "manifests" / "m.parquet"
    assert pq.read_schema(moved).metadata[b"fedvssl_ray.root"] == b"../raw"
    assert resolve_video_path(moved, records()[0]) == (tmp_path / "b" / "raw" / records()[0].path)


def test_root_outside_the_dataset_is_stored_absolute(tmp_path):
    path = write_manifest(
        tmp_path / "out" / "manifests" / "m.parquet",
        records(),
        root=tmp_path / "videos",
        dataset="x",
        split="s",
        class_names=["Class0", "Class1"],
    )
    assert load_manifest(path).root == (tmp_path / "videos").resolve()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.drop_columns(["num_frames"]), "missing column 'num_frames'"),
        (
            lambda t: t.set_column(2, "label", pa.array([0, None, 1], pa.int32())),
            "'label' has 1 nulls",
        ),
        (
            lambda t: t.set_column(2, "label", pa.array([0, -1, 1], pa.int32())),
            "'label' has negative",
        ),
        (lambda t: t.set_column(5, "fps", pa.array(["a", "b", "c"])), "'fps' is string"),
        (
            lambda t: t.set_column(0, "video_id", pa.array(["a", "a", "b"])),
            "'video_id' repeats 'a'",
        ),
    ],
)
def test_validation_names_the_file_and_the_column(tmp_path, mutate, message):
    path = write_manifest(
        tmp_path / "m.parquet",
        records(),
        root=tmp_path,
        dataset="x",
        split="s",
        class_names=["Class0", "Class1"],
    )
    pq.write_table(mutate(pq.read_table(path)), path)
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_missing_manifest_says_how_to_prepare(tmp_path):
    with pytest.raises(ManifestError, match="prepare.py"):
        read_manifest(tmp_path / "nope.parquet")


def test_annotation_json_is_one_based_with_indent_2(tmp_path):
    path = write_annotation_json(tmp_path / "train_split_1.json", records(2))
    text = path.read_text()
    assert text.startswith('[\n  {\n    "name": "Class0/v_Class0_g00_c01",\n    "label": 1\n  }')
    assert json.loads(text)[1] == {"name": "Class1/v_Class1_g01_c01", "label": 2}
    assert read_annotation_json(path) == [
        ("Class0/v_Class0_g00_c01", 0),
        ("Class1/v_Class1_g01_c01", 1),
    ]
    (tmp_path / "bad.json").write_text('[{"name": "a", "label": 0}]')
    with pytest.raises(ManifestError, match="1-based"):
        read_annotation_json(tmp_path / "bad.json")


def test_annotation_txt_keeps_names_with_spaces_and_skips_blank_lines(tmp_path):
    path = tmp_path / "train_split_1.txt"
    path.write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01 1\r\n\r\nbrush_hair/My clip (1) 3\n")
    assert read_annotation_txt(path) == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", 0),
        ("brush_hair/My clip (1)", 2),
    ]
    path.write_text("no_label_here\n")
    with pytest.raises(ManifestError, match=r"train_split_1.txt:1"):
        read_annotation_txt(path)
