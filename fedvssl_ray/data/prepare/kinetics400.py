"""Kinetics-400 from annotation CSVs (or a plain list file) to manifests.

CSVs: ``label,youtube_id,time_start,time_end,split[,is_cc]``, labels quoted when they hold
commas or parentheses, so they are read with the ``csv`` module. A clip is found anywhere under
``raw_dir`` by its file stem ``<youtube_id>_<time_start:06d>_<time_end:06d>`` (the common
layout is ``<split>/<label>/<stem>.mp4``), whatever the label folder was renamed to. Copies in
the wild are incomplete: missing clips are counted in the report, never fatal. Class ids are
the positions of the sorted label names; rows without a label (the original test CSV) are
skipped.

A plain list file is accepted instead: ``path,label`` lines (label = class name), or
``<name> <class_id>`` lines with 1-based ids (the FedVSSL authors' ``train_in_official.txt``);
``name`` is a path under ``raw_dir`` with or without its extension.

Writes ``out/manifests/<split>.parquet`` and ``out/annotations/<split>.json`` per split.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TextIO

from fedvssl_ray.data.prepare.common import (
    MIN_FRAMES,
    PrepareError,
    PrepareReport,
    VideoEntry,
    demuxer_suffixes,
    index_files,
    prepare_splits,
    read_lines,
    require_dir,
)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".mpeg", ".mpg", ".ogv", ".m4v")
"""Tried in this order for a list name without a suffix, and preferred when files share a stem
(any other suffix FFmpeg reads is indexed too, after these)."""
CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def clip_stem(youtube_id: str, time_start: str, time_end: str) -> str:
    """``<youtube_id>_<start:06d>_<end:06d>``, the file stem downloaders give a clip."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def _stem_index(raw_dir: Path) -> dict[str, str]:
    """File stem (case kept: YouTube ids are case-sensitive) -> relative path of a file FFmpeg
    reads, a :data:`VIDEO_SUFFIXES` one first."""

    def rank(rel: str) -> int:
        suffix = Path(rel).suffix.lower()
        return VIDEO_SUFFIXES.index(suffix) if suffix in VIDEO_SUFFIXES else len(VIDEO_SUFFIXES)

    index: dict[str, str] = {}
    for paths in index_files(raw_dir, demuxer_suffixes() | set(VIDEO_SUFFIXES)).values():
        for rel in paths:
            stem = Path(rel).stem
            if stem not in index or rank(rel) < rank(index[stem]):
                index[stem] = rel
    return index


def read_csv_rows(csv_path: Path) -> list[dict[str, str]]:
    """Rows of an annotation CSV, checked for the required columns."""
    if not csv_path.is_file():
        raise PrepareError(
            f"annotation CSV not found: {csv_path}. Pass the Kinetics-400 train/validate CSVs."
        )
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise PrepareError(f"{csv_path}: missing column(s) {missing}; header is {header}")
        reader.fieldnames = header
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def entries_from_csvs(
    csv_paths: list[Path], stems: dict[str, str]
) -> tuple[dict[str, list[VideoEntry]], list[str], int]:
    """Entries per split, the sorted class names, and the number of unlabelled rows skipped."""
    rows = [row for p in csv_paths for row in read_csv_rows(p)]
    class_names = sorted({row["label"] for row in rows if row["label"]})
    label_of = {name: i for i, name in enumerate(class_names)}
    splits: dict[str, list[VideoEntry]] = {}
    unlabelled = 0
    for row in rows:
        if not row["label"]:
            unlabelled += 1
            continue
        stem = clip_stem(row["youtube_id"], row["time_start"], row["time_end"])
        entry = VideoEntry(
            video_id=f"{row['label']}/{stem}",
            path=stems.get(stem),
            label=label_of[row["label"]],
            class_name=row["label"],
        )
        splits.setdefault(row["split"] or "train", []).append(entry)
    return splits, class_names, unlabelled


def entries_from_list(
    list_path: Path, raw_dir: Path, stems: dict[str, str]
) -> tuple[list[VideoEntry], list[str]]:
    """Entries and class names from ``path,label`` or ``<name> <class_id>`` lines."""
    parsed: list[tuple[str, str | int]] = []
    for line in read_lines(list_path, "list file", "Pass --list as a file of 'path,label' lines."):
        if "," in line:
            row = next(csv.reader([line]))
            if len(row) != 2:
                raise PrepareError(f"{list_path}: malformed line {line!r}; expected 'path,label'")
            parsed.append((row[0].strip(), row[1].strip()))
        else:
            name, _, ident = line.rpartition(" ")
            if not name or not ident.isdigit() or int(ident) < 1:
                raise PrepareError(
                    f"{list_path}: malformed line {line!r}; expected '<name> <class_id>'"
                )
            parsed.append((name.strip(), int(ident)))
    if any(isinstance(label, int) for _, label in parsed):
        if not all(isinstance(label, int) for _, label in parsed):
            raise PrepareError(f"{list_path}: mixes 'path,label' and '<name> <class_id>' lines")
        num_classes = max(int(label) for _, label in parsed)
        folder_of = {int(label): Path(name).parent.name for name, label in parsed}
        class_names = [folder_of.get(i) or str(i) for i in range(1, num_classes + 1)]
        label_of = {i: i - 1 for i in range(1, num_classes + 1)}
    else:
        class_names = sorted({str(label) for _, label in parsed})
        label_of = {name: i for i, name in enumerate(class_names)}
    entries = []
    for name, label in parsed:
        path = _find(name, raw_dir, stems)
        stem_id = name.rsplit(".", 1)[0] if Path(name).suffix.lower() in VIDEO_SUFFIXES else name
        index = label_of[label]
        entries.append(VideoEntry(stem_id, path, index, class_names[index]))
    return entries, class_names


def _find(name: str, raw_dir: Path, stems: dict[str, str]) -> str | None:
    """A list name as a path relative to ``raw_dir``: as given, with a video suffix, or by stem."""
    if (raw_dir / name).is_file():
        return name
    for suffix in VIDEO_SUFFIXES:
        if (raw_dir / f"{name}{suffix}").is_file():
            return f"{name}{suffix}"
    return stems.get(Path(name).stem)


def prepare_kinetics400(
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    csv_paths: list[str | Path] | None = None,
    list_path: str | Path | None = None,
    list_split: str = "train",
    min_frames: int = MIN_FRAMES,
    workers: int | None = None,
    log: TextIO | None = sys.stderr,
) -> list[PrepareReport]:
    """Prepare Kinetics-400 clips listed by annotation CSVs (one manifest per CSV split) or a list file."""
    raw_dir = require_dir(
        Path(raw_dir),
        "Kinetics-400 video folder",
        "Pass --raw-dir as the folder holding the downloaded clips.",
    )
    if bool(csv_paths) == (list_path is not None):
        raise PrepareError("give either annotation CSVs (--csv) or one list file (--list)")
    stems = _stem_index(raw_dir)
    if csv_paths:
        splits, class_names, unlabelled = entries_from_csvs([Path(p) for p in csv_paths], stems)
        if unlabelled and log is not None:
            print(f"skipped {unlabelled} CSV rows without a label", file=log)
    else:
        entries, class_names = entries_from_list(Path(list_path), raw_dir, stems)
        splits = {list_split: entries}
    return prepare_splits(
        raw_dir,
        splits,
        Path(out_dir),
        dataset="kinetics400",
        class_names=class_names,
        manifest_name=lambda s: f"{s}.parquet",
        annotation_name=lambda s: f"{s}.json",
        min_frames=min_frames,
        workers=workers,
        log=log,
    )
