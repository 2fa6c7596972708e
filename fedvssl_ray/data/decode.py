"""Video decoding with PyAV: probe a video and read frames by index.

A *frame index* ``i`` is the frame shown at time ``i / fps`` after the first decoded frame, with
``fps`` the stream's nominal rate (``guessed_rate``, else ``average_rate``). Frame indices are
mapped to presentation timestamps through the stream ``time_base``, anchored at the pts of the
first decoded frame rather than ``stream.start_time`` (AVI files with B-frames start at pts 1
while claiming a start time of 0). For constant-frame-rate video, frame ``i`` is exactly the
``i``-th decoded frame, which is what a full decode (or the seed's JPEG archives) numbers ``i``.

:func:`read_frames` never decodes more than it needs: it seeks to the key frame before the first
wanted frame, decodes forward once for all wanted indices (sorted, deduplicated, then gathered in
the requested order), verifies every position with ``frame.pts`` and falls back to a plain decode
from the start when a container cannot seek (some AVI) or the seek lands after the target. Frames
without timestamps are numbered in decode order. An index past the last decodable frame yields
the last frame, so a video that decodes fewer frames than its manifest claims (a file damaged
after it was probed) never fails a clip; samplers clamp to ``num_frames - 1`` anyway. An index
that falls in a timestamp gap yields the frame on screen at that time.

Every failure (missing, empty, truncated, corrupt or non-video input) raises one error type,
:class:`VideoDecodeError`, naming the file. Sources are local files or bytes in memory, so no
read can wait on a network; FFmpeg's own decoders conceal damaged packets, and packets that
still fail are skipped (the frame before them stands in).

Threads: each decoder is single-threaded by default, because the parallelism comes from running
several decoders at once (one per data worker). Measured on 2 cores with 16-frame CtP clips from
320x240 MPEG-4 AVI bytes: one decoder gives ~110 clips/s with 1 or 2 threads; two decoders give
~300 clips/s with 1 thread each but ~125 with 2 each. Pass ``threads > 1`` only for one large
decode on an otherwise idle machine.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

VideoSource = str | os.PathLike | bytes | bytearray | memoryview
"""A video file path, or the encoded file's bytes in memory."""

# Seek only when the next wanted frame lies this many frames ahead of the decoder.
_SEEK_GAP = 16
_local = threading.local()


class VideoDecodeError(Exception):
    """A video could not be opened or decoded; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot decode video {path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns about a video's first video stream."""

    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    duration_s: float


def source_name(src: VideoSource, name: str | None = None) -> str:
    """The name used in errors: ``name`` if given, else the path, else ``"<bytes>"``."""
    if name is not None:
        return name
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return os.fspath(src)


@contextmanager
def _open_video(
    src: VideoSource, name: str, threads: int = 1
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open ``src`` and yield (container, first video stream); map every failure to one error."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise VideoDecodeError(name, "empty input")
        target: str | io.BytesIO = io.BytesIO(src)
    else:
        target = os.fspath(src)
        if not os.path.isfile(target):
            raise VideoDecodeError(name, "no such file")
        if os.path.getsize(target) == 0:
            raise VideoDecodeError(name, "empty file")
    try:
        container = av.open(target, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise VideoDecodeError(name, f"not a readable media container ({reason})") from err
    try:
        if not container.streams.video:
            raise VideoDecodeError(name, "no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx.width <= 0 or ctx.height <= 0:
            raise VideoDecodeError(name, "video stream has no frame size")
        ctx.thread_count = max(1, int(threads))
        if threads > 1:
            ctx.thread_type = "AUTO"
        yield container, stream
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as err:
        raise VideoDecodeError(name, str(err) or type(err).__name__) from err
    finally:
        container.close()


def _frame_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The stream's nominal frame rate, or None when the container gives none."""
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def _decode_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[av.VideoFrame]:
    """Decoded frames in presentation order; undecodable packets and a damaged tail are skipped."""
    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.InvalidDataError:
                continue
    except av.InvalidDataError:
        # A damaged or truncated tail ends the stream; flush what the decoder still holds.
        try:
            yield from stream.codec_context.decode(None)
        except av.FFmpegError:
            return


def probe_video(src: VideoSource, *, name: str | None = None, verify: bool = False) -> VideoInfo:
    """Probe frame count, rate, size and codec of ``src``'s first video stream.

    The frame count never comes from the container's header: AVI headers may count dropped
    frames, Matroska/WebM have none, and an MP4 sample table still lists the frames a
    truncation cut off. By default the non-empty video packets are counted by demuxing (one
    per frame; the readable data's end ends the count), without decoding. With
    ``verify=True`` every frame is decoded (no colour conversion) and the count is the number
    of frames :func:`read_frames` can address, so damaged packets are not counted either; this
    costs a full decode (10-60 ms for 10 s of 320x240 MPEG-4 on one core, by content).
    """
    label = source_name(src, name)
    with _open_video(src, label) as (container, stream):
        rate = _frame_rate(stream)
        if verify:
            num_frames = _count_decoded(container, stream)
        else:
            num_frames = _count_packets(container, stream)
        if num_frames <= 0:
            raise VideoDecodeError(label, "no decodable video frames")
        width, height = stream.codec_context.width, stream.codec_context.height
        codec = stream.codec_context.name
    fps = float(rate) if rate is not None else 0.0
    duration_s = num_frames / fps if fps > 0 else 0.0
    return VideoInfo(num_frames, fps, width, height, codec, duration_s)


def _count_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> int:
    """Number of non-empty video packets (one per frame); a damaged tail ends the count."""
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size > 0:
                count += 1
    except av.InvalidDataError:
        pass
    return count


def _count_decoded(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> int:
    """Decoded frames with distinct, increasing indices: the frames :func:`read_frames` reaches."""
    decoded = _decode_packets(container, stream)
    first = next(decoded, None)
    if first is None:
        return 0
    frames = itertools.chain([first], decoded)
    return sum(1 for _ in _indexed(frames, _timeline(stream, first)))


def scaled_size(width: int, height: int, short_edge: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to ``short_edge``, as CtP rounds it."""
    short = min(width, height)
    return round(width * short_edge / short), round(height * short_edge / short)


class _Timeline:
    """Maps pts <-> frame index for one stream, anchored at the first decoded frame."""

    def __init__(self, pts0: int, time_base: Fraction, rate: Fraction) -> None:
        self.pts0, self.time_base, self.rate = pts0, time_base, rate

    def index(self, pts: int) -> int:
        return math.floor((pts - self.pts0) * self.time_base * self.rate + Fraction(1, 2))

    def pts(self, index: int) -> int:
        return self.pts0 + math.floor(Fraction(index) / (self.rate * self.time_base))


def _timeline(stream: av.video.stream.VideoStream, first: av.VideoFrame) -> _Timeline | None:
    """The stream's timeline anchored at its first decoded frame; None without timestamps."""
    rate = _frame_rate(stream)
    if first.pts is None or rate is None or stream.time_base is None:
        return None
    return _Timeline(first.pts, Fraction(stream.time_base), rate)


def _indexed(
    frames: Iterator[av.VideoFrame], timeline: _Timeline | None
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) with strictly increasing indices; untimed frames count in order."""
    last = -1
    for frame in frames:
        if timeline is None or frame.pts is None:
            index = last + 1
        else:
            index = timeline.index(frame.pts)
        if index > last:
            yield index, frame
            last = index


class _SeekFailed(Exception):
    """A seek landed after its target or the container refused it: decode from the start."""


class _Cursor:
    """Walks indexed frames forward and answers "which frame is on screen at index t"."""

    def __init__(self, frames: Iterator[av.VideoFrame], timeline: _Timeline | None) -> None:
        self._indexed = _indexed(frames, timeline)
        self._next = next(self._indexed, None)
        self.seen: tuple[int, av.VideoFrame] | None = None

    @property
    def exhausted(self) -> bool:
        return self._next is None

    def frame_at(self, target: int) -> av.VideoFrame | None:
        """The last frame with index <= target (the last frame at the end); None if none yet."""
        while self._next is not None and self._next[0] <= target:
            self.seen = self._next
            self._next = next(self._indexed, None)
        return None if self.seen is None else self.seen[1]


def wanted_indices(indices: Sequence[int], label: str) -> list[int]:
    """The distinct requested frame indices, sorted; ValueError if none or any is negative."""
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        raise ValueError(f"no frame indices requested for {label}")
    if wanted[0] < 0:
        raise ValueError(f"frame indices must be >= 0, got {wanted[0]} for {label}")
    return wanted


def read_frames(
    src: VideoSource,
    indices: Sequence[int],
    *,
    threads: int = 1,
    short_edge: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Frames at ``indices`` (any order, repeats allowed) as ``[len(indices), H, W, 3]`` uint8 RGB.

    :param src: a video path, or the encoded file's bytes (``bytes``/``memoryview``).
    :param indices: 0-based frame indices; past the last decodable frame gives the last frame.
    :param threads: decoder threads (1: parallelism comes from running several decoders).
    :param short_edge: if set, frames come out bilinearly scaled so the short side has this
        length (done by swscale during the colour conversion, which saves a later resize).
    :param name: the name used in errors (e.g. the video id when ``src`` is bytes).
    """
    label = source_name(src, name)
    wanted = wanted_indices(indices, label)
    try:
        with _open_video(src, label, threads) as (container, stream):
            frames = _read(container, stream, wanted, label, allow_seek=True)
    except _SeekFailed:
        with _open_video(src, label, threads) as (container, stream):
            frames = _read(container, stream, wanted, label, allow_seek=False)
    return frames_to_array(frames, indices, short_edge)


def frames_to_array(
    frames: dict[int, av.VideoFrame], indices: Sequence[int], short_edge: int | None
) -> np.ndarray:
    """Stack ``frames[i]`` for ``i`` in ``indices`` as RGB, converting each distinct frame once."""
    size = None
    if short_edge is not None:
        first = next(iter(frames.values()))
        size = scaled_size(first.width, first.height, short_edge)
    by_frame: dict[int, np.ndarray] = {}
    for frame in frames.values():
        if id(frame) not in by_frame:
            by_frame[id(frame)] = frame_to_rgb(frame, size)
    return np.stack([by_frame[id(frames[int(i)])] for i in indices])


def frame_to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    """RGB24 array of ``frame``, optionally scaled to ``size`` = (width, height), bilinear.

    A reformatter kept per thread reuses its swscale context across frames and calls;
    ``VideoFrame.to_ndarray`` builds a new one per frame, which costs ~10x the conversion.
    """
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        reformatter = _local.reformatter = VideoReformatter()
    width, height = size if size is not None else (None, None)
    rgb = reformatter.reformat(
        frame, width=width, height=height, format="rgb24", interpolation="BILINEAR", threads=1
    )
    return rgb.to_ndarray()


def _read(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    wanted: list[int],
    label: str,
    *,
    allow_seek: bool,
) -> dict[int, av.VideoFrame]:
    """Decode the wanted (sorted, unique) frames, seeking over long gaps when allowed."""
    decoded = _decode_packets(container, stream)
    first = next(decoded, None)
    if first is None:
        raise VideoDecodeError(label, "no decodable video frames")
    timeline = _timeline(stream, first)
    cursor = _Cursor(itertools.chain([first], decoded), timeline)
    out: dict[int, av.VideoFrame] = {}
    for target in wanted:
        position = cursor.seen[0] if cursor.seen is not None else 0
        if (
            allow_seek
            and timeline is not None
            and not cursor.exhausted
            and target - position > _SEEK_GAP
        ):
            try:
                container.seek(timeline.pts(target), stream=stream, backward=True)
            except (av.FFmpegError, OSError) as err:
                raise _SeekFailed from err
            cursor = _Cursor(_decode_packets(container, stream), timeline)
            if cursor.exhausted or cursor.frame_at(target) is None:
                raise _SeekFailed
        frame = cursor.frame_at(target)
        if frame is None:
            raise VideoDecodeError(label, f"no frame decodes at or before index {target}")
        out[target] = frame
    return out
