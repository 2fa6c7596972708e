"""PyAV decoding by frame index: equals a full decode, seeks instead of decoding everything,
and turns every kind of bad input into one typed error."""

from __future__ import annotations

import os
import pickle

import av
import numpy as np
import pytest
from videos import full_decode, write_frame_zip, write_video

from fedvssl_ray.data import decode, frame_zip
from fedvssl_ray.data.decode import VideoDecodeError, probe_video, read_frames
from fedvssl_ray.data.manifest import VideoRecord, frame_reader
from fedvssl_ray.data.synthetic import h264_encoder

H264 = h264_encoder()
CASES = [
    pytest.param(("mpeg4", "avi", None), id="mpeg4-avi"),
    pytest.param(("mpeg4", "avi", {"bf": "2"}), id="mpeg4-bframes-avi"),
    pytest.param(
        (H264, "mp4", None),
        id="h264-mp4",
        marks=pytest.mark.skipif(H264 is None, reason="no H.264 encoder in this PyAV build"),
    ),
    pytest.param(
        ("libvpx-vp9", "webm", None),
        id="vp9-webm",
        marks=pytest.mark.skipif("libvpx-vp9" not in av.codecs_available, reason="no VP9"),
    ),
    pytest.param(("mjpeg", "avi", None), id="mjpeg-avi"),
]
LONG = 90  # frames; GOP 12 gives 8 key frames


@pytest.fixture(scope="module", params=CASES)
def encoded(request, tmp_path_factory):
    codec, suffix, options = request.param
    path = tmp_path_factory.mktemp("videos") / f"clip.{suffix}"
    write_video(path, LONG, codec=codec, gop=12, options=options)
    return path, full_decode(path)


def test_probe_counts_frames_and_rate(encoded):
    path, frames = encoded
    info = probe_video(path)
    assert info.num_frames == len(frames) == LONG
    assert (info.width, info.height, info.fps) == (64, 48, 25.0)
    assert info.duration_s == pytest.approx(LONG / 25)
    assert probe_video(path, verify=True).num_frames == LONG


@pytest.mark.parametrize(
    "indices",
    [[0, 1, 2, 3], [80, 81, 85, 89], [5, 70, 5, 40], [88, 12, 12, 60, 89, 0], list(range(45, 61))],
)
def test_read_by_index_equals_full_decode(encoded, indices):
    path, frames = encoded
    expected = np.stack([frames[i] for i in indices])
    np.testing.assert_array_equal(read_frames(path, indices), expected)
    data = path.read_bytes()
    np.testing.assert_array_equal(read_frames(data, indices), expected)
    np.testing.assert_array_equal(read_frames(memoryview(data), indices, threads=2), expected)


def test_index_past_the_end_gives_the_last_frame(encoded):
    path, frames = encoded
    got = read_frames(path, [LONG + 7, 0, LONG - 1])
    np.testing.assert_array_equal(got, np.stack([frames[-1], frames[0], frames[-1]]))


def test_far_frames_are_reached_by_seeking(encoded, monkeypatch):
    path, frames = encoded
    decoded = []
    original = decode._decode_packets

    def counting(container, stream):
        for frame in original(container, stream):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(decode, "_decode_packets", counting)
    np.testing.assert_array_equal(read_frames(path, [84, 86]), np.stack([frames[84], frames[86]]))
    assert len(decoded) < 30  # first frame + one GOP, not the 87 frames before index 86


def test_seek_that_overshoots_falls_back_to_decoding_from_the_start(encoded, monkeypatch):
    path, frames = encoded
    monkeypatch.setattr(decode._Timeline, "pts", lambda self, index: self.pts0 + 10**9)
    np.testing.assert_array_equal(read_frames(path, [70, 71]), np.stack([frames[70], frames[71]]))


def test_short_edge_scales_during_conversion(tmp_path):
    path = write_video(tmp_path / "v.avi", 4)
    clip = read_frames(path, [0, 3], short_edge=96)
    assert clip.shape == (2, 96, 128, 3) and clip.dtype == np.uint8
    assert decode.scaled_size(320, 240, 112) == (149, 112)


def _bad_inputs(tmp_path):
    good = write_video(tmp_path / "good.avi", 30).read_bytes()
    files = {
        "empty.avi": b"",
        "truncated.avi": good[:300],
        "random.avi": np.random.default_rng(0).bytes(5000),
        "notes.txt": b"this is not a video\n" * 20,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / n for n in files] + [tmp_path / "does_not_exist.avi"]


def test_bad_files_raise_one_typed_error_naming_the_file(tmp_path):
    for path in _bad_inputs(tmp_path):
        for call in (lambda p: probe_video(p), lambda p: read_frames(p, [0, 5])):
            with pytest.raises(VideoDecodeError) as info:
                call(path)
            assert info.value.path == str(path) and str(path) in str(info.value)
        if path.exists():
            with pytest.raises(VideoDecodeError, match="clip-7"):
                read_frames(path.read_bytes(), [0], name="clip-7")


def test_decode_error_survives_pickling():
    err = pickle.loads(pickle.dumps(VideoDecodeError("a/b.avi", "no video stream")))
    assert (err.path, err.reason) == ("a/b.avi", "no video stream")


def test_invalid_indices_are_rejected(tmp_path):
    path = write_video(tmp_path / "v.avi", 4)
    with pytest.raises(ValueError, match="no frame indices"):
        read_frames(path, [])
    with pytest.raises(ValueError, match=">= 0"):
        read_frames(path, [-1])


def test_frame_zip_reader_matches_the_video_reader_contract(tmp_path):
    frames = full_decode(write_video(tmp_path / "v.avi", 10))
    archive = write_frame_zip(tmp_path / "Class" / "v_Class_g01_c01.zip", np.stack(frames))
    info = frame_zip.probe_frame_zip(archive)
    assert (info.num_frames, info.width, info.height, info.codec) == (10, 64, 48, "jpeg-zip")
    for src in (archive, archive.read_bytes()):
        clip = frame_zip.read_frames(src, [9, 0, 0, 15])
        assert clip.shape == (4, 48, 64, 3) and clip.dtype == np.uint8
        expected = np.stack([frames[9], frames[0], frames[0], frames[9]]).astype(int)
        assert np.abs(clip.astype(int) - expected).mean() < 4  # JPEG at high quality
    assert frame_zip.read_frames(archive, [2], short_edge=24).shape == (1, 24, 32, 3)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(VideoDecodeError, match="bad.zip"):
        frame_zip.read_frames(bad, [0])


def test_frame_reader_picks_the_reader_by_codec():
    record = VideoRecord("C/v", "C/v.zip", 0, "C", 10, 0.0, 64, 48, "jpeg-zip", 100)
    assert frame_reader(record) is frame_zip.read_frames
    video = VideoRecord("C/v", "v.avi", 0, "C", 10, 25.0, 64, 48, "mpeg4", 100)
    assert frame_reader(video) is decode.read_frames
    assert os.fspath(decode.source_name(b"x")) == "<bytes>"
