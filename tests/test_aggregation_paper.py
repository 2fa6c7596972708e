"""FEDVSSL.md section 11, paper mode (points 1-9, 11, 15) on tiny constant arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedvssl_ray.aggregation import ClientUpdate, NoValidUpdatesError, loss_weights, make_strategy

LN = math.log


def weights(c: float, nbt: int = 0) -> dict[str, np.ndarray]:
    """A tiny model: two backbone tensors, an int64 BN counter and a head entry."""
    return {
        "backbone.conv.weight": np.full((2, 3), c, np.float32),
        "backbone.bn.running_mean": np.full((3,), c, np.float32),
        "backbone.bn.num_batches_tracked": np.array(nbt, np.int64),
        "head.fc.weight": np.full((2,), 100.0 + c, np.float32),
    }


def updates(cs=(1, 2, 4), ns=(1, 1, 2), losses=None) -> list[ClientUpdate]:
    """Section 11 point 1 by default: c = (1, 2, 4), n = (1, 1, 2), L = (0, ln 2, ln 4)."""
    losses = (0.0, LN(2), LN(4)) if losses is None else losses
    rows = zip(cs, ns, losses, strict=True)
    return [ClientUpdate(k, weights(c), n, L) for k, (c, n, L) in enumerate(rows)]


def value(g: dict[str, np.ndarray]) -> float:
    """The constant of a constant model, after checking it is constant."""
    arr = g["backbone.conv.weight"]
    np.testing.assert_array_equal(arr, arr.flat[0])
    np.testing.assert_allclose(g["backbone.bn.running_mean"], arr.flat[0], rtol=1e-6)
    return float(arr.flat[0])


@pytest.mark.parametrize(
    ("alpha", "expected"), [(0.0, 2.75), (1.0, 12 / 7), (0.9, 509 / 280), (0.5, 2.2321429)]
)
def test_point1_mix(alpha, expected):
    g = make_strategy("fedvssl", alpha=alpha, beta=0).aggregate(updates(), round=1)
    assert value(g) == pytest.approx(expected, rel=1e-6)
    assert g["backbone.conv.weight"].dtype == np.float32
    assert sorted(g) == [
        "backbone.bn.num_batches_tracked",
        "backbone.bn.running_mean",
        "backbone.conv.weight",
    ]


def test_point1_report_weights():
    s = make_strategy("fedvssl", alpha=0.9, beta=0)
    s.aggregate(updates(), round=1)
    report = s.last_report
    np.testing.assert_allclose([c.loss_weight for c in report.clients], [4 / 7, 2 / 7, 1 / 7])
    np.testing.assert_allclose([c.sample_weight for c in report.clients], [0.25, 0.25, 0.5])
    np.testing.assert_allclose(
        [c.weight for c in report.clients],
        [0.9 * 4 / 7 + 0.025, 0.9 * 2 / 7 + 0.025, 0.9 / 7 + 0.05],
    )
    assert report.previous_weight == 0.0 and report.rejected == ()


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.9])
def test_point2_beta_not_applied_in_round1(alpha):
    s = make_strategy("fedvssl", alpha=alpha, beta=1)
    g1 = s.aggregate(updates(), previous=weights(1000.0), round=1)
    m1 = make_strategy("fedvssl", alpha=alpha, beta=0).aggregate(updates(), round=1)
    assert value(g1) == value(m1)
    assert s.last_report.previous_weight == 0.0


@pytest.mark.parametrize(("alpha", "expected"), [(0.0, 1.875), (1.0, 1.3571429), (0.9, 1.4089286)])
def test_point3_beta_round2(alpha, expected):
    s = make_strategy("fedvssl", alpha=alpha, beta=1)
    g2 = s.aggregate(updates(), previous=weights(1.0), round=2)
    assert value(g2) == pytest.approx(expected, rel=1e-6)
    assert s.last_report.previous_weight == 0.5


def test_point4_beta_is_an_ema_not_a_uniform_average():
    s = make_strategy("fedvssl", alpha=0.9, beta=1)
    g, seen = None, []
    for r, m in enumerate((1.0, 2.0, 4.0), start=1):
        g = s.aggregate([ClientUpdate(0, weights(m), 5, 0.3)], previous=g, round=r)
        seen.append(value(g))
    assert seen == pytest.approx([1.0, 1.5, 2.75])
    assert seen[-1] != pytest.approx(7 / 3)


def test_point5_stable_softmax():
    w = loss_weights([1000.0, 1001.0, 1002.0])
    np.testing.assert_allclose(w, [0.66524096, 0.24472847, 0.09003057], rtol=1e-7)
    np.testing.assert_allclose(loss_weights([1.0, 2.0, 3.0]), w, rtol=1e-12)
    g = make_strategy("loss").aggregate(updates(losses=(1000.0, 1001.0, 1002.0)), round=1)
    assert value(g) == pytest.approx(1.5148202, rel=1e-6)


@pytest.mark.parametrize("losses", [(1e300, 0.0, 1e300), (-1e300, 1e300, 5.0)])
def test_point5_huge_losses_stay_finite(losses):
    g = make_strategy("fedvssl", alpha=0.5, beta=0).aggregate(updates(losses=losses), round=1)
    w = loss_weights(losses)
    assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0)
    expected = 0.5 * float(np.dot(w, [1, 2, 4])) + 0.5 * 2.75
    assert value(g) == pytest.approx(expected, rel=1e-6)


def test_point6_equal_losses_and_sizes():
    same_loss = updates(losses=(0.7, 0.7, 0.7))
    assert value(make_strategy("loss").aggregate(same_loss, round=1)) == pytest.approx(7 / 3)
    equal = updates(ns=(3, 3, 3), losses=(0.7, 0.7, 0.7))
    results = {
        value(make_strategy("fedvssl", alpha=a, beta=0).aggregate(equal, round=1))
        for a in (0, 0.3, 0.9, 1)
    }
    assert max(results) - min(results) < 1e-6


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
def test_point7_one_client(alpha):
    s = make_strategy("fedvssl", alpha=alpha, beta=1)
    one = [ClientUpdate("only", weights(3.0), 7, 2.5)]
    assert value(s.aggregate(one, round=1)) == pytest.approx(3.0)
    assert value(s.aggregate(one, previous=weights(1.0), round=4)) == pytest.approx(2.0)
    assert s.last_report.clients[0].weight == 1.0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_point8_alpha0_ignores_bad_losses(bad):
    g = make_strategy("fedvssl", alpha=0.0, beta=0).aggregate(
        updates(losses=(0.0, bad, 1.0)), round=1
    )
    assert value(g) == pytest.approx(2.75)


def test_point8_alpha1_ignores_sizes():
    a = make_strategy("fedvssl", alpha=1.0, beta=0).aggregate(updates(ns=(1, 1, 2)), round=1)
    b = make_strategy("fedvssl", alpha=1.0, beta=0).aggregate(updates(ns=(50, 1, 9)), round=1)
    assert value(a) == value(b) == pytest.approx(12 / 7, rel=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("beta", [0, 1])
def test_point9_fixed_point(alpha, beta):
    s = make_strategy("fedvssl", alpha=alpha, beta=beta)
    g = weights(1.25, nbt=477)
    for r in (1, 2, 3):
        echo = [
            ClientUpdate(k, dict(g), n, L)
            for k, (n, L) in enumerate([(3, 0.1), (5, 2.0), (1, 9.0)])
        ]
        new = s.aggregate(echo, previous=g, round=r)
        for key, arr in new.items():
            assert arr.dtype == g[key].dtype
            np.testing.assert_allclose(arr, g[key], rtol=1e-6)
        g = {**g, **new}


def test_point11_num_batches_tracked_int64_within_one():
    ups = [ClientUpdate(k, weights(1.0, nbt=n), n, 0.1 * k) for k, n in enumerate((477, 477, 478))]
    s = make_strategy("fedvssl", alpha=0.9, beta=1)
    g = s.aggregate(ups, previous=weights(1.0, nbt=400), round=2)
    nbt = g["backbone.bn.num_batches_tracked"]
    assert nbt.dtype == np.int64 and nbt.shape == ()
    coeffs = [c.weight for c in s.last_report.clients]
    exact = 0.5 * 400 + 0.5 * float(np.dot(coeffs, [477, 477, 478]))
    assert abs(int(nbt) - exact) <= 1


def test_point15_failed_clients_renormalised_and_zero_survivors():
    good = updates()[:2]
    broken = ClientUpdate(
        9, {**weights(4.0), "backbone.conv.weight": np.full((2, 3), np.nan, np.float32)}, 2, 0.1
    )
    s = make_strategy("fedvssl", alpha=0.0, beta=0)
    assert value(s.aggregate([*good, broken], round=1)) == pytest.approx(1.5)
    assert [c.weight for c in s.last_report.clients] == [0.5, 0.5]
    assert [r.client_id for r in s.last_report.rejected] == [9]
    with pytest.raises(NoValidUpdatesError):
        s.aggregate([broken], round=2)


def test_limits_keep_their_names():
    ups = updates()
    assert value(make_strategy("fedavg").aggregate(ups, round=1)) == pytest.approx(2.75)
    assert value(make_strategy("loss").aggregate(ups, round=1)) == pytest.approx(12 / 7, rel=1e-6)
    swa = make_strategy("fedavg", beta=1).aggregate(ups, previous=weights(1.0), round=2)
    assert value(swa) == pytest.approx(1.875)


def test_decay_extension():
    g = make_strategy("fedvssl", alpha=0.0, beta=1, decay=0.25).aggregate(
        updates(), previous=weights(1.0), round=2
    )
    assert value(g) == pytest.approx(0.25 * 1.0 + 0.75 * 2.75)


def test_shared_all_aggregates_the_head_too():
    g = make_strategy("fedavg", shared="all").aggregate(updates(), round=1)
    np.testing.assert_allclose(g["head.fc.weight"], 102.75)
    assert list(g)[-1] == "head.fc.weight"
