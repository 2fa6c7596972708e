"""Every bad input file gets a defined outcome: skipped and counted with its reason, or a clear
error naming the file; good entries survive a rerun; manifest paths stay inside the video root;
empty and unknown partitions are refused; training skips what it cannot decode."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from videos import (
    image_bytes,
    make_ucf_layout,
    pattern_frames,
    remux,
    write_audio_only,
    write_video,
)

from fedvssl_ray.data.decode import read_frames
from fedvssl_ray.data.manifest import ManifestError, VideoRecord, load_manifest, write_manifest
from fedvssl_ray.data.partition import PartitionError, partition_videos, read_partitions
from fedvssl_ray.data.prepare.common import CACHE_NAME, MIN_FRAMES, PrepareError
from fedvssl_ray.data.prepare.hmdb51 import _split_tag
from fedvssl_ray.data.prepare.kinetics400 import prepare_kinetics400
from fedvssl_ray.data.prepare.ucf101 import list_path_part, prepare_ucf101
from fedvssl_ray.data.synthetic import encode_video

GOOD = {  # file name -> (frames, width, height, codec); all listed in the train split
    "v_Good_g01_c01.avi": (16, 64, 48, "mpeg4"),
    "v_Good_g02_c01 with spaces.avi": (MIN_FRAMES, 64, 48, "mpeg4"),
    "v_Good_Überschlag_日本.avi": (MIN_FRAMES, 64, 48, "mpeg4"),
    "v_Good_mov.mov": (MIN_FRAMES, 64, 48, "mpeg4"),
    "v_Good_mpeg.mpeg": (MIN_FRAMES, 64, 48, "mpeg1video"),
    "v_Good_ogv.ogv": (MIN_FRAMES, 64, 48, "libvpx"),
    "v_Good_ogg.ogg": (MIN_FRAMES, 64, 48, "libvpx"),
    "v_Good_portrait.avi": (MIN_FRAMES, 120, 160, "mpeg4"),
}
TEST_VIDEO = "v_Good_test one.avi"  # in the test list, which has no labels
SKIPPED = {  # file name -> (kind counted in the report, words of the reason)
    "v_Bad_empty.avi": ("unreadable", "empty file"),
    "v_Bad_cut.avi": ("unreadable", "not a readable media container"),
    "v_Bad_text.avi": ("unreadable", "not a readable media container"),
    "v_Bad_audio.m4a": ("unreadable", "no video stream"),
    "v_Bad_image.mp4": ("too short", f"1 decodable frame(s), fewer than the minimum {MIN_FRAMES}"),
    "v_Bad_three.avi": ("too short", f"3 decodable frame(s), fewer than the minimum {MIN_FRAMES}"),
}
TRUNCATED, CORRUPT, BIG = "v_Good_truncated.mp4", "v_Good_corrupt.avi", "v_Good_big.avi"
LONG = 40


def _write_corpus(raw):
    """The good, damaged and bad files, each named in the split lists."""
    for name, (frames, width, height, codec) in GOOD.items():
        write_video(raw / name, frames, codec=codec, width=width, height=height)
    write_video(raw / TEST_VIDEO, MIN_FRAMES)
    encode_video(raw / BIG, np.full((MIN_FRAMES, 1080, 1920, 3), 90, np.uint8))
    plain = write_video(raw / "plain.mp4", LONG)
    faststart = remux(plain, raw / "faststart.mp4", {"movflags": "+faststart"}).read_bytes()
    (raw / TRUNCATED).write_bytes(faststart[: 2 * len(faststart) // 3])
    corrupt = bytearray(write_video(raw / CORRUPT, LONG).read_bytes())
    middle = len(corrupt) // 2
    corrupt[middle : middle + 400] = bytes(400)
    (raw / CORRUPT).write_bytes(bytes(corrupt))
    for extra in ("plain.mp4", "faststart.mp4"):
        (raw / extra).unlink()
    (raw / "v_Bad_empty.avi").write_bytes(b"")
    (raw / "v_Bad_cut.avi").write_bytes((raw / "v_Good_g01_c01.avi").read_bytes()[:300])
    (raw / "v_Bad_text.avi").write_text("this is not a video\n" * 20)
    write_audio_only(raw / "v_Bad_audio.m4a")
    (raw / "v_Bad_image.mp4").write_bytes(image_bytes(pattern_frames(1)[0]))
    write_video(raw / "v_Bad_three.avi", 3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(raw dir, lists dir, out dir, reports) of one UCF-101-style preparation of the corpus."""
    root = tmp_path_factory.mktemp("corpus")
    raw, lists = root / "raw", root / "ucfTrainTestlist"
    raw.mkdir()
    lists.mkdir()
    _write_corpus(raw)
    names = [*GOOD, BIG, TRUNCATED, CORRUPT, *SKIPPED, "v_Bad_missing.avi"]
    train = [f"{'Bad' if '_Bad_' in n else 'Good'}/{n} {1 if '_Bad_' in n else 2}" for n in names]
    train.append(f"Good/{BIG} 2")  # listed twice
    (lists / "classInd.txt").write_text("1 Bad\n2 Good\n")
    (lists / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")
    (lists / "testlist01.txt").write_text(f"Good/{TEST_VIDEO}\n")
    out = root / "out"
    reports = prepare_ucf101(raw, lists, out, workers=1, log=None)
    return raw, lists, out, reports


def _records(out, split="train_split1"):
    return {r.path: r for r in load_manifest(out / "manifests" / f"{split}.parquet").records}


def test_each_file_of_the_corpus_is_indexed_or_skipped_with_its_reason(corpus):
    raw, _, out, (train, test) = corpus
    records = _records(out)
    assert set(records) == {*GOOD, BIG, TRUNCATED, CORRUPT}
    for name, (frames, width, height, _) in GOOD.items():
        record = records[name]
        assert (record.num_frames, record.width, record.height) == (frames, width, height)
        assert record.video_id == f"Good/{name.rsplit('.', 1)[0]}"
    assert (records[BIG].width, records[BIG].height) == (1920, 1080)
    reasons = dict(train.skipped)
    for name, (_, words) in SKIPPED.items():
        assert words in reasons[name], name
    assert reasons["Bad/v_Bad_missing"] == "missing file"
    assert reasons["Good/v_Good_big"] == "listed twice"
    assert dict(train.skipped_by_kind) == {
        "unreadable": 4, "too short": 2, "missing": 1, "duplicate": 1
    }
    assert f"a video needs >= {MIN_FRAMES} decodable frames" in train.summary()
    assert "skipped v_Bad_image.mp4: 1 decodable frame(s)" in train.summary()
    assert [r.path for r in load_manifest(test.manifest).records] == [TEST_VIDEO]


def test_a_truncated_mp4_indexes_the_frames_that_decode(corpus):
    raw, _, out, _ = corpus
    record = _records(out)[TRUNCATED]
    decoded = []
    with av.open(str(raw / TRUNCATED)) as container:
        assert container.streams.video[0].frames == LONG  # the sample table still claims all
        for packet in container.demux(video=0):
            try:
                decoded += [f.to_ndarray(format="rgb24") for f in packet.decode()]
            except av.InvalidDataError:  # the packet cut in half
                continue
    assert MIN_FRAMES <= record.num_frames == len(decoded) < LONG
    last = read_frames(raw / TRUNCATED, [record.num_frames - 1, LONG - 1])
    np.testing.assert_array_equal(last[0], decoded[-1])
    np.testing.assert_array_equal(last[1], decoded[-1])  # past the end: the last frame, no error


def test_a_video_corrupted_in_the_middle_is_indexed_and_reads_everywhere(corpus):
    raw, _, out, _ = corpus
    record = _records(out)[CORRUPT]
    assert MIN_FRAMES <= record.num_frames <= LONG
    clip = read_frames(raw / CORRUPT, range(record.num_frames))
    assert clip.shape == (record.num_frames, 48, 64, 3)


def test_min_frames_is_an_option_applied_without_probing_again(corpus, tmp_path):
    raw, lists, out, _ = corpus
    (tmp_path / "out" / "manifests").mkdir(parents=True)
    shutil.copy(out / "manifests" / CACHE_NAME, tmp_path / "out" / "manifests" / CACHE_NAME)
    train, _ = prepare_ucf101(raw, lists, tmp_path / "out", min_frames=3, workers=1, log=None)
    assert train.probed == 0 and train.skipped_by_kind["too short"] == 1
    assert "v_Bad_three.avi" in _records(tmp_path / "out")
    strict, _ = prepare_ucf101(raw, lists, tmp_path / "out", min_frames=16, workers=1, log=None)
    long_enough = {path for path, r in _records(out).items() if r.num_frames >= 16}
    assert set(_records(tmp_path / "out")) == long_enough
    assert strict.prepared == len(long_enough) >= 2


def test_list_lines_keep_names_with_spaces():
    assert list_path_part("Good/v_a b c.avi 2") == "Good/v_a b c.avi"
    assert list_path_part("Good/v_a b c.avi") == "Good/v_a b c.avi"
    assert list_path_part("Good/v_a.avi\t12") == "Good/v_a.avi"
    assert _split_tag("Robin Hood (1991) shoot_bow 2.avi\t1") == (
        "Robin Hood (1991) shoot_bow 2.avi", "1"
    )
    assert _split_tag("lonely") == ("", "")


def test_a_rerun_with_a_broken_file_keeps_the_good_entries(tmp_path):
    raw, lists = make_ucf_layout(tmp_path, ["Aa", "Bb"], groups=3)
    out = tmp_path / "out"
    prepare_ucf101(raw, lists, out, workers=1, log=None)
    (raw / "v_Aa_g02_c01.avi").write_bytes(b"")
    train, test = prepare_ucf101(raw, lists, out, workers=1, log=None)
    assert set(_records(out)) == {"v_Aa_g03_c01.avi", "v_Bb_g02_c01.avi", "v_Bb_g03_c01.avi"}
    assert dict(train.skipped) == {"v_Aa_g02_c01.avi": "empty file"}
    kept_test = (out / "manifests" / "test_split1.parquet").read_bytes()
    for name in ("v_Aa_g01_c01.avi", "v_Bb_g01_c01.avi"):  # the whole test split goes bad
        (raw / name).write_text("not a video")
    train, test = prepare_ucf101(raw, lists, out, workers=1, log=sys.stderr)
    assert test.manifest is None and "manifest not written" in test.summary()
    assert (out / "manifests" / "test_split1.parquet").read_bytes() == kept_test
    kept_train = (out / "manifests" / "train_split1.parquet").read_bytes()
    for path in raw.iterdir():
        path.unlink()
    with pytest.raises(PrepareError, match="no usable video .* nothing was written"):
        prepare_ucf101(raw, lists, out, workers=1, log=None)
    assert (out / "manifests" / "train_split1.parquet").read_bytes() == kept_train


def test_list_paths_that_leave_the_video_root_are_skipped(tmp_path):
    raw = tmp_path / "clips"
    write_video(raw / "abseiling" / "a1.mp4", MIN_FRAMES)
    write_video(tmp_path / "elsewhere" / "x.mp4", MIN_FRAMES)
    listing = tmp_path / "list.csv"
    listing.write_text(
        f"abseiling/a1.mp4,abseiling\n../elsewhere/x.mp4,zumba\n{tmp_path}/elsewhere/x.mp4,zumba\n"
    )
    (report,) = prepare_kinetics400(raw, tmp_path / "out", list_path=listing, workers=1, log=None)
    assert report.prepared == 1 and report.skipped_by_kind["outside root"] == 2
    assert "path outside the video root" in dict(report.skipped)["../elsewhere/x.mp4"]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "", "a/../../b.avi"])
def test_a_manifest_path_outside_the_root_is_refused_at_load(tmp_path, bad):
    record = VideoRecord("C/v", "C/v.avi", 0, "C", 16, 25.0, 64, 48, "mpeg4", 10)
    inside = dataclasses.replace(record, video_id="C/w", path="C/./w.avi")
    escaping = dataclasses.replace(record, video_id="C/x", path=bad)
    path = write_manifest(
        tmp_path / "ds" / "manifests" / "m.parquet",
        [record, inside, escaping],
        root=tmp_path / "ds" / "videos",
        dataset="ucf101",
        split="train",
        class_names=["C"],
    )
    with pytest.raises(ManifestError, match=r"m\.parquet: row 2 \(video 'C/x'\).*outside"):
        load_manifest(path)
    absolute = dataclasses.replace(record, path=str(tmp_path / "ds" / "videos" / "C" / "v.avi"))
    write_manifest(path, [absolute], root=tmp_path / "ds" / "videos", dataset="ucf101",
                   split="train", class_names=["C"])
    assert load_manifest(path).records == [absolute]  # absolute, but inside the root


def _prepare_cli():
    """The ``experiments/prepare.py`` script as a module (its ``main`` returns the exit code)."""
    script = Path(__file__).resolve().parents[1] / "experiments" / "prepare.py"
    spec = importlib.util.spec_from_file_location("prepare_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records_of(n):
    return [VideoRecord(f"C/v{i}", f"C/v{i}.avi", 0, "C", 16, 25.0, 64, 48, "mpeg4", 1)
            for i in range(n)]


def test_partitions_with_empty_clients_are_refused_unless_allowed(tmp_path, corpus, capsys):
    main = _prepare_cli().main
    with pytest.raises(PartitionError, match="5 videos over 12 clients leaves 7 clients"):
        partition_videos(_records_of(5), 12, "iid")
    parts = partition_videos(_records_of(5), 12, "iid", allow_empty=True)
    assert sum(1 for p in parts if not p) == 7
    manifest = str(corpus[2] / "manifests" / "train_split1.parquet")
    out = tmp_path / "parts"
    assert main(["partition", "--manifest", manifest, "--num-clients", "500",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "11 videos over 500 clients leaves 489 clients without a video" in err
    assert not out.exists()
    assert main(["partition", "--manifest", manifest, "--num-clients", "12", "--out", str(out),
                 "--allow-empty-clients"]) == 0
    assert "warning: 1 of 12 clients get no video from 11 videos" in capsys.readouterr().err
    with pytest.raises(PartitionError, match="client_dist1.json: lists no videos"):
        read_partitions(out, load_manifest(manifest).records)
    assert len(read_partitions(out, load_manifest(manifest).records, allow_empty=True)) == 12
    (out / "client_dist3.json").write_text('[{"name": "Good/unknown", "label": 2}]')
    with pytest.raises(PartitionError, match=r"client_dist3.json: 1 of 1 videos are not in"):
        read_partitions(out, load_manifest(manifest).records, allow_empty=True)


def test_training_skips_what_it_cannot_decode_and_never_crashes(corpus):
    from fedvssl_ray.data.pipeline import ClipStream

    raw, _, out, _ = corpus
    manifest = load_manifest(out / "manifests" / "train_split1.parquet")
    gone = dataclasses.replace(manifest.records[0], video_id="Gone/x", path="gone.avi")
    raw_bad = [(f"raw/{name}", str(raw / name)) for name in SKIPPED]
    entries = [(r.video_id, str(manifest.resolve(r))) for r in [*manifest.records, gone]]
    stream = ClipStream(entries + raw_bad, crop_size=32, clip_len=16, batch_size=8)
    batches = list(stream.batches(round=0))
    assert sum(len(b["imgs"]) for b in batches) >= len(manifest.records)
    unreadable = {f"raw/{n}" for n, (kind, _) in SKIPPED.items() if kind == "unreadable"}
    assert stream.bad_video_ids() == unreadable | {"Gone/x"}
