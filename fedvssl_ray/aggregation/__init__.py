"""Server-side aggregation for FedVSSL: pure numpy, no Ray, no torch.

``make_strategy(name, **params).aggregate(updates, previous=g, round=r)`` returns the new
global as named arrays; ``strategy.last_report`` says how each client was weighted and which
were rejected. The math of the paper convention is in ``strategies``, the Flower baseline's in
``compat``.
"""

from fedvssl_ray.aggregation.accumulate import WeightedSum
from fedvssl_ray.aggregation.base import Strategy
from fedvssl_ray.aggregation.compat import (
    FlowerCompat,
    FlowerCompatParams,
    MissingStateError,
    windowed_mean_loss,
)
from fedvssl_ray.aggregation.keys import KeyFilter
from fedvssl_ray.aggregation.registry import STRATEGIES, make_strategy
from fedvssl_ray.aggregation.report import AggregationReport, ClientWeight, Rejection
from fedvssl_ray.aggregation.strategies import (
    FedAvg,
    FedVssl,
    FedVsslParams,
    FixedMixParams,
    LossWeighted,
)
from fedvssl_ray.aggregation.updates import ClientId, ClientUpdate, Weights
from fedvssl_ray.aggregation.validate import LayoutError, NoValidUpdatesError
from fedvssl_ray.aggregation.weighting import loss_weights, sample_weights

__all__ = [
    "STRATEGIES",
    "AggregationReport",
    "ClientId",
    "ClientUpdate",
    "ClientWeight",
    "FedAvg",
    "FedVssl",
    "FedVsslParams",
    "FixedMixParams",
    "FlowerCompat",
    "FlowerCompatParams",
    "KeyFilter",
    "LayoutError",
    "LossWeighted",
    "MissingStateError",
    "NoValidUpdatesError",
    "Rejection",
    "Strategy",
    "WeightedSum",
    "Weights",
    "loss_weights",
    "make_strategy",
    "sample_weights",
    "windowed_mean_loss",
]
