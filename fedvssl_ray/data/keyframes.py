"""Key frames and interpolation profiles for CtP's time-varying draws (CTP.md §5).

A quantity that changes over a clip (a patch centre, a brightness offset) gets random values at
a few key frames, drawn by :func:`key_frames`, and :func:`interpolate` fills the frames between
them with a uniform, accelerating or decelerating profile.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

PROFILES = ("uniform", "accelerate", "decelerate")
RANDOM_PROFILE_P = (0.7, 0.15, 0.15)  # "random" mode: one profile per segment with these odds


@lru_cache(maxsize=64)
def _cumulative(probs: tuple[float, ...]) -> tuple[float, ...]:
    cum = np.cumsum(probs)
    return tuple((cum / cum[-1]).tolist())


def categorical(rng: np.random.Generator, probs: Sequence[float]) -> int:
    """Index i with probability ``probs[i]``, from one uniform draw (like ``Generator.choice``)."""
    return bisect.bisect_right(_cumulative(tuple(probs)), rng.random())


def key_frames(rng: np.random.Generator, probs: Sequence[float], num_frames: int = 16) -> np.ndarray:
    """KF(T, p): sorted unique key frames, always holding 0 and T-1.

    ``probs[k]`` is the probability of k inner key frames; inner tick i (1..k) is
    ``floor(a*i) + randint[-r, r-1]`` with ``a = T/(k+1)`` and ``r = floor(a/3)``.
    """
    k = categorical(rng, probs)
    ticks = {0, num_frames - 1}
    if k:
        a = num_frames / (k + 1)
        r = int(a // 3)
        jitter = rng.integers(-r, r, size=k).tolist() if r else [0] * k
        ticks.update(math.floor(a * i) + j for i, j in zip(range(1, k + 1), jitter, strict=True))
    return np.array(sorted(ticks), dtype=np.int64)


def interpolate(
    keys: np.ndarray,
    values: np.ndarray,
    profile: str = "uniform",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Values ``[K, ...]`` at frames ``keys`` -> ``[keys[-1]+1, ...]`` float64, one profile per segment.

    ``profile`` is one of :data:`PROFILES` or ``"random"``, which draws each segment's profile
    from ``rng`` with probabilities :data:`RANDOM_PROFILE_P`, shared by every component.
    """
    keys = np.asarray(keys)
    values = np.asarray(values, dtype=np.float64)
    num_segments = len(keys) - 1
    if profile == "random":
        if rng is None:
            raise ValueError("profile='random' needs an rng")
        names = [PROFILES[categorical(rng, RANDOM_PROFILE_P)] for _ in range(num_segments)]
    elif profile in PROFILES:
        names = [profile] * num_segments
    else:
        raise ValueError(f"unknown profile {profile!r}; choose one of {[*PROFILES, 'random']}")
    out = np.empty((int(keys[-1]) + 1, *values.shape[1:]), dtype=np.float64)
    out[keys[0]] = values[0]
    tail = (1,) * (values.ndim - 1)
    for j, name in enumerate(names):
        k0, k1 = int(keys[j]), int(keys[j + 1])
        gap = k1 - k0
        v0, v1 = values[j], values[j + 1]
        i = np.arange(1, gap + 1, dtype=np.float64).reshape(-1, *tail)
        if name == "uniform":
            seg = v0 + (v1 - v0) * i / gap
        elif name == "accelerate":
            seg = v0 + (v1 - v0) * (i / gap) ** 2
        else:
            seg = v1 - (v1 - v0) * ((gap - i) / gap) ** 2
        out[k0 + 1 : k1 + 1] = seg
    return out
