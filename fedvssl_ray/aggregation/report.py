"""What one aggregation did, in JSON-friendly form for ``metrics.jsonl``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fedvssl_ray.aggregation.updates import ClientId


@dataclass(frozen=True)
class ClientWeight:
    """Weight of one accepted client.

    ``weight`` is the client's coefficient in the round's mix M (they sum to 1 over clients);
    its share of the new global is ``weight * (1 - previous_weight)``. ``sample_weight``
    (n_k / sum n) and ``loss_weight`` (softmax(-L)_k) are the two ingredients, ``None`` where
    the strategy does not compute that side.
    """

    client_id: ClientId
    weight: float
    sample_weight: float | None
    loss_weight: float | None


@dataclass(frozen=True)
class Rejection:
    """A client update left out of the round, with the reason."""

    client_id: ClientId
    reason: str


@dataclass(frozen=True)
class AggregationReport:
    """Per-round record: accepted clients with weights, rejected clients with reasons.

    ``previous_weight`` is the weight of the previous global in the new one (the beta step:
    0.5 in paper mode from round 2 on, 0 otherwise).
    """

    round: int
    strategy: str
    clients: tuple[ClientWeight, ...]
    rejected: tuple[Rejection, ...]
    previous_weight: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of str, int, float and None values, ready for ``json.dumps``."""
        return asdict(self)
