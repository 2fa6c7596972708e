"""Per-client weights, computed in float64 from the clients' scalars.

* Sample weights (FedAvg): a_k = n_k / sum_j n_j.
* Loss weights: w_k = softmax(-L)_k = exp(-(L_k - L_min)) / sum_j exp(-(L_j - L_min)). Shifting
  by L_min keeps the largest term at exp(0) = 1, so losses such as (1000, 1001, 1002) give
  (0.66524096, 0.24472847, 0.09003057) where exp(-L)/sum exp(-L) would give 0/0 = NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_weights(num_examples: Sequence[int]) -> np.ndarray:
    """n_k / sum n, float64; every n_k must be positive."""
    n = np.asarray(num_examples, dtype=np.float64)
    return n / n.sum()


def loss_weights(losses: Sequence[float]) -> np.ndarray:
    """Stable softmax(-L), float64; every L_k must be finite."""
    neg = -np.asarray(losses, dtype=np.float64)
    e = np.exp(neg - neg.max())
    return e / e.sum()


def mix(alpha: float, by_loss: np.ndarray | None, by_samples: np.ndarray | None) -> np.ndarray:
    """alpha * by_loss + (1 - alpha) * by_samples, skipping the side whose factor is 0.

    The skip matters: 0 * NaN = NaN, so the unused side must not enter the sum at all.
    """
    if alpha == 1.0:
        assert by_loss is not None
        return by_loss
    if alpha == 0.0:
        assert by_samples is not None
        return by_samples
    assert by_loss is not None and by_samples is not None
    return alpha * by_loss + (1.0 - alpha) * by_samples
