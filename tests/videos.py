"""Tiny real videos and dataset layouts for the data tests (imported by the test modules)."""

from __future__ import annotations

import io
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from fedvssl_ray.data.manifest import VideoRecord
from fedvssl_ray.data.synthetic import SyntheticSpec, encode_video, render_video


def pattern_frames(n: int, width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """``n`` distinct RGB frames: a smooth random field, a moving square, a per-frame tint."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, size=(height // 8, width // 8, 3), dtype=np.uint8)
    base = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
    frames = np.repeat(base[None], n, axis=0)
    for t in range(n):
        x = (3 * t) % (width - 12)
        frames[t, 10:22, x : x + 12] = 255
        frames[t, :, :, 2] = (frames[t, :, :, 2].astype(int) + 4 * t) % 256
    return frames


def write_video(
    path: Path,
    n: int = 30,
    *,
    codec: str = "mpeg4",
    gop: int = 12,
    options: dict[str, str] | None = None,
    seed: int = 0,
    width: int = 64,
    height: int = 48,
) -> Path:
    """Encode ``n`` pattern frames into ``path`` (container from the suffix)."""
    frames = pattern_frames(n, width, height, seed=seed)
    return encode_video(path, frames, codec=codec, gop=gop, options=options)


def video_record(name: str, frames: int, width: int = 64, height: int = 48) -> VideoRecord:
    """The manifest record of ``<root>/<name>.avi`` (class 0, 25 fps, MPEG-4)."""
    return VideoRecord(name, f"{name}.avi", 0, "c", frames, 25.0, width, height, "mpeg4", 0)


def synthetic_shard(
    root: Path, count: int, frames: int, sizes: tuple[tuple[int, int], ...] = ((64, 48),)
) -> list[VideoRecord]:
    """``count`` tiny synthetic AVIs ``v0..`` under ``root`` (video i of class i % 4, frame
    sizes cycling through ``sizes``), as manifest records."""
    records = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        spec = SyntheticSpec(frames=frames, width=width, height=height)
        encode_video(root / f"v{i}.avi", render_video(spec, i % 4, i), gop=12)
        records.append(video_record(f"v{i}", frames, width, height))
    return records


def remux(src: Path, dst: Path, options: dict[str, str]) -> Path:
    """Copy ``src``'s video packets into ``dst`` with muxer ``options`` (e.g. MP4 faststart)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=options) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


def write_audio_only(path: Path, seconds: float = 0.5, rate: int = 8000) -> Path:
    """An AAC audio file without any video stream (container from the suffix)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = np.zeros((1, 1024), np.float32)
        for i in range(int(seconds * rate) // 1024):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def full_decode(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` in order, decoded plainly (the reference for index reads)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def jpeg_bytes(image: np.ndarray) -> bytes:
    """One RGB image as JPEG bytes, encoded with FFmpeg's MJPEG encoder."""
    return image_bytes(image, "mjpeg", "yuvj420p")


def image_bytes(image: np.ndarray, codec: str = "png", pix_fmt: str = "rgb24") -> bytes:
    """One RGB image as an image file's bytes (PNG by default), encoded with FFmpeg."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height = image.shape[1], image.shape[0]
    ctx.pix_fmt = pix_fmt
    ctx.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
    packets = ctx.encode(frame) + ctx.encode(None)
    return b"".join(bytes(p) for p in packets)


def write_frame_zip(path: Path, frames: np.ndarray) -> Path:
    """A seed-format archive: stored (uncompressed) ``img_00001.jpg``, ... entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i, image in enumerate(frames):
            archive.writestr(f"img_{i + 1:05d}.jpg", jpeg_bytes(image))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def make_ucf_layout(
    root: Path,
    classes: list[str],
    *,
    groups: int = 2,
    nested: bool = False,
    crlf: bool = False,
    file_case: dict[str, str] | None = None,
) -> tuple[Path, Path]:
    """UCF-101 look-alike: (raw_dir, ucfTrainTestlist dir). Group 1 is the test set.

    ``file_case`` maps a class folder name to the spelling used in its file names (the
    ``HandstandPushups/v_HandStandPushups_...`` quirk).
    """
    file_case = file_case or {}
    raw = root / "UCF-101" if nested else root / "raw"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    end = "\r\n" if crlf else "\n"
    train, test = [], []
    for label, cls in enumerate(classes, 1):
        spelled = file_case.get(cls, cls)
        for g in range(1, groups + 1):
            name = f"v_{spelled}_g{g:02d}_c01.avi"
            folder = raw / cls if nested else raw
            write_video(folder / name, 8, seed=label * 10 + g)
            if g == 1:
                test.append(f"{cls}/{name}")
            else:
                train.append(f"{cls}/{name} {label}")
    (lists / "classInd.txt").write_text("".join(f"{i} {c}{end}" for i, c in enumerate(classes, 1)))
    (lists / "trainlist01.txt").write_text("".join(f"{line}{end}" for line in train))
    (lists / "testlist01.txt").write_text("".join(f"{line}{end}" for line in test))
    return raw, lists
