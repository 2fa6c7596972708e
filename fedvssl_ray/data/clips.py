"""Frame-index samplers for CtP pretraining, fine-tuning and multi-clip evaluation (CTP.md §6, §7).

Samplers return 0-based frame indices into a video of ``num_frames`` frames. Every random draw
comes from a ``np.random.Generator`` passed in; :func:`sample_rng` derives one per sample from
integer keys, so a clip depends only on its keys, never on which worker made it or when.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def sample_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on ``(seed, *keys)``, e.g. keys = (client, round, epoch, index).

    The key count is mixed in, so keys of different lengths never collide (NumPy's
    ``SeedSequence`` alone treats ``[a, b]`` and ``[a, b, 0]`` alike).
    """
    return np.random.default_rng(np.random.SeedSequence([seed, len(keys), *keys]))


class PretrainClip(NamedTuple):
    """A sampled pretraining clip: its frame indices and the draws that made them."""

    indices: np.ndarray  # [clip_len] int64, 0-based, non-decreasing
    stride: int
    start: int


def sample_pretrain_clip(
    num_frames: int, rng: np.random.Generator, *, clip_len: int = 16, max_stride: int = 5
) -> PretrainClip:
    """CtP pretraining clip: stride s ~ {1..max_stride}, per-frame jitter in [0, s-1], clamped end.

    ``span = (clip_len-1)*s + 1``; ``start = randint[0, F-span]`` unless ``span >= F`` (then 0);
    ``idx_i = min(start + i*s + j_i, F-1)``.
    """
    stride = int(rng.integers(1, max_stride + 1))
    jitter = rng.integers(0, stride, size=clip_len)
    span = (clip_len - 1) * stride + 1
    start = 0 if span >= num_frames else int(rng.integers(0, num_frames - span + 1))
    idx = start + np.arange(clip_len) * stride + jitter
    return PretrainClip(np.minimum(idx, num_frames - 1).astype(np.int64), stride, start)


def finetune_indices(
    num_frames: int, rng: np.random.Generator, *, clip_len: int = 16, stride: int = 2
) -> np.ndarray:
    """Fine-tuning clip: fixed stride, no jitter, ``start = randint[0, F-span]`` if ``F > span``."""
    span = (clip_len - 1) * stride + 1
    start = int(rng.integers(0, num_frames - span + 1)) if num_frames > span else 0
    return np.minimum(start + np.arange(clip_len) * stride, num_frames - 1).astype(np.int64)


def eval_offsets(
    num_frames: int, *, num_clips: int = 10, clip_len: int = 16, stride: int = 2
) -> np.ndarray:
    """Start frames of the uniform test clips: ``floor(tau/2 + tau*x)``, ``tau = d/num_clips``.

    ``d = F - clip_len*stride + 1``; all offsets are 0 when ``d <= 0``. Computed in exact integer
    arithmetic, ``floor(d*(2x+1) / (2*num_clips))``, so no float rounding moves a boundary.
    """
    d = num_frames - clip_len * stride + 1
    if d <= 0:
        return np.zeros(num_clips, dtype=np.int64)
    return (d * (2 * np.arange(num_clips, dtype=np.int64) + 1)) // (2 * num_clips)


def eval_indices(
    num_frames: int, *, num_clips: int = 10, clip_len: int = 16, stride: int = 2
) -> np.ndarray:
    """``[num_clips, clip_len]`` frame indices of the test clips, clamped to ``F-1``."""
    offsets = eval_offsets(num_frames, num_clips=num_clips, clip_len=clip_len, stride=stride)
    idx = offsets[:, None] + stride * np.arange(clip_len)[None, :]
    return np.minimum(idx, num_frames - 1)
