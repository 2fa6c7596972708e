"""HMDB-51 from its release layout to manifests.

Videos: ``<class>/<video>.avi`` (one folder per class, as the per-class rars extract; a flat
folder works too). Splits: ``testTrainMulti_7030_splits/<class>_test_split<N>.txt`` with lines
``<video>.avi <tag>``, tag 1 = train, 2 = test, 0 = unused. Video names contain spaces and
punctuation, so the tag is split off the end of the line (after any space or tab). Whatever
container a line names is probed with FFmpeg. Class ids are the positions of the
sorted class names (the original pipeline used directory-listing order, which is not
reproducible).

Writes ``out/manifests/{train,test}_split{N}.parquet`` and ``out/annotations/{train,test}_split_{N}.json``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TextIO

from fedvssl_ray.data.prepare.common import (
    MIN_FRAMES,
    PrepareError,
    PrepareReport,
    VideoEntry,
    index_files,
    pick_file,
    prepare_numbered_split,
    read_lines,
    require_dir,
)

TRAIN_TAG, TEST_TAG = "1", "2"
_SPLITS_HINT = (
    "Pass --splits-dir as the folder extracted from test_train_splits.rar "
    "(testTrainMulti_7030_splits/ or its parent)."
)


def find_split_files(splits_dir: str | Path, split: int) -> dict[str, Path]:
    """Class name -> its ``<class>_test_split<N>.txt``, sorted by class name."""
    splits_dir = Path(splits_dir)
    pattern = re.compile(rf"^(?P<cls>.+)_test_split{split}\.txt$")
    for candidate in (splits_dir, splits_dir / "testTrainMulti_7030_splits"):
        if candidate.is_dir():
            files = {m["cls"]: p for p in candidate.iterdir() if (m := pattern.match(p.name))}
            if files:
                return dict(sorted(files.items()))
    raise PrepareError(f"no '*_test_split{split}.txt' files in {splits_dir}. {_SPLITS_HINT}")


def _split_tag(line: str) -> tuple[str, str]:
    """(video name, tag) of a ``<video> <tag>`` line; the name keeps its inner spaces."""
    parts = line.rsplit(maxsplit=1)
    return (parts[0].strip(), parts[1]) if len(parts) == 2 else ("", "")


def prepare_hmdb51(
    raw_dir: str | Path,
    splits_dir: str | Path,
    out_dir: str | Path,
    *,
    split: int = 1,
    min_frames: int = MIN_FRAMES,
    workers: int | None = None,
    log: TextIO | None = sys.stderr,
) -> list[PrepareReport]:
    """Prepare HMDB-51 split ``split`` (1..3): probe the videos, write manifests and annotations."""
    raw_dir = require_dir(
        Path(raw_dir),
        "HMDB-51 video folder",
        "Pass --raw-dir as the folder holding one sub-folder of .avi files per class.",
    )
    split_files = find_split_files(splits_dir, split)
    class_names = list(split_files)
    index = index_files(raw_dir)
    train: list[VideoEntry] = []
    test: list[VideoEntry] = []
    for label, (class_name, list_path) in enumerate(split_files.items()):
        for line in read_lines(list_path, "split file", _SPLITS_HINT):
            filename, tag = _split_tag(line)
            if not filename or tag not in ("0", TRAIN_TAG, TEST_TAG):
                raise PrepareError(
                    f"{list_path}: malformed line {line!r}; expected '<video> <0|1|2>'"
                )
            if tag == "0":
                continue
            entry = VideoEntry(
                video_id=f"{class_name}/{Path(filename).stem}",
                path=pick_file(index, filename, class_name),
                label=label,
                class_name=class_name,
            )
            (train if tag == TRAIN_TAG else test).append(entry)
    return prepare_numbered_split(
        raw_dir,
        train,
        test,
        Path(out_dir),
        split=split,
        dataset="hmdb51",
        class_names=class_names,
        min_frames=min_frames,
        workers=workers,
        log=log,
    )
