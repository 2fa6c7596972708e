"""Federated partitions: which videos each client holds.

Schemes (all seeded and deterministic):

* ``iid`` -- the FedVSSL baseline's UCF-101 split, reproduced exactly: CPython ``random`` seeded
  with ``seed`` (7) shuffles the list in file order, and client ``i`` (0-based) gets
  ``[floor(i*N/K) : floor((i+1)*N/K)]``. 9,537 videos over 5 clients: 1907/1907/1908/1907/1908.
* ``k400-noniid`` -- the FedVSSL authors' Kinetics-400 "8 classes per client" scheme, reproduced
  exactly: classes (all ids ``0..C-1``, empty ones too) are stable-sorted by video count; for
  window ``i`` the 4 classes ``S[i:i+4]`` and the 4 classes ``S[-i-5:-i-1]`` have their video
  lists shuffled **in place** (``random.seed(1234)`` before each small class, ``4321`` before
  each large one), and client ``i+1`` gets the first halves, client ``i+1+K/2`` the rest. The
  windows overlap and the shuffles compound, so a video can land in several clients. The
  authors ran K=100 (50 windows); any even K with ``C >= K/2 + 4`` classes works the same way.
* ``classes`` -- pathological label skew: each client holds ``classes_per_client`` classes
  (default ``ceil(C/K)``, which makes them disjoint). Class ``c``'s videos are cut into near-equal
  pieces, one per client slot it fills, and pieces are dealt round-robin in a seeded class
  order, so no client gets two pieces of one class and every video is used once.
* ``dirichlet`` -- per class, proportions ``p ~ Dir(dirichlet_alpha * 1_K)`` (numpy Generator
  seeded with ``seed``) split the class's shuffled videos; redrawn until every client holds at
  least ``min_per_client`` videos (FedU/FedEMA use ``dirichlet_alpha = 0.1``).

Partition files are the Flower baseline's: ``client_dist{k}.json``, k = 1..K, each a JSON list
of ``{"name": video_id, "label": label + 1}`` (1-based, indent 2).

A client without a video cannot train, so a partition that leaves one empty (more clients than
videos, or a scheme that gives some client nothing) is refused with a :class:`PartitionError`,
written or read, unless ``allow_empty=True`` (``--allow-empty-clients``).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedvssl_ray.data.manifest import VideoRecord

SCHEMES = ("iid", "k400-noniid", "classes", "dirichlet")
_FILE_RE = re.compile(r"^client_dist(\d+)\.json$")


class PartitionError(ValueError):
    """A partition cannot be built or read; the message names the files and videos concerned."""


def partition_videos(
    records: Sequence[VideoRecord],
    num_clients: int,
    scheme: str,
    seed: int = 7,
    *,
    classes_per_client: int | None = None,
    dirichlet_alpha: float = 0.1,
    min_per_client: int = 1,
    num_classes: int | None = None,
    allow_empty: bool = False,
) -> list[list[VideoRecord]]:
    """Split ``records`` into ``num_clients`` lists by ``scheme`` (see the module docstring).

    :param records: the split's videos in file order (order matters for ``iid`` and
        ``k400-noniid``, which reproduce the reference scripts).
    :param seed: the ``iid``/``classes``/``dirichlet`` seed (the baseline uses 7);
        ``k400-noniid`` uses the authors' fixed seeds 1234 and 4321.
    :param num_classes: class count for ``k400-noniid``'s sort (empty classes count);
        default ``max(label) + 1``.
    :param allow_empty: return clients without videos instead of refusing them.
    """
    if num_clients < 1:
        raise PartitionError(f"num_clients must be >= 1, got {num_clients}")
    if not records:
        raise PartitionError("no videos to partition")
    if scheme == "iid":
        parts = _iid(records, num_clients, seed)
    elif scheme == "k400-noniid":
        parts = _k400_noniid(records, num_clients, num_classes)
    elif scheme == "classes":
        parts = _classes(records, num_clients, seed, classes_per_client)
    elif scheme == "dirichlet":
        parts = _dirichlet(records, num_clients, seed, dirichlet_alpha, min_per_client)
    else:
        raise PartitionError(f"unknown scheme {scheme!r}; choose one of {list(SCHEMES)}")
    empty = count_empty(parts)
    if empty and not allow_empty:
        raise PartitionError(
            f"{scheme!r} partitioning of {len(records)} videos over {num_clients} clients leaves "
            f"{empty} clients without a video; use fewer clients, or allow empty clients "
            "(--allow-empty-clients) if they are meant to sit out"
        )
    return parts


def count_empty(parts: Sequence[Sequence[VideoRecord]]) -> int:
    """How many clients hold no video."""
    return sum(1 for part in parts if not part)


def _iid(records: Sequence[VideoRecord], k: int, seed: int) -> list[list[VideoRecord]]:
    items = list(records)
    random.Random(seed).shuffle(items)
    n = len(items)
    return [items[i * n // k : (i + 1) * n // k] for i in range(k)]


def _k400_noniid(
    records: Sequence[VideoRecord], k: int, num_classes: int | None
) -> list[list[VideoRecord]]:
    if k % 2:
        raise PartitionError(
            f"k400-noniid pairs clients i and i+K/2: num_clients must be even, got {k}"
        )
    windows = k // 2
    num_classes = num_classes or 1 + max(r.label for r in records)
    if num_classes < windows + 4:
        raise PartitionError(
            f"k400-noniid with {k} clients needs at least {windows + 4} classes, got {num_classes}"
        )
    if max(r.label for r in records) >= num_classes:
        raise PartitionError(f"labels exceed num_classes={num_classes}")
    by_class: list[list[VideoRecord]] = [[] for _ in range(num_classes)]
    for r in records:
        by_class[r.label].append(r)
    order = sorted(range(num_classes), key=lambda c: len(by_class[c]))  # stable: ties by id
    parts: list[list[VideoRecord]] = [[] for _ in range(k)]
    rng = random.Random()
    for i in range(windows):
        small, large = order[i : i + 4], order[-i - 5 : -i - 1]
        for c_small, c_large in zip(small, large, strict=True):
            rng.seed(1234)
            rng.shuffle(by_class[c_small])
            rng.seed(4321)
            rng.shuffle(by_class[c_large])
            for c in (c_small, c_large):
                half = len(by_class[c]) // 2
                parts[i].extend(by_class[c][:half])
                parts[i + windows].extend(by_class[c][half:])
    return parts


def _grouped(records: Sequence[VideoRecord]) -> dict[int, list[VideoRecord]]:
    groups: dict[int, list[VideoRecord]] = defaultdict(list)
    for r in records:
        groups[r.label].append(r)
    return dict(sorted(groups.items()))


def _classes(
    records: Sequence[VideoRecord], k: int, seed: int, per_client: int | None
) -> list[list[VideoRecord]]:
    groups = _grouped(records)
    num_classes = len(groups)
    per_client = per_client or math.ceil(num_classes / k)
    slots = k * per_client
    if slots < num_classes:
        raise PartitionError(
            f"{k} clients x {per_client} classes cannot cover {num_classes} classes; "
            f"use --classes-per-client >= {math.ceil(num_classes / k)}"
        )
    if per_client > num_classes:
        raise PartitionError(f"classes_per_client={per_client} exceeds the {num_classes} classes")
    rng = np.random.default_rng(seed)
    labels = [list(groups)[i] for i in rng.permutation(num_classes)]
    # Class at position j of the shuffled order fills slots_j client slots (near-equal split).
    slot_counts = [slots // num_classes + (j < slots % num_classes) for j in range(num_classes)]
    pieces: list[list[VideoRecord]] = []
    for label, count in zip(labels, slot_counts, strict=True):
        videos = [groups[label][i] for i in rng.permutation(len(groups[label]))]
        pieces.extend(list(chunk) for chunk in _split_even(videos, count))
    parts: list[list[VideoRecord]] = [[] for _ in range(k)]
    for j, piece in enumerate(pieces):
        parts[j % k].extend(piece)
    return _in_input_order(parts, records)


def _split_even(items: list[VideoRecord], count: int) -> list[list[VideoRecord]]:
    n = len(items)
    return [items[i * n // count : (i + 1) * n // count] for i in range(count)]


def _dirichlet(
    records: Sequence[VideoRecord], k: int, seed: int, alpha: float, min_per_client: int
) -> list[list[VideoRecord]]:
    if alpha <= 0:
        raise PartitionError(f"dirichlet_alpha must be > 0, got {alpha}")
    if min_per_client * k > len(records):
        raise PartitionError(f"{len(records)} videos cannot give {k} clients {min_per_client} each")
    groups = _grouped(records)
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[VideoRecord]] = [[] for _ in range(k)]
        for videos in groups.values():
            shuffled = [videos[i] for i in rng.permutation(len(videos))]
            proportions = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(int)
            for client, chunk in enumerate(np.split(np.arange(len(shuffled)), cuts)):
                parts[client].extend(shuffled[i] for i in chunk)
        if min(len(p) for p in parts) >= min_per_client:
            return _in_input_order(parts, records)
    raise PartitionError(
        f"no Dirichlet({alpha}) draw in 1000 gave every client >= {min_per_client} videos; "
        "raise dirichlet_alpha or lower min_per_client"
    )


def _in_input_order(
    parts: list[list[VideoRecord]], records: Sequence[VideoRecord]
) -> list[list[VideoRecord]]:
    """Each client's videos in the order of the input list (stable, readable files)."""
    position = {r.video_id: i for i, r in enumerate(records)}
    return [sorted(part, key=lambda r: position[r.video_id]) for part in parts]


# ---------------------------------------------------------------- files


def write_partitions(directory: str | os.PathLike, parts: Sequence[Sequence[VideoRecord]]) -> Path:
    """Write ``client_dist{k}.json`` (k = 1..K, 1-based labels, indent 2) into ``directory``.

    Partition files numbered above K left over from an earlier run are removed, so the folder
    always describes exactly these K clients.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.iterdir():
        m = _FILE_RE.match(path.name)
        if m and int(m.group(1)) > len(parts):
            path.unlink()
    for k, part in enumerate(parts, 1):
        items = [{"name": r.video_id, "label": int(r.label) + 1} for r in part]
        tmp = directory / f".client_dist{k}.json.tmp"
        tmp.write_text(json.dumps(items, indent=2))
        os.replace(tmp, directory / f"client_dist{k}.json")
    return directory


def partition_files(directory: str | os.PathLike) -> list[Path]:
    """The ``client_dist{k}.json`` files of ``directory`` sorted by k (numerically), checked 1..K."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PartitionError(f"partition folder not found: {directory}")
    found = {int(m.group(1)): p for p in directory.iterdir() if (m := _FILE_RE.match(p.name))}
    if not found:
        raise PartitionError(f"no client_dist<k>.json files in {directory}")
    numbers = sorted(found)
    if numbers != list(range(1, len(numbers) + 1)):
        raise PartitionError(f"{directory}: client_dist numbers must be 1..K, found {numbers}")
    return [found[n] for n in numbers]


def read_partitions(
    directory: str | os.PathLike,
    manifest_records: Sequence[VideoRecord],
    *,
    allow_empty: bool = False,
) -> list[list[VideoRecord]]:
    """Client k-1's records from ``client_dist{k}.json``, matched to the manifest by name.

    Names are the key; a file's labels are not checked (pretraining ignores them, and some
    copies of the original annotations carry shifted labels). Every name must be in the
    manifest: the error names the file, the count and the first missing videos. A file
    without videos is refused unless ``allow_empty``. Partitions name videos, never paths, so
    they can only select from the manifest.
    """
    by_id = {r.video_id: r for r in manifest_records}
    parts = []
    for path in partition_files(directory):
        try:
            items = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise PartitionError(f"{path}: not a readable partition file ({err})") from err
        if not isinstance(items, list) or not all(
            isinstance(x, dict) and "name" in x for x in items
        ):
            raise PartitionError(f"{path}: expected a JSON list of {{'name', 'label'}} objects")
        missing = [x["name"] for x in items if x["name"] not in by_id]
        if missing:
            raise PartitionError(
                f"{path}: {len(missing)} of {len(items)} videos are not in the manifest, "
                f"e.g. {missing[:3]}; partition and manifest must come from the same split"
            )
        if not items and not allow_empty:
            raise PartitionError(
                f"{path}: lists no videos, so its client cannot train; remove the client "
                "(and renumber the files) or partition again"
            )
        parts.append([by_id[x["name"]] for x in items])
    return parts


def partition_summary(
    parts: Sequence[Sequence[VideoRecord]], class_names: Sequence[str] | None = None
) -> str:
    """Per-client videos, classes and the three largest classes, then totals and duplicates."""

    def name(label: int) -> str:
        return class_names[label] if class_names and label < len(class_names) else str(label)

    lines = []
    seen: Counter[str] = Counter()
    for k, part in enumerate(parts, 1):
        counts = Counter(r.label for r in part)
        seen.update(r.video_id for r in part)
        top = ", ".join(f"{name(c)}:{n}" for c, n in counts.most_common(3))
        lines.append(f"client {k:3d}: {len(part):6d} videos, {len(counts):4d} classes  [{top}]")
    total = sum(len(p) for p in parts)
    shared = sum(1 for n in seen.values() if n > 1)
    lines.append(
        f"total {total} entries, {len(seen)} unique videos, {shared} held by more than one client"
    )
    return "\n".join(lines)
