"""FedVSSL server aggregation, paper convention (Rehman et al., ECCV 2022, Eq. 3;
https://arxiv.org/abs/2207.01975).

Each successful client k of round r sends its shared entries theta_k (the backbone, BN
buffers included), its number of videos n_k and its mean training loss L_k. Then

    A_r = sum_k n_k theta_k / sum_k n_k                    FedAvg
    W_r = sum_k w_k theta_k,  w = softmax(-L)              loss-based (ignores n_k)
    M_r = alpha W_r + (1 - alpha) A_r
    g_r = decay g_{r-1} + (1 - decay) M_r   if beta = 1 and r >= 2, else M_r

alpha weights the loss-based side (the authors' convention; the Flower baseline's
``mix_coeff`` is 1 - alpha, see ``compat``). beta = 1 is the paper's "SWA": with the default
decay 0.5 it is an exponential moving average, g_3 = M_1/4 + M_2/4 + M_3/2, never applied in
round 1. ``decay`` other than 0.5 is an extension of the paper.

Because every term is linear, M and g are computed as one weighted sum with coefficients
c_k = alpha w_k + (1 - alpha) a_k; the W side is skipped when alpha = 0 and the A side when
alpha = 1 (0 * NaN = NaN). For alpha > 0 a client with a non-finite loss is rejected (an
extension: the sources do not handle it). ``fedavg`` (alpha = 0) and ``loss`` (alpha = 1) are
the two limits under their own names.

Integer buffers (BN ``num_batches_tracked``) are mixed in float64, rounded to the nearest
integer and kept int64.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedvssl_ray.aggregation.accumulate import WeightedSum
from fedvssl_ray.aggregation.base import Coefficients, Strategy, client_sums
from fedvssl_ray.aggregation.keys import KeyFilter
from fedvssl_ray.aggregation.updates import ClientUpdate, Weights
from fedvssl_ray.aggregation.validate import Layout
from fedvssl_ray.aggregation.weighting import mix


def check_fraction(name: str, value: float, *, upper_open: bool = False) -> float:
    """``value`` as a float in [0, 1] (or [0, 1) with ``upper_open``), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= value <= 1.0 or (upper_open and value == 1.0):
        raise ValueError(f"{name} must be in [0, 1{')' if upper_open else ']'}, got {value!r}")
    return float(value)


def check_switch(name: str, value: int | bool) -> int:
    """``value`` as 0 or 1 (the sources accept only these), else ValueError."""
    if not isinstance(value, numbers.Integral) or value not in (0, 1):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class FedVsslParams:
    """Parameters of ``fedvssl`` (paper convention).

    :param alpha: weight of the loss-based average W; 0 gives FedAvg, 1 loss-only.
    :param beta: 1 averages with the previous global from round 2 on ("SWA"); 0 is off.
    :param decay: weight of the previous global in that average; 0.5 in the paper.
    :param shared: keys aggregated and broadcast: first key components, or "all".
    """

    alpha: float = 0.9
    beta: int = 1
    decay: float = 0.5
    shared: str | tuple[str, ...] = "backbone"

    def __post_init__(self) -> None:
        _check_common(self)
        object.__setattr__(self, "alpha", check_fraction("alpha", self.alpha))


@dataclass(frozen=True)
class FixedMixParams:
    """Parameters of ``fedavg`` and ``loss``: as :class:`FedVsslParams` without alpha."""

    beta: int = 0
    decay: float = 0.5
    shared: str | tuple[str, ...] = "backbone"

    def __post_init__(self) -> None:
        _check_common(self)


def _check_common(params: FedVsslParams | FixedMixParams) -> None:
    object.__setattr__(params, "beta", check_switch("beta", params.beta))
    object.__setattr__(params, "decay", check_fraction("decay", params.decay, upper_open=True))
    shared = KeyFilter.parse(params.shared).to_config()
    object.__setattr__(params, "shared", shared if isinstance(shared, str) else tuple(shared))


class FedVssl(Strategy):
    """FedVSSL server step: alpha-mix of loss-based and FedAvg averages, optional beta step."""

    name = "fedvssl"
    Params = FedVsslParams

    def __init__(self, params: FedVsslParams | FixedMixParams) -> None:
        super().__init__(params)
        self._shared = KeyFilter.parse(params.shared)

    @property
    def alpha(self) -> float:
        """Weight of the loss-based average."""
        return self.params.alpha

    @property
    def shared(self) -> KeyFilter:
        return self._shared

    @property
    def uses_samples(self) -> bool:
        return self.alpha < 1.0

    @property
    def uses_losses(self) -> bool:
        return self.alpha > 0.0

    def _needs_previous(self, round: int) -> bool:
        return bool(self.params.beta) and round >= 2

    def _client_weight(self, sample: np.ndarray | None, loss: np.ndarray | None) -> np.ndarray:
        return mix(self.alpha, loss, sample)

    def _accumulate(
        self,
        valid: Sequence[ClientUpdate],
        coeffs: Coefficients,
        previous: Mapping[str, np.ndarray] | None,
        average_previous: bool,
        layout: Layout,
    ) -> tuple[list[WeightedSum], float]:
        decay = self.params.decay if average_previous else 0.0
        [total] = client_sums(valid, [(1.0 - decay) * coeffs.weight], layout)
        if decay:
            assert previous is not None
            total.add(previous, decay)
        return [total], decay

    def _finish(self, sums: list[WeightedSum], layout: Layout, round: int) -> Weights:
        return sums[0].result(integers="round")


class FedAvg(FedVssl):
    """Sample-weighted average (FedVSSL with alpha = 0)."""

    name = "fedavg"
    Params = FixedMixParams

    @property
    def alpha(self) -> float:
        return 0.0


class LossWeighted(FedVssl):
    """Loss-based average, softmax(-L) weights (FedVSSL with alpha = 1)."""

    name = "loss"
    Params = FixedMixParams

    @property
    def alpha(self) -> float:
        return 1.0
