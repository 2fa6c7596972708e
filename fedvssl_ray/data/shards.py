"""Clients' shards for a run: the split's manifest, cut by the configured partition, and the clip
stream each client trains on."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..config import Config
from .manifest import Manifest, VideoRecord, load_manifest
from .partition import PartitionError, partition_videos, read_partitions
from .prepare.common import PrepareError
from .synthetic import ensure_synthetic_dataset, refresh_synthetic_dataset


class DatasetMissingError(FileNotFoundError):
    """The configured dataset has not been prepared; the message says how to prepare it."""


class ShardsError(ValueError):
    """The clients' shards cannot be built from the config; the message names the key."""


def manifest_path(cfg: Config) -> Path:
    """The train manifest ``prepare.py`` wrote (Kinetics-400 has one train split, no numbers)."""
    name = "train" if cfg.data.dataset == "kinetics400" else f"train_split{cfg.data.split}"
    return Path(cfg.data.root) / "manifests" / f"{name}.parquet"


def ensure_dataset(cfg: Config) -> Path:
    """The train manifest of the configured dataset; the synthetic one is generated if missing."""
    path = manifest_path(cfg)
    root = Path(cfg.data.root)
    if root.exists() and not root.is_dir():
        raise DatasetMissingError(f"data.root={root} is a file; give the dataset's folder")
    if cfg.data.dataset == "synthetic":  # made if missing, remade if an older generator made it
        _ensure_synthetic(root, path.is_file())
    if not path.is_file():
        raise DatasetMissingError(
            f"no manifest at {path}: prepare the dataset first, e.g. "
            f"python experiments/prepare.py {cfg.data.dataset} --out {cfg.data.root} ... "
            "(see README), or set data.root to a prepared dataset"
        )
    return path


def _ensure_synthetic(root: Path, prepared: bool) -> None:
    """Generate (or refresh) the synthetic dataset in ``root``; a folder of other files, or
    one that cannot be written, is a :class:`DatasetMissingError` naming ``data.root``."""
    try:
        if prepared:
            refresh_synthetic_dataset(root)
        else:
            ensure_synthetic_dataset(root)
    except PrepareError as err:
        raise DatasetMissingError(
            f"data.root={root} is not a prepared dataset (no manifests/) and the synthetic one "
            f"is generated only in a new or empty folder: {err} for data.root"
        ) from None
    except OSError as err:
        raise DatasetMissingError(
            f"data.root={root}: cannot write the synthetic dataset there ({err.strerror or err}: "
            f"{err.filename or root}); choose a writable folder for data.root"
        ) from None


def read_file_bytes(root: Path, record: VideoRecord) -> bytes:
    """The encoded bytes of one video (read once per client; the stream caches them)."""
    return (root / record.path).read_bytes()


@dataclass(frozen=True)
class ShardStreams:
    """Picklable recipe that builds a client's clip stream where the client runs."""

    shards: tuple[tuple[VideoRecord, ...], ...]
    root: Path
    cfg: Config

    def __call__(self, client_id: int):
        """The client's :class:`~fedvssl_ray.data.pipeline.ClipStream`."""
        # imported here: the stream (and torch) is needed in client processes only
        from .pipeline import ClipStream

        return ClipStream(
            list(self.shards[client_id]),
            partial(read_file_bytes, self.root),
            crop_size=self.cfg.data.crop_size,
            clip_len=self.cfg.data.clip_len,
            batch_size=self.cfg.client.batch_size,
            seed=self.cfg.seed,
            client_id=client_id,
            backend=self.cfg.data.loader,
            augment_on=self.cfg.data.augment_on,
            patch_speed=self.cfg.data.patch_speed,
            **decode_options(self.cfg),
        )


def decode_workers(cfg: Config) -> int:
    """``data.decode_workers`` resolved: -1 is ``client.num_cpus - 1`` on GPU clients (their CPU
    share but the training process's), 0 on CPU clients (which train on their share)."""
    if cfg.data.decode_workers >= 0:
        return cfg.data.decode_workers
    return max(0, int(cfg.client.num_cpus + 1e-9) - 1) if cfg.client.num_gpus > 0 else 0


def decode_options(cfg: Config) -> dict[str, int]:
    """:class:`~fedvssl_ray.data.pipeline.ClipStream` arguments that make its clips with
    :func:`decode_workers` processes (Ray Data: tasks; none given keeps its default)."""
    workers = decode_workers(cfg)
    if not workers:
        return {}
    return {"processes": workers} if cfg.data.loader == "local" else {"workers": workers}


@dataclass(frozen=True)
class ClientShards:
    """The videos of every client of a run."""

    manifest: Manifest
    shards: list[list[VideoRecord]]
    cfg: Config

    @classmethod
    def from_config(cls, cfg: Config) -> ClientShards:
        """Every client's videos; a partition that does not fit the run raises
        :class:`ShardsError` naming the key to change (checked before any actor starts)."""
        manifest = load_manifest(ensure_dataset(cfg))
        shards = _read_shards(cfg, manifest) if cfg.data.partition_dir else _cut_shards(
            cfg, manifest)
        empty = [k for k, shard in enumerate(shards) if not shard]
        if empty:
            source = (f"data.partition_dir={cfg.data.partition_dir} (client_dist{empty[0] + 1}"
                      ".json is empty)" if cfg.data.partition_dir
                      else f"data.partition={cfg.data.partition} over "
                      f"{len(manifest.records)} videos")
            raise ShardsError(
                f"clients {empty} get no videos from {source}; use fewer clients (num_clients) "
                "or another partition"
            )
        return cls(manifest, [list(s) for s in shards], cfg)

    def stream_factory(self) -> ShardStreams:
        return ShardStreams(tuple(tuple(s) for s in self.shards), self.manifest.root, self.cfg)

    def steps_per_client(self) -> dict[int, int]:
        """Local SGD steps of each client per round (padded batches, every local epoch)."""
        batch, epochs = self.cfg.client.batch_size, self.cfg.client.local_epochs
        return {k: epochs * math.ceil(len(s) / batch) for k, s in enumerate(self.shards)}

    def summary(self) -> str:
        sizes = [len(s) for s in self.shards]
        classes = [len(Counter(r.label for r in s)) for s in self.shards]
        return (
            f"{self.cfg.data.dataset} ({len(self.manifest.records)} train videos, "
            f"{self.manifest.num_classes} classes) -> {len(sizes)} clients, "
            f"{self.cfg.data.partition}: videos per client {_span(sizes)}, "
            f"classes per client {_span(classes)}"
        )


def _read_shards(cfg: Config, manifest: Manifest) -> list[list[VideoRecord]]:
    """The clients' videos from ``data.partition_dir``, one ``client_dist{k}.json`` each."""
    folder = cfg.data.partition_dir
    try:
        shards = read_partitions(folder, manifest.records)
    except PartitionError as err:
        raise ShardsError(
            f"data.partition_dir={folder}: {err}. Give the folder of client_dist1.json ... "
            f"client_dist{cfg.num_clients}.json (python experiments/prepare.py partition "
            "writes them), or leave data.partition_dir empty to partition the manifest"
        ) from None
    if len(shards) != cfg.num_clients:
        raise ShardsError(
            f"data.partition_dir={folder} holds {len(shards)} client partitions but "
            f"num_clients={cfg.num_clients}; set num_clients={len(shards)} (and "
            "clients_per_round at most that), or give a folder with "
            f"{cfg.num_clients} partitions"
        )
    return shards


def _cut_shards(cfg: Config, manifest: Manifest) -> list[list[VideoRecord]]:
    """The clients' videos by ``data.partition`` of the manifest, seeded by ``seed``."""
    try:
        return partition_videos(
            manifest.records, cfg.num_clients, cfg.data.partition, seed=cfg.seed,
            **_partition_params(cfg),
        )
    except PartitionError as err:
        raise ShardsError(
            f"data.partition={cfg.data.partition} cannot give num_clients={cfg.num_clients} "
            f"clients videos from {manifest_path(cfg)}: {err}"
        ) from None


def _partition_params(cfg: Config) -> dict:
    if cfg.data.partition == "dirichlet":
        return {"dirichlet_alpha": cfg.data.dirichlet_alpha}
    if cfg.data.partition == "classes":
        return {"classes_per_client": cfg.data.classes_per_client}
    return {}


def _span(values: Sequence[int]) -> str:
    return f"{min(values)}-{max(values)}" if min(values) != max(values) else str(values[0])
