"""The server step shared by every strategy: screen, weigh, accumulate, report.

A strategy sees arrays and numbers, never a client. One call of :meth:`Strategy.aggregate`:

1. rejects updates whose layout differs from the expected one (see ``validate``) and those
   whose scalars the strategy cannot use (non-positive n_k, non-finite L_k where the loss side
   is computed);
2. computes per-client coefficients from n_k and L_k (float64);
3. streams the arrays into weighted sums (see ``accumulate``);
4. if a sum holds NaN/Inf, finds the clients that sent them, rejects them, and repeats 2-3
   with renormalised weights;
5. records an :class:`AggregationReport` in ``last_report`` and returns the new global.

With no valid update left it raises :class:`NoValidUpdatesError` (``last_report`` still lists
the rejections), so the caller keeps the previous global.
"""

from __future__ import annotations

import json
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from fedvssl_ray.aggregation.accumulate import WeightedSum
from fedvssl_ray.aggregation.keys import KeyFilter
from fedvssl_ray.aggregation.report import AggregationReport, ClientWeight, Rejection
from fedvssl_ray.aggregation.updates import ClientUpdate, Weights
from fedvssl_ray.aggregation.validate import (
    Layout,
    LayoutError,
    NoValidUpdatesError,
    layout_of,
    screen_layouts,
)
from fedvssl_ray.aggregation.weighting import loss_weights, sample_weights


@dataclass(frozen=True)
class Coefficients:
    """Per-client weights of one round, in the order of the valid updates.

    ``weight`` is each client's coefficient in the round's mix; ``sample`` and ``loss`` are the
    FedAvg and loss-based ingredients (None where not computed).
    """

    weight: np.ndarray
    sample: np.ndarray | None
    loss: np.ndarray | None


class Strategy(ABC):
    """Server aggregation rule; subclasses define the weights and the combination."""

    name: ClassVar[str]
    Params: ClassVar[type]
    uses_samples: bool
    uses_losses: bool

    def __init__(self, params: Any) -> None:
        self.params = params
        self.last_report: AggregationReport | None = None

    @property
    @abstractmethod
    def shared(self) -> KeyFilter:
        """The keys clients take from the global."""

    def shared_keys(self, all_keys: Iterable[str]) -> list[str]:
        """Keys broadcast to clients and loaded by them, in the given order."""
        return self.shared.select(all_keys)

    def upload_keys(self, all_keys: Iterable[str]) -> list[str]:
        """Keys a client must send back; the shared keys except in flower-compat."""
        return self.shared_keys(all_keys)

    def aggregate(
        self,
        updates: Sequence[ClientUpdate],
        *,
        previous: Mapping[str, np.ndarray] | None = None,
        round: int,
        previous_is_initial: bool = False,
    ) -> Weights:
        """New global (shared keys only) from the round's updates.

        :param updates: the successful clients' updates of this round.
        :param previous: the current global g_{r-1}: defines the expected layout and is
            averaged in by the beta step; None only before any global exists.
        :param round: 1-based round index r.
        :param previous_is_initial: ``previous`` is still the initial model (every earlier
            round failed): the beta step is skipped, since g_0 is never averaged in.
        :raises NoValidUpdatesError: no update survived screening.
        """
        if isinstance(round, bool) or not isinstance(round, numbers.Integral) or round < 1:
            raise ValueError(f"round must be an integer >= 1, got {round!r}")
        self.last_report = None
        averages_previous = self._needs_previous(round) and not previous_is_initial
        if previous is None and averages_previous:
            raise ValueError(f"{self.name} needs the previous global in round {round}")
        screened = screen_layouts(
            updates, self.upload_keys, self._required_layout(previous), complete=self._complete
        )
        rejected = list(screened.rejected)
        valid = []
        for update in screened.valid:
            reason = self._scalar_problem(update)
            if reason:
                rejected.append(Rejection(update.client_id, reason))
            else:
                valid.append(update)
        while True:
            if not valid:
                self.last_report = AggregationReport(round, self.name, (), tuple(rejected), 0.0)
                raise NoValidUpdatesError(round, rejected)
            coeffs = self._coefficients(valid)
            sums, previous_weight = self._accumulate(
                valid, coeffs, previous, averages_previous, screened.layout
            )
            flagged = set().union(*(s.nonfinite_keys() for s in sums))
            bad = [k for k in screened.layout if k in flagged]
            if not bad:
                break
            culprits = _nonfinite_culprits(valid, bad)
            if not culprits:
                raise ValueError(
                    f"round {round}: the previous global or saved state holds NaN/Inf in {bad[:3]}"
                )
            rejected.extend(culprits.values())
            valid = [u for u in valid if id(u) not in culprits]
        new_global = self._finish(sums, screened.layout, round)
        self.last_report = AggregationReport(
            round=round,
            strategy=self.name,
            clients=tuple(
                ClientWeight(
                    u.client_id,
                    float(coeffs.weight[i]),
                    None if coeffs.sample is None else float(coeffs.sample[i]),
                    None if coeffs.loss is None else float(coeffs.loss[i]),
                )
                for i, u in enumerate(valid)
            ),
            rejected=tuple(rejected),
            previous_weight=float(previous_weight),
        )
        return new_global

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly state for resume: the strategy's name and parameters."""
        return {"strategy": self.name, "params": _jsonable(asdict(self.params))}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check that a saved state belongs to this strategy with the same parameters."""
        mine = self.state_dict()
        for field in ("strategy", "params"):
            if _jsonable(state.get(field)) != mine[field]:
                raise ValueError(
                    f"saved strategy state has {field}={state.get(field)!r}, "
                    f"this run has {mine[field]!r}"
                )

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Arrays the strategy keeps between rounds (beyond the global); none by default."""
        return {}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_arrays` after resume."""
        if arrays:
            raise ValueError(f"strategy {self.name!r} keeps no arrays, got {sorted(arrays)[:3]}")

    # -- what subclasses define ---------------------------------------------------------------

    _complete: ClassVar[bool] = True
    """The previous global's shared keys are the whole upload layout."""

    def _needs_previous(self, round: int) -> bool:
        """Whether round ``round`` averages in the previous global (or saved state)."""
        return False

    @abstractmethod
    def _client_weight(self, sample: np.ndarray | None, loss: np.ndarray | None) -> np.ndarray:
        """Coefficient of each client in the round's mix, from the two ingredients."""

    @abstractmethod
    def _accumulate(
        self,
        valid: Sequence[ClientUpdate],
        coeffs: Coefficients,
        previous: Mapping[str, np.ndarray] | None,
        average_previous: bool,
        layout: Layout,
    ) -> tuple[list[WeightedSum], float]:
        """Weighted sums of this round and the weight given to the previous global
        (``average_previous``: this round's beta step is on)."""

    @abstractmethod
    def _finish(self, sums: list[WeightedSum], layout: Layout, round: int) -> Weights:
        """The new global from the sums (and any state update)."""

    # -- shared helpers -------------------------------------------------------------------------

    def _required_layout(self, previous: Mapping[str, np.ndarray] | None) -> Layout | None:
        if previous is None:
            return None
        keys = self.shared_keys(previous.keys())
        if not keys:
            raise LayoutError(
                f"previous global has no key selected by shared={self.shared.to_config()!r}"
            )
        return layout_of(previous, keys)

    def _scalar_problem(self, update: ClientUpdate) -> str | None:
        n = update.num_examples
        if self.uses_samples and (
            isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0
        ):
            return f"num_examples must be a positive integer, got {n!r}"
        if self.uses_losses:
            loss = update.loss
            if not isinstance(loss, numbers.Real) or not np.isfinite(loss):
                return f"non-finite loss {loss!r}"
        return None

    def _coefficients(self, valid: Sequence[ClientUpdate]) -> Coefficients:
        sample = sample_weights([u.num_examples for u in valid]) if self.uses_samples else None
        loss = loss_weights([u.loss for u in valid]) if self.uses_losses else None
        return Coefficients(self._client_weight(sample, loss), sample, loss)


def client_sums(
    valid: Sequence[ClientUpdate], columns: Sequence[np.ndarray], layout: Layout
) -> list[WeightedSum]:
    """One weighted sum per column of client coefficients: sum_k column[k] * theta_k."""
    sums = []
    for column in columns:
        total = WeightedSum(layout)
        for update, c in zip(valid, column, strict=True):
            total.add(update.weights, c)
        sums.append(total)
    return sums


def _nonfinite_culprits(valid: Sequence[ClientUpdate], keys: Sequence[str]) -> dict[int, Rejection]:
    """Updates holding NaN/Inf in any of ``keys``, by object id."""
    culprits = {}
    for update in valid:
        bad = [k for k in keys if not np.isfinite(update.weights[k]).all()]
        if bad:
            more = f" (+{len(bad) - 1} more keys)" if len(bad) > 1 else ""
            culprits[id(update)] = Rejection(
                update.client_id, f"non-finite values in {bad[0]!r}{more}"
            )
    return culprits


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))
