"""Screening client updates before any arithmetic.

The expected layout (key -> shape, dtype) is the previous global's for the keys it holds, and
otherwise the layout most clients agree on (ties: the earliest client). An update that does
not match it (missing or extra key, other shape or dtype, non-numeric array) is rejected with
a reason; the round goes on with the others. Checks on values (NaN/Inf) happen later, fused
with accumulation, because a separate pass over every update would double the memory traffic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedvssl_ray.aggregation.report import Rejection
from fedvssl_ray.aggregation.updates import ClientUpdate

Spec = tuple[tuple[int, ...], np.dtype]
Layout = dict[str, Spec]
"""Ordered key -> (shape, dtype)."""


class LayoutError(ValueError):
    """Arrays that should share a layout do not (keys, shapes or dtypes differ)."""


class NoValidUpdatesError(RuntimeError):
    """No client update survived screening; the caller keeps the previous global."""

    def __init__(self, round: int, rejected: Sequence[Rejection]) -> None:
        self.round = round
        self.rejected = tuple(rejected)
        detail = "; ".join(f"client {r.client_id}: {r.reason}" for r in self.rejected[:5])
        more = f" (+{len(self.rejected) - 5} more)" if len(self.rejected) > 5 else ""
        super().__init__(
            f"round {round}: no valid client updates"
            + (f" ({len(self.rejected)} rejected: {detail}{more})" if self.rejected else "")
        )


@dataclass(frozen=True)
class Screened:
    """Outcome of layout screening."""

    layout: Layout
    valid: list[ClientUpdate]
    rejected: list[Rejection]


def is_supported(dtype: np.dtype) -> bool:
    """Floating and integer arrays can be averaged; bool, complex, object and str cannot."""
    return dtype.kind in "fiu"


def layout_of(arrays: Mapping[str, np.ndarray], keys: Iterable[str]) -> Layout:
    """Shapes and dtypes of ``arrays[k]`` for the given keys; non-arrays raise LayoutError."""
    out: Layout = {}
    for key in keys:
        arr = arrays[key]
        if not isinstance(arr, np.ndarray):
            raise LayoutError(f"{key!r} is a {type(arr).__name__}, not a numpy array")
        out[key] = (arr.shape, arr.dtype)
    return out


def describe_mismatch(layout: Layout, expected: Layout) -> str | None:
    """First difference between two layouts in words, or None when they are equal."""
    missing = [k for k in expected if k not in layout]
    if missing:
        return f"missing key {missing[0]!r}" + (
            f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        )
    extra = [k for k in layout if k not in expected]
    if extra:
        return f"unexpected key {extra[0]!r}" + (
            f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""
        )
    for key, (shape, dtype) in expected.items():
        got_shape, got_dtype = layout[key]
        if got_shape != shape:
            return f"shape {got_shape} of {key!r} differs from expected {shape}"
        if got_dtype != dtype:
            return f"dtype {got_dtype} of {key!r} differs from expected {dtype}"
    return None


def screen_layouts(
    updates: Sequence[ClientUpdate],
    select: Callable[[Iterable[str]], list[str]],
    required: Layout | None,
    *,
    complete: bool,
) -> Screened:
    """Split updates into those matching the expected layout and rejected ones.

    :param select: the strategy's upload-key filter applied to each update's keys.
    :param required: layout every valid update must contain unchanged (the previous global's),
        or None in round 1.
    :param complete: ``required`` is the whole expected layout (no other key allowed); when
        False, keys beyond it follow the majority of clients.
    """
    rejected: list[Rejection] = []
    layouts: list[tuple[ClientUpdate, Layout]] = []
    for update in updates:
        try:
            layout = layout_of(update.weights, select(update.weights.keys()))
        except (LayoutError, AttributeError, TypeError) as err:
            rejected.append(Rejection(update.client_id, f"bad weights: {err}"))
            continue
        reason = _unsupported(layout) or ("no shared keys" if not layout else None)
        if reason is None and required is not None:
            reason = describe_mismatch({k: v for k, v in layout.items() if k in required}, required)
        if reason:
            rejected.append(Rejection(update.client_id, reason))
        else:
            layouts.append((update, layout))
    if complete and required is not None:
        expected: Layout | None = required
    else:
        expected = _majority([layout for _, layout in layouts])
    if expected is None:
        return Screened(required or {}, [], rejected)
    valid = []
    for update, layout in layouts:
        reason = describe_mismatch(layout, expected)
        if reason:
            rejected.append(Rejection(update.client_id, reason))
        else:
            valid.append(update)
    return Screened(expected, valid, rejected)


def _unsupported(layout: Layout) -> str | None:
    for key, (_, dtype) in layout.items():
        if not is_supported(dtype):
            return f"unsupported dtype {dtype} of {key!r}"
    return None


def _majority(layouts: Sequence[Layout]) -> Layout | None:
    if not layouts:
        return None
    signatures = [tuple((k, s, d.str) for k, (s, d) in layout.items()) for layout in layouts]
    counts = Counter(signatures)
    best = max(counts.values())
    return next(layouts[i] for i, sig in enumerate(signatures) if counts[sig] == best)
