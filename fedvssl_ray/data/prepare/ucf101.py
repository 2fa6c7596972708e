"""UCF-101 from its release layout to manifests.

Videos: either the flat folder ``unrar e`` gives (``v_<Class>_gXX_cYY.avi``) or the nested
``UCF-101/<Class>/...`` that ``unrar x`` gives; both are found by walking ``raw_dir``. Splits:
``ucfTrainTestlist/`` with ``classInd.txt`` (``<id> <Class>``, 1-based), ``trainlistNN.txt``
(``<Class>/<file>.avi <id>``) and ``testlistNN.txt`` (``<Class>/<file>.avi``). The class comes
from the list line's folder part (``HandstandPushups/v_HandStandPushups_g01_c01.avi``: the folder
and the file name differ in case), and files are found by name case-insensitively. A list line
is ``<path> [<id>]``: the id, when there is one, is the last token, so names with spaces survive.
Whatever container a line names (``.avi``, ``.mp4``, ``.mov``, ``.ogv``...) is probed with FFmpeg.

Writes ``out/manifests/{train,test}_split{N}.parquet`` and, for the original pipeline,
``out/annotations/{train,test}_split_{N}.json``.
"""

from __future__ import annotations

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

_SPLITS_HINT = (
    "Pass --splits-dir as the folder extracted from UCF101TrainTestSplits-RecognitionTask.zip "
    "(ucfTrainTestlist/ or its parent)."
)


def find_splits_dir(splits_dir: str | Path) -> Path:
    """The folder holding ``classInd.txt``: ``splits_dir`` itself or its ``ucfTrainTestlist/``."""
    splits_dir = Path(splits_dir)
    for candidate in (splits_dir, splits_dir / "ucfTrainTestlist"):
        if (candidate / "classInd.txt").is_file():
            return candidate
    raise PrepareError(f"class index not found: {splits_dir / 'classInd.txt'}. {_SPLITS_HINT}")


def read_class_index(path: Path) -> list[str]:
    """Class names in id order from ``<id> <Class>`` lines (ids must be 1..C)."""
    by_id: dict[int, str] = {}
    for line in read_lines(path, "class index", _SPLITS_HINT):
        ident, _, name = line.partition(" ")
        if not ident.isdigit() or not name.strip():
            raise PrepareError(f"{path}: malformed line {line!r}; expected '<id> <Class>'")
        by_id[int(ident)] = name.strip()
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise PrepareError(f"{path}: class ids must be 1..{len(by_id)} without gaps")
    return [by_id[i] for i in range(1, len(by_id) + 1)]


def list_path_part(line: str) -> str:
    """The path of a ``<path> [<id>]`` list line: a trailing number is the class id, the rest
    (spaces included) is the path."""
    parts = line.rsplit(maxsplit=1)
    return parts[0].strip() if len(parts) == 2 and parts[1].isdigit() else line


def list_entries(
    list_path: Path, class_names: list[str], index: dict[str, list[str]]
) -> list[VideoEntry]:
    """Entries of a train/test list; the label comes from the line's class folder."""
    exact = {name: i for i, name in enumerate(class_names)}
    folded = {name.lower(): i for i, name in enumerate(class_names)}
    entries = []
    for line in read_lines(list_path, "split list", _SPLITS_HINT):
        rel = list_path_part(line)
        folder, _, filename = rel.replace("\\", "/").rpartition("/")
        if not folder:
            raise PrepareError(f"{list_path}: line {line!r} lacks the '<Class>/' folder part")
        label = exact.get(folder, folded.get(folder.lower()))
        if label is None:
            raise PrepareError(f"{list_path}: class {folder!r} is not in classInd.txt")
        stem = Path(filename).stem
        entries.append(
            VideoEntry(
                video_id=f"{folder}/{stem}",
                path=pick_file(index, filename, folder),
                label=label,
                class_name=class_names[label],
            )
        )
    return entries


def prepare_ucf101(
    raw_dir: str | Path,
    splits_dir: str | Path,
    out_dir: str | Path,
    *,
    split: int = 1,
    min_frames: int = MIN_FRAMES,
    workers: int | None = None,
    log: TextIO | None = sys.stderr,
) -> list[PrepareReport]:
    """Prepare UCF-101 split ``split`` (1..3): probe the videos, write manifests and annotations."""
    raw_dir = require_dir(
        Path(raw_dir),
        "UCF-101 video folder",
        "Pass --raw-dir as the folder extracted from UCF101.rar.",
    )
    lists_dir = find_splits_dir(splits_dir)
    class_names = read_class_index(lists_dir / "classInd.txt")
    index = index_files(raw_dir)
    return prepare_numbered_split(
        raw_dir,
        list_entries(lists_dir / f"trainlist{split:02d}.txt", class_names, index),
        list_entries(lists_dir / f"testlist{split:02d}.txt", class_names, index),
        Path(out_dir),
        split=split,
        dataset="ucf101",
        class_names=class_names,
        min_frames=min_frames,
        workers=workers,
        log=log,
    )
