"""A config the cluster cannot serve stops before any actor is created, naming the key."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedvssl_ray.actors.cluster import actors_that_fit, check_client_resources
from fedvssl_ray.config import ConfigError, load_config
from fedvssl_ray.data.synthetic import ensure_synthetic_dataset

CPU_ONLY = [{"CPU": 2.0}]
GPU_NODES = [{"CPU": 16.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 2.0}]


def test_actors_that_fit_per_node():
    assert actors_that_fit(CPU_ONLY, 1.0, 0.0) == 2
    assert actors_that_fit(CPU_ONLY, 0.5, 0.0) == 4
    assert actors_that_fit(GPU_NODES, 2.0, 1.0) == 3
    assert actors_that_fit(GPU_NODES, 2.0, 0.2) == 5 + 4  # CPUs bind on the second node
    assert actors_that_fit([{"CPU": 1.0}, {"CPU": 1.0}], 1.5, 0.0) == 0


@pytest.mark.parametrize(
    ("preset", "overrides", "nodes", "actors", "pattern"),
    [
        ("ucf101", [], CPU_ONLY, 1,
         r"client.num_gpus=1 but the cluster has no GPU: set client.num_gpus=0"),
        ("ucf101", ["client.num_gpus=2"], [{"CPU": 16.0, "GPU": 1.0}], 1,
         r"client.num_gpus=2 but the largest node has 1 GPU"),
        ("synthetic", ["client.num_cpus=4"], CPU_ONLY, 1,
         r"client.num_cpus=4 but the largest node has 2 CPU"),
        ("synthetic", ["client.num_actors=5"], CPU_ONLY, 5,
         r"client.num_actors=5 but the cluster holds only 2 client actor"),
    ],
)
def test_unservable_configs_name_the_key(preset, overrides, nodes, actors, pattern):
    cfg = load_config(preset, overrides)
    with pytest.raises(ConfigError, match=pattern):
        check_client_resources(cfg, nodes, actors)


def test_servable_configs_pass():
    check_client_resources(load_config("ucf101"), GPU_NODES, 3)
    check_client_resources(load_config("ucf101", ["client.num_gpus=0.2"]), GPU_NODES, 5)
    check_client_resources(load_config("synthetic"), CPU_ONLY, 2)


@pytest.mark.slow
def test_the_gpu_preset_on_a_cpu_machine_exits_2_within_seconds(tmp_path):
    root = tmp_path / "data"
    ensure_synthetic_dataset(
        root, num_classes=2, videos_per_class=4, frames=20, width=48, height=32, seed=3, log=None
    )
    script = Path(__file__).resolve().parent.parent / "experiments" / "pretrain.py"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script), "--config", "ucf101", f"data.root={root}",
         f"run_dir={tmp_path / 'run'}", "ray.num_cpus=2", "num_clients=2", "clients_per_round=2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "client.num_gpus=1 but the cluster has no GPU" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
