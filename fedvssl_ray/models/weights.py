"""Moving named weights between torch modules and ``dict[str, np.ndarray]`` (never by position)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

Weights = dict[str, np.ndarray]


def get_weights(module: nn.Module, keys: Iterable[str] | None = None) -> Weights:
    """Copies of the module's state entries (all, or ``keys``) as numpy arrays, in state order."""
    state = module.state_dict()
    wanted = state.keys() if keys is None else keys
    missing = [k for k in wanted if k not in state]
    if missing:
        raise KeyError(f"module has no state entries {missing[:5]}")
    return {k: state[k].detach().cpu().numpy().copy() for k in wanted}


def set_weights(module: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Overwrite the named entries in place; every key must exist with the same shape."""
    state = module.state_dict()
    unknown = [k for k in weights if k not in state]
    if unknown:
        raise KeyError(f"weights name entries the module does not have: {unknown[:5]}")
    with torch.no_grad(), warnings.catch_warnings():
        # arrays from Ray's object store are read-only; they are only read here (copied in)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for key, value in weights.items():
            target = state[key]
            if tuple(target.shape) != tuple(value.shape):
                raise ValueError(
                    f"shape mismatch for {key}: module {tuple(target.shape)}, weights {value.shape}"
                )
            target.copy_(torch.from_numpy(np.asarray(value)))


def keys_with_prefix(module: nn.Module, prefix: str) -> list[str]:
    """State-dict keys whose first dotted component is ``prefix`` (e.g. ``backbone``)."""
    return [k for k in module.state_dict() if k.split(".", 1)[0] == prefix]
