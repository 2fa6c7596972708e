"""The preparation runner shared by every dataset: probe listed videos, write manifests, report.

A dataset module turns its release layout into :class:`VideoEntry` lists (one per split); this
module probes each existing file (in parallel processes for large sets), writes the split's
Parquet manifest and the original pipeline's annotation JSON, and returns a
:class:`PrepareReport`. Probe results are cached per file in ``<out>/manifests/probe_cache.jsonl``
keyed by absolute path, size and mtime, so a rerun (or a run resumed after an interruption)
probes only new or changed files.

A probe decodes every frame (no colour conversion), so a video's ``num_frames`` is what decodes,
not what its container claims (a truncated MP4 still lists its lost frames). A video needs at
least :data:`MIN_FRAMES` decodable frames (``min_frames``, ``--min-frames``): fewer is a still
image or a fragment, not a clip. Missing, unreadable, too short and duplicate videos, and paths
that leave the video root, are skipped, counted by kind and listed with the reason, never
fatal. A split left without any usable video keeps its earlier manifest (none is written); when
every split is empty the run fails with a :class:`PrepareError` and writes nothing.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import av

from fedvssl_ray.data import frame_zip
from fedvssl_ray.data.decode import VideoDecodeError, VideoInfo, probe_video
from fedvssl_ray.data.manifest import (
    VideoRecord,
    inside_root,
    write_annotation_json,
    write_manifest,
)

CACHE_NAME = "probe_cache.jsonl"
# Probe results of another probe version (e.g. container frame counts) are probed again.
PROBE_VERSION = 2
MIN_FRAMES = 8
"""Fewest decodable frames a video needs: the shortest clip the backbone takes (``data.clip_len``
is a multiple of 8). Raise it to 16, the default CtP clip, with ``--min-frames 16``."""
# Below this many files to probe, probing in-process beats starting worker processes.
_MIN_FILES_FOR_PROCESSES = 256
_CHUNK = 32
MISSING = "missing file"
DUPLICATE = "listed twice"
OUTSIDE_ROOT = "path outside the video root"


class PrepareError(ValueError):
    """The raw data or split files are missing or malformed; the message says what to do."""


@dataclass(frozen=True)
class VideoEntry:
    """One listed video before probing; ``path`` is relative to the root, None if not found."""

    video_id: str
    path: str | None
    label: int
    class_name: str


@dataclass
class PrepareReport:
    """What one split's preparation did; ``manifest`` is None when the split had no usable video."""

    split: str
    total: int = 0
    probed: int = 0
    cached: int = 0
    min_frames: int = MIN_FRAMES
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_by_kind: Counter[str] = field(default_factory=Counter)
    manifest: Path | None = None

    def skip(self, name: str, kind: str, reason: str) -> None:
        """Record a skipped video: ``kind`` (``missing``, ``too short``...) counts it, ``reason``
        explains it."""
        self.skipped.append((name, reason))
        self.skipped_by_kind[kind] += 1

    @property
    def prepared(self) -> int:
        return self.total - len(self.skipped)

    @property
    def missing(self) -> int:
        return self.skipped_by_kind["missing"]

    def summary(self, max_listed: int = 20) -> str:
        """A few lines: counts, then the skipped files with reasons."""
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.skipped_by_kind.items()))
        written = self.manifest or "no usable video: manifest not written (an earlier one is kept)"
        lines = [
            f"[{self.split}] prepared {self.prepared}/{self.total} "
            f"(probed {self.probed}, from cache {self.cached}), skipped {len(self.skipped)}"
            f"{f' ({kinds})' if kinds else ''}; a video needs >= {self.min_frames} decodable "
            f"frames -> {written}"
        ]
        for path, reason in self.skipped[:max_listed]:
            lines.append(f"  skipped {path}: {reason}")
        if len(self.skipped) > max_listed:
            lines.append(f"  ... and {len(self.skipped) - max_listed} more")
        return "\n".join(lines)


def default_workers() -> int:
    """One worker per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def probe_file(path: str) -> VideoInfo:
    """Probe a video file (decoding every frame to count the decodable ones), or a frame archive
    when the name ends in ``.zip``."""
    if path.lower().endswith(".zip"):
        return frame_zip.probe_frame_zip(path)
    return probe_video(path, verify=True)


def _probe_chunk(paths: list[str]) -> list[tuple[str, dict | None, str | None]]:
    """Worker: (path, VideoInfo as dict, None) or (path, None, reason) per file."""
    out: list[tuple[str, dict | None, str | None]] = []
    for path in paths:
        try:
            out.append((path, asdict(probe_file(path)), None))
        except VideoDecodeError as err:
            out.append((path, None, err.reason))
        except Exception as err:  # noqa: BLE001 - a worker reports any failure for its file
            out.append((path, None, f"{type(err).__name__}: {err}"))
    return out


class ProbeCache:
    """Append-only JSON-lines cache of probe results keyed by (absolute path, size, mtime) and
    the probe version."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    item = json.loads(line)
                    self._entries[item["path"]] = item
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by an interrupted run
        self._file: TextIO | None = None

    def get(self, path: str, stat: os.stat_result) -> dict | None:
        item = self._entries.get(path)
        if (
            item
            and item["size"] == stat.st_size
            and item["mtime_ns"] == stat.st_mtime_ns
            and item.get("probe") == PROBE_VERSION
        ):
            return item
        return None

    def put(self, path: str, stat: os.stat_result, info: dict | None, error: str | None) -> dict:
        item = {
            "path": path,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "info": info,
            "error": error,
            "probe": PROBE_VERSION,
        }
        self._entries[path] = item
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a")
        self._file.write(json.dumps(item) + "\n")
        self._file.flush()
        return item

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Progress:
    """Prints ``done/total, rate, ETA`` to a stream at most once per ``interval`` seconds."""

    def __init__(self, label: str, total: int, stream: TextIO | None, interval: float = 1.0):
        self.label, self.total, self.stream, self.interval = label, total, stream, interval
        self.start = self.last = time.monotonic()
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is not None and (
            now - self.last >= self.interval or self.done == self.total
        ):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            print(
                f"[{self.label}] {self.done}/{self.total} videos, {rate:.1f}/s, ETA {eta:.0f}s",
                file=self.stream,
                flush=True,
            )


def probe_paths(
    paths: Sequence[str],
    cache: ProbeCache,
    *,
    workers: int,
    progress: Progress,
) -> tuple[dict[str, dict], int]:
    """Probe results per absolute path (cache first), and how many were probed afresh."""
    results: dict[str, dict] = {}
    todo: list[tuple[str, os.stat_result]] = []
    for path in dict.fromkeys(paths):
        try:
            stat = os.stat(path)
        except OSError as err:  # vanished or unreadable since the folder was listed
            results[path] = {"path": path, "info": None, "error": f"cannot read ({err.strerror})"}
            progress.advance()
            continue
        cached = cache.get(path, stat)
        if cached is not None:
            results[path] = cached
            progress.advance()
        else:
            todo.append((path, stat))
    stats = dict(todo)
    chunks = [[p for p, _ in todo[i : i + _CHUNK]] for i in range(0, len(todo), _CHUNK)]

    def record(batch: list[tuple[str, dict | None, str | None]]) -> None:
        for path, info, error in batch:
            results[path] = cache.put(path, stats[path], info, error)
        progress.advance(len(batch))

    if workers > 1 and len(todo) >= _MIN_FILES_FOR_PROCESSES:
        context = multiprocessing.get_context("spawn")  # safe even after threads (Ray, torch)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_probe_chunk, chunk) for chunk in chunks]
            for future in as_completed(futures):
                record(future.result())
    else:
        for chunk in chunks:
            record(_probe_chunk(chunk))
    return results, len(todo)


def prepare_splits(
    root: Path,
    splits: dict[str, list[VideoEntry]],
    out_dir: Path,
    *,
    dataset: str,
    class_names: Sequence[str],
    manifest_name: Callable[[str], str],
    annotation_name: Callable[[str], str],
    min_frames: int = MIN_FRAMES,
    workers: int | None = None,
    log: TextIO | None = sys.stderr,
) -> list[PrepareReport]:
    """Probe every split's entries and write ``out/manifests/`` and ``out/annotations/``.

    Every split is probed before any file is written, so a run that fails keeps the earlier
    manifests whole; a split without a usable video keeps its earlier manifest too.

    :param root: folder the entries' paths are relative to (stored in the manifests).
    :param splits: split name -> entries in list-file order (kept in the manifest).
    :param manifest_name: split name -> manifest file name, e.g. ``train_split1.parquet``.
    :param annotation_name: split name -> annotation JSON file name.
    :param min_frames: fewest decodable frames a video needs (see :data:`MIN_FRAMES`).
    :param log: where progress and reports go; None for silence.
    """
    if min_frames < 1:
        raise PrepareError(f"min_frames must be >= 1, got {min_frames}")
    workers = default_workers() if workers is None else max(1, workers)
    cache = ProbeCache(out_dir / "manifests" / CACHE_NAME)
    prepared: list[tuple[PrepareReport, list[VideoRecord]]] = []
    try:
        for split, entries in splits.items():
            prepared.append(
                _probe_split(root, split, entries, cache, min_frames, workers=workers, log=log)
            )
    finally:
        cache.close()
    if not any(records for _, records in prepared):
        for report, _ in prepared:
            _log(report, log)
        reasons = "; ".join(f"{r.split}: {dict(r.skipped_by_kind)}" for r, _ in prepared)
        raise PrepareError(
            f"no usable video under {root} in any split ({reasons}); nothing was written. "
            "Check the video folder and the split lists."
        )
    for report, records in prepared:
        if records:
            report.manifest = write_manifest(
                out_dir / "manifests" / manifest_name(report.split),
                records,
                root=root,
                dataset=dataset,
                split=report.split,
                class_names=class_names,
            )
            write_annotation_json(out_dir / "annotations" / annotation_name(report.split), records)
        _log(report, log)
    return [report for report, _ in prepared]


def _log(report: PrepareReport, log: TextIO | None) -> None:
    if log is not None:
        print(report.summary(), file=log, flush=True)


def _probe_split(
    root: Path,
    split: str,
    entries: list[VideoEntry],
    cache: ProbeCache,
    min_frames: int,
    *,
    workers: int,
    log: TextIO | None,
) -> tuple[PrepareReport, list[VideoRecord]]:
    """One split's report and the records of its usable videos, in list order."""
    report = PrepareReport(split=split, total=len(entries), min_frames=min_frames)
    found = [e for e in entries if e.path is not None and inside_root(root, e.path)]
    abs_paths = list(dict.fromkeys(str(root / e.path) for e in found))
    progress = Progress(split, len(abs_paths), log)
    results, report.probed = probe_paths(abs_paths, cache, workers=workers, progress=progress)
    report.cached = len(abs_paths) - report.probed
    records = []
    seen: set[str] = set()
    for entry in entries:
        if entry.video_id in seen:
            report.skip(entry.video_id, "duplicate", DUPLICATE)
        elif entry.path is None:
            report.skip(entry.video_id, "missing", MISSING)
        elif not inside_root(root, entry.path):
            report.skip(entry.path, "outside root", f"{OUTSIDE_ROOT} {root}")
        else:
            result = results[str(root / entry.path)]
            frames = (result["info"] or {}).get("num_frames", 0)
            if result["error"] is not None:
                report.skip(entry.path, "unreadable", result["error"])
            elif frames < min_frames:
                report.skip(
                    entry.path,
                    "too short",
                    f"{frames} decodable frame(s), fewer than the minimum {min_frames} "
                    "(--min-frames)",
                )
            else:
                records.append(_record(entry, result))
        seen.add(entry.video_id)
    return report, records


def prepare_numbered_split(
    root: Path,
    train: list[VideoEntry],
    test: list[VideoEntry],
    out_dir: Path,
    *,
    split: int,
    dataset: str,
    class_names: Sequence[str],
    min_frames: int = MIN_FRAMES,
    workers: int | None = None,
    log: TextIO | None = sys.stderr,
) -> list[PrepareReport]:
    """:func:`prepare_splits` for train/test split ``split`` under the original pipeline's names.

    Writes ``manifests/{train,test}_split<N>.parquet`` and
    ``annotations/{train,test}_split_<N>.json``.
    """
    return prepare_splits(
        root,
        {f"train_split{split}": train, f"test_split{split}": test},
        out_dir,
        dataset=dataset,
        class_names=class_names,
        manifest_name=lambda s: f"{s}.parquet",
        annotation_name=lambda s: s.replace("_split", "_split_") + ".json",
        min_frames=min_frames,
        workers=workers,
        log=log,
    )


def _record(entry: VideoEntry, result: dict) -> VideoRecord:
    info = result["info"]
    return VideoRecord(
        video_id=entry.video_id,
        path=entry.path or "",
        label=entry.label,
        class_name=entry.class_name,
        num_frames=info["num_frames"],
        fps=info["fps"],
        width=info["width"],
        height=info["height"],
        codec=info["codec"],
        size_bytes=result["size"],
    )


def index_files(root: Path, suffixes: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Lower-cased file name -> relative paths of the files under ``root`` (with these suffixes).

    Without ``suffixes`` every file is indexed: a list file names its videos, and whatever it
    names is probed, so any container FFmpeg reads (``.mov``, ``.ogv``, ``.mpeg``...) is accepted.
    """
    wanted = tuple(s.lower() for s in suffixes) if suffixes is not None else ("",)
    index: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            if filename.lower().endswith(wanted):
                rel = os.path.relpath(os.path.join(dirpath, filename), root)
                index.setdefault(filename.lower(), []).append(rel)
    return index


@functools.cache
def demuxer_suffixes() -> frozenset[str]:
    """``.ext`` of every container format this PyAV build reads, from FFmpeg's own format list."""
    suffixes = set()
    for name in av.formats_available:
        fmt = av.ContainerFormat(name)
        if fmt.is_input:
            suffixes.update(f".{ext.lower()}" for ext in fmt.extensions)
    return frozenset(suffixes)


def pick_file(index: dict[str, list[str]], filename: str, folder: str | None) -> str | None:
    """The indexed file named ``filename`` (any case), preferring one inside ``folder``."""
    candidates = index.get(filename.lower(), [])
    if folder is not None:
        for rel in candidates:
            parent = Path(rel).parent.name
            if parent.lower() == folder.lower():
                return rel
    return candidates[0] if candidates else None


def read_lines(path: Path, what: str, hint: str) -> list[str]:
    """Non-blank, stripped lines of a list file (CRLF and BOM tolerated), or a PrepareError."""
    if not path.is_file():
        raise PrepareError(f"{what} not found: {path}. {hint}")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def require_dir(path: Path, what: str, hint: str) -> Path:
    """``path`` if it is a directory, else a PrepareError naming it."""
    if not path.is_dir():
        raise PrepareError(f"{what} not found: {path}. {hint}")
    return path
