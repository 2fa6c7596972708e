"""Streaming weighted sums over named arrays: S = sum_i c_i x_i, built one source at a time.

Every strategy reduces to such a sum with weights known in advance and adding up to 1
(client coefficients, plus the previous global for the beta step), so one pass per source is
enough and no stack of K updates is ever formed. Memory: one output buffer per key (one model
copy, one flat buffer whose per-key views are returned) plus a scratch buffer of ``chunk``
elements; the first source is multiplied straight into the output.

Precision. Floating entries accumulate in their own dtype (float32 in, float32 out; float16
accumulates in float32). With convex weights each step adds at most one rounding of the
running sum, so |S_f32 - S| <= (K + 1) u max_i |x_i| with u = 2^-24 (first order). Measured
by experiments/bench/aggregation.py: 1.6 u (9e-8 max|x|) for 5 sources, 7.5 u (4.4e-7 max|x|)
for 100, well below what one float32 SGD step on a client rounds away. A float64
accumulator would bring this to the final cast's 0.5 u but doubles the accumulator's memory
and measured 2x slower, so floating entries stay float32. Integer entries (BN
``num_batches_tracked``) are small: they accumulate in float64 and are rounded back.

Speed. ``acc += c * x`` would write and re-read a temporary as large as the tensor. Instead
pending sources are folded in together, chunk by chunk through a cache-sized scratch buffer:
main memory sees one read per source and one store of the output per group of sources, less
traffic than one ``np.add(acc, x, out=acc)`` per source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from fedvssl_ray.aggregation.validate import Layout, LayoutError

CHUNK = 1 << 16
"""Elements per step (256 KiB of float32): output chunk, scratch and the source being read
stay in a 1 MiB L2 cache while every pending source is added."""

GROUP = 8
"""Sources held (by reference, never copied) before they are folded into the sums."""

IntegerMode = Literal["round", "float"]


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """float32/float64 keep their dtype, float16 widens to float32, integers use float64."""
    if dtype.kind == "f":
        return np.result_type(dtype, np.float32)
    return np.dtype(np.float64)


class WeightedSum:
    """S = sum_i weight_i * arrays_i over the keys of ``layout``, accumulated in place.

    :meth:`add` keeps a reference to the source; every ``group`` sources (and before any
    read) the pending ones are folded into the sums chunk by chunk, so each output chunk is
    loaded and stored once per group while the sources stream through the cache.

    :param layout: key -> (shape, dtype) every added mapping must provide (extra keys ignored).
    :param chunk: elements per step; only speed depends on it.
    :param group: sources folded together; bounds how many the accumulator keeps alive.
    """

    def __init__(self, layout: Layout, *, chunk: int = CHUNK, group: int = GROUP) -> None:
        self._layout = dict(layout)
        self._chunk = chunk
        self._group = group
        self._pending: list[tuple[Mapping[str, np.ndarray], float]] = []
        self._acc: dict[str, np.ndarray] = {}
        self._scratch: dict[np.dtype, np.ndarray] = {}

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        """Add ``weight * arrays[key]`` to every entry; arrays must match the layout's shapes.

        The arrays must not change until the next read (:meth:`result`,
        :meth:`nonfinite_keys`) or ``group`` further adds. NaN/Inf propagate silently.
        """
        for key, (shape, _) in self._layout.items():
            if arrays[key].shape != shape:
                raise LayoutError(
                    f"shape {arrays[key].shape} of {key!r} differs from expected {shape}"
                )
        self._pending.append((arrays, float(weight)))
        if len(self._pending) >= self._group:
            self._fold(check=False)

    def nonfinite_keys(self) -> list[str]:
        """Keys whose sum holds NaN or Inf, i.e. some source had NaN/Inf there.

        With weights adding up to 1 a sum of finite values cannot overflow, and 0 * NaN is NaN,
        so checking the one output replaces checking all K inputs. The check rides on the
        last fold while each chunk is still in cache.
        """
        if not self._pending and not self._acc:
            raise ValueError("nothing was added")
        return self._fold(check=True)

    def result(self, *, integers: IntegerMode = "round") -> dict[str, np.ndarray]:
        """The sums, cast back to each entry's dtype; the accumulator is empty afterwards.

        :param integers: integer entries are rounded to nearest (``"round"``) or left as
            float64 (``"float"``).
        """
        if self._pending:
            self._fold(check=False)
        if not self._acc:
            raise ValueError("nothing was added")
        out: dict[str, np.ndarray] = {}
        for key, (_, dtype) in self._layout.items():
            acc = self._acc[key]
            if dtype.kind == "f":
                out[key] = acc if acc.dtype == dtype else acc.astype(dtype)
            elif integers == "float":
                out[key] = acc
            else:
                np.rint(acc, out=acc)
                out[key] = acc.astype(dtype)
        self._acc = {}
        return out

    def _fold(self, *, check: bool) -> list[str]:
        """Add the pending sources into the sums; with ``check``, report non-finite keys."""
        pending, self._pending = self._pending, []
        flags = np.empty(self._chunk, dtype=bool) if check else None
        bad = []
        fresh = not self._acc
        if fresh:
            self._acc = self._allocate()
        with np.errstate(invalid="ignore", over="ignore"):
            for key, acc in self._acc.items():
                sources = [(np.ravel(arrays[key]), w) for arrays, w in pending]
                if self._fold_key(acc.reshape(-1), sources, fresh, flags):
                    bad.append(key)
        return bad

    def _allocate(self) -> dict[str, np.ndarray]:
        """One flat buffer per accumulator dtype, viewed per key: a single large allocation
        is cheaper to fault in than 126 separate ones."""
        by_dtype: dict[np.dtype, list[str]] = {}
        for key, (_, dtype) in self._layout.items():
            by_dtype.setdefault(accumulator_dtype(dtype), []).append(key)
        views = {}
        for acc_dtype, keys in by_dtype.items():
            sizes = [int(np.prod(self._layout[k][0])) for k in keys]
            flat = np.empty(sum(sizes), acc_dtype)
            for key, start, size in zip(keys, np.cumsum([0, *sizes[:-1]]), sizes, strict=True):
                views[key] = flat[start : start + size].reshape(self._layout[key][0])
        return {key: views[key] for key in self._layout}

    def _fold_key(
        self,
        acc: np.ndarray,
        sources: list[tuple[np.ndarray, float]],
        fresh: bool,
        flags: np.ndarray | None,
    ) -> bool:
        scratch = self._scratch.get(acc.dtype)
        if scratch is None:
            scratch = self._scratch[acc.dtype] = np.empty(self._chunk, acc.dtype)
        nonfinite = False
        for start in range(0, acc.size, self._chunk):
            stop = min(start + self._chunk, acc.size)
            out = acc[start:stop]
            tmp = scratch[: stop - start]
            rest = sources
            if fresh:
                np.multiply(sources[0][0][start:stop], sources[0][1], out=out)
                rest = sources[1:]
            for src, weight in rest:
                np.multiply(src[start:stop], weight, out=tmp)
                np.add(out, tmp, out=out)
            if flags is not None and not nonfinite:
                ok = flags[: stop - start]
                np.isfinite(out, out=ok)
                nonfinite = not ok.all()
        return nonfinite
