"""Supervised fine-tuning of a video classifier (CTP.md §7, FEDVSSL.md §8): the Ray-free core.

The classifier (:func:`~fedvssl_ray.models.build_classifier`, seeded) starts from a backbone
checkpoint (or from scratch) and trains the whole network with cross-entropy, SGD (lr,
momentum, weight decay on every parameter), gradient clipping by global L2 norm and a
``MultiStepLR`` stepped once per epoch; on a GPU in mixed precision if asked (bf16, or fp16
with loss scaling where bf16 is not native: :mod:`~fedvssl_ray.training.precision`; never on CPU).

Data order and augmentation are functions of ``(seed, epoch, position)`` only:
:func:`epoch_plan` is the epoch's seeded permutation padded to whole global batches (``workers``
x ``batch_size``), worker ``r`` takes positions ``p`` with ``p % workers == r``
(:func:`worker_positions`), and the clip at a position is drawn from
``sample_rng(seed, FINETUNE_STREAM, epoch, position)`` (:func:`decode_train_rows`). Dropout is
seeded per epoch and worker (:func:`epoch_seed`). So an interrupted run resumed from the end of
an epoch (model, momentum buffers, epoch: :func:`training_state`) ends with the same weights as
an uninterrupted one, whichever process made the clips.

The Ray Train shell is ``fedvssl_ray.actors.finetune``; :func:`iter_local_batches` makes the
same batches in this process (tests, debugging).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import append_jsonl, load_arrays, save_arrays, save_json_atomic
from ..config import Config, finetune_data, parse_lr_steps
from ..data import decode, frame_zip
from ..data.clips import finetune_indices, sample_rng
from ..data.transforms import FinetuneTrainPreset
from ..evaluation.spec import EvalVideo
from ..models import VideoClassifier, Weights, build_classifier, get_weights, set_weights
from .precision import choose_precision, scaled_step

log = logging.getLogger(__name__)

FINETUNE_STREAM = 0xF17E  # first key of every fine-tuning draw: apart from pretraining's draws
MODEL_PREFIX = "model."
MOMENTUM_PREFIX = "momentum."
VIDEO_COLUMNS = ("video_id", "path", "num_frames", "frame_zip", "label")


@dataclass(frozen=True)
class FinetuneParams:
    """What the epoch loop needs, from ``cfg.finetune`` (and ``cfg.seed``)."""

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    lr_steps: tuple[int, ...]
    lr_gamma: float
    grad_clip: float
    dropout: float
    batch_size: int
    clip_len: int
    stride: int
    crop_size: int
    mixed_precision: bool
    seed: int

    @classmethod
    def from_config(cls, cfg: Config) -> FinetuneParams:
        f, data = cfg.finetune, finetune_data(cfg).data
        return cls(
            epochs=f.epochs, lr=f.lr, momentum=f.momentum, weight_decay=f.weight_decay,
            lr_steps=parse_lr_steps(f.lr_steps, f.epochs), lr_gamma=f.lr_gamma,
            grad_clip=f.grad_clip, dropout=f.dropout, batch_size=f.batch_size,
            clip_len=data.clip_len, stride=f.stride, crop_size=data.crop_size,
            mixed_precision=f.mixed_precision, seed=cfg.seed,
        )


@dataclass
class EpochStats:
    """Sums over one epoch of one worker (or of all, after :meth:`merge`)."""

    loss_sum: float = 0.0
    correct: int = 0
    examples: int = 0
    steps: int = 0
    skipped: int = 0  # clips that failed to decode (left out of the loss)

    def merge(self, other: EpochStats) -> EpochStats:
        return EpochStats(
            self.loss_sum + other.loss_sum, self.correct + other.correct,
            self.examples + other.examples, max(self.steps, other.steps),
            self.skipped + other.skipped,
        )

    def as_array(self) -> np.ndarray:
        return np.array([self.loss_sum, self.correct, self.examples, self.steps, self.skipped],
                        np.float64)

    @classmethod
    def from_array(cls, values: np.ndarray) -> EpochStats:
        loss, correct, examples, steps, skipped = values.tolist()
        return cls(loss, int(correct), int(examples), int(steps), int(skipped))

    @property
    def mean_loss(self) -> float | None:
        return self.loss_sum / self.examples if self.examples else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.examples if self.examples else None


# -- data ------------------------------------------------------------------------------------------


def epoch_plan(num_videos: int, *, seed: int, epoch: int, global_batch: int) -> np.ndarray:
    """Seeded permutation of the videos for ``epoch``, repeated from its start up to a multiple
    of ``global_batch`` (workers x batch size), so every worker runs the same number of steps."""
    if num_videos < 1:
        raise ValueError("no videos to fine-tune on")
    order = sample_rng(seed, FINETUNE_STREAM, epoch).permutation(num_videos)
    return np.resize(order, math.ceil(num_videos / global_batch) * global_batch)


def worker_positions(plan_len: int, rank: int, world_size: int) -> np.ndarray:
    """The plan positions worker ``rank`` trains on, in order (a strided, disjoint share)."""
    return np.arange(rank, plan_len, world_size, dtype=np.int64)


def worker_rows(
    num_videos: int, *, seed: int, epochs: Iterable[int], rank: int, world_size: int,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Columns ``epoch``, ``position``, ``video`` of worker ``rank``'s clips over ``epochs``, in
    training order; each epoch is a whole number of its batches."""
    parts = []
    for epoch in epochs:
        plan = epoch_plan(num_videos, seed=seed, epoch=epoch, global_batch=world_size * batch_size)
        positions = worker_positions(len(plan), rank, world_size)
        parts.append((np.full(len(positions), epoch, np.int64), positions, plan[positions]))
    if not parts:
        return {"epoch": np.zeros(0, np.int64), "position": np.zeros(0, np.int64),
                "video": np.zeros(0, np.int64)}
    return {name: np.concatenate([p[i] for p in parts])
            for i, name in enumerate(("epoch", "position", "video"))}


def train_clip(
    video: EvalVideo, rng: np.random.Generator, preset: FinetuneTrainPreset, *, clip_len: int,
    stride: int, out: np.ndarray | None = None,
) -> np.ndarray:
    """One training clip ``[3, T, S, S]`` float32: fixed-stride sampling, fine-tune augmentation."""
    indices = finetune_indices(video.num_frames, rng, clip_len=clip_len, stride=stride)
    reader = frame_zip.read_frames if video.frame_zip else decode.read_frames
    return preset(reader(video.path, indices, name=video.video_id), rng, out=out)


def decode_train_rows(
    batch: dict[str, np.ndarray],
    *,
    videos: Sequence[EvalVideo],
    seed: int,
    clip_len: int,
    stride: int,
    crop_size: int,
) -> dict[str, np.ndarray]:
    """Rows ``epoch``, ``position``, ``video`` -> ``imgs [B,3,T,S,S]``, ``label``, ``valid``.

    A clip that fails to decode is logged, left as zeros and marked ``valid=False`` (the loss
    leaves it out); it is never fatal. Used as a Ray Data map and in this process alike.
    """
    preset = FinetuneTrainPreset(crop_size=crop_size)
    epochs, positions = batch["epoch"].tolist(), batch["position"].tolist()
    chosen = batch["video"].tolist()
    imgs = np.zeros((len(chosen), 3, clip_len, crop_size, crop_size), np.float32)
    labels = np.zeros(len(chosen), np.int64)
    valid = np.zeros(len(chosen), bool)
    for j, (epoch, position, v) in enumerate(zip(epochs, positions, chosen, strict=True)):
        video = videos[v]
        labels[j] = video.label
        rng = sample_rng(seed, FINETUNE_STREAM, epoch, position)
        try:
            train_clip(video, rng, preset, clip_len=clip_len, stride=stride, out=imgs[j])
            valid[j] = True
        except (decode.VideoDecodeError, OSError) as err:
            log.warning("skip %s: %s", video.video_id, err)
    return {"imgs": imgs, "label": labels, "valid": valid, "epoch": batch["epoch"]}


def iter_local_batches(
    videos: Sequence[EvalVideo], params: FinetuneParams, epoch: int, *, rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Worker ``rank``'s batches of ``epoch``, made in this process (the Ray Data pipeline makes
    the same ones)."""
    rows = worker_rows(len(videos), seed=params.seed, epochs=[epoch], rank=rank,
                       world_size=world_size, batch_size=params.batch_size)
    for start in range(0, len(rows["video"]), params.batch_size):
        part = {k: v[start : start + params.batch_size] for k, v in rows.items()}
        batch = decode_train_rows(part, videos=videos, seed=params.seed, clip_len=params.clip_len,
                                  stride=params.stride, crop_size=params.crop_size)
        yield {k: torch.from_numpy(v) for k, v in batch.items()}


# -- model, optimiser, schedule --------------------------------------------------------------------


def build_finetune_model(
    backbone: str, num_classes: int, params: FinetuneParams, init: Weights | None
) -> VideoClassifier:
    """The seeded classifier with ``init``'s ``backbone.*`` entries (None: from scratch)."""
    model = build_classifier(backbone, num_classes=num_classes, seed=params.seed)
    model.cls_head.dropout.p = params.dropout
    if init is not None:
        set_weights(model, {k: v for k, v in init.items() if k.startswith("backbone.")})
    return model


def make_optimizer(model: nn.Module, params: FinetuneParams) -> torch.optim.SGD:
    """SGD on every parameter (weight decay included, as the reference)."""
    return torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                           weight_decay=params.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, params: FinetuneParams, epochs_done: int = 0
) -> torch.optim.lr_scheduler.MultiStepLR:
    """LR x ``lr_gamma`` after each epoch in ``lr_steps``; stepped once per epoch, fast-forwarded
    over the ``epochs_done`` of a resumed run."""
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(params.lr_steps), gamma=params.lr_gamma
    )
    with warnings.catch_warnings():  # stepping before optimizer.step() is intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epochs_done):
            scheduler.step()
    return scheduler


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Torch seed of a worker's epoch (dropout): independent of what ran before."""
    return int(sample_rng(seed, FINETUNE_STREAM, epoch, rank, 1).integers(2**62))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if hasattr(model, "module") else model


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    params: FinetuneParams,
    device: torch.device,
) -> EpochStats:
    """One pass over ``batches`` (``imgs``, ``label``, ``valid``): cross-entropy on the valid
    clips, backward, clip the global gradient norm, SGD step. Mixed precision on CUDA if
    ``params.mixed_precision`` (:func:`choose_precision`); a loss scaler lives for one epoch, so
    a run resumed at an epoch boundary scales as an uninterrupted one."""
    model.train()
    stats = EpochStats()
    precision = choose_precision(device, params.mixed_precision)
    scaler = precision.grad_scaler()
    for batch in batches:
        imgs = batch["imgs"].to(device, non_blocking=True)
        labels = batch["label"].to(device)
        valid = batch["valid"].to(device).bool()
        with precision.autocast():
            logits = model(imgs)
        logits = logits.float()
        n = int(valid.sum())
        # every worker runs backward each step (DDP), even on a batch whose clips all failed
        loss = (nn.functional.cross_entropy(logits[valid], labels[valid]) if n
                else logits.sum() * 0.0)
        optimizer.zero_grad(set_to_none=True)
        scaled_step(loss, optimizer, scaler, model.parameters(), params.grad_clip)
        stats.steps += 1
        stats.skipped += len(valid) - n
        if n:
            stats.loss_sum += float(loss.detach()) * n
            stats.correct += int((logits.detach()[valid].argmax(1) == labels[valid]).sum())
            stats.examples += n
    return stats


# -- state -----------------------------------------------------------------------------------------


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> Weights:
    """What a resume needs besides the epoch: ``model.*`` state and ``momentum.*`` buffers, by
    parameter name (never by position)."""
    model = unwrap(model)
    state = {MODEL_PREFIX + k: v for k, v in get_weights(model).items()}
    for name, param in model.named_parameters():
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            state[MOMENTUM_PREFIX + name] = buffer.detach().cpu().numpy().copy()
    return state


def restore_training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load what :func:`training_state` saved into ``model`` and ``optimizer``."""
    model = unwrap(model)
    set_weights(model, {k.removeprefix(MODEL_PREFIX): v for k, v in state.items()
                        if k.startswith(MODEL_PREFIX)})
    for name, param in model.named_parameters():
        key = MOMENTUM_PREFIX + name
        if key in state:
            optimizer.state[param]["momentum_buffer"] = (
                torch.from_numpy(np.array(state[key], copy=True)).to(param.device)
            )


def model_weights(state: dict[str, np.ndarray]) -> Weights:
    """The classifier's own entries (``backbone.*``, ``cls_head.*``) of a training state."""
    return {k.removeprefix(MODEL_PREFIX): v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


# -- run directory ---------------------------------------------------------------------------------


class FinetuneRunDir:
    """A fine-tuning run's directory (the pretraining contract, per epoch).

    ``config.json|yaml``; ``metrics.jsonl`` (one line per epoch); ``checkpoints/epoch-NNNN.npz``
    (the classifier, named arrays, every ``finetune.checkpoint_every`` epochs and the last);
    ``state/latest.npz`` (model, momentum buffers and epoch: what a resume needs);
    ``summary.json``; ``test.json`` (the final test). An epoch counts once its state is written;
    a resume drops metrics lines of later epochs (a kill between the two writes).
    """

    def __init__(self, path: str | Path) -> None:
        from ..run_dir import RunDir

        self.path = Path(path)
        self.files = RunDir(self.path)  # config, metrics and summary files as pretraining's
        self.checkpoints = self.path / "checkpoints"
        self.state_path = self.path / "state" / "latest.npz"
        self.test_path = self.path / "test.json"

    def create(self, cfg: Config) -> None:
        from ..run_dir import RunDirError

        if self.state_path.exists() or self.files.metrics_path.exists():
            raise RunDirError(
                f"{self.path} already holds a run; resume it with --resume {self.path}, or "
                "choose another run_dir"
            )
        for folder in (self.checkpoints, self.state_path.parent):
            folder.mkdir(parents=True, exist_ok=True)
        self.files.write_config(cfg)

    def read_config(self) -> Config:
        return self.files.read_config()

    def checkpoint_path(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch-{epoch:04d}.npz"

    def epochs_done(self) -> int:
        """The last epoch whose state was written (0: none)."""
        if not self.state_path.is_file():
            return 0
        _, meta = load_arrays(self.state_path)
        return int(meta["epoch"])

    def load_state(self) -> tuple[int, Weights | None]:
        """(epochs done, training state) to resume from; metrics of later epochs are dropped."""
        if not self.state_path.is_file():
            return 0, None
        state, meta = load_arrays(self.state_path)
        epoch = int(meta["epoch"])
        records = [r for r in self.files.read_metrics() if r.get("epoch", 0) <= epoch]
        tmp = self.files.metrics_path.with_name("metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        tmp.replace(self.files.metrics_path)
        return epoch, state

    def save_epoch(
        self, epoch: int, state: Weights, record: dict[str, Any], meta: dict[str, Any], *,
        keep_checkpoint: bool,
    ) -> None:
        """Write an epoch: its checkpoint (if kept), its metrics line, then the resume state."""
        if keep_checkpoint:
            save_arrays(self.checkpoint_path(epoch), model_weights(state), {**meta, "epoch": epoch})
        append_jsonl(self.files.metrics_path, record)
        save_arrays(self.state_path, state, {**meta, "epoch": epoch})

    def write_summary(self, summary: dict[str, Any]) -> None:
        save_json_atomic(self.files.summary_path, summary)


def checkpoint_meta(cfg: Config, num_classes: int, class_names: Sequence[str]) -> dict[str, Any]:
    """Metadata stored with every fine-tuning checkpoint."""
    data = finetune_data(cfg).data
    return {
        "kind": "finetune", "backbone": cfg.model.backbone, "num_classes": num_classes,
        "class_names": list(class_names), "dataset": data.dataset, "split": data.split,
        "init": cfg.finetune.checkpoint or "none",
    }


def epoch_record(
    epoch: int, stats: EpochStats, lr: float, epoch_s: float, num_videos: int
) -> dict[str, Any]:
    """The metrics line of one epoch."""
    return {
        "epoch": epoch, "loss": stats.mean_loss, "train_top1": stats.accuracy,
        "examples": stats.examples, "steps": stats.steps, "skipped_clips": stats.skipped,
        "videos": num_videos, "lr": lr, "epoch_s": round(epoch_s, 3),
    }


def run_epochs_local(
    cfg: Config,
    run: FinetuneRunDir,
    videos: Sequence[EvalVideo],
    num_classes: int,
    meta: dict[str, Any],
    init: Weights | None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Weights:
    """Every remaining epoch in this process, as one worker (the reference of the Ray Train
    path, which with one worker gives the same weights on CPU), with ``finetune.torch_threads``
    (0: the process's setting). Returns the final classifier."""
    threads = torch.get_num_threads()
    if cfg.finetune.torch_threads:
        torch.set_num_threads(cfg.finetune.torch_threads)
    try:
        return _run_epochs_local(cfg, run, videos, num_classes, meta, init, progress)
    finally:
        torch.set_num_threads(threads)


def _run_epochs_local(cfg, run, videos, num_classes, meta, init, progress) -> Weights:
    params = FinetuneParams.from_config(cfg)
    start, state = run.load_state()
    model = build_finetune_model(cfg.model.backbone, num_classes, params, init)
    optimizer = make_optimizer(model, params)
    if state is not None:
        restore_training_state(model, optimizer, state)
    scheduler = make_scheduler(optimizer, params, start)
    device = torch.device("cpu")
    for epoch in range(start + 1, params.epochs + 1):
        torch.manual_seed(epoch_seed(params.seed, epoch, 0))
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        stats = train_one_epoch(model, iter_local_batches(videos, params, epoch), optimizer,
                                params, device)
        scheduler.step()
        record = epoch_record(epoch, stats, lr, time.perf_counter() - started, len(videos))
        keep = epoch == params.epochs or epoch % cfg.finetune.checkpoint_every == 0
        run.save_epoch(epoch, training_state(model, optimizer), record, meta, keep_checkpoint=keep)
        if progress is not None:
            progress({"type": "epoch_end", "epochs": params.epochs, **record})
    return get_weights(model)


def train_videos(cfg: Config) -> tuple[list[EvalVideo], list[str]]:
    """(train-split videos, class names) of the fine-tuning dataset; the synthetic dataset is
    made if missing."""
    from ..data.manifest import load_manifest
    from ..data.shards import ensure_dataset
    from ..evaluation.splits import load_eval_videos

    path = ensure_dataset(finetune_data(cfg))
    return load_eval_videos(path), list(load_manifest(path).class_names)
