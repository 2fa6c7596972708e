"""Fault drills: faults injected into whole runs, checked against runs without them.

Each drill runs the federated engine on tiny synthetic videos, injects one kind of fault and
checks what a user relies on: the files on disk, the metrics lines and the final weights. A
drill's reference is a plain-loop run of the same config in which the faulty client simply
fails in the same rounds, so "the round aggregated the survivors" is checked weight for weight.

- client actors killed (rounds 1 and 3) and a client hanging past ``round_timeout_s`` (round 2)
  in one Ray run; and a client actor killed in the last round;
- the whole process SIGKILLed at four points (after a commit, mid-training, after the
  checkpoint write, just before the commit marker), then resumed;
- a client sending NaN weights, a NaN loss, or NaN clips;
- a full disk while the checkpoint of round 2 is written.

The faulty client is always the highest id: it is the last of its actor's queue, so its fault
never delays another client of the round.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import ray

from fedvssl_ray.config import load_config
from fedvssl_ray.data.shards import ClientShards
from fedvssl_ray.data.synthetic import ensure_synthetic_dataset
from fedvssl_ray.run_dir import RunDir, RunDirError
from fedvssl_ray.training.client import ClientWorker
from fedvssl_ray.training.plain import run_plain

pytestmark = pytest.mark.slow

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/

ROUNDS = 3
FAULTY = 2  # of clients 0, 1, 2
BASE = [
    f"rounds={ROUNDS}", "num_clients=3", "clients_per_round=3", "data.crop_size=32",
    "client.batch_size=2", "client.torch_threads=1", "client.num_actors=2",
    "client.num_cpus=0.5", "client.local_epochs=1", "client.replay=false", "eval.every=0",
]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("drill-videos")
    ensure_synthetic_dataset(
        root, num_classes=3, videos_per_class=4, frames=24, width=64, height=48, seed=1, log=None
    )
    return root


def drill_overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"run_dir={run_dir}", *BASE, *extra]


def drill_config(root: Path, run_dir: Path, *extra: str):
    return load_config("synthetic", drill_overrides(root, run_dir, *extra))


def run_plain_to_end(cfg, factory=None) -> dict:
    run_dir = RunDir(cfg.run_dir)
    if cfg.resume:
        run_dir.write_config(cfg)
    else:
        run_dir.create(cfg)
    return run_plain(cfg, run_dir, factory or ClientShards.from_config(cfg).stream_factory())


def global_after(run_dir: Path, round_idx: int | None = None) -> dict[str, np.ndarray]:
    """The global weights after ``round_idx`` (default: the last committed round)."""
    if round_idx is None:
        state = json.loads((run_dir / "state" / "state.json").read_text())
        path = run_dir / state["checkpoint"]
    else:
        path = run_dir / "checkpoints" / f"round-{round_idx:04d}.npz"
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if not k.startswith("__")}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def metrics(run_dir: Path) -> list[dict]:
    return RunDir(run_dir).read_metrics()


# -- fault injection through the clients' clip streams (picklable: Ray actors build them) ----


class FaultyStreams:
    """A stream factory whose stream of ``client`` misbehaves in ``rounds``: ``raise`` (an
    unreadable shard), ``hang`` (sleeps ``seconds`` before its first batch) or ``nan`` (NaN
    clips). ``slow_restart`` makes a restarted actor's constructor take that long."""

    def __init__(self, inner, client: int, rounds, mode: str, seconds: float = 0.0,
                 slow_restart: float = 0.0) -> None:
        self.inner, self.client, self.rounds = inner, client, frozenset(rounds)
        self.mode, self.seconds, self.slow_restart = mode, seconds, slow_restart

    def __call__(self, client_id: int):
        stream = self.inner(client_id)
        return FaultyStream(stream, self) if client_id == self.client else stream

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if state["slow_restart"]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                restarted = ray.get_runtime_context().was_current_actor_reconstructed
            if restarted:  # unpickled as the argument of a restarted actor's constructor
                time.sleep(state["slow_restart"])


class FaultyStream:
    def __init__(self, inner, fault: FaultyStreams) -> None:
        self.inner, self.fault = inner, fault

    @property
    def num_videos(self) -> int:
        return self.inner.num_videos

    def batches(self, round: int, epoch: int = 0):
        if round in self.fault.rounds:
            if self.fault.mode == "raise":
                raise OSError(f"shard of client {self.fault.client} is unreadable")
            if self.fault.mode == "hang":
                time.sleep(self.fault.seconds)
            if self.fault.mode == "nan":
                for batch in self.inner.batches(round, epoch):
                    yield {**batch, "imgs": batch["imgs"] * float("nan")}
                return
        yield from self.inner.batches(round, epoch)

    def bad_video_ids(self) -> set[str]:
        return self.inner.bad_video_ids()

    def exclude(self, video_ids) -> None:
        self.inner.exclude(video_ids)


def faulty(cfg, rounds, mode: str, **kwargs) -> FaultyStreams:
    return FaultyStreams(ClientShards.from_config(cfg).stream_factory(), FAULTY, rounds, mode,
                         **kwargs)


# -- references: plain runs in which the faulty client fails in some rounds ------------------


@pytest.fixture(scope="module")
def reference(tiny_root, tmp_path_factory):
    """``reference(failing, rounds)``: the run dir of a plain run where client FAULTY fails
    in the rounds ``failing`` (none: the uninterrupted run); each is run once per module."""
    runs: dict[tuple[frozenset, int], Path] = {}

    def get(failing=(), rounds: int = ROUNDS) -> Path:
        key = (frozenset(failing), rounds)
        if key not in runs:
            path = tmp_path_factory.mktemp("reference") / "run"
            cfg = drill_config(tiny_root, path, f"rounds={rounds}")
            run_plain_to_end(cfg, faulty(cfg, key[0], "raise") if key[0] else None)
            runs[key] = path
        return runs[key]

    return get


# -- a. and c.: client actors killed, a client hanging past the deadline ---------------------


def run_on_ray(cfg, factory, crash_on=()) -> dict:
    """The Ray engine as experiments/pretrain.py runs it, with our stream factory."""
    from fedvssl_ray.actors.driver import RemoteDriver
    from fedvssl_ray.actors.pool import RayRunner

    run_dir = RunDir(cfg.run_dir)
    run_dir.create(cfg)
    shards = ClientShards.from_config(cfg)
    runner = RayRunner(cfg, factory, shards.steps_per_client(), crash_on)
    driver = RemoteDriver.options(num_cpus=0, max_concurrency=4).remote(
        cfg, str(run_dir.path), runner, shards.summary(), None
    )
    try:
        return ray.get(driver.run.remote())
    finally:
        ray.kill(driver)


def test_killed_and_hanging_client_is_dropped_each_time_and_rejoins(
    ray_cluster, tiny_root, tmp_path, reference
):
    """Client 2's actor is killed in rounds 1 and 3, and hangs past round_timeout_s in round
    2: every round commits with the survivors, exactly as if client 2 had just failed.

    One actor per client: the deadline also covers waiting for a restarted actor, and the
    driver dispatches a round's first clients in actor order, so the faulty client's restart
    on the last actor never delays the others."""
    cfg = drill_config(tiny_root, tmp_path / "run", "rounds=4", "round_timeout_s=25",
                       "client.num_actors=3")
    factory = faulty(cfg, {2}, "hang", seconds=300)
    started = time.perf_counter()
    summary = run_on_ray(cfg, factory, crash_on=[(FAULTY, 1), (FAULTY, 3)])
    assert summary["rounds"] == 4 and summary["failed_rounds"] == []
    records = metrics(tmp_path / "run")
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    for record in records[:3]:
        assert record["status"] == "ok" and record["accepted"] == 2
        assert {u["client"] for u in record["updates"]} == {0, 1}
        assert list(record["failed"]) == [str(FAULTY)]
    assert "died" in records[0]["failed"]["2"]
    # round 3: killed, or, on a machine so loaded that the actor's restart after round 2 took
    # longer than the deadline, timed out before it could be; dropped either way
    assert any(word in records[2]["failed"]["2"] for word in ("died", "timed out"))
    assert "timed out after round_timeout_s=25" in records[1]["failed"]["2"]
    assert records[3]["failed"] == {} and records[3]["accepted"] == 3  # rejoined
    assert time.perf_counter() - started < 300  # the hang did not hold the run
    # the same weights as a run in which client 2 failed in rounds 1-3 without killing anything
    expected = reference({1, 2, 3}, rounds=4)
    assert_same_weights(global_after(expected), global_after(tmp_path / "run"))


def test_a_client_actor_killed_in_the_last_round_still_ends_the_run(
    ray_cluster, tiny_root, tmp_path
):
    cfg = drill_config(tiny_root, tmp_path / "run", "rounds=1")
    # the restart takes longer than the rest of the run, as it does for a big model
    factory = faulty(cfg, (), "raise", slow_restart=15)
    summary = run_on_ray(cfg, factory, crash_on=[(FAULTY, 1)])
    assert summary["rounds"] == 1
    assert "died" in metrics(tmp_path / "run")[0]["failed"]["2"]


# -- b. the whole process killed, then resumed -----------------------------------------------

CHILD = r"""
import json, os, signal, sys
from fedvssl_ray.config import load_config
from fedvssl_ray.data.shards import ClientShards
from fedvssl_ray.run_dir import RunDir
from fedvssl_ray.training.plain import run_plain

point, overrides = sys.argv[1], json.loads(sys.argv[2])
cfg = load_config("synthetic", overrides)
run_dir = RunDir(cfg.run_dir)
run_dir.create(cfg)
factory = ClientShards.from_config(cfg).stream_factory()
real_replace = os.replace


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def marked_round(path):  # the round a commit marker (state.json) names
    with open(path) as fh:
        return json.load(fh)["round"]


def replace(src, dst, *args, **kwargs):
    name = os.path.basename(dst)
    if point == "before-commit-2" and name == "state.json" and marked_round(src) == 2:
        die()  # the marker is written and fsynced under its temporary name, not yet renamed
    real_replace(src, dst, *args, **kwargs)
    if point == "after-commit-1" and name == "state.json" and marked_round(dst) == 1:
        die()
    if point == "after-checkpoint-2" and name == "round-0002.npz":
        die()


class DyingStream:
    def __init__(self, inner):
        self.inner = inner
        self.num_videos = inner.num_videos

    def batches(self, round, epoch=0):
        for batch in self.inner.batches(round, epoch):
            if round == 2:
                die()  # client 1's first batch of round 2 is ready; client 0 has trained
            yield batch

    def bad_video_ids(self):
        return self.inner.bad_video_ids()

    def exclude(self, video_ids):
        self.inner.exclude(video_ids)


def streams(client_id):
    stream = factory(client_id)
    return DyingStream(stream) if point == "mid-training-2" and client_id == 1 else stream


os.replace = replace
run_plain(cfg, run_dir, streams)
"""

KILL_POINTS = ["after-commit-1", "mid-training-2", "after-checkpoint-2", "before-commit-2"]


@pytest.fixture(scope="module")
def killed_runs(tiny_root, tmp_path_factory):
    """Every kill point's process, started at once (they overlap their start-up)."""
    procs = {}
    for point in KILL_POINTS:
        path = tmp_path_factory.mktemp(point) / "run"
        overrides = drill_overrides(tiny_root, path)
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, point, json.dumps(overrides)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        procs[point] = (proc, path)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_run_killed_at_any_point_resumes_to_the_uninterrupted_weights(
    killed_runs, reference, tiny_root, point
):
    expected = reference()  # runs while the killed processes start
    proc, path = killed_runs[point]
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point}: {err[-2000:]}"
    assert not (path / "summary.json").exists()
    run_dir = RunDir(path)
    assert run_dir.committed_round() == 1  # what the kill left committed
    written = point in ("after-checkpoint-2", "before-commit-2")
    assert (path / "checkpoints" / "round-0002.npz").exists() == written
    summary = run_plain_to_end(drill_config(tiny_root, path, "resume=true"))
    assert summary["rounds"] == ROUNDS
    assert [r["round"] for r in metrics(path)] == list(range(1, ROUNDS + 1))
    assert sorted(p.name for p in (path / "checkpoints").glob("round-*.npz")) == [
        f"round-{r:04d}.npz" for r in range(1, ROUNDS + 1)]
    assert_same_weights(global_after(expected), global_after(path))


# -- d. NaN from a client ------------------------------------------------------------------


def nan_update(kind: str):
    """ClientWorker.train, but client FAULTY's round-2 update carries NaN weights or loss."""
    train = ClientWorker.train

    def poisoned(self, global_weights, round_idx, client_id, **kwargs):
        result = train(self, global_weights, round_idx, client_id, **kwargs)
        if client_id != FAULTY or round_idx != 2 or not hasattr(result, "update"):
            return result
        update = result.update
        if kind == "weights":
            weights = dict(update.weights)
            key = next(k for k in weights if weights[k].dtype.kind == "f")
            weights[key] = np.full_like(weights[key], np.nan)
            update = dataclasses.replace(update, weights=weights)
        else:
            update = dataclasses.replace(update, loss=float("nan"))
        return dataclasses.replace(result, update=update)

    return poisoned


@pytest.mark.parametrize("kind", ["weights", "loss", "clips"])
def test_a_client_sending_nan_changes_nothing_in_the_global(
    reference, tiny_root, tmp_path, monkeypatch, kind
):
    cfg = drill_config(tiny_root, tmp_path / "run")
    if kind == "clips":
        run_plain_to_end(cfg, faulty(cfg, {2}, "nan"))
    else:
        monkeypatch.setattr(ClientWorker, "train", nan_update(kind))
        run_plain_to_end(cfg)
    record = metrics(tmp_path / "run")[1]
    assert record["status"] == "ok" and record["accepted"] == 2
    if kind == "clips":  # the local loss guard stops the client: a failure, not an update
        assert "FloatingPointError" in record["failed"][str(FAULTY)]
    else:  # screening rejects the update, with the reason
        (rejected,) = record["aggregation"]["rejected"]
        assert rejected["client_id"] == FAULTY and "non-finite" in rejected["reason"]
    assert metrics(tmp_path / "run")[2]["accepted"] == 3
    # identical to a run in which client 2 sent nothing in round 2
    assert_same_weights(global_after(reference({2})), global_after(tmp_path / "run"))


# -- e. a full disk while a checkpoint is written ------------------------------------------


def test_a_full_disk_at_a_checkpoint_write_leaves_the_last_round_resumable(
    reference, tiny_root, tmp_path, monkeypatch
):
    real_fsync = os.fsync
    hits = []

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".round-0002.npz."):  # the temporary file of round 2's checkpoint
            hits.append(name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    cfg = drill_config(tiny_root, tmp_path / "run")
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(RunDirError, match="disk is full.*round 1 is the last complete round"):
        run_plain_to_end(cfg)
    monkeypatch.undo()
    assert hits, "the checkpoint of round 2 was never written"
    run_dir = RunDir(tmp_path / "run")
    assert run_dir.committed_round() == 1
    leftovers = [p.name for p in (tmp_path / "run").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [] and not (tmp_path / "run" / "checkpoints" / "round-0002.npz").exists()
    run_plain_to_end(drill_config(tiny_root, tmp_path / "run", "resume=true"))
    assert [r["round"] for r in metrics(tmp_path / "run")] == list(range(1, ROUNDS + 1))
    assert_same_weights(global_after(reference()), global_after(tmp_path / "run"))
