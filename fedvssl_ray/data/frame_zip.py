"""Reader of the seed's prepared frame archives: one ZIP of JPEG frames per video.

Each archive stores every decoded frame at native resolution as ``img_00001.jpg``,
``img_00002.jpg``, ... (1-based, uncompressed ZIP); frame index ``i`` is the ``i``-th JPEG entry
in name order, so ``img_{i+1:05d}.jpg`` for archives written by the seed. :func:`read_frames`
has the signature of :func:`fedvssl_ray.data.decode.read_frames` and returns RGB like it (the
seed's OpenCV loader gave BGR). JPEGs are decoded with FFmpeg's ``mjpeg`` decoder through PyAV,
so no image library is needed; values can differ from libjpeg's by a grey level or two
(chroma upsampling), which the training augmentations dwarf.

This format exists to import prepared data as it is; new data is read from the videos directly
(decoding a 16-frame clip from a 320x240 MPEG-4 AVI costs about as much as 16 JPEG decodes, and
the videos are ~10x smaller than the archives).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence

import av
import numpy as np

from fedvssl_ray.data.decode import (
    VideoDecodeError,
    VideoInfo,
    VideoSource,
    frames_to_array,
    source_name,
    wanted_indices,
)

FRAME_ZIP_CODEC = "jpeg-zip"
"""The ``codec`` a manifest records for a frame archive."""


def _open_zip(src: VideoSource, label: str) -> zipfile.ZipFile:
    """Open ``src`` as a ZIP archive or raise VideoDecodeError naming it."""
    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            return zipfile.ZipFile(io.BytesIO(src))
        return zipfile.ZipFile(os.fspath(src))
    except FileNotFoundError as err:
        raise VideoDecodeError(label, "no such file") from err
    except (zipfile.BadZipFile, OSError) as err:
        raise VideoDecodeError(label, f"not a readable ZIP archive ({err})") from err


def _frame_names(archive: zipfile.ZipFile, label: str) -> list[str]:
    """JPEG entries in frame order (zero-padded names sort in order)."""
    names = sorted(n for n in archive.namelist() if n.lower().endswith((".jpg", ".jpeg")))
    if not names:
        raise VideoDecodeError(label, "archive holds no JPEG frames")
    return names


def _decode_jpeg(data: bytes, threads: int, label: str, entry: str) -> av.VideoFrame:
    ctx = av.CodecContext.create("mjpeg", "r")
    ctx.thread_count = max(1, threads)
    try:
        frames = ctx.decode(av.Packet(data))
        frames += ctx.decode(None)
    except av.FFmpegError as err:
        raise VideoDecodeError(label, f"bad JPEG {entry} ({err})") from err
    if not frames:
        raise VideoDecodeError(label, f"bad JPEG {entry} (no image)")
    return frames[0]


def probe_frame_zip(src: VideoSource, *, name: str | None = None) -> VideoInfo:
    """Frame count and size of an archive; ``fps`` is 0.0 because the format records none."""
    label = source_name(src, name)
    with _open_zip(src, label) as archive:
        names = _frame_names(archive, label)
        try:
            first = _decode_jpeg(archive.read(names[0]), 1, label, names[0])
        except (zipfile.BadZipFile, OSError) as err:
            raise VideoDecodeError(label, f"cannot read {names[0]} ({err})") from err
    return VideoInfo(len(names), 0.0, first.width, first.height, FRAME_ZIP_CODEC, 0.0)


def read_frames(
    src: VideoSource,
    indices: Sequence[int],
    *,
    threads: int = 1,
    short_edge: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Frames at ``indices`` as ``[len(indices), H, W, 3]`` uint8 RGB, like the video reader.

    An index past the last frame gives the last frame; each distinct index is decoded once.
    """
    label = source_name(src, name)
    wanted = wanted_indices(indices, label)
    with _open_zip(src, label) as archive:
        names = _frame_names(archive, label)
        by_entry: dict[int, av.VideoFrame] = {}
        for position in sorted({min(i, len(names) - 1) for i in wanted}):
            entry = names[position]
            try:
                data = archive.read(entry)
            except (zipfile.BadZipFile, OSError) as err:
                raise VideoDecodeError(label, f"cannot read {entry} ({err})") from err
            by_entry[position] = _decode_jpeg(data, threads, label, entry)
    frames = {i: by_entry[min(i, len(names) - 1)] for i in wanted}
    return frames_to_array(frames, indices, short_edge)
