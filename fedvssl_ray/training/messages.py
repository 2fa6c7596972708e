"""What a client worker returns to the round loop (torch-free, so the driver never loads torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..aggregation import ClientUpdate, Weights


@dataclass(frozen=True)
class ClientResult:
    """A finished local round: the update for the server, the new head, and timings."""

    update: ClientUpdate
    head: Weights
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
