"""The preparation runner shared by every dataset: probe listed videos, write manifests, report.

A dataset module turns its release layout into :class:`VideoEntry` lists (one per split); this
module probes each existing file (in parallel processes for large sets), writes the split's
Parquet manifest and the original pipeline's annotation JSON, and returns a
:class:`PrepareReport`. Probe results are cached per file in ``<out>/manifests/probe_cache.jsonl``
keyed by absolute path, size and mtime, so a rerun (or a run resumed after an interruption)
probes only new or changed files. Unreadable and missing videos are skipped and listed, never
fatal.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from fedvssl_ray.data import frame_zip
from fedvssl_ray.data.decode import VideoDecodeError, VideoInfo, probe_video
from fedvssl_ray.data.manifest import VideoRecord, write_annotation_json, write_manifest

CACHE_NAME = "probe_cache.jsonl"
# Below this many files to probe, probing in-process beats starting worker processes.
_MIN_FILES_FOR_PROCESSES = 256
_CHUNK = 32
MISSING = "missing file"
DUPLICATE = "listed twice"


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
    """What one split's preparation did."""

    split: str
    total: int = 0
    probed: int = 0
    cached: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    manifest: Path | None = None

    @property
    def prepared(self) -> int:
        return self.total - len(self.skipped)

    @property
    def missing(self) -> int:
        return sum(1 for _, reason in self.skipped if reason == MISSING)

    def summary(self, max_listed: int = 20) -> str:
        """A few lines: counts, then the skipped files with reasons."""
        lines = [
            f"[{self.split}] prepared {self.prepared}/{self.total} "
            f"(probed {self.probed}, from cache {self.cached}), skipped {len(self.skipped)} "
            f"(missing {self.missing}) -> {self.manifest}"
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
    """Probe a video file, or a frame archive when the name ends in ``.zip``."""
    if path.lower().endswith(".zip"):
        return frame_zip.probe_frame_zip(path)
    return probe_video(path)


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
    """Append-only JSON-lines cache of probe results keyed by (absolute path, size, mtime)."""

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
        if item and item["size"] == stat.st_size and item["mtime_ns"] == stat.st_mtime_ns:
            return item
        return None

    def put(self, path: str, stat: os.stat_result, info: dict | None, error: str | None) -> dict:
        item = {
            "path": path,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "info": info,
            "error": error,
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
        stat = os.stat(path)
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
    workers: int | None = None,
    log: TextIO | None = sys.stderr,
) -> list[PrepareReport]:
    """Probe every split's entries and write ``out/manifests/`` and ``out/annotations/``.

    :param root: folder the entries' paths are relative to (stored in the manifests).
    :param splits: split name -> entries in list-file order (kept in the manifest).
    :param manifest_name: split name -> manifest file name, e.g. ``train_split1.parquet``.
    :param annotation_name: split name -> annotation JSON file name.
    :param log: where progress and reports go; None for silence.
    """
    workers = default_workers() if workers is None else max(1, workers)
    cache = ProbeCache(out_dir / "manifests" / CACHE_NAME)
    reports = []
    try:
        for split, entries in splits.items():
            report = PrepareReport(split=split, total=len(entries))
            found = [e for e in entries if e.path is not None]
            abs_paths = [str(root / e.path) for e in found]
            progress = Progress(split, len(set(abs_paths)), log)
            results, report.probed = probe_paths(
                abs_paths, cache, workers=workers, progress=progress
            )
            report.cached = len(set(abs_paths)) - report.probed
            records = []
            seen: set[str] = set()
            for entry in entries:
                if entry.video_id in seen:
                    report.skipped.append((entry.video_id, DUPLICATE))
                    continue
                seen.add(entry.video_id)
                if entry.path is None:
                    report.skipped.append((entry.video_id, MISSING))
                    continue
                result = results[str(root / entry.path)]
                if result["error"] is not None:
                    report.skipped.append((entry.path, result["error"]))
                    continue
                records.append(_record(entry, result))
            report.manifest = write_manifest(
                out_dir / "manifests" / manifest_name(split),
                records,
                root=root,
                dataset=dataset,
                split=split,
                class_names=class_names,
            )
            write_annotation_json(out_dir / "annotations" / annotation_name(split), records)
            if log is not None:
                print(report.summary(), file=log, flush=True)
            reports.append(report)
    finally:
        cache.close()
    return reports


def prepare_numbered_split(
    root: Path,
    train: list[VideoEntry],
    test: list[VideoEntry],
    out_dir: Path,
    *,
    split: int,
    dataset: str,
    class_names: Sequence[str],
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


def index_files(root: Path, suffixes: Iterable[str]) -> dict[str, list[str]]:
    """Lower-cased file name -> relative paths of the files under ``root`` with these suffixes."""
    wanted = tuple(s.lower() for s in suffixes)
    index: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            if filename.lower().endswith(wanted):
                rel = os.path.relpath(os.path.join(dirpath, filename), root)
                index.setdefault(filename.lower(), []).append(rel)
    return index


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
