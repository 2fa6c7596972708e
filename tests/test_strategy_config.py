"""Config -> strategy: every strategy key takes effect or is refused, through the user's path."""

from __future__ import annotations

import numpy as np
import pytest

from fedvssl_ray.aggregation import ClientUpdate, make_strategy
from fedvssl_ray.config import ConfigError, config_from_dict, config_to_dict, load_config
from fedvssl_ray.training.strategy_params import strategy_params


def strategy_for(*overrides: str):
    cfg = load_config("synthetic", list(overrides))
    return make_strategy(cfg.strategy.name, **strategy_params(cfg)), cfg


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), {"alpha": 0.9, "beta": 0, "decay": 0.5, "shared": "backbone"}),  # the preset
        (("strategy.alpha=0.3", "strategy.beta=0", "strategy.decay=0.25", "strategy.shared=all"),
         {"alpha": 0.3, "beta": 0, "decay": 0.25, "shared": "all"}),
        (("strategy.name=fedavg", "strategy.beta=1", "strategy.decay=0.3"),
         {"beta": 1, "decay": 0.3, "shared": "backbone"}),
        (("strategy.name=loss", "strategy.beta=0"), {"beta": 0, "decay": 0.5}),
        (("strategy.name=flower-compat", "strategy.mix_coeff=0.7", "strategy.swbeta=0"),
         {"mix_coeff": 0.7, "swbeta": 0, "fedavg": False}),
        (("strategy.name=flower-compat", "strategy.fedavg=true"), {"fedavg": True}),
    ],
)
def test_every_strategy_key_reaches_the_strategy(overrides, expected):
    strategy, _ = strategy_for(*overrides)
    for key, value in expected.items():
        assert getattr(strategy.params, key) == value, key


@pytest.mark.parametrize(("name", "alpha"), [("fedavg", 0.0), ("loss", 1.0)])
def test_fedavg_and_loss_are_alpha_limits_with_the_beta_step(name, alpha):
    strategy, cfg = strategy_for(f"strategy.name={name}", "strategy.beta=1")
    assert cfg.strategy.alpha == alpha  # config.json says what runs
    paper = make_strategy("fedvssl", alpha=alpha, beta=1)
    updates = [ClientUpdate(k, {"backbone.w": np.full(2, c, np.float32)}, n, loss)
               for k, (c, n, loss) in enumerate([(1, 1, 0.0), (2, 1, np.log(2)), (4, 2, np.log(4))])]
    previous = {"backbone.w": np.ones(2, np.float32)}
    got = strategy.aggregate(updates, previous=previous, round=2)
    want = paper.aggregate(updates, previous=previous, round=2)
    np.testing.assert_allclose(got["backbone.w"], want["backbone.w"], rtol=1e-6)
    assert strategy.last_report.previous_weight == 0.5  # the beta step ran
    # checklist item 3: g_2 = 1.875 (alpha 0) and 1.3571429 (alpha 1)
    assert got["backbone.w"][0] == pytest.approx({0.0: 1.875, 1.0: 1.3571429}[alpha], rel=1e-6)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (("strategy.name=fedavg", "strategy.alpha=0.5"), r"fedavg is fedvssl with alpha=0.*alpha=0.5"),
        (("strategy.name=loss", "strategy.alpha=0"), r"loss is fedvssl with alpha=1"),
        (("strategy.mix_coeff=0.5",), r"strategy.mix_coeff is not used by strategy.name=fedvssl"),
        (("strategy.fedavg=true",), r"strategy.fedavg is not used"),
        (("strategy.loss_window=50",), r"strategy.loss_window is not used"),
        (("strategy.name=flower-compat", "strategy.alpha=0.5"),
         r"strategy.alpha is not used by strategy.name=flower-compat"),
        (("strategy.name=flower-compat", "strategy.beta=0"), r"strategy.beta is not used"),
        (("strategy.name=flower-compat", "strategy.loss_window=0"), r"loss_window=0 must be >= 1"),
    ],
)
def test_keys_the_strategy_would_ignore_are_refused(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("synthetic", list(overrides))


def test_a_preset_alpha_does_not_block_choosing_fedavg_and_saved_configs_reload():
    cfg = load_config("ucf101", ["strategy.name=fedavg"])  # the preset file sets alpha 0.9
    assert cfg.strategy.alpha == 0.0
    assert config_from_dict(config_to_dict(cfg)) == cfg
    compat = load_config("synthetic", ["strategy.name=flower-compat", "strategy.fedavg=true"])
    assert config_from_dict(config_to_dict(compat)) == compat


def test_a_config_file_that_sets_both_name_and_a_conflicting_alpha_is_refused(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("strategy: {name: fedavg, alpha: 0.5}\n")
    with pytest.raises(ConfigError, match="fedavg is fedvssl with alpha=0"):
        load_config(str(path))
