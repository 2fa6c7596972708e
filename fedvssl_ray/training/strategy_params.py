"""The configured aggregation strategy's parameters, as :func:`make_strategy` takes them."""

from __future__ import annotations

from typing import Any

from ..config import Config


def strategy_params(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of ``make_strategy(cfg.strategy.name, ...)``."""
    s = cfg.strategy
    if s.name == "fedvssl":
        return {"alpha": s.alpha, "beta": s.beta, "decay": s.decay, "shared": s.shared}
    if s.name == "flower-compat":
        return {"mix_coeff": s.mix_coeff, "swbeta": s.swbeta}
    return {"shared": s.shared}
