"""Rejected updates: bad values, bad layouts, bad scalars; and the zero-survivor error."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedvssl_ray.aggregation import ClientUpdate, LayoutError, NoValidUpdatesError, make_strategy


def weights(c: float) -> dict[str, np.ndarray]:
    return {
        "backbone.a": np.full((2, 2), c, np.float32),
        "backbone.b": np.full((3,), c, np.float32),
        "backbone.n": np.array(int(c), np.int64),
        "head.h": np.zeros(1, np.float32),
    }


def good(k: int, c: float = 1.0, n: int = 1, loss: float = 0.0) -> ClientUpdate:
    return ClientUpdate(k, weights(c), n, loss)


def altered(k: int, **changes) -> ClientUpdate:
    w = weights(3.0)
    for key, val in changes.items():
        key = key.replace("__", ".")
        if val is None:
            del w[key]
        else:
            w[key] = val
    return ClientUpdate(k, w, 1, 0.0)


def run(updates, strategy="fedavg", **kw):
    s = make_strategy(strategy, **kw)
    g = s.aggregate(updates, round=1)
    return s, g


BAD_LAYOUTS = {
    "nan": (
        {"backbone__a": np.array([[1, np.nan], [1, 1]], np.float32)},
        "non-finite values in 'backbone.a'",
    ),
    "inf": (
        {"backbone__b": np.array([1, -np.inf, 1], np.float32)},
        "non-finite values in 'backbone.b'",
    ),
    "missing": ({"backbone__b": None}, "missing key 'backbone.b'"),
    "extra": ({"backbone__c": np.zeros(1, np.float32)}, "unexpected key 'backbone.c'"),
    "shape": ({"backbone__b": np.zeros(4, np.float32)}, "shape (4,) of 'backbone.b'"),
    "dtype": ({"backbone__b": np.zeros(3, np.float64)}, "dtype float64 of 'backbone.b'"),
    "object": ({"backbone__b": np.array([1, "x", None], dtype=object)}, "unsupported dtype object"),
    "not-array": ({"backbone__b": [1.0, 1.0, 1.0]}, "not a numpy array"),
}


@pytest.mark.parametrize("case", sorted(BAD_LAYOUTS))
def test_bad_update_is_rejected_and_the_rest_aggregated(case):
    changes, reason = BAD_LAYOUTS[case]
    s, g = run([good(0, 1.0), altered(7, **changes), good(1, 2.0)])
    np.testing.assert_allclose(g["backbone.a"], 1.5)
    assert [c.client_id for c in s.last_report.clients] == [0, 1]
    (rejection,) = s.last_report.rejected
    assert rejection.client_id == 7 and reason in rejection.reason


def test_head_keys_are_not_checked_in_paper_mode():
    s, g = run([good(0), altered(1, head__h=np.array([np.nan, 1, 2], np.float32))])
    assert s.last_report.rejected == () and "head.h" not in g


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_rejected_when_loss_side_is_used(loss):
    ups = [good(0, 1.0, loss=0.5), good(1, 2.0, loss=loss), good(2, 4.0, loss=0.5)]
    s, g = run(ups, "fedvssl", alpha=0.5, beta=0)
    assert [r.client_id for r in s.last_report.rejected] == [1]
    assert "non-finite loss" in s.last_report.rejected[0].reason
    np.testing.assert_allclose(g["backbone.a"], 2.5)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_num_examples_rejected_for_fedavg(n):
    s, _ = run([good(0), ClientUpdate(1, weights(2.0), n, 0.0)])
    assert "num_examples" in s.last_report.rejected[0].reason


def test_num_examples_ignored_by_loss_strategy():
    s, _ = run([good(0), ClientUpdate(1, weights(2.0), 0, 0.0)], "loss")
    assert s.last_report.rejected == ()


def test_empty_and_all_rejected_raise_typed_error():
    s = make_strategy("fedvssl", beta=0)
    with pytest.raises(NoValidUpdatesError, match="round 3: no valid client updates"):
        s.aggregate([], round=3)
    bad = altered(5, backbone__a=np.full((2, 2), np.nan, np.float32))
    with pytest.raises(NoValidUpdatesError) as info:
        s.aggregate([bad], round=4)
    assert [r.client_id for r in info.value.rejected] == [5]
    assert s.last_report.clients == () and s.last_report.rejected[0].client_id == 5
    json.dumps(s.last_report.to_dict())


def test_layout_follows_the_majority_in_round1():
    odd = altered(0, backbone__b=np.zeros(5, np.float32))
    s, g = run([odd, good(1), good(2, 3.0)])
    assert [r.client_id for r in s.last_report.rejected] == [0]
    assert g["backbone.b"].shape == (3,)


def test_layout_follows_the_previous_global():
    prev = weights(1.0)
    prev["backbone.b"] = np.zeros(5, np.float32)
    s = make_strategy("fedvssl", beta=1)
    with pytest.raises(NoValidUpdatesError, match="shape"):
        s.aggregate([good(0), good(1)], previous=prev, round=2)


def test_previous_with_nan_is_an_error_not_a_client_fault():
    prev = weights(1.0)
    prev["backbone.a"] = np.full((2, 2), np.nan, np.float32)
    with pytest.raises(ValueError, match="previous global"):
        make_strategy("fedavg", beta=1).aggregate([good(0)], previous=prev, round=2)


def test_beta_needs_previous_from_round2():
    with pytest.raises(ValueError, match="previous global"):
        make_strategy("fedvssl", beta=1).aggregate([good(0)], round=2)


def test_previous_without_shared_keys():
    with pytest.raises(LayoutError):
        make_strategy("fedvssl").aggregate([good(0)], previous={"head.h": np.zeros(1)}, round=2)


@pytest.mark.parametrize("r", [0, -1, 1.0, True])
def test_round_is_one_based_int(r):
    with pytest.raises(ValueError, match="round"):
        make_strategy("fedavg").aggregate([good(0)], round=r)


def test_inputs_are_not_modified():
    ups = [good(0, 1.0), good(1, 2.0)]
    before = {k: v.copy() for k, v in ups[0].weights.items()}
    g = make_strategy("fedavg").aggregate(ups, round=1)
    g["backbone.a"] += 10
    for k, v in before.items():
        np.testing.assert_array_equal(ups[0].weights[k], v)
