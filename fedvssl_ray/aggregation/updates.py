"""What a client hands to the server after one round, and the named-array vocabulary.

Weights travel as ``dict[str, np.ndarray]`` keyed by state-dict name, never as positional
lists: a reordered or missing entry is then detected instead of silently shifting tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

Weights = dict[str, np.ndarray]
"""Named arrays, in state-dict order (``backbone.*`` first)."""

ClientId = int | str


@dataclass(frozen=True, eq=False)
class ClientUpdate:
    """One client's result of one round.

    :param client_id: stable client identifier (partition index or name).
    :param weights: the client's entries after local training; at least the keys the strategy
        asks for (``Strategy.upload_keys``), extra keys are ignored.
    :param num_examples: number of videos in the client's partition (n_k, FedAvg weight).
    :param loss: the client's mean training loss of the round (L_k); the loss-based average
        weights clients by softmax(-L).
    :param metrics: free-form numbers for logging; aggregation does not read them.
    """

    client_id: ClientId
    weights: Mapping[str, np.ndarray]
    num_examples: int
    loss: float
    metrics: Mapping[str, float] = field(default_factory=dict)
