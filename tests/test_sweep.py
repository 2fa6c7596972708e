"""Ray Tune sweeps as a user runs them: a 2x2 grid of tiny federated runs on 2 CPUs,
interrupted with Ctrl-C once a trial finished, then restored with --resume."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedvssl_ray.config import load_config
from fedvssl_ray.data.synthetic import ensure_synthetic_dataset
from fedvssl_ray.tune import round_metrics, trial_config, trial_name, trial_resources

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "sweep.py"
TRIALS = ["alpha=0.0,beta=0", "alpha=0.0,beta=1", "alpha=1.0,beta=0", "alpha=1.0,beta=1"]


def test_trial_config_and_placement_group():
    base = load_config("synthetic", ["eval.every=5", "client.num_cpus=0.5", "eval.num_cpus=1",
                                     "num_clients=5", "clients_per_round=5"])
    cfg = trial_config(base, {"strategy.alpha": 0.0, "strategy.beta": 1}, "/sweeps/s")
    assert cfg.strategy.alpha == 0.0 and cfg.strategy.beta == 1
    assert cfg.run_dir == "/sweeps/s/runs/alpha=0.0,beta=1"
    assert cfg.client.num_actors == 5 and cfg.client.torch_threads == 1
    bundles = trial_resources(cfg).bundles
    assert bundles == [{"CPU": 0.1}] + [{"CPU": 0.5}] * 5 + [{"CPU": 1.0}]
    assert trial_name({}) == "base"


def test_round_metrics_fall_back_to_the_random_init_until_an_evaluation_lands():
    event = {"round": 3, "mean_loss": 2.0, "relative_loss": 0.9}
    initial = {"R@1": 0.25, "R@5": 0.5, "knn_top1": 0.125}
    assert round_metrics(event, {})["R@1"] == 0.0
    assert round_metrics(event, {0: initial})["eval_round"] == 0
    later = round_metrics(event, {0: initial, 2: {**initial, "R@1": 0.5}, 3: {"error": "x"}})
    assert later["eval_round"] == 2 and later["R@1"] == 0.5


@pytest.fixture(scope="module")
def restored_sweep(tmp_path_factory):
    """A 2x2 sweep interrupted once its first trial finished, then resumed to the end."""
    tmp = tmp_path_factory.mktemp("sweep")
    root = tmp / "data"
    ensure_synthetic_dataset(
        root, num_classes=2, videos_per_class=4, frames=20, width=48, height=32, seed=5, log=None
    )
    sweep_dir = tmp / "sweep"
    args = ["--grid", "strategy.alpha=0,1", "--grid", "strategy.beta=0,1", f"data.root={root}",
            "num_clients=2", "clients_per_round=2", "rounds=2", "eval.every=2",
            "eval.num_clips=2", "eval.num_cpus=0", "data.crop_size=32", "data.clip_len=8",
            "client.local_epochs=1", "client.num_actors=1", "client.num_cpus=0.5",
            "ray.num_cpus=2", "--max-concurrent", "1", "--sweep-dir", str(sweep_dir)]
    first = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    finished: list[Path] = []
    while time.monotonic() < deadline and first.poll() is None and not finished:
        finished = list((sweep_dir / "runs").glob("*/summary.json"))
        time.sleep(0.2)
    assert finished, "no trial finished before the deadline"
    stamps = {p.parent.name: p.parent.joinpath("metrics.jsonl").stat().st_mtime_ns
              for p in finished}
    first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment and stops
    first.communicate(timeout=120)
    resumed = subprocess.run([sys.executable, str(SCRIPT), "--resume", str(sweep_dir)],
                             capture_output=True, text=True, timeout=600)
    return sweep_dir, stamps, resumed


def test_a_2x2_grid_runs_four_trials_and_writes_table_and_plots(restored_sweep):
    sweep_dir, _, resumed = restored_sweep
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    with open(sweep_dir / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["trial"] for r in rows) == TRIALS
    assert all(r["rounds"] == "2" and r["stopped_early"] == "False" for r in rows)
    assert all(float(r["best_R@1"]) >= 0 for r in rows)
    for name in ("heatmap.png", "curves.png"):
        assert (sweep_dir / name).stat().st_size > 1000
    for trial in TRIALS:
        run = sweep_dir / "runs" / trial
        assert (run / "plot.png").is_file() and (run / "summary.json").is_file()
    reports = [json.loads(line) for path in (sweep_dir / "tune").glob("*/result.json")
               for line in path.read_text().splitlines()]
    assert {r["round"] for r in reports} == {1, 2}  # every round was reported
    assert all("R@1" in r and "relative_loss" in r for r in reports)
    assert "alpha=0.0,beta=0" in resumed.stdout and "best_R@1" in resumed.stdout


def test_restoring_does_not_rerun_finished_trials(restored_sweep):
    sweep_dir, stamps, _ = restored_sweep
    for trial, stamp in stamps.items():
        run = sweep_dir / "runs" / trial
        assert run.joinpath("metrics.jsonl").stat().st_mtime_ns == stamp, trial
        assert len(run.joinpath("metrics.jsonl").read_text().splitlines()) == 2


def test_automatic_actors_fit_one_trial_in_the_cluster_or_the_sweep_is_refused():
    from fedvssl_ray.config import ConfigError
    from fedvssl_ray.tune import fit_to_cluster

    five = ["num_clients=5", "clients_per_round=5"]
    base = load_config("synthetic", five)  # 5 clients per round, 0.9 CPU per client actor
    assert fit_to_cluster(base, cpus=2, gpus=0).client.num_actors == 2
    assert fit_to_cluster(base, cpus=16, gpus=0).client.num_actors == 5
    one_cpu = load_config("synthetic", [*five, "client.num_cpus=1"])
    assert fit_to_cluster(one_cpu, cpus=2, gpus=0).client.num_actors == 1
    with pytest.raises(ConfigError, match="client.num_actors=3"):
        fit_to_cluster(load_config("synthetic", ["client.num_actors=3"]), cpus=2, gpus=0)
    with pytest.raises(ConfigError, match="cluster has"):
        fit_to_cluster(load_config("ucf101"), cpus=8, gpus=0)
