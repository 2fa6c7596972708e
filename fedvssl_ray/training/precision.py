"""Mixed precision for the training loops (local CtP rounds and fine-tuning), chosen in one place.

On a CUDA device that computes bf16 natively the forward pass runs in bf16 autocast; on an older
one in fp16 autocast, whose small gradients a ``GradScaler`` keeps from underflowing. Anything
else (the CPU, or mixed precision turned off) trains in plain fp32, and then the scaler is a
pass-through, so those numbers are exactly the ones of a loop without any of this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """The arithmetic of a training step: autocast to ``dtype`` on ``device_type``, or plain
    fp32 when ``dtype`` is None."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range."""
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass runs in (nothing at all for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A fresh scaler: active for fp16, otherwise a pass-through."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


FP32 = Precision()


def choose_precision(device: torch.device, mixed_precision: bool) -> Precision:
    """bf16 on a CUDA device with native bf16, fp16 (scaled) on one without, fp32 elsewhere or
    when ``mixed_precision`` is off. Emulated bf16 (pre-Ampere GPUs) counts as unsupported:
    it is slower than fp32 there."""
    if not mixed_precision or device.type != "cuda":
        return Precision(device.type)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Precision("cuda", torch.bfloat16)
    return Precision("cuda", torch.float16)


def scaled_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    parameters: Iterable[torch.nn.Parameter],
    grad_clip: float,
) -> None:
    """Backward, clip the true (unscaled) gradients' global norm to ``grad_clip`` (0: no
    clipping), step; a scaled step whose gradients overflowed is skipped by the scaler."""
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()
