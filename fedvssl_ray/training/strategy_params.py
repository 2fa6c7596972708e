"""The configured aggregation strategy's parameters, as :func:`make_strategy` takes them."""

from __future__ import annotations

from typing import Any

from ..config import Config


def strategy_params(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of ``make_strategy(cfg.strategy.name, ...)``: every key the strategy
    uses (``fedavg`` and ``loss`` are fedvssl's alpha limits, with the same beta step)."""
    s = cfg.strategy
    if s.name == "flower-compat":
        return {"mix_coeff": s.mix_coeff, "swbeta": s.swbeta, "fedavg": s.fedavg}
    common = {"beta": s.beta, "decay": s.decay, "shared": s.shared}
    return {"alpha": s.alpha, **common} if s.name == "fedvssl" else common
