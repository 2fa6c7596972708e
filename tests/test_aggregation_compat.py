"""FEDVSSL.md section 4 and section 11 points 16-19: the Flower baseline as shipped."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedvssl_ray.aggregation import (
    ClientUpdate,
    MissingStateError,
    make_strategy,
    windowed_mean_loss,
)

KEYS = [
    "backbone.conv.weight",
    "backbone.bn.weight",
    "backbone.bn.num_batches_tracked",
    "head.fc.weight",
    "head.fc.bias",
]
BACKBONE = KEYS[:3]
CLIENTS = [(0, 1907, 0.1), (1, 1908, 2.0), (2, 5, 7.0)]  # id, n_k, windowed loss (s_k = e^-L)

SEEN_BETA1 = [0.9, 0.855, 0.81225, 0.7716375, 0.733055625]
SEEN_BETA0 = [0.9**r for r in range(1, 6)]
SECOND_BETA1 = [0.1, 0.095, 0.09025, 0.0857375, 0.081450625]
SECOND_BETA0 = [0.1, 0.09, 0.081, 0.0729, 0.06561]


def model(c: float, nbt: int = 10) -> dict[str, np.ndarray]:
    return {
        "backbone.conv.weight": np.full((2, 3), c, np.float32),
        "backbone.bn.weight": np.full((3,), c, np.float32),
        "backbone.bn.num_batches_tracked": np.array(nbt, np.int64),
        "head.fc.weight": np.full((2, 2), 1.0, np.float32),
        "head.fc.bias": np.full((2,), 1.0, np.float32),
    }


def echo_round(strategy, seen: dict[str, np.ndarray] | None, r: int, clients=CLIENTS):
    """Clients that do not train: they return the backbone they loaded and their own head."""
    base = model(1.0)
    if seen is not None:
        base.update(seen)
    ups = [ClientUpdate(k, dict(base), n, loss) for k, n, loss in clients]
    return strategy.aggregate(ups, previous=seen, round=r)


def run(rounds: int = 5, clients=CLIENTS, **params):
    s = make_strategy("flower-compat", **params)
    seen, history = None, []
    for r in range(1, rounds + 1):
        seen = echo_round(s, seen, r, clients)
        history.append(seen)
    return s, history


def const(arr: np.ndarray) -> float:
    np.testing.assert_array_equal(arr, arr.flat[0])
    return float(arr.flat[0])


@pytest.mark.parametrize(("swbeta", "expected"), [(1, SEEN_BETA1), (0, SEEN_BETA0)])
def test_point16_what_clients_see(swbeta, expected):
    _, history = run(mix_coeff=0.9, swbeta=swbeta)
    assert [const(g["backbone.conv.weight"]) for g in history] == pytest.approx(expected, rel=1e-6)
    assert [const(g["backbone.bn.weight"]) for g in history] == pytest.approx(expected, rel=1e-6)
    assert all(list(g) == BACKBONE for g in history)


@pytest.mark.parametrize(("swbeta", "second"), [(1, SECOND_BETA1), (0, SECOND_BETA0)])
def test_point17_saved_list(swbeta, second):
    s = make_strategy("flower-compat", mix_coeff=0.9, swbeta=swbeta)
    seen = None
    for r in range(1, 6):
        seen = echo_round(s, seen, r)
        saved = s.saved_list()
        assert len(saved) == 2 * len(KEYS)
        first, back = saved[: len(KEYS)], saved[len(KEYS) :]
        assert const(back[0]) == pytest.approx(second[r - 1], rel=1e-6)
        assert const(first[3]) == pytest.approx(0.9) and const(first[4]) == pytest.approx(0.9)
        assert const(back[3]) == pytest.approx(0.1) and const(back[4]) == pytest.approx(0.1)
    assert list(s.state_arrays())[: len(KEYS)] == [f"first.{k}" for k in KEYS]


def test_point17_losses_change_nothing_clients_see():
    _, a = run(clients=[(0, 3, 0.1), (1, 5, 4.0)])
    _, b = run(clients=[(0, 3, 9.0), (1, 5, 0.0)])
    for ga, gb in zip(a, b, strict=True):
        for key in BACKBONE:
            np.testing.assert_array_equal(ga[key], gb[key])


def test_point17_mix_coeff_zero_gives_zeros():
    _, history = run(rounds=2, mix_coeff=0.0)
    for g in history:
        assert (
            not np.any(g["backbone.conv.weight"]) and int(g["backbone.bn.num_batches_tracked"]) == 0
        )


def test_point18_fedavg_true_saves_l_arrays_and_equals_paper_fedavg():
    ups = [
        ClientUpdate(
            k, {**model(c, nbt=476 + k), "head.fc.bias": np.full((2,), c, np.float32)}, n, 0.0
        )
        for k, (c, n) in enumerate([(1.0, 1), (2.0, 1), (4.0, 2)])
    ]
    compat = make_strategy("flower-compat", fedavg=True, swbeta=1)
    g = compat.aggregate(ups, round=1)
    assert len(compat.saved_list()) == len(KEYS)
    assert const(compat.saved_list()[4]) == pytest.approx(2.75)  # heads aggregated, never sent
    paper = make_strategy("fedvssl", alpha=0.0, beta=0).aggregate(ups, round=1)
    assert list(g) == list(paper) == BACKBONE
    for key in BACKBONE:
        assert g[key].dtype == paper[key].dtype
        np.testing.assert_allclose(g[key], paper[key], rtol=1e-6, atol=1)
    g2 = compat.aggregate(ups, previous=g, round=2)  # no SWA in fedavg mode
    np.testing.assert_allclose(g2["backbone.conv.weight"], 2.75)


def test_num_batches_tracked_is_truncated_like_a_torch_load():
    s = make_strategy("flower-compat", mix_coeff=0.9, swbeta=0)
    g = s.aggregate([ClientUpdate(0, model(1.0, nbt=477), 10, 0.0)], round=1)
    assert g["backbone.bn.num_batches_tracked"].dtype == np.int64
    assert int(g["backbone.bn.num_batches_tracked"]) == 429  # trunc(0.9 * 477 = 429.3)
    assert s.saved_list()[2].dtype == np.float64 and float(s.saved_list()[2]) == pytest.approx(
        429.3
    )


def test_resume_from_state_arrays_matches_an_uninterrupted_run():
    _, straight = run(rounds=3)
    first = make_strategy("flower-compat")
    seen = echo_round(first, None, 1)
    seen = echo_round(first, seen, 2)
    state, arrays = first.state_dict(), first.state_arrays()
    assert state == {
        "strategy": "flower-compat",
        "params": {"mix_coeff": 0.9, "swbeta": 1, "fedavg": False},
        "halves": 2,
    }
    resumed = make_strategy("flower-compat")
    with pytest.raises(MissingStateError):
        echo_round(resumed, seen, 3)
    resumed.load_state_dict(state)
    resumed.load_state_arrays(arrays)
    third = echo_round(resumed, seen, 3)
    for key in BACKBONE:
        np.testing.assert_array_equal(third[key], straight[2][key])


def test_returned_arrays_cannot_corrupt_the_saved_list():
    s, history = run(rounds=1)
    history[0]["backbone.conv.weight"][0, 0] = 5.0
    assert const(s.saved_list()[0]) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        s.saved_list()[0][0, 0] = 5.0


def test_keys_uploaded_and_shared():
    s = make_strategy("flower-compat")
    assert s.upload_keys(KEYS) == KEYS
    assert s.shared_keys(KEYS) == BACKBONE


def test_point19_windowed_loss():
    L = windowed_mean_loss(range(1, 26))
    assert L == 10.5
    assert math.exp(-L) == pytest.approx(2.7536449e-05, rel=1e-7)
    assert windowed_mean_loss([1.0] * 10 + [3.0] * 10, batch_sizes=[4] * 20) == 2.0
    assert windowed_mean_loss([1.0, 3.0], batch_sizes=[1, 3], window=2) == 2.5
    assert windowed_mean_loss([1 / 3] * 10) == 0.33333  # each logged window is rounded


def test_point19_too_few_iterations_is_an_error():
    with pytest.raises(ValueError, match="at least 10 iterations"):
        windowed_mean_loss(range(9))
