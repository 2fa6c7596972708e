"""What a client worker returns to the round loop (torch-free, so the driver never loads torch)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..aggregation import ClientUpdate, Weights


class HeadRef(Protocol):
    """A head left where it was trained (a Ray object), fetched only to be written to disk."""

    def fetch(self) -> Weights: ...


Head = Weights | HeadRef
"""A client's head in a result: the weights themselves in process, else a reference to them."""


def head_weights(head: Head) -> Weights:
    """The weights behind ``head``: in-process weights as they are, a reference fetched."""
    return head if isinstance(head, Mapping) else head.fetch()


@dataclass(frozen=True)
class ClientResult:
    """A finished local round: the update for the server, the new head (or where it is kept),
    and timings."""

    update: ClientUpdate
    head: Head | None
    steps: int
    timings: dict[str, float] = field(default_factory=dict)
    zero_loss: float | None = None  # mean loss of the all-zero predictor on the same clips


@dataclass(frozen=True)
class NeedHead:
    """The worker no longer holds this client's head at the asked version: send it along."""

    client_id: int
    version: int


def client_seed(seed: int, client_id: int, round_idx: int) -> int:
    """A torch seed for (run seed, client, round): new every round, reproducible."""
    return int(np.random.SeedSequence([seed, client_id, round_idx]).generate_state(1)[0])
