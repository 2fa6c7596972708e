"""Import data prepared for the original pipeline (CtP / the Flower FedVSSL baseline) as it is.

Reads ``root/annotations/{train,test}_split_{N}.json`` (or the ``.txt`` form) and finds each
video's frame archive at ``root/zips/<name>.zip`` (UCF-101), ``root/zips/<stem>.zip`` (HMDB-51)
or ``root/<name>/RGB_frames.zip`` (Kinetics-400). The archives are probed (frame count, size)
and listed in manifests whose ``codec`` is :data:`fedvssl_ray.data.frame_zip.FRAME_ZIP_CODEC`,
so the clip pipeline reads them with the frame-archive reader. Partition files
(``annotations/client_distribution/client_dist<k>.json``) need no import:
:func:`fedvssl_ray.data.partition.read_partitions` reads them against these manifests.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from fedvssl_ray.data.manifest import read_annotation_json, read_annotation_txt
from fedvssl_ray.data.prepare.common import (
    MIN_FRAMES,
    PrepareError,
    PrepareReport,
    VideoEntry,
    prepare_numbered_split,
    require_dir,
)


def _annotations(root: Path, kind: str, split: int) -> list[tuple[str, int]]:
    base = root / "annotations" / f"{kind}_split_{split}"
    if base.with_suffix(".json").is_file():
        return read_annotation_json(base.with_suffix(".json"))
    if base.with_suffix(".txt").is_file():
        return read_annotation_txt(base.with_suffix(".txt"))
    raise PrepareError(
        f"annotation list not found: {base}.json (or .txt). Pass --root as the prepared data "
        "folder that holds annotations/ and zips/."
    )


def _archive(root: Path, name: str) -> str | None:
    """The frame archive of ``name`` relative to ``root``, trying the three known layouts."""
    for rel in (f"zips/{name}.zip", f"zips/{Path(name).name}.zip", f"{name}/RGB_frames.zip"):
        if (root / rel).is_file():
            return rel
    return None


def prepare_seed(
    root: str | Path,
    out_dir: str | Path,
    *,
    split: int = 1,
    min_frames: int = MIN_FRAMES,
    workers: int | None = None,
    log: TextIO | None = sys.stderr,
) -> list[PrepareReport]:
    """Manifests for the original pipeline's prepared frame archives and annotation lists."""
    root = require_dir(
        Path(root), "prepared data folder", "Pass --root as the folder with annotations/ and zips/."
    )
    lists = {kind: _annotations(root, kind, split) for kind in ("train", "test")}
    folder_of: dict[int, str] = {}
    for name, label in (item for items in lists.values() for item in items):
        if "/" in name:
            folder_of.setdefault(label, name.split("/")[0])
    num_classes = 1 + max(label for items in lists.values() for _, label in items)
    class_names = [folder_of.get(i, str(i)) for i in range(num_classes)]
    train, test = (
        [
            VideoEntry(name, _archive(root, name), label, class_names[label])
            for name, label in lists[kind]
        ]
        for kind in ("train", "test")
    )
    return prepare_numbered_split(
        root,
        train,
        test,
        Path(out_dir),
        split=split,
        dataset="seed",
        class_names=class_names,
        min_frames=min_frames,
        workers=workers,
        log=log,
    )
