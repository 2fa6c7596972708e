"""One client's local CtP round: one fresh SGD for all its epochs, gradient clipping, per-step losses."""

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
    """What a local round measured, step by step (the reported loss is chosen from these)."""

    losses: tuple[float, ...]  # total CtP loss of every step, in order
    batch_sizes: tuple[int, ...]  # clips in every step's batch
    zero_loss: float  # mean over the steps of the all-zero predictor's loss on the same batch
    data_s: float  # waiting for batches
    compute_s: float  # forward, backward and step

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


def make_optimizer(model: CtpModel, params: SgdParams) -> torch.optim.SGD:
    """A new SGD over every parameter: no momentum state carried in from an earlier round."""
    return torch.optim.SGD(
        model.parameters(), lr=params.lr, momentum=params.momentum,
        weight_decay=params.weight_decay,
    )


def train_local(
    model: CtpModel,
    batches: Iterable[dict[str, torch.Tensor]],
    params: SgdParams,
    device: torch.device,
) -> LocalStats:
    """Train ``model`` in place on one round's ``batches`` (every local epoch, in order).

    One optimiser serves the whole round, so momentum carries across its epochs and never
    across rounds. Each step also scores the all-zero predictor ("no patch moves") on its
    batch, the baseline against which the loss shows what the model has learnt.
    """
    model.train()
    optimizer = make_optimizer(model, params)
    losses: list[float] = []
    sizes: list[int] = []
    zero_sum = data_s = compute_s = 0.0
    tick = time.perf_counter()
    for batch in batches:
        start = time.perf_counter()
        data_s += start - tick
        imgs = batch["imgs"].to(device, non_blocking=True)
        gt_trajs = batch["gt_trajs"].to(device, non_blocking=True)
        gt_weights = batch["gt_weights"].to(device, non_blocking=True)
        preds = model(imgs, make_rois(gt_trajs))
        loss = ctp_loss(preds, gt_trajs, gt_weights)["loss"]
        with torch.no_grad():
            zero = ctp_loss(torch.zeros_like(preds), gt_trajs, gt_weights)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
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
