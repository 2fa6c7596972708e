"""Config tree: presets, dotted overrides typed from the schema, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedvssl_ray.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    format_config,
    load_config,
    override,
    preset_names,
)

ROOT = Path(__file__).resolve().parent.parent


def test_presets_exist_and_load():
    assert {"synthetic", "ucf101", "k400"} <= set(preset_names())
    for name in preset_names():
        assert isinstance(load_config(name), Config)


def test_ucf101_preset_is_the_papers_setting():
    cfg = load_config("ucf101")
    assert (cfg.num_clients, cfg.clients_per_round, cfg.rounds, cfg.seed) == (5, 5, 20, 7)
    assert (cfg.strategy.name, cfg.strategy.alpha, cfg.strategy.beta) == ("fedvssl", 0.9, 1)
    c = cfg.client
    assert (c.lr, c.momentum, c.weight_decay, c.grad_clip) == (0.01, 0.9, 1e-4, 40.0)
    assert (c.batch_size, c.local_epochs) == (4, 1)
    assert (cfg.data.clip_len, cfg.data.crop_size, cfg.model.backbone) == (16, 112, "r3d_18")
    assert cfg.data.partition == "iid"


def test_k400_preset_momentum_zero():
    cfg = load_config("k400")
    assert (cfg.num_clients, cfg.clients_per_round, cfg.rounds) == (100, 5, 540)
    assert cfg.client.momentum == 0.0 and cfg.data.partition == "k400-noniid"


def test_overrides_are_typed():
    cfg = load_config("synthetic", ["strategy.alpha=1", "rounds=100", "resume=true",
                                    "client.num_gpus=0.5", "ray.address=auto"])
    assert cfg.strategy.alpha == 1.0 and isinstance(cfg.strategy.alpha, float)
    assert cfg.rounds == 100 and cfg.resume is True
    assert cfg.client.num_gpus == 0.5 and cfg.ray.address == "auto"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("strategy.alpah=1", r"strategy\.alpah.*did you mean 'strategy\.alpha'"),
        ("rouns=3", r"did you mean 'rounds'"),
        ("rounds=1.5", r"rounds='1.5' is not an integer"),
        ("strategy.beta=2", r"strategy\.beta.*choose one of \[0, 1\]"),
        ("strategy.name=fedprox", r"choose one of \['fedvssl', 'fedavg', 'loss', 'flower-compat'\]"),
        ("client.lr=fast", r"client\.lr='fast' is not a number"),
        ("resume=maybe", r"resume='maybe' is not a boolean"),
        ("strategy=1", r"strategy is a section.*strategy\.alpha"),
        ("rounds", r"not of the form key=value"),
        ("clients_per_round=9", r"clients_per_round=9 must be in \[1, num_clients=2\]"),
        ("strategy.alpha=1.5", r"strategy\.alpha=1\.5 must be in \[0, 1\]"),
        ("data.crop_size=100", r"data\.crop_size=100 must be a multiple of 16"),
        ("data.root=", r"data\.root is empty: it must name a folder"),
        ("client.lr=-1", r"client\.lr=-1\.0 must be > 0"),
        ("client.optimizer=adam", r"client\.optimizer.*choose one of \['sgd', 'adamw'\]"),
        ("client.target_scale=0", r"client\.target_scale=0\.0 must be > 0"),
        ("data.patch_speed=-1", r"data\.patch_speed=-1\.0 must be >= 0"),
    ],
)
def test_bad_overrides_name_the_key(text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("synthetic", [text])


def test_preset_file_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("client:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"client\.lrr.*bad\.yaml.*client\.lr"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*synthetic"):
        load_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_a_preset_file_can_build_on_a_base_preset(tmp_path):
    """``base: NAME`` applies that preset first; the file's own keys and overrides win."""
    child = tmp_path / "short.yaml"
    child.write_text("base: synthetic\nrounds: 3\nclient: {local_epochs: 2}\n")
    cfg = load_config(str(child), ["client.lr=0.005"])
    synthetic = load_config("synthetic")
    assert (cfg.rounds, cfg.client.local_epochs, cfg.client.lr) == (3, 2, 0.005)
    assert cfg.data == synthetic.data and cfg.model == synthetic.model
    grandchild = tmp_path / "shorter.yaml"
    grandchild.write_text(f"base: {child}\nrounds: 2\n")
    assert load_config(str(grandchild)).client.local_epochs == 2
    sweep = load_config("synthetic-sweep")
    assert sweep.rounds < synthetic.rounds and sweep.strategy == synthetic.strategy


def test_base_preset_mistakes_name_the_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"base: {b}\n")
    b.write_text(f"base: {a}\n")
    with pytest.raises(ConfigError, match=r"a\.yaml.*cycle.*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(str(a))
    a.write_text("base: nope\n")
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config(str(a))
    a.write_text("base: [synthetic]\n")
    with pytest.raises(ConfigError, match=r"base in .*a\.yaml must name a preset"):
        load_config(str(a))


def test_round_trip_through_dict_and_json(tmp_path):
    cfg = load_config("ucf101", ["strategy.alpha=0.5"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(json.loads(path.read_text())) == cfg
    assert load_config(str(path)) == cfg
    assert "alpha: 0.5" in format_config(cfg)


def test_override_helper():
    cfg = override(load_config("synthetic"), rounds=2, strategy__alpha=0.0)
    assert cfg.rounds == 2 and cfg.strategy.alpha == 0.0


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "pretrain.py"), *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )


def test_cli_bad_key_exits_2_naming_the_key():
    result = run_script("strategy.alpah=1")
    assert result.returncode == 2
    assert "strategy.alpha" in result.stderr


def test_cli_help_lists_presets_and_overrides():
    result = run_script("--help")
    assert result.returncode == 0
    for word in ("synthetic", "ucf101", "k400", "key=value", "strategy.alpha"):
        assert word in result.stdout


def test_cli_help_and_print_config_show_the_chosen_presets_values():
    import re

    def value(text: str, key: str) -> str:
        return re.search(rf"^\s+{re.escape(key)}\s+\S+\s+(\S+)$", text, re.M)[1]

    gpu = run_script("--config", "ucf101", "--help").stdout
    cpu = run_script("--help").stdout
    assert value(gpu, "client.num_gpus") == "1.0" and value(cpu, "client.num_gpus") == "0.0"
    assert value(gpu, "model.backbone") == "'r3d_18'"
    assert value(cpu, "model.backbone") == "'r3d10_narrow'"
    printed = run_script("--config", "ucf101", "--print-config").stdout
    assert "num_gpus: 1.0" in printed
