"""A client's CtP clip stream: shard cache, epoch plan, and two equivalent batch pipelines.

* :class:`ShardCache` reads a shard's encoded videos from storage once and keeps them, in this
  process's memory (``store="memory"``) or packed into one object-store array
  (``store="object_store"``, which Ray Data workers map without copying); each video is probed
  on arrival, and an unreadable or corrupt one is logged by name, counted and left out (never
  fatal).
* :func:`epoch_plan` is the seeded order of one epoch, padded to whole batches by repeating
  its first entries (T = ceil(n/B) full iterations, as the FedVSSL baseline).
* :func:`iter_ctp_batches` makes the batches in this process (optionally with a small thread
  pool: PyAV and torch release the GIL); :func:`iter_process_batches` in decode worker
  processes that the consumer owns (a ``torch.utils.data.DataLoader``);
  :func:`iter_ray_data_batches` in Ray Data tasks. All draw every sample's randomness from
  ``sample_rng(seed, client, round, epoch, position)``, so they yield identical tensors.
* :class:`ClipStream` is what a training actor keeps across rounds: ``batches(round, epoch)``.

With ``augment_on="device"`` (``data.augment_on``) the local pipelines stop after the decode and
the draws: batches are :class:`~fedvssl_ray.data.device_augment.DecodedBatch` (uint8 frames at
the decoded size plus each clip's :class:`~fedvssl_ray.data.transforms.CtpDraw`, the draws the
CPU path makes from the same generator), which the training step augments on its device.

A video whose decode fails mid-epoch is dropped from its batch (which comes out smaller),
logged, counted and left out of later epochs, identically in every pipeline.

Decode worker processes are forked at the start of each epoch and end with it: they inherit the
cached shard without a copy, see no other client's shard (an actor serves several), and hold no
memory between rounds; the start costs a fraction of a CPU-second per epoch (docs/BENCHMARKS.md,
"Clip supply"). Each makes whole batches with one torch thread (the ``DataLoader`` sets it); at
most two batches per worker are in flight, returned through shared memory (``/dev/shm``: a
container needs room for them).

Ray Data on small machines: client actors may hold every CPU, and map tasks that ask for a CPU
would then wait forever. The map tasks therefore reserve ``task_cpus=0`` CPUs by default and
their concurrency is capped by ``workers`` (a ``TaskPoolStrategy``), so they always run, sharing
the cores with the consumer; each sets torch to one thread.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from fedvssl_ray.data import decode, frame_zip
from fedvssl_ray.data.clips import sample_pretrain_clip, sample_rng
from fedvssl_ray.data.device_augment import Batch, DecodedBatch
from fedvssl_ray.data.transforms import CtpDraw, CtpTrainPreset

log = logging.getLogger(__name__)

BATCH_KEYS = ("imgs", "gt_trajs", "gt_weights")
AUGMENT_PLACES = ("cpu", "device")

Sample = dict[str, np.ndarray] | tuple[np.ndarray, CtpDraw]
"""One made clip: augmented (``imgs`` in its batch slot, the targets here), or decoded, with
its draws."""


class VideoLike(Protocol):
    """What the stream needs of a manifest record (``VideoRecord`` has it)."""

    video_id: str
    path: str


ShardEntry = VideoLike | tuple[str, str]
"""A record, or a ``(video_id, path)`` pair."""


def _video_id(entry: ShardEntry) -> str:
    return entry[0] if isinstance(entry, tuple) else entry.video_id


def read_path_bytes(entry: ShardEntry) -> bytes:
    """Default storage reader: the bytes of the entry's ``path`` as given."""
    return Path(entry[1] if isinstance(entry, tuple) else entry.path).read_bytes()


@dataclass(frozen=True)
class ShardVideo:
    """A cached video: its id, its frame count (from the probe) and which reader opens it."""

    video_id: str
    num_frames: int
    frame_zip: bool

    def read_frames(self, data: decode.VideoSource, indices: Sequence[int]) -> np.ndarray:
        reader = frame_zip.read_frames if self.frame_zip else decode.read_frames
        return reader(data, indices, name=self.video_id)


class ShardCache:
    """The encoded bytes of one client's shard, read from storage once and kept.

    ``store="memory"`` keeps one ``bytes`` per video in this process. ``"object_store"`` packs
    the shard into one uint8 array in Ray's object store (one ``ray.put``; workers map it
    without copying) and frees the local copy. ``reads`` counts storage reads; ``skipped``
    lists ``(video_id, reason)`` of the videos left out. :meth:`exclude` leaves out videos
    known bad from an earlier cache of the same shard, without reading them again.
    """

    def __init__(
        self,
        entries: Iterable[ShardEntry],
        read_bytes: Callable[[Any], bytes] | None = None,
        *,
        store: Literal["memory", "object_store"] = "memory",
    ) -> None:
        if store not in ("memory", "object_store"):
            raise ValueError(f"unknown store {store!r}; choose one of ['memory', 'object_store']")
        self.entries = list(entries)
        self.store = store
        self.reads = 0
        self.skipped: list[tuple[str, str]] = []
        self._read_bytes = read_bytes or read_path_bytes
        self._videos: list[ShardVideo] | None = None
        self._payloads: list[bytes] = []
        self._spans: list[tuple[int, int]] = []
        self._shard_ref: Any = None
        self._bad: set[int] = set()
        self._excluded: set[str] = set()

    def load(self) -> list[ShardVideo]:
        """Read and probe every video once; later calls return the cached list."""
        if self._videos is not None:
            return self._videos
        videos = []
        for entry in self.entries:
            video_id = _video_id(entry)
            is_zip = getattr(entry, "codec", "") == frame_zip.FRAME_ZIP_CODEC
            if video_id in self._excluded:
                self._skip(video_id, "known bad from an earlier load of this shard")
                continue
            try:
                self.reads += 1
                data = self._read_bytes(entry)
                probe = frame_zip.probe_frame_zip if is_zip else decode.probe_video
                info = probe(data, name=video_id)
            except (OSError, decode.VideoDecodeError) as err:
                self._skip(video_id, str(err))
                continue
            videos.append(ShardVideo(video_id, info.num_frames, is_zip))
            self._payloads.append(data)
        if self.store == "object_store":
            self._pack()
        self._videos = videos
        return videos

    def _pack(self) -> None:
        """Move the payloads into one object-store array (peak: about twice the shard, briefly)."""
        import ray

        payloads, self._payloads = self._payloads, []
        sizes = [len(p) for p in payloads]
        ends = np.cumsum(sizes).tolist()
        self._spans = [(end - size, end) for size, end in zip(sizes, ends, strict=True)]
        blob = np.empty(ends[-1] if ends else 0, np.uint8)
        for i, (start, end) in enumerate(self._spans):
            blob[start:end] = np.frombuffer(payloads[i], np.uint8)
            payloads[i] = b""  # free each local copy once it is packed
        self._shard_ref = ray.put(blob)

    def _skip(self, video_id: str, reason: str) -> None:
        log.warning("skip %s: %s", video_id, reason)
        self.skipped.append((video_id, reason))

    @property
    def videos(self) -> list[ShardVideo]:
        """Every readable video (reads the shard on first use)."""
        return self.load()

    def usable(self) -> np.ndarray:
        """Indices into :attr:`videos` of the videos still in use (not failed mid-epoch)."""
        return np.array([i for i in range(len(self.videos)) if i not in self._bad], np.int64)

    def payload(self, index: int) -> decode.VideoSource:
        """The encoded bytes of video ``index`` (a zero-copy view with the object store)."""
        self.load()
        if self.store == "memory":
            return self._payloads[index]
        import ray

        start, end = self._spans[index]
        return memoryview(ray.get(self._shard_ref))[start:end]

    def shard(self) -> tuple[Any, list[tuple[int, int]]]:
        """(``ObjectRef`` of the packed shard, ``(start, end)`` of each video) for Ray workers."""
        if self.store != "object_store":
            raise ValueError("only a ShardCache with store='object_store' has a shard object")
        self.load()
        return self._shard_ref, self._spans

    def mark_bad(self, index: int, reason: str) -> None:
        """Leave a video out from now on (its decode failed); logged and counted once."""
        if index not in self._bad:
            self._bad.add(index)
            self._skip(self.videos[index].video_id, reason)

    def exclude(self, video_ids: Iterable[str]) -> None:
        """Leave these videos out from now on; before the first load they are never read."""
        new = set(video_ids) - self._excluded
        self._excluded |= new
        if self._videos is not None:
            for index, video in enumerate(self._videos):
                if video.video_id in new:
                    self.mark_bad(index, "excluded as known bad")

    def bad_ids(self) -> set[str]:
        """Ids of every video left out so far or excluded (what a rebuilt cache should exclude)."""
        return self._excluded | {video_id for video_id, _ in self.skipped}


def epoch_plan(
    num_videos: int,
    *,
    seed: int,
    client_id: int,
    round: int,
    epoch: int,
    batch_size: int,
    pad: bool = True,
) -> np.ndarray:
    """Seeded permutation of ``range(num_videos)``; with ``pad``, repeated from its start up to
    a multiple of ``batch_size`` (so every batch is full)."""
    order = sample_rng(seed, client_id, round, epoch).permutation(num_videos)
    if pad and num_videos:
        order = np.resize(order, math.ceil(num_videos / batch_size) * batch_size)
    return order


def make_ctp_clip(
    video: ShardVideo,
    data: decode.VideoSource,
    rng: np.random.Generator,
    *,
    preset: CtpTrainPreset,
    clip_len: int,
    out: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Sample frame indices, decode them, and apply the CtP preset (PatchMask included).

    ``out`` (``[3, T, S, S]`` float32, e.g. a slot of a batch) receives ``imgs`` if given.
    """
    clip = sample_pretrain_clip(video.num_frames, rng, clip_len=clip_len)
    return preset(video.read_frames(data, clip.indices), rng, out=out)


def decode_ctp_clip(
    video: ShardVideo,
    data: decode.VideoSource,
    rng: np.random.Generator,
    *,
    preset: CtpTrainPreset,
    clip_len: int,
) -> tuple[np.ndarray, CtpDraw]:
    """:func:`make_ctp_clip` up to the pixel work: the decoded frames and the preset's draws,
    taken from ``rng`` in the same order, so augmenting them elsewhere gives the same clip."""
    clip = sample_pretrain_clip(video.num_frames, rng, clip_len=clip_len)
    frames = video.read_frames(data, clip.indices)
    return frames, preset.draw(*frames.shape[:3], rng)


@dataclass(frozen=True)
class EpochKeys:
    """What a sample's randomness depends on, besides its position in the epoch."""

    seed: int
    client_id: int
    round: int
    epoch: int

    def rng(self, position: int) -> np.random.Generator:
        return sample_rng(self.seed, self.client_id, self.round, self.epoch, position)


@dataclass(frozen=True)
class ClipMaker:
    """Makes the clip at one epoch position into a given batch slot, and collates a batch;
    shared by every pipeline. ``augment_on="device"`` leaves clips decoded (no batch slots)."""

    keys: EpochKeys
    preset: CtpTrainPreset
    clip_len: int
    augment_on: Literal["cpu", "device"] = "cpu"

    def slot_shape(self) -> tuple[int, int, int, int]:
        return (3, self.clip_len, self.preset.crop_size, self.preset.crop_size)

    def batch_buffer(self, rows: int) -> np.ndarray | None:
        """The ``imgs`` array a batch's clips are written into; None if they stay decoded."""
        if self.augment_on == "device":
            return None
        return np.empty((rows, *self.slot_shape()), np.float32)

    def __call__(
        self, video: ShardVideo, data: decode.VideoSource, position: int, out: np.ndarray | None
    ) -> Sample | str:
        """The clip (``imgs`` written to ``out``, or decoded), or the decode error's message."""
        rng = self.keys.rng(position)
        try:
            if self.augment_on == "device":
                return decode_ctp_clip(video, data, rng, preset=self.preset, clip_len=self.clip_len)
            return make_ctp_clip(
                video, data, rng, preset=self.preset, clip_len=self.clip_len, out=out
            )
        except decode.VideoDecodeError as err:
            log.warning("decode failed for %s: %s", video.video_id, err)
            return str(err)

    def collate(self, imgs: np.ndarray | None, samples: dict[int, Sample]) -> Batch:
        """The batch of the filled slots (all of them unless a clip failed)."""
        if imgs is None:
            return _collate_decoded(samples, self.preset.crop_size)
        return _collate(imgs, samples)


def _ordered_map(fn: Callable[[int], Any], items: Sequence[int], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, computed ahead by ``workers`` threads (0: inline)."""
    if workers <= 0:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="clips")
    try:
        todo = iter(items)
        pending = deque(pool.submit(fn, i) for i in islice(todo, 2 * workers))
        while pending:
            result = pending.popleft().result()
            for i in islice(todo, 1):
                pending.append(pool.submit(fn, i))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _slot(imgs: np.ndarray | None, slot: int) -> np.ndarray | None:
    """Row ``slot`` of a batch's ``imgs`` (None for decoded clips, which have no slot)."""
    return None if imgs is None else imgs[slot]


def _collate_decoded(
    samples: dict[int, tuple[np.ndarray, CtpDraw]], crop_size: int
) -> DecodedBatch:
    """A :class:`DecodedBatch` of the decoded clips in slot order (the frames are not copied)."""
    clips = [samples[i] for i in sorted(samples)]
    frames = tuple(torch.from_numpy(f) for f, _ in clips)
    return DecodedBatch(frames, tuple(d for _, d in clips), crop_size)


def _collate(imgs: np.ndarray, samples: dict[int, dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """A torch batch from the filled slots of ``imgs`` (all of them unless a clip failed)."""
    slots = sorted(samples)
    if len(slots) < len(imgs):
        imgs = imgs[slots]
    batch = {"imgs": torch.from_numpy(imgs)}
    for k in ("gt_trajs", "gt_weights"):
        batch[k] = torch.from_numpy(np.stack([samples[i][k] for i in slots]))
    return batch


def iter_ctp_batches(
    cache: ShardCache,
    plan: np.ndarray,
    maker: ClipMaker,
    *,
    batch_size: int,
    workers: int = 0,
) -> Iterator[Batch]:
    """In-process batches ``{"imgs" [B,3,T,S,S], "gt_trajs" [B,3,T,4], "gt_weights" [B,3,T]}``
    (a :class:`DecodedBatch` with ``maker.augment_on="device"``).

    ``plan`` holds indices into ``cache.videos`` in epoch order; ``workers`` threads decode
    and transform ahead of the consumer (0: in the calling thread). Clips are written straight
    into their batch's ``imgs`` array. The threads' one torch op (the frame resize) uses the
    process's intra-op thread setting; numpy's BLAS is never called.
    """
    videos = cache.videos
    buffers: dict[int, np.ndarray | None] = {}

    def batch_buffer(b: int) -> np.ndarray | None:
        if b not in buffers:  # setdefault: one array per batch even if two threads race here
            rows = min(batch_size, len(plan) - b * batch_size)
            buffers.setdefault(b, maker.batch_buffer(rows))
        return buffers[b]

    def clip_at(position: int) -> Sample | str:
        v = int(plan[position])
        out = _slot(batch_buffer(position // batch_size), position % batch_size)
        return maker(videos[v], cache.payload(v), position, out)

    samples: dict[int, Sample] = {}
    for position, result in enumerate(_ordered_map(clip_at, range(len(plan)), workers)):
        if isinstance(result, str):
            cache.mark_bad(int(plan[position]), result)
        else:
            samples[position % batch_size] = result
        if (position + 1) % batch_size == 0 or position + 1 == len(plan):
            imgs = buffers.pop(position // batch_size)
            if samples:
                yield maker.collate(imgs, samples)
            samples = {}


class _EpochBatches(torch.utils.data.Dataset):
    """An epoch's batches by index, made in a decode worker: ``(batch or None, failed)``, where
    ``failed`` lists ``(video index, error)`` of the clips whose decode failed."""

    def __init__(self, cache: ShardCache, plan: np.ndarray, maker: ClipMaker, batch_size: int) -> None:
        self.cache, self.plan, self.maker, self.batch_size = cache, plan, maker, batch_size
        self.videos = cache.videos

    def __len__(self) -> int:
        return math.ceil(len(self.plan) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[Batch | None, list[tuple[int, str]]]:
        start = index * self.batch_size
        chosen = self.plan[start : start + self.batch_size].tolist()
        imgs = self.maker.batch_buffer(len(chosen))
        samples: dict[int, Sample] = {}
        failed = []
        for slot, v in enumerate(chosen):
            out = _slot(imgs, slot)
            result = self.maker(self.videos[v], self.cache.payload(v), start + slot, out)
            if isinstance(result, str):
                failed.append((v, result))
            else:
                samples[slot] = result
        return (self.maker.collate(imgs, samples) if samples else None), failed


def _fork_context() -> multiprocessing.context.BaseContext | None:
    """``fork`` where the platform has it: workers inherit the cached shard instead of each
    unpickling a copy (and start in milliseconds, without importing torch again)."""
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def iter_process_batches(
    cache: ShardCache,
    plan: np.ndarray,
    maker: ClipMaker,
    *,
    batch_size: int,
    processes: int,
) -> Iterator[Batch]:
    """The batches of :func:`iter_ctp_batches`, made by ``processes`` decode worker processes.

    Worker ``k`` makes batches ``k, k + processes, ...``; they come back in plan order, at most
    two per worker made ahead (decoded uint8 frames and draws with ``augment_on="device"``).
    Decode failures are marked on ``cache`` here, as in-process.
    """
    cache.load()  # before the fork: the workers inherit the shard
    loader = torch.utils.data.DataLoader(
        _EpochBatches(cache, plan, maker, batch_size),
        batch_size=None,
        num_workers=processes,
        prefetch_factor=2,
        multiprocessing_context=_fork_context(),
        generator=torch.Generator(),  # its seed draw must not move the trainer's torch RNG
    )
    for batch, failed in loader:
        for v, reason in failed:
            cache.mark_bad(v, reason)
        if batch is not None:
            yield batch


def _ray_data_clips(
    batch: dict[str, np.ndarray],
    *,
    videos: Sequence[ShardVideo],
    shard: list[Any],
    spans: Sequence[tuple[int, int]],
    maker: ClipMaker,
) -> dict[str, np.ndarray]:
    """Ray Data map: rows ``(position, video)`` -> clips; a failed one is zeros with ``valid=False``.

    ``shard`` is ``[ObjectRef]`` of the packed shard (in a list, so Ray passes the reference
    and this task maps the array itself without a copy).
    """
    import ray

    torch.set_num_threads(1)
    blob = memoryview(ray.get(shard[0]))
    positions, video_ids = batch["position"].tolist(), batch["video"].tolist()
    imgs = np.empty((len(positions), *maker.slot_shape()), np.float32)
    trajs = np.zeros((len(positions), 3, maker.clip_len, 4), np.float32)
    weights = np.zeros((len(positions), 3, maker.clip_len), np.float32)
    valid = np.zeros(len(positions), bool)
    for j, (position, v) in enumerate(zip(positions, video_ids, strict=True)):
        start, end = spans[v]
        result = maker(videos[v], blob[start:end], position, imgs[j])
        if isinstance(result, str):
            imgs[j] = 0.0
        else:
            trajs[j], weights[j], valid[j] = result["gt_trajs"], result["gt_weights"], True
    return {"imgs": imgs, "gt_trajs": trajs, "gt_weights": weights, "valid": valid,
            "position": batch["position"]}


def ray_data_ctp_dataset(
    cache: ShardCache,
    plan: np.ndarray,
    maker: ClipMaker,
    *,
    workers: int = 2,
    task_cpus: float = 0.0,
    clips_per_task: int = 16,
) -> Any:
    """The epoch's clips as a Ray Data dataset, in plan order (``preserve_order``).

    Each map task decodes and transforms one block of up to ``clips_per_task`` rows (16 halves
    the consumer's per-clip cost against one batch of 4 per task). ``cache`` must use
    ``store="object_store"``. Tasks reserve ``task_cpus`` CPUs and at most ``workers`` run at once.
    """
    import ray

    shard_ref, spans = cache.shard()
    rows = [{"position": p, "video": int(v)} for p, v in enumerate(plan)]
    blocks = max(workers, math.ceil(len(rows) / clips_per_task))  # every worker gets work
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), blocks)))
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = False  # one dataset per client epoch: no progress display
    return ds.map_batches(
        _ray_data_clips,
        batch_size=None,
        fn_kwargs={"videos": cache.videos, "shard": [shard_ref], "spans": spans, "maker": maker},
        compute=ray.data.TaskPoolStrategy(size=max(1, workers)),
        num_cpus=task_cpus,
    )


def iter_ray_data_batches(
    cache: ShardCache,
    plan: np.ndarray,
    maker: ClipMaker,
    *,
    batch_size: int,
    workers: int = 2,
    task_cpus: float = 0.0,
) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of :func:`iter_ctp_batches`, made by Ray Data tasks."""
    ds = ray_data_ctp_dataset(cache, plan, maker, workers=workers, task_cpus=task_cpus)
    for batch in ds.iter_torch_batches(batch_size=batch_size, device="cpu"):
        valid = batch["valid"]
        for position in batch["position"][~valid].tolist():
            cache.mark_bad(int(plan[position]), "decode failed in a Ray Data task")
        if valid.any():
            yield {k: batch[k][valid] if not valid.all() else batch[k] for k in BATCH_KEYS}


class ClipStream:
    """One client's CtP training clips, batch by batch, round after round.

    Keep it alive across rounds (in the client's actor): the shard is read from storage only
    once. ``backend="local"`` makes clips in ``processes`` decode worker processes, or with
    ``processes=0`` in this process (``workers`` prefetch threads; default 0, in the consuming
    thread); ``"ray_data"`` in Ray Data tasks (``workers`` at once, default 2, reserving
    ``task_cpus`` each). All yield identical batches for the same seed.
    ``pad`` repeats the epoch's first videos to fill the last batch (the FedVSSL baseline).
    ``augment_on="device"`` (local backend only) yields :class:`DecodedBatch` for the training
    step to augment on its device.
    """

    def __init__(
        self,
        records: Iterable[ShardEntry],
        read_bytes: Callable[[Any], bytes] | None = None,
        *,
        crop_size: int = 112,
        clip_len: int = 16,
        batch_size: int = 4,
        seed: int = 0,
        client_id: int = 0,
        backend: Literal["local", "ray_data"] = "local",
        workers: int | None = None,
        processes: int = 0,
        task_cpus: float = 0.0,
        pad: bool = True,
        augment_on: Literal["cpu", "device"] = "cpu",
        patch_speed: float = 1.0,
    ) -> None:
        if backend not in ("local", "ray_data"):
            raise ValueError(f"unknown backend {backend!r}; choose one of ['local', 'ray_data']")
        if processes and (backend != "local" or workers):
            raise ValueError("decode worker processes are for backend='local' without threads")
        if augment_on not in AUGMENT_PLACES:
            raise ValueError(
                f"unknown augment_on {augment_on!r}; choose one of {list(AUGMENT_PLACES)}"
            )
        if augment_on == "device" and backend != "local":
            raise ValueError("augment_on='device' needs backend='local' (Ray Data augments)")
        store = "object_store" if backend == "ray_data" else "memory"
        self.cache = ShardCache(records, read_bytes, store=store)
        self.preset = CtpTrainPreset(crop_size=crop_size, patch_speed=patch_speed)
        self.clip_len, self.batch_size = clip_len, batch_size
        self.seed, self.client_id = seed, client_id
        if workers is None:
            workers = 2 if backend == "ray_data" else 0
        self.backend, self.workers, self.task_cpus, self.pad = backend, workers, task_cpus, pad
        self.processes, self.augment_on = processes, augment_on

    @property
    def num_videos(self) -> int:
        """Videos in use (reads the shard on first use)."""
        return len(self.cache.usable())

    @property
    def skipped(self) -> int:
        """Videos left out: unreadable, corrupt, failed to decode, or excluded as known bad."""
        self.cache.load()
        return len(self.cache.skipped)

    def bad_video_ids(self) -> set[str]:
        """Ids of the videos left out so far, for a rebuilt stream of this shard to :meth:`exclude`."""
        return self.cache.bad_ids()

    def exclude(self, video_ids: Iterable[str]) -> None:
        """Leave out videos already found bad (by an earlier stream of this shard): never re-read."""
        self.cache.exclude(video_ids)

    def plan(self, round: int, epoch: int = 0) -> np.ndarray:
        """Indices into ``cache.videos`` in this epoch's order (padded to whole batches)."""
        usable = self.cache.usable()
        order = epoch_plan(
            len(usable), seed=self.seed, client_id=self.client_id, round=round, epoch=epoch,
            batch_size=self.batch_size, pad=self.pad,
        )
        return usable[order]

    def num_batches(self, round: int = 0, epoch: int = 0) -> int:
        """Batches in an epoch (before any mid-epoch decode failure)."""
        return math.ceil(len(self.plan(round, epoch)) / self.batch_size)

    def batches(self, round: int, epoch: int = 0) -> Iterator[Batch]:
        """The epoch's batches: ``imgs`` [B,3,T,S,S] f32, ``gt_trajs`` [B,3,T,4], ``gt_weights``
        [B,3,T]; with ``augment_on="device"`` the :class:`DecodedBatch` that makes them."""
        keys = EpochKeys(self.seed, self.client_id, round, epoch)
        maker = ClipMaker(keys, self.preset, self.clip_len, self.augment_on)
        plan = self.plan(round, epoch)
        if self.backend == "ray_data":
            return iter_ray_data_batches(
                self.cache, plan, maker, batch_size=self.batch_size, workers=max(1, self.workers),
                task_cpus=self.task_cpus,
            )
        if self.processes:
            return iter_process_batches(
                self.cache, plan, maker, batch_size=self.batch_size, processes=self.processes
            )
        return iter_ctp_batches(self.cache, plan, maker, batch_size=self.batch_size, workers=self.workers)
