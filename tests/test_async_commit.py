"""Rounds committed off the critical path: the next round trains while the last one is written,
a write failure stops the run with the run directory's message, and a process killed while a
round is written resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from fedvssl_ray import run_dir as run_dir_module
from fedvssl_ray.aggregation import ClientUpdate
from fedvssl_ray.config import load_config
from fedvssl_ray.run_dir import RunDir, RunDirError
from fedvssl_ray.training.commit import BackgroundWriter
from fedvssl_ray.training.messages import ClientResult
from fedvssl_ray.training.rounds import FederatedRun, RoundOutcome


class CountingRunner:
    """Every client sends ``round`` as its backbone and a head of ``10 * round + client``;
    ``on_round`` runs first in each round (a hook for the tests)."""

    def __init__(self, on_round=lambda round_idx, heads: None) -> None:
        self.on_round = on_round

    def initial_global(self):
        return {"backbone.w": np.zeros(3, np.float32)}

    def run_round(self, global_weights, round_idx, client_ids, heads, emit):
        self.on_round(round_idx, heads)
        results = [
            ClientResult(
                ClientUpdate(c, {"backbone.w": np.full(3, round_idx, np.float32)}, 10, 1.0),
                {"head.w": np.full(2, 10 * round_idx + c, np.float32)}, steps=1,
            )
            for c in client_ids
        ]
        return RoundOutcome(results, {})

    def close(self) -> None:
        pass


def scripted_run(tmp_path, runner, rounds: int) -> tuple[FederatedRun, RunDir]:
    cfg = load_config("synthetic", [
        f"run_dir={tmp_path / 'run'}", "num_clients=2", "clients_per_round=2",
        f"rounds={rounds}", "eval.every=0"])
    run_dir = RunDir(cfg.run_dir)
    run_dir.create(cfg)
    return FederatedRun(cfg, run_dir, runner), run_dir


def test_the_next_round_trains_while_the_last_one_is_written(tmp_path, monkeypatch):
    """Round 1's head file is held back until round 2 has started; meanwhile the round loop
    still finds round 1's heads (pending), and afterwards every round is committed."""
    round2_started = threading.Event()
    seen = {}

    def on_round(round_idx, heads):
        if round_idx == 2:
            seen["version"], seen["head"] = heads.version(1), heads.get(1)
            round2_started.set()

    save_head = RunDir.save_head

    def held_save_head(self, client_id, round_idx, head):
        if round_idx == 1:
            seen["overlapped"] = round2_started.wait(timeout=30)
        save_head(self, client_id, round_idx, head)

    monkeypatch.setattr(RunDir, "save_head", held_save_head)
    run, run_dir = scripted_run(tmp_path, CountingRunner(on_round), rounds=3)
    run.run()
    assert seen["overlapped"], "round 2 did not start before round 1 was written"
    assert seen["version"] == 1 and seen["head"]["head.w"].tolist() == [11, 11]
    assert run_dir.committed_round() == 3
    assert [r["round"] for r in run_dir.read_metrics()] == [1, 2, 3]
    assert {"checkpoint_s", "write_s", "head_fetch_s"} <= run_dir.read_metrics()[0]["time"].keys()
    assert run_dir.load_head(1, 3)["head.w"].tolist() == [31, 31]


def test_a_write_failure_stops_the_run_with_the_run_dirs_message(tmp_path, monkeypatch):
    save_arrays = run_dir_module.save_arrays

    def disk_full_at_round_2(path, arrays, meta=None):
        if path.name == "round-0002.npz":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save_arrays(path, arrays, meta)

    monkeypatch.setattr(run_dir_module, "save_arrays", disk_full_at_round_2)
    run, run_dir = scripted_run(tmp_path, CountingRunner(), rounds=4)
    pattern = (r"saving round 2 in .*: the disk is full .* round 1 is the last complete round"
               r".*--resume")
    with pytest.raises(RunDirError, match=pattern):
        run.run()
    assert run_dir.committed_round() == 1  # nothing committed past the failed round
    assert [r["round"] for r in run_dir.read_metrics()] == [1]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_an_interrupted_round_loop_still_commits_the_rounds_it_handed_over(tmp_path):
    def interrupt(round_idx, heads):
        if round_idx == 3:
            raise KeyboardInterrupt

    run, run_dir = scripted_run(tmp_path, CountingRunner(interrupt), rounds=4)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert run_dir.committed_round() == 2


def test_a_writer_runs_jobs_in_order_and_skips_those_after_a_failure():
    writer, done = BackgroundWriter(), []

    def fail():
        raise OSError("broken")

    for job in (lambda: done.append(1), fail, lambda: done.append(3)):
        writer.submit(job)
    with pytest.raises(OSError, match="broken"):
        writer.drain()
    writer.close()  # raised once, not again
    assert done == [1]


# -- a process killed while a round is written ---------------------------------------------------

CHILD = """
import os, signal, sys
from pathlib import Path
from fedvssl_ray import checkpoint, run_dir as rd
from fedvssl_ray.config import load_config
from fedvssl_ray.data.shards import ClientShards
from fedvssl_ray.training.plain import run_plain

point, overrides = sys.argv[1], sys.argv[2:]
cfg = load_config("synthetic", overrides)
save_arrays, save_json = rd.save_arrays, rd.save_json_atomic

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def killing_save_arrays(path, arrays, meta=None):
    if point == "checkpoint" and Path(path).name == "round-0002.npz":
        (Path(path).parent / ".round-0002.npz.cut.tmp").write_bytes(b"PK" * 1000)  # half-written
        die()
    save_arrays(path, arrays, meta)

def killing_save_json(path, obj):
    if point == "marker" and Path(path).name == "state.json" and obj["round"] == 2:
        die()
    save_json(path, obj)

rd.save_arrays, rd.save_json_atomic = killing_save_arrays, killing_save_json
run_dir = rd.RunDir(cfg.run_dir)
run_dir.create(cfg)
run_plain(cfg, run_dir, ClientShards.from_config(cfg).stream_factory())
"""


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from fedvssl_ray.data.synthetic import ensure_synthetic_dataset

    root = tmp_path_factory.mktemp("commit-data")
    ensure_synthetic_dataset(
        root, num_classes=2, videos_per_class=4, frames=20, width=48, height=32, seed=2, log=None
    )
    return root


def tiny_overrides(root, run_dir, *extra: str) -> list[str]:
    return [f"data.root={root}", f"run_dir={run_dir}", "rounds=3", "num_clients=2",
            "clients_per_round=2", "data.crop_size=32", "data.clip_len=8",
            "client.batch_size=2", "client.local_epochs=1", "client.torch_threads=1",
            "eval.every=0", *extra]


def run_in_process(overrides: list[str], resume: bool = False) -> RunDir:
    from fedvssl_ray.data.shards import ClientShards
    from fedvssl_ray.training.plain import run_plain

    cfg = load_config("synthetic", overrides)
    run_dir = RunDir(cfg.run_dir)
    if not resume:
        run_dir.create(cfg)
    run_plain(cfg, run_dir, ClientShards.from_config(cfg).stream_factory())
    return run_dir


def committed_arrays(run_dir: RunDir) -> dict[str, np.ndarray]:
    state = json.loads(run_dir.state_path.read_text())
    with np.load(run_dir.path / state["checkpoint"], allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for client, version in state["head_versions"].items():
        with np.load(run_dir.head_path(int(client), version), allow_pickle=False) as data:
            arrays.update({f"{client}/{k}": data[k] for k in data.files})
    return arrays


@pytest.fixture(scope="module")
def uninterrupted(tiny_root, tmp_path_factory) -> dict[str, np.ndarray]:
    run = tmp_path_factory.mktemp("commit-runs") / "full"
    return committed_arrays(run_in_process(tiny_overrides(tiny_root, run)))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["checkpoint", "marker"])
def test_process_killed_while_a_round_is_written_resumes_to_identical_weights(
    point, tiny_root, uninterrupted, tmp_path
):
    """SIGKILL inside the writer, while round 2's global checkpoint is half-written or just
    before its commit marker: round 2 stays uncommitted and a resume ends where a run that was
    never killed ends (global and every head, bit for bit)."""
    run = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", CHILD, point, *tiny_overrides(tiny_root, run)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    killed = RunDir(run)
    assert killed.committed_round() == 1
    resumed = run_in_process(tiny_overrides(tiny_root, run, "resume=true"), resume=True)
    assert [r["round"] for r in resumed.read_metrics()] == [1, 2, 3]
    assert not list(killed.checkpoints.glob(".*.tmp"))
    final = committed_arrays(resumed)
    assert final.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        np.testing.assert_array_equal(final[key], value, err_msg=key)


@pytest.mark.slow
def test_ray_engine_resends_heads_whose_write_is_pending(
    ray_cluster, tiny_root, tmp_path, monkeypatch
):
    """One actor caching one client must get both heads back in round 2 while round 1 is still
    being written: they go from the object store (the pending write's reference), and the
    weights are the plain loop's."""
    from fedvssl_ray.actors.pool import RayRunner, RemoteHead
    from fedvssl_ray.data.shards import ClientShards
    from fedvssl_ray.training.commit import HeadSource

    extra = ("rounds=2", "client.num_actors=1", "client.max_cached_clients=1",
             "client.num_cpus=0.5")
    plain = committed_arrays(run_in_process(tiny_overrides(tiny_root, tmp_path / "plain", *extra)))
    round2_done, resent = threading.Event(), []
    get, save_head = HeadSource.get, RunDir.save_head

    def recording_get(self, client_id):
        head = get(self, client_id)
        resent.append(type(head))
        return head

    def held_save_head(self, client_id, round_idx, head):
        if round_idx == 1:
            round2_done.wait(timeout=120)
        save_head(self, client_id, round_idx, head)

    def emit(event):
        if event["type"] == "client_done" and event["round"] == 2 and event["done"] == 2:
            round2_done.set()

    monkeypatch.setattr(HeadSource, "get", recording_get)
    monkeypatch.setattr(RunDir, "save_head", held_save_head)
    cfg = load_config("synthetic", tiny_overrides(tiny_root, tmp_path / "ray", *extra))
    run_dir = RunDir(cfg.run_dir)
    run_dir.create(cfg)
    shards = ClientShards.from_config(cfg)
    runner = RayRunner(cfg, shards.stream_factory(), shards.steps_per_client())
    try:
        runner.wait_ready()
        FederatedRun(cfg, run_dir, runner, emit).run()
    finally:
        runner.close()
    assert resent == [RemoteHead, RemoteHead]
    engine = committed_arrays(run_dir)
    assert engine.keys() == plain.keys()
    for key, value in plain.items():
        np.testing.assert_array_equal(engine[key], value, err_msg=key)
