"""One client's local CtP round: one fresh optimiser for all its epochs, gradient clipping, per-step losses.

On a CUDA device batches go through pinned host memory with asynchronous copies, the forward
pass runs in the precision :func:`~fedvssl_ray.training.precision.choose_precision` picked, and
clips may be laid out channels-last-3d; the CPU takes the batches as they come, in fp32. A
:class:`~fedvssl_ray.data.device_augment.DecodedBatch` (``data.augment_on=device``) is copied to
the device as decoded uint8 clips and augmented there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from ..config import ClientConfig
from ..data.device_augment import Batch, DecodedBatch, augment_ctp_batch
from ..models import CtpModel, ctp_loss, make_rois
from .precision import FP32, Precision, scaled_step

BATCH_TENSORS = ("imgs", "gt_trajs", "gt_weights")


@dataclass(frozen=True)
class LocalParams:
    """The local optimiser, constant-LR and rebuilt every round (FEDVSSL.md §5: SGD), and the
    CtP target scale (1: the reference)."""

    lr: float = 0.01
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    grad_clip: float = 40.0  # max global L2 norm; 0 disables clipping
    optimizer: Literal["sgd", "adamw"] = "sgd"
    target_scale: float = 1.0

    @classmethod
    def from_config(cls, client: ClientConfig) -> LocalParams:
        """The ``client.*`` keys that shape a local round."""
        return cls(client.lr, client.momentum, client.weight_decay, client.grad_clip,
                   client.optimizer, client.target_scale)


@dataclass(frozen=True)
class LocalStats:
    """What a local round measured, step by step (the reported loss is chosen from these)."""

    losses: tuple[float, ...]  # total CtP loss of every step, in order
    batch_sizes: tuple[int, ...]  # clips in every step's batch
    zero_loss: float  # mean over the steps of the all-zero predictor's loss on the same batch
    data_s: float  # waiting for batches
    compute_s: float  # forward, backward and step (and a decoded batch's augmentation)

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def clips(self) -> int:
        return sum(self.batch_sizes)

    @property
    def mean_loss(self) -> float:
        """The plain mean over all steps: L_k of the FEDVSSL spec (§5)."""
        return math.fsum(self.losses) / len(self.losses)


def make_optimizer(model: CtpModel, params: LocalParams) -> torch.optim.Optimizer:
    """A new optimiser over every parameter: no state carried in from an earlier round."""
    if params.optimizer == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=params.lr, weight_decay=params.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(), lr=params.lr, momentum=params.momentum,
        weight_decay=params.weight_decay,
    )


def train_local(
    model: CtpModel,
    batches: Iterable[Batch],
    params: LocalParams,
    device: torch.device,
    *,
    precision: Precision = FP32,
    channels_last: bool = False,
) -> LocalStats:
    """Train ``model`` in place on one round's ``batches`` (every local epoch, in order).

    One optimiser (and loss scaler) serves the whole round, so momentum carries across its
    epochs and never across rounds. Each step also scores the all-zero predictor ("no patch
    moves") on its batch, the baseline against which the loss shows what the model has learnt.
    Only the model's forward pass runs under ``precision``'s autocast; both losses are fp32.
    """
    model.train()
    optimizer = make_optimizer(model, params)
    scaler = precision.grad_scaler()
    losses: list[float] = []
    sizes: list[int] = []
    zero_sum = data_s = compute_s = 0.0
    tick = time.perf_counter()
    for batch in batches:
        start = time.perf_counter()
        data_s += start - tick
        imgs, gt_trajs, gt_weights = to_device(batch, device, channels_last=channels_last)
        with precision.autocast():
            preds = model(imgs, make_rois(gt_trajs))
        preds = preds.float()
        loss = ctp_loss(preds, gt_trajs, gt_weights, params.target_scale)["loss"]
        with torch.no_grad():
            zero = ctp_loss(
                torch.zeros_like(preds), gt_trajs, gt_weights, params.target_scale
            )["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaled_step(loss, optimizer, scaler, model.parameters(), params.grad_clip)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"local loss became {value} at step {len(losses) + 1}")
        losses.append(value)
        sizes.append(imgs.shape[0])
        zero_sum += zero.item()
        tick = time.perf_counter()
        compute_s += tick - start
    if not losses:
        raise ValueError("no training batches: the client's shard is empty")
    return LocalStats(tuple(losses), tuple(sizes), zero_sum / len(losses), data_s, compute_s)


def to_device(
    batch: Batch, device: torch.device, *, channels_last: bool = False
) -> tuple[torch.Tensor, ...]:
    """``imgs``, ``gt_trajs``, ``gt_weights`` of ``batch`` on ``device`` (a decoded batch is
    augmented there). ``channels_last`` lays the clips out channels-last-3d (as the model's
    weights then are)."""
    if isinstance(batch, DecodedBatch):
        tensors = augment_on_device(batch, device)
    else:
        tensors = host_to_device([batch[key] for key in BATCH_TENSORS], device)
    if channels_last:
        tensors[0] = tensors[0].contiguous(memory_format=torch.channels_last_3d)
    return tuple(tensors)


def host_to_device(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Host tensors on ``device``; to CUDA they are copied from pinned memory without blocking
    the host (the CPU keeps them as they are)."""
    if device.type == "cuda":
        tensors = [t if t.is_pinned() else t.pin_memory() for t in tensors]
    return [t.to(device, non_blocking=True) for t in tensors]


def augment_on_device(batch: DecodedBatch, device: torch.device) -> list[torch.Tensor]:
    """The CtP batch of decoded clips, made on ``device`` from the clips' draws: the uint8 frames
    are copied there (smaller than the float clips) and every pixel step runs there."""
    frames = host_to_device(list(batch.frames), device)
    out = augment_ctp_batch(frames, batch.draws, crop_size=batch.crop_size)
    return [out[key] for key in BATCH_TENSORS]
