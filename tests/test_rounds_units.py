"""Round-loop pieces without Ray or video: work assignment, actor planning, run directory."""

from __future__ import annotations

import numpy as np
import pytest

from fedvssl_ray.actors.pool import assign_round, plan_actors, thread_plan
from fedvssl_ray.config import load_config
from fedvssl_ray.run_dir import RunDir, RunDirError


def test_assignment_balances_five_clients_on_two_actors():
    home = {c: c % 2 for c in range(5)}
    queues = assign_round(range(5), {c: 3 for c in range(5)}, home, 2)
    assert sorted(c for q in queues for c in q) == [0, 1, 2, 3, 4]
    assert sorted(len(q) for q in queues) == [2, 3]
    assert queues[0] == [0, 2, 4] and queues[1] == [1, 3]  # home actors kept


def test_assignment_moves_clients_off_an_overloaded_home():
    home = {c: 0 for c in range(4)}  # every sampled client lives on actor 0
    queues = assign_round([0, 1, 2, 3], {c: 2 for c in range(4)}, home, 2)
    assert [len(q) for q in queues] == [2, 2]


def test_assignment_places_long_clients_first():
    home = {0: 0, 1: 0, 2: 1}
    steps = {0: 10, 1: 1, 2: 1}
    queues = assign_round([0, 1, 2], steps, home, 2)
    loads = [sum(steps[c] for c in q) for q in queues]
    assert max(loads) == 10


def test_thread_plan_gives_the_lone_last_client_every_core():
    queues = [[0, 2, 4], [1, 3]]
    steps = {c: 3 for c in range(5)}
    assert thread_plan(queues, steps, budget=2) == {0: 1, 2: 1, 4: 2, 1: 1, 3: 1}
    uneven = thread_plan([[0], [1, 2]], {0: 6, 1: 2, 2: 2}, budget=4)
    assert uneven == {0: 2, 1: 2, 2: 2}


def test_actor_plan():
    cfg = load_config("synthetic", ["client.num_actors=0", "num_clients=5", "clients_per_round=5"])
    assert plan_actors(cfg, cluster_cpus=2, cluster_gpus=0) == 2
    assert plan_actors(cfg, cluster_cpus=16, cluster_gpus=0) == 5  # capped by clients_per_round
    two_cpus_each = load_config(
        "synthetic", ["client.num_cpus=2", "num_clients=5", "clients_per_round=5"]
    )
    assert plan_actors(two_cpus_each, cluster_cpus=8, cluster_gpus=0) == 4
    gpu = load_config("ucf101")
    assert plan_actors(gpu, cluster_cpus=16, cluster_gpus=2) == 2
    fixed = load_config("synthetic", ["client.num_actors=3", "num_clients=5", "clients_per_round=5"])
    assert plan_actors(fixed, cluster_cpus=2, cluster_gpus=0) == 3


def test_run_dir_refuses_to_overwrite_and_resumes_only_committed_rounds(tmp_path):
    cfg = load_config("synthetic", [f"run_dir={tmp_path / 'r'}"])
    run = RunDir(cfg.run_dir)
    run.create(cfg)
    assert run.read_config() == cfg
    assert run.load_resume_state() is None
    weights = {"backbone.w": np.ones(3, np.float32)}
    head = {"head.w": np.zeros(2, np.float32)}
    run.save_round(1, weights, {0: head}, {})
    run.append_metrics({"round": 1, "mean_loss": 1.0, "status": "ok"})
    run.mark_complete(1, {0: 1}, {"name": "fedvssl"}, 1.0)
    run.save_round(2, {"backbone.w": 2 * weights["backbone.w"]}, {1: head}, {})
    run.append_metrics({"round": 2, "mean_loss": 0.5, "status": "ok"})
    run.mark_complete(2, {0: 1, 1: 2}, {"name": "fedvssl"}, 2.0)
    # a third round that died before its commit marker
    (run.heads_dir / "client-00000-round-0003.npz").write_bytes(b"torn")
    (run.checkpoints / "round-0003.npz").write_bytes(b"torn")
    run.append_metrics({"round": 3, "mean_loss": 0.1, "status": "ok"})
    state = run.load_resume_state()
    assert state.round == 2 and state.head_versions == {0: 1, 1: 2}
    np.testing.assert_array_equal(state.global_weights["backbone.w"], [2, 2, 2])
    assert [r["round"] for r in run.read_metrics()] == [1, 2]
    assert not (run.checkpoints / "round-0003.npz").exists()
    np.testing.assert_array_equal(run.load_head(0, 1)["head.w"], [0, 0])
    with pytest.raises(RunDirError, match="already holds a run"):
        RunDir(cfg.run_dir).create(cfg)
