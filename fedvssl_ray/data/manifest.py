"""Video manifests (one Parquet table per dataset split) and the original pipeline's annotations.

A manifest row describes one video: ``video_id`` (``"<Class>/<stem>"``, the annotation "name"),
``path`` (relative to the dataset's video root), 0-based ``label``, ``class_name``, and what a
probe found: ``num_frames``, ``fps``, ``width``, ``height``, ``codec``, ``size_bytes``.

The video root is stored in the Parquet schema metadata (key ``fedvssl_ray.root``) next to the
dataset name, the split and the full class list. When the root lies inside the folder that
holds the ``manifests/`` directory it is stored relative to the manifest file, so a prepared
dataset can be moved or copied as one folder; otherwise it is stored as an absolute path.
:func:`resolve_video_path` (or :meth:`Manifest.resolve`) gives ``root / path``. A row's path
must stay inside the root (no ``..`` escape, no absolute path elsewhere): :func:`load_manifest`
refuses the manifest otherwise, so a manifest from elsewhere cannot make a run read
``/etc/passwd``. The check is on the path as written; symbolic links inside the root (a
dataset linked in from another disk) are followed as usual.

Interchange with the original pipeline (CtP and the Flower FedVSSL baseline):
``annotations/{train,test}_split_1.json`` is a list of ``{"name", "label"}`` with **1-based**
labels, indent 2; the TXT form has ``"<name> <label>"`` lines. Labels here are 0-based; the
conversion happens only in these readers and writers.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fedvssl_ray.data import decode, frame_zip

META_ROOT = b"fedvssl_ray.root"
META_DATASET = b"fedvssl_ray.dataset"
META_SPLIT = b"fedvssl_ray.split"
META_CLASSES = b"fedvssl_ray.class_names"

SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("fps", pa.float32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("codec", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
    ]
)
"""Columns every manifest has (extra columns are kept and ignored)."""


class ManifestError(ValueError):
    """A manifest or annotation file is malformed; the message names the file and the column."""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a split: its id, where it is, its class, and what its probe found."""

    video_id: str
    path: str
    label: int
    class_name: str
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    size_bytes: int


@dataclass(frozen=True)
class Manifest:
    """A split's records plus the metadata needed to open its videos."""

    path: Path
    records: list[VideoRecord]
    root: Path
    dataset: str
    split: str
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def resolve(self, record: VideoRecord) -> Path:
        """Absolute path of a record's video file (or frame archive)."""
        return self.root / record.path


def inside_root(root: str | os.PathLike, path: str) -> bool:
    """Whether ``root / path`` names something inside ``root``, judged on the path as written."""
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, path))
    return full != base and full.startswith(base.rstrip(os.sep) + os.sep)


def _check_paths(path: Path, root: Path, records: Sequence[VideoRecord]) -> None:
    """ManifestError naming the manifest and the first row whose path leaves ``root``."""
    for row, record in enumerate(records):
        if not inside_root(root, record.path):
            raise ManifestError(
                f"{path}: row {row} (video {record.video_id!r}) has path {record.path!r}, which "
                f"is outside the video root {root}; manifest paths must be relative to the root "
                "and stay inside it. Prepare the manifest again with experiments/prepare.py"
            )


def write_manifest(
    path: str | os.PathLike,
    records: Sequence[VideoRecord],
    *,
    root: str | os.PathLike,
    dataset: str,
    split: str,
    class_names: Sequence[str],
) -> Path:
    """Write ``records`` as a Parquet manifest with the root, dataset, split and classes in its metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([asdict(r) for r in records], schema=SCHEMA)
    metadata = {
        META_ROOT: _stored_root(Path(root), path).encode(),
        META_DATASET: dataset.encode(),
        META_SPLIT: split.encode(),
        META_CLASSES: json.dumps(list(class_names)).encode(),
    }
    table = table.replace_schema_metadata(metadata)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def _stored_root(root: Path, manifest_path: Path) -> str:
    """Root relative to the manifest's folder when it lies under the dataset folder, else absolute."""
    root = root.resolve()
    dataset_dir = manifest_path.resolve().parent.parent
    if root == dataset_dir or dataset_dir in root.parents:
        return os.path.relpath(root, manifest_path.resolve().parent)
    return str(root)


def read_manifest_table(path: str | os.PathLike) -> pa.Table:
    """The manifest as a pyarrow Table, validated (columns present, types castable, no nulls)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest; run `python experiments/prepare.py` first")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ManifestError(f"{path}: not a readable Parquet file ({err})") from err
    columns = []
    for field in SCHEMA:
        if field.name not in table.column_names:
            raise ManifestError(f"{path}: missing column {field.name!r}")
        column = table.column(field.name)
        if column.null_count:
            raise ManifestError(f"{path}: column {field.name!r} has {column.null_count} nulls")
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise ManifestError(
                f"{path}: column {field.name!r} is {column.type}, expected {field.type}"
            ) from err
    validated = pa.Table.from_arrays(columns, schema=SCHEMA)
    labels = validated.column("label").to_numpy()
    if len(labels) and labels.min() < 0:
        raise ManifestError(f"{path}: column 'label' has negative values (labels are 0-based)")
    repeated = [v for v, n in Counter(validated.column("video_id").to_pylist()).items() if n > 1]
    if repeated:
        raise ManifestError(f"{path}: column 'video_id' repeats {repeated[0]!r}")
    return validated.replace_schema_metadata(table.schema.metadata)


def read_manifest(path: str | os.PathLike) -> list[VideoRecord]:
    """The manifest's rows as records, in file order."""
    table = read_manifest_table(path)
    names = [f.name for f in fields(VideoRecord)]
    columns = [table.column(n).to_pylist() for n in names]
    return [VideoRecord(*row) for row in zip(*columns, strict=True)]


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Records plus the resolved video root, dataset, split and class list of a manifest."""
    path = Path(path)
    table = read_manifest_table(path)
    meta = table.schema.metadata or {}
    if META_ROOT not in meta:
        raise ManifestError(
            f"{path}: schema metadata lacks {META_ROOT.decode()!r} (the video root)"
        )
    root = Path(meta[META_ROOT].decode())
    if not root.is_absolute():
        root = (path.resolve().parent / root).resolve()
    records = read_manifest(path)
    _check_paths(path, root, records)
    if META_CLASSES in meta:
        class_names = json.loads(meta[META_CLASSES].decode())
    else:
        by_label = {r.label: r.class_name for r in records}
        class_names = [by_label.get(i, str(i)) for i in range(max(by_label, default=-1) + 1)]
    return Manifest(
        path=path,
        records=records,
        root=root,
        dataset=meta.get(META_DATASET, b"").decode(),
        split=meta.get(META_SPLIT, b"").decode(),
        class_names=class_names,
    )


def resolve_video_path(manifest_path: str | os.PathLike, record: VideoRecord) -> Path:
    """Absolute path of ``record``'s video, using the root stored in ``manifest_path``."""
    return load_manifest(manifest_path).resolve(record)


def frame_reader(record: VideoRecord) -> Callable[..., np.ndarray]:
    """The ``read_frames`` function that opens this record: video decoder or frame archive."""
    if record.codec == frame_zip.FRAME_ZIP_CODEC:
        return frame_zip.read_frames
    return decode.read_frames


# ---------------------------------------------------------------- annotation interchange


def write_annotation_json(path: str | os.PathLike, records: Iterable[VideoRecord]) -> Path:
    """Write ``[{"name": video_id, "label": label + 1}, ...]`` (1-based, indent 2)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    items = [{"name": r.video_id, "label": int(r.label) + 1} for r in records]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(items, indent=2))
    os.replace(tmp, path)
    return path


def read_annotation_json(path: str | os.PathLike) -> list[tuple[str, int]]:
    """``(name, label)`` pairs from an annotation JSON, labels converted to 0-based."""
    path = Path(path)
    try:
        items = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: not a readable annotation JSON ({err})") from err
    if not isinstance(items, list):
        raise ManifestError(f"{path}: expected a JSON list of {{'name', 'label'}} objects")
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item or "label" not in item:
            raise ManifestError(f"{path}: entry {k} lacks 'name' or 'label': {item!r}")
        label = item["label"]
        if not isinstance(label, int) or label < 1:
            raise ManifestError(f"{path}: entry {k} has label {label!r}; labels are 1-based ints")
        out.append((str(item["name"]), label - 1))
    return out


def read_annotation_txt(path: str | os.PathLike) -> list[tuple[str, int]]:
    """``(name, label)`` pairs from ``"<name> <label>"`` lines (1-based), labels made 0-based.

    The label is the last space-separated field, so names with spaces survive; blank lines
    are skipped.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise ManifestError(f"{path}: cannot read ({err})") from err
    out = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        name, _, label = line.rpartition(" ")
        if not name or not label.isdigit() or int(label) < 1:
            raise ManifestError(f"{path}:{number}: expected '<name> <label>' with a 1-based label")
        out.append((name, int(label) - 1))
    return out
