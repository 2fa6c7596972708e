"""The streaming weighted sum: chunking, dtypes, NaN detection and float32 error bound."""

from __future__ import annotations

import numpy as np
import pytest

from fedvssl_ray.aggregation import LayoutError, WeightedSum


def layout(**specs):
    return {k: (shape, np.dtype(dt)) for k, (shape, dt) in specs.items()}


def test_sum_across_chunk_boundaries_and_views():
    lay = layout(x=((3, 5), "float32"), s=((), "float32"))
    acc = WeightedSum(lay, chunk=4)
    a = np.arange(15, dtype=np.float32).reshape(3, 5)
    b = np.asfortranarray(np.ones((3, 5), np.float32) * 2)  # non-contiguous in C order
    acc.add({"x": a, "s": np.array(1.0, np.float32), "ignored": 0}, 0.25)
    acc.add({"x": b, "s": np.array(3.0, np.float32)}, 0.75)
    out = acc.result()
    np.testing.assert_allclose(out["x"], 0.25 * a + 1.5)
    assert out["x"].dtype == np.float32 and out["x"].shape == (3, 5)
    assert isinstance(out["s"], np.ndarray) and out["s"].shape == () and float(out["s"]) == 2.5


def test_integers_round_or_stay_float():
    lay = layout(n=((2,), "int64"))
    for mode, expected, dtype in [("round", [2, 3], np.int64), ("float", [2.4, 2.8], np.float64)]:
        acc = WeightedSum(lay)
        acc.add({"n": np.array([2, 2])}, 0.6)
        acc.add({"n": np.array([3, 4])}, 0.4)
        out = acc.result(integers=mode)["n"]
        assert out.dtype == dtype
        np.testing.assert_allclose(out, expected)


def test_float16_accumulates_in_float32_and_comes_back_float16():
    acc = WeightedSum(layout(h=((4,), "float16")))
    for _ in range(10):
        acc.add({"h": np.full(4, 0.1, np.float16)}, 0.1)
    out = acc.result()["h"]
    assert out.dtype == np.float16
    np.testing.assert_allclose(out, 0.1, rtol=1e-3)


def test_nonfinite_keys():
    acc = WeightedSum(layout(a=((6,), "float32"), b=((2,), "float32")), chunk=4)
    acc.add({"a": np.ones(6, np.float32), "b": np.ones(2, np.float32)}, 0.5)
    acc.add({"a": np.array([1, 1, 1, 1, 1, np.inf], np.float32), "b": np.ones(2, np.float32)}, 0.0)
    assert acc.nonfinite_keys() == ["a"]


def test_shape_mismatch_and_empty_result():
    acc = WeightedSum(layout(a=((2,), "float32")))
    with pytest.raises(LayoutError):
        acc.add({"a": np.ones(3, np.float32)}, 1.0)
    with pytest.raises(ValueError, match="nothing was added"):
        acc.result()


@pytest.mark.parametrize("k", [5, 100])
def test_float32_error_stays_within_the_documented_bound(k):
    rng = np.random.default_rng(k)
    base = rng.standard_normal(4096).astype(np.float32)
    sources = [base + 0.01 * rng.standard_normal(4096).astype(np.float32) for _ in range(k)]
    w = rng.random(k)
    w /= w.sum()
    acc = WeightedSum(layout(x=((4096,), "float32")), chunk=1000)
    for src, wk in zip(sources, w, strict=True):
        acc.add({"x": src}, wk)
    got = acc.result()["x"].astype(np.float64)
    exact = sum(wk * src.astype(np.float64) for src, wk in zip(sources, w, strict=True))
    scale = max(np.abs(s).max() for s in sources)
    assert np.abs(got - exact).max() <= (k + 1) * 2.0**-24 * scale
