"""One client's local CtP training: fresh SGD, gradient clipping, mean loss over all steps."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..models import CtpModel, ctp_loss, make_rois


@dataclass(frozen=True)
class SgdParams:
    """The local optimiser: constant-LR SGD, rebuilt every round (FEDVSSL.md §5)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 40.0  # max global L2 norm; 0 disables clipping


@dataclass(frozen=True)
class LocalStats:
    """What a local training pass measured."""

    steps: int
    clips: int
    mean_loss: float
    data_s: float  # waiting for batches
    compute_s: float  # forward, backward and step


def train_local(
    model: CtpModel,
    batches: Iterable[dict[str, torch.Tensor]],
    params: SgdParams,
    device: torch.device,
) -> LocalStats:
    """Train ``model`` in place on ``batches``; returns the mean of the per-step total losses."""
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=params.lr, momentum=params.momentum,
        weight_decay=params.weight_decay,
    )
    steps = clips = 0
    loss_sum = data_s = compute_s = 0.0
    tick = time.perf_counter()
    for batch in batches:
        start = time.perf_counter()
        data_s += start - tick
        imgs = batch["imgs"].to(device, non_blocking=True)
        gt_trajs = batch["gt_trajs"].to(device, non_blocking=True)
        gt_weights = batch["gt_weights"].to(device, non_blocking=True)
        preds = model(imgs, make_rois(gt_trajs))
        loss = ctp_loss(preds, gt_trajs, gt_weights)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"local loss became {value} at step {steps + 1}")
        loss_sum += value
        steps += 1
        clips += imgs.shape[0]
        tick = time.perf_counter()
        compute_s += tick - start
    if steps == 0:
        raise ValueError("no training batches: the client's shard is empty")
    return LocalStats(steps, clips, loss_sum / steps, data_s, compute_s)
