"""make_strategy, parameters, key filters, state for resume, JSON-friendly reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedvssl_ray.aggregation import STRATEGIES, ClientUpdate, KeyFilter, make_strategy

KEYS = ["backbone.stem.0.weight", "backbone.stem.1.running_var", "head.fc1.weight", "aux.x"]


def test_registry_names():
    assert sorted(STRATEGIES) == ["fedavg", "fedvssl", "flower-compat", "loss"]


def test_unknown_strategy_lists_choices():
    with pytest.raises(
        ValueError,
        match=r"unknown strategy 'fedprox'; choose one of \['fedavg', 'fedvssl', 'flower-compat', 'loss'\]",
    ):
        make_strategy("fedprox")


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("fedvssl", {"alhpa": 0.5}, "unknown parameter 'alhpa' for strategy 'fedvssl'"),
        ("fedavg", {"alpha": 0.5}, "unknown parameter 'alpha' for strategy 'fedavg'"),
        ("flower-compat", {"beta": 1}, "unknown parameter 'beta'"),
        ("fedvssl", {"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ("fedvssl", {"alpha": float("nan")}, "alpha must be a number"),
        ("fedvssl", {"beta": 0.5}, "beta must be 0 or 1"),
        ("fedvssl", {"decay": 1.0}, r"decay must be in \[0, 1\)"),
        ("fedvssl", {"shared": "backbone.stem"}, "shared must be"),
        ("flower-compat", {"swbeta": 2}, "swbeta must be 0 or 1"),
        ("flower-compat", {"fedavg": 1}, "fedavg must be true or false"),
    ],
)
def test_bad_parameters_are_named(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_strategy(name, **params)


def test_defaults():
    assert make_strategy("fedvssl").state_dict()["params"] == {
        "alpha": 0.9,
        "beta": 1,
        "decay": 0.5,
        "shared": "backbone",
    }
    assert make_strategy("flower-compat").state_dict()["params"] == {
        "mix_coeff": 0.9,
        "swbeta": 1,
        "fedavg": False,
    }


def test_shared_and_upload_keys():
    assert make_strategy("fedvssl").shared_keys(KEYS) == KEYS[:2]
    assert make_strategy("fedvssl").upload_keys(KEYS) == KEYS[:2]
    assert make_strategy("fedavg", shared="all").shared_keys(KEYS) == KEYS
    assert make_strategy("loss", shared=["backbone", "aux"]).shared_keys(KEYS) == [
        KEYS[0],
        KEYS[1],
        KEYS[3],
    ]


def test_key_filter_matches_the_first_component_only():
    f = KeyFilter.parse("backbone")
    assert f("backbone.x") and f("backbone") and not f("backbones.x") and not f("head.backbone.x")
    assert KeyFilter.parse(("a", "b")).to_config() == ["a", "b"]
    assert KeyFilter.parse("all").to_config() == "all"


def test_state_dict_round_trips_through_json_and_checks_params():
    s = make_strategy("loss", shared=("backbone", "aux"))
    state = json.loads(json.dumps(s.state_dict()))
    make_strategy("loss", shared=["backbone", "aux"]).load_state_dict(state)
    with pytest.raises(ValueError, match="params"):
        make_strategy("loss").load_state_dict(state)
    with pytest.raises(ValueError, match="strategy"):
        make_strategy("fedavg", shared=("backbone", "aux")).load_state_dict(state)
    assert s.state_arrays() == {}
    with pytest.raises(ValueError, match="keeps no arrays"):
        s.load_state_arrays({"x": np.zeros(1)})


def test_report_is_json_friendly():
    s = make_strategy("fedvssl", alpha=0.9, beta=1)
    w = {"backbone.a": np.ones(2, np.float32)}
    bad = {"backbone.a": np.ones(3, np.float32)}
    s.aggregate(
        [ClientUpdate("c0", w, 2, 0.5), ClientUpdate(1, w, 1, 0.25), ClientUpdate(2, bad, 1, 0.1)],
        previous=w,
        round=2,
    )
    record = json.loads(json.dumps(s.last_report.to_dict()))
    assert (
        record["round"] == 2
        and record["strategy"] == "fedvssl"
        and record["previous_weight"] == 0.5
    )
    assert [c["client_id"] for c in record["clients"]] == ["c0", 1]
    assert sum(c["weight"] for c in record["clients"]) == pytest.approx(1.0)
    assert record["rejected"][0]["client_id"] == 2 and "shape" in record["rejected"][0]["reason"]
