"""The federated engine end to end on tiny synthetic videos: Ray == plain loop, resume, faults."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedvssl_ray.config import load_config
from fedvssl_ray.data.shards import ClientShards
from fedvssl_ray.data.synthetic import ensure_synthetic_dataset
from fedvssl_ray.run_dir import RunDir
from fedvssl_ray.training.plain import run_plain
from fedvssl_ray.training.rounds import RunStopped, sample_clients

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-synthetic")
    ensure_synthetic_dataset(
        root, num_classes=3, videos_per_class=4, frames=24, width=64, height=48, seed=1, log=None
    )
    return root


def tiny_config(root, run_dir, *extra: str):
    return load_config(
        "synthetic",
        [
            f"data.root={root}", f"run_dir={run_dir}", "rounds=2", "num_clients=3",
            "clients_per_round=3", "data.crop_size=32", "client.batch_size=2",
            "client.torch_threads=1", "client.num_actors=2", "client.num_cpus=0.5",
            "eval.every=0", "data.clip_len=16", "client.local_epochs=4", "client.replay=true",
            *extra,
        ],
    )


def final_weights(run_dir) -> dict[str, np.ndarray]:
    state = json.loads((run_dir / "state" / "state.json").read_text())
    with np.load(run_dir / state["checkpoint"], allow_pickle=False) as data:
        return {k: data[k] for k in data.files if not k.startswith("__")}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def run_plain_to_end(cfg) -> dict:
    run_dir = RunDir(cfg.run_dir)
    run_dir.create(cfg)
    return run_plain(cfg, run_dir, ClientShards.from_config(cfg).stream_factory())


def run_ray_to_end(cfg, crash_on=()) -> dict:
    import ray

    from fedvssl_ray.actors.driver import start_driver

    run_dir = RunDir(cfg.run_dir)
    if cfg.resume:
        run_dir.write_config(cfg)
    else:
        run_dir.create(cfg)
    driver = start_driver(cfg, run_dir.path, crash_on)
    try:
        return ray.get(driver.run.remote())
    finally:
        ray.kill(driver)


def test_sampling_is_seeded_without_replacement():
    a = sample_clients(7, 3, 100, 5)
    assert a == sample_clients(7, 3, 100, 5) and len(set(a)) == 5
    assert a != sample_clients(7, 4, 100, 5)
    assert sample_clients(7, 1, 5, 5) == [0, 1, 2, 3, 4]


def test_plain_loop_writes_the_run_contract(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, tmp_path / "run")
    summary = run_plain_to_end(cfg)
    run = tmp_path / "run"
    for name in ("config.json", "config.yaml", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "round-0001.npz", "round-0002.npz"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    first = records[0]
    assert first["clients"] == [0, 1, 2]
    assert {u["client"] for u in first["updates"]} == {0, 1, 2}
    assert all(u["num_examples"] > 0 and np.isfinite(u["loss"]) for u in first["updates"])
    weights = [c["weight"] for c in first["aggregation"]["clients"]]
    assert sum(weights) == pytest.approx(1.0)
    assert {"round_s", "aggregate_s", "checkpoint_s"} <= first["time"].keys()
    assert summary["rounds"] == 2 and len(summary["loss_per_round"]) == 2
    weights = final_weights(run)
    assert all(k.startswith("backbone.") for k in weights)
    assert weights["backbone.layer1.0.conv1.1.num_batches_tracked"].dtype == np.int64


def test_ray_engine_equals_plain_loop(ray_cluster, tiny_root, tmp_path):
    plain = tiny_config(tiny_root, tmp_path / "plain")
    engine = tiny_config(tiny_root, tmp_path / "ray")
    run_plain_to_end(plain)
    summary = run_ray_to_end(engine)
    assert summary["rounds"] == 2
    assert_same_weights(final_weights(tmp_path / "plain"), final_weights(tmp_path / "ray"))
    plain_losses = [r["mean_loss"] for r in RunDir(tmp_path / "plain").read_metrics()]
    assert summary["loss_per_round"] == plain_losses


def test_resume_after_kill_matches_uninterrupted_run(ray_cluster, tiny_root, tmp_path):
    full = tiny_config(tiny_root, tmp_path / "full", "rounds=4")
    run_plain_to_end(full)
    # the interrupted run: two complete rounds, then debris of a third that never committed
    first = tiny_config(tiny_root, tmp_path / "killed", "rounds=2")
    run_ray_to_end(first)
    killed = RunDir(tmp_path / "killed")
    (killed.heads_dir / "client-00001-round-0003.npz").write_bytes(b"partial")
    killed.append_metrics({"round": 3, "mean_loss": 0.0, "status": "ok"})
    resumed = tiny_config(tiny_root, tmp_path / "killed", "rounds=4", "resume=true")
    summary = run_ray_to_end(resumed)
    assert summary["rounds"] == 4
    assert [r["round"] for r in killed.read_metrics()] == [1, 2, 3, 4]
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "killed"))


def test_client_killed_mid_round_is_dropped_then_rejoins(ray_cluster, tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, tmp_path / "crash", "rounds=3")
    summary = run_ray_to_end(cfg, crash_on=[(1, 2)])
    assert summary["rounds"] == 3 and summary["failed_rounds"] == []
    records = RunDir(tmp_path / "crash").read_metrics()
    round2 = records[1]
    assert {u["client"] for u in round2["updates"]} == {0, 2}
    assert "1" in round2["failed"] and "died" in round2["failed"]["1"]
    assert {u["client"] for u in records[2]["updates"]} == {0, 1, 2}


class FailingFor:
    """A stream factory whose streams fail for some clients (a client that raises)."""

    def __init__(self, inner, failing: set[int]) -> None:
        self.inner, self.failing = inner, failing

    def __call__(self, client_id: int):
        if client_id in self.failing:
            raise OSError(f"shard of client {client_id} is unreadable")
        return self.inner(client_id)


def test_a_raising_client_is_dropped_and_the_round_goes_on(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, tmp_path / "raise", "rounds=1")
    run_dir = RunDir(cfg.run_dir)
    run_dir.create(cfg)
    factory = FailingFor(ClientShards.from_config(cfg).stream_factory(), {2})
    summary = run_plain(cfg, run_dir, factory)
    record = run_dir.read_metrics()[0]
    assert summary["rounds"] == 1 and record["status"] == "ok"
    assert {u["client"] for u in record["updates"]} == {0, 1}
    assert "unreadable" in record["failed"]["2"]


def test_too_few_clients_stops_the_run_with_a_resumable_state(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, tmp_path / "stop", "rounds=2", "min_clients=2")
    run_dir = RunDir(cfg.run_dir)
    run_dir.create(cfg)
    factory = FailingFor(ClientShards.from_config(cfg).stream_factory(), {0, 1})
    pattern = r"round 1: only 1 of 3 client updates were accepted, twice.*--resume"
    with pytest.raises(RunStopped, match=pattern):
        run_plain(cfg, run_dir, factory)
    assert run_dir.load_resume_state() is None  # nothing committed: a resume starts at round 1


def test_process_killed_mid_run_resumes_to_identical_weights(tiny_root, tmp_path):
    """SIGKILL the real script once round 2 is committed, resume it, compare with a full run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "experiments" / "pretrain.py"
    common = [f"data.root={tiny_root}", "rounds=6", "num_clients=3", "clients_per_round=3",
              "data.crop_size=32", "client.batch_size=2", "client.torch_threads=1",
              "client.local_epochs=1", "client.replay=false", "eval.every=0"]
    full = tmp_path / "full"
    subprocess.run([sys.executable, str(script), "--engine", "plain", f"run_dir={full}", *common],
                   check=True, capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--engine", "plain", f"run_dir={killed}", *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    state = killed / "state" / "state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["round"] >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "summary.json").exists()
    subprocess.run([sys.executable, str(script), "--engine", "plain", "--resume", str(killed)],
                   check=True, capture_output=True, timeout=300)
    assert [r["round"] for r in RunDir(killed).read_metrics()] == [1, 2, 3, 4, 5, 6]
    assert_same_weights(final_weights(full), final_weights(killed))
