"""Strategy names -> classes: the one visible map from config strings to code."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from fedvssl_ray.aggregation.base import Strategy
from fedvssl_ray.aggregation.compat import FlowerCompat
from fedvssl_ray.aggregation.strategies import FedAvg, FedVssl, LossWeighted

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedVssl, FedAvg, LossWeighted, FlowerCompat)
}


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build a strategy by name; ``params`` are the fields of its ``Params`` dataclass."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None
    valid = [f.name for f in fields(cls.Params)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for strategy {name!r}; valid: {valid}"
        )
    return cls(cls.Params(**params))
