"""Flower-baseline compatibility: what clients of the shipped Flower FedVSSL baseline received.

This mode exists only to reproduce the baseline's published numbers side by side (Flower
``baselines/fedvssl``, flwr 1.9.0; the paper's own convention is in ``strategies``). It
keeps the baseline's parameters and its arithmetic, defects included:

* Clients upload every entry, heads included, and the server aggregates all of them.
  ``mix_coeff`` = m multiplies the **FedAvg** side (it plays the role of 1 - alpha).
* The loss metric is s_k = exp(-L_k); the loss-based weights are s_k / sum_j s_j, computed
  here as the equivalent stable softmax(-L) (the baseline gives 0/0 when every s_k underflows).
  ``ClientUpdate.loss`` is L_k; to match the baseline exactly a client reports the windowed
  mean of :func:`windowed_mean_loss` instead of its plain mean loss.
* The "mix" is a list concatenation: C_r = [m A_r] ++ [(1 - m) W_r], 2L arrays for L keys.
  With ``swbeta`` = 1 and r >= 2, G_r = G_{r-1}/2 + C_r/2 element-wise over all 2L arrays,
  otherwise G_r = C_r. This saved list is the strategy's state (:meth:`state_arrays`).
* Clients zip the received list with their own L keys and load only the backbone, so they
  see g_r = first half of G_r, backbone part: m A_1, then g_{r-1}/2 + m A_r/2 (swbeta = 1) or
  m A_r (swbeta = 0). W never reaches a client, and with m < 1 the backbone shrinks every
  round. :meth:`aggregate` returns this g_r.
* Integer buffers become float64 in the saved list, and clients load them truncated toward
  zero (``tensor.copy_`` into int64).
* ``fedavg=True``: G_r = A_r over the L keys (no scaling, no SWA); equals paper (alpha, beta)
  = (0, 0) on the backbone.

Differences from the baseline, none of which changes what clients see in a normal run: the
previous G comes from memory (or :meth:`load_state_arrays` on resume), not from the newest
``round-*`` file of a directory; when it is missing with swbeta = 1 and r >= 2 this raises,
where the baseline returns the unconverted A_r; clients with non-finite losses (when
``fedavg`` is False) or non-finite values are rejected instead of poisoning the mix; float32
sums are rounded in a different order (differences of a few ulps).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedvssl_ray.aggregation.accumulate import WeightedSum
from fedvssl_ray.aggregation.base import Coefficients, Strategy, client_sums
from fedvssl_ray.aggregation.keys import BACKBONE, KeyFilter
from fedvssl_ray.aggregation.strategies import check_fraction, check_switch
from fedvssl_ray.aggregation.updates import ClientUpdate, Weights
from fedvssl_ray.aggregation.validate import Layout, LayoutError

HALVES = ("first", "second")
"""Prefixes of the saved list's two halves in :meth:`FlowerCompat.state_arrays`."""


@dataclass(frozen=True)
class FlowerCompatParams:
    """The baseline's strategy arguments, defaulting to its published run (base.yaml).

    :param mix_coeff: weight m of the FedAvg side; the loss side gets 1 - m.
    :param swbeta: 1 averages the saved 2L list with the previous one from round 2 on.
    :param fedavg: plain FedAvg over every entry, no concatenation and no SWA.
    """

    mix_coeff: float = 0.9
    swbeta: int = 1
    fedavg: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "mix_coeff", check_fraction("mix_coeff", self.mix_coeff))
        object.__setattr__(self, "swbeta", check_switch("swbeta", self.swbeta))
        if not isinstance(self.fedavg, bool):
            raise ValueError(f"fedavg must be true or false, got {self.fedavg!r}")


class MissingStateError(RuntimeError):
    """The previous round's saved list is needed but was neither computed nor loaded."""


class FlowerCompat(Strategy):
    """The Flower baseline's aggregation, reproduced for comparison (see module docstring)."""

    name = "flower-compat"
    Params = FlowerCompatParams
    uses_samples = True
    _complete = False

    def __init__(self, params: FlowerCompatParams) -> None:
        super().__init__(params)
        self._saved: list[dict[str, np.ndarray]] = []

    @property
    def shared(self) -> KeyFilter:
        return BACKBONE

    @property
    def uses_losses(self) -> bool:
        return not self.params.fedavg

    def _needs_previous(self, round: int) -> bool:
        return self.params.swbeta == 1 and not self.params.fedavg and round >= 2

    def upload_keys(self, all_keys: Iterable[str]) -> list[str]:
        """Every key: the baseline aggregates heads too (they only reach the saved list)."""
        return list(all_keys)

    def state_dict(self) -> dict:
        """Name, parameters and how many halves the saved list has (0 before round 1)."""
        return {**super().state_dict(), "halves": len(self._saved)}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The saved list G_r as ``first.<key>`` (what clients saw) then ``second.<key>``."""
        return {
            f"{half}.{k}": v
            for half, arrays in zip(HALVES[: len(self._saved)], self._saved, strict=True)
            for k, v in arrays.items()
        }

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore the saved list written by :meth:`state_arrays`."""
        halves: dict[str, dict[str, np.ndarray]] = {}
        for name, value in arrays.items():
            half, _, key = name.partition(".")
            if half not in HALVES or not key:
                raise ValueError(f"unexpected saved array {name!r}; names start with {HALVES}")
            halves.setdefault(half, {})[key] = _frozen(np.array(value))
        self._saved = [halves[h] for h in HALVES if h in halves]

    def saved_list(self) -> list[np.ndarray]:
        """G_r in the baseline's positional order (2L arrays, or L with ``fedavg``)."""
        return [v for arrays in self._saved for v in arrays.values()]

    def _client_weight(self, sample: np.ndarray | None, loss: np.ndarray | None) -> np.ndarray:
        assert sample is not None
        return sample if self.params.fedavg else self.params.mix_coeff * sample

    def _accumulate(
        self,
        valid: Sequence[ClientUpdate],
        coeffs: Coefficients,
        previous: Mapping[str, np.ndarray] | None,
        average_previous: bool,
        layout: Layout,
    ) -> tuple[list[WeightedSum], float]:
        assert coeffs.sample is not None
        if self.params.fedavg:
            return client_sums(valid, [coeffs.sample], layout), 0.0
        assert coeffs.loss is not None
        swa = average_previous
        if swa and len(self._saved) != 2:
            raise MissingStateError(
                "flower-compat with swbeta=1 needs the saved list of the previous round; "
                "restore it with load_state_arrays()"
            )
        half = 0.5 if swa else 1.0
        m = self.params.mix_coeff
        sides = [half * m * coeffs.sample, half * (1.0 - m) * coeffs.loss]
        sums = client_sums(valid, sides, layout)
        if swa:
            for total, saved in zip(sums, self._saved, strict=True):
                if list(saved) != list(layout) or any(
                    saved[k].shape != shape for k, (shape, _) in layout.items()
                ):
                    raise LayoutError("the saved list does not match the clients' entries")
                total.add(saved, 0.5)
        return sums, 0.5 if swa else 0.0

    def _finish(self, sums: list[WeightedSum], layout: Layout, round: int) -> Weights:
        self._saved = [
            {k: _frozen(v) for k, v in total.result(integers="float").items()} for total in sums
        ]
        seen = self._saved[0]
        out: Weights = {}
        for key in self.shared_keys(seen):
            dtype = layout[key][1]
            # float -> int astype truncates toward zero, like tensor.copy_ on the client; a copy
            # either way, so the caller may write to it without touching the saved list
            out[key] = seen[key].astype(dtype)
        return out


def windowed_mean_loss(
    losses: Sequence[float], *, batch_sizes: Sequence[int] | None = None, window: int = 10
) -> float:
    """The baseline's client loss: the mean of its logged window means.

    Every ``window`` iterations the baseline logs the batch-size-weighted mean of the last
    ``window`` iteration losses, rounded to 5 decimals; a trailing partial window is never
    logged. Example: losses 1..25 give windows 5.5 and 15.5, mean 10.5, s = exp(-10.5).

    :raises ValueError: fewer than ``window`` iterations (the baseline crashes there).
    """
    values = np.asarray(losses, dtype=np.float64)
    sizes = np.ones_like(values) if batch_sizes is None else np.asarray(batch_sizes, np.float64)
    if sizes.shape != values.shape:
        raise ValueError(f"{values.size} losses but {sizes.size} batch sizes")
    count = values.size // window
    if count == 0:
        raise ValueError(
            f"the windowed loss needs at least {window} iterations, got {values.size} "
            "(the Flower baseline fails on such a client)"
        )
    n = count * window
    vals = values[:n].reshape(count, window)
    wts = sizes[:n].reshape(count, window)
    means = [round(float(m), 5) for m in (vals * wts).sum(axis=1) / wts.sum(axis=1)]
    return float(np.mean(means))


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
