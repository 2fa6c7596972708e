"""The round loop's quorum and beta step with a scripted runner (no torch, no Ray): the quorum
counts the updates that survive screening, and the initial global is never averaged in."""

from __future__ import annotations

import numpy as np
import pytest

from fedvssl_ray.config import load_config
from fedvssl_ray.run_dir import RunDir
from fedvssl_ray.training.messages import ClientResult
from fedvssl_ray.training.rounds import FederatedRun, RoundOutcome, RunStopped

INIT = 1.0


class ScriptedRunner:
    """Returns, per round and attempt, the backbone value each client sends (NaN: a bad update)."""

    def __init__(self, script: dict[int, list[dict[int, float]]]) -> None:
        self.script = script
        self.calls: dict[int, int] = {}

    def initial_global(self):
        return {"backbone.w": np.full(3, INIT, np.float32)}

    def run_round(self, global_weights, round_idx, client_ids, heads, emit):
        attempt = self.calls.get(round_idx, 0)
        self.calls[round_idx] = attempt + 1
        values = self.script[round_idx][min(attempt, len(self.script[round_idx]) - 1)]
        results = [
            ClientResult(
                _update(c, v), {"head.w": np.zeros(1, np.float32)}, steps=1, zero_loss=2.0
            )
            for c, v in values.items()
        ]
        return RoundOutcome(results, {})

    def close(self) -> None:
        pass


def _update(client_id: int, value: float):
    from fedvssl_ray.aggregation import ClientUpdate

    return ClientUpdate(client_id, {"backbone.w": np.full(3, value, np.float32)}, 10, 1.0)


def make_run(tmp_path, script, *overrides):
    cfg = load_config("synthetic", [
        f"run_dir={tmp_path / 'run'}", "num_clients=3", "clients_per_round=3", *overrides])
    run_dir = RunDir(cfg.run_dir)
    run_dir.create(cfg)
    runner = ScriptedRunner(script)
    return FederatedRun(cfg, run_dir, runner), run_dir, runner


def test_quorum_counts_accepted_updates_not_returned_results(tmp_path):
    nan = float("nan")
    script = {1: [{0: 2.0, 1: nan, 2: nan}]}  # three results, one survives screening
    run, run_dir, runner = make_run(tmp_path, script, "rounds=1", "min_clients=2")
    events = []
    run.emit = events.append
    with pytest.raises(RunStopped, match=r"only 1 of 3 client updates were accepted, twice"):
        run.run()
    assert runner.calls[1] == 2  # retried once, then stopped
    assert [e["accepted"] for e in events if e["type"] == "retry"] == [1]
    assert run_dir.committed_round() == 0  # nothing committed


def test_a_retry_that_reaches_the_quorum_commits_the_round(tmp_path):
    nan = float("nan")
    script = {1: [{0: 2.0, 1: nan, 2: nan}, {0: 2.0, 1: 4.0, 2: nan}]}
    run, run_dir, _ = make_run(tmp_path, script, "rounds=1", "min_clients=2")
    run.run()
    record = run_dir.read_metrics()[0]
    assert record["attempts"] == 2 and record["accepted"] == 2
    assert len(record["aggregation"]["rejected"]) == 1


def test_the_initial_global_is_never_averaged_in(tmp_path):
    """Round 1 has no accepted update (min_clients=0 lets the run go on); round 2's beta step
    must not average its mix with the untrained init."""
    nan = float("nan")
    script = {1: [{0: nan, 1: nan, 2: nan}], 2: [{0: 3.0, 1: 3.0, 2: 3.0}],
              3: [{0: 5.0, 1: 5.0, 2: 5.0}]}
    run, run_dir, _ = make_run(tmp_path, script, "rounds=3", "min_clients=0",
                               "strategy.beta=1")
    run.run()
    records = run_dir.read_metrics()
    assert records[0]["status"].startswith("failed") and records[0]["accepted"] == 0
    assert records[1]["aggregation"]["previous_weight"] == 0.0
    assert records[2]["aggregation"]["previous_weight"] == 0.5
    state = run_dir.load_resume_state()
    np.testing.assert_allclose(state.global_weights["backbone.w"], 4.0)  # (3 + 5) / 2


def test_resume_remembers_that_no_round_aggregated_yet(tmp_path):
    nan = float("nan")
    script = {1: [{0: nan, 1: nan, 2: nan}], 2: [{0: 3.0, 1: 3.0, 2: 3.0}]}
    first, run_dir, _ = make_run(tmp_path, script, "rounds=1", "min_clients=0")
    first.run()
    cfg = load_config("synthetic", [
        f"run_dir={run_dir.path}", "num_clients=3", "clients_per_round=3", "rounds=2",
        "min_clients=0", "resume=true"])
    FederatedRun(cfg, run_dir, ScriptedRunner(script)).run()
    assert run_dir.read_metrics()[1]["aggregation"]["previous_weight"] == 0.0
    np.testing.assert_allclose(run_dir.load_resume_state().global_weights["backbone.w"], 3.0)


def test_metrics_report_the_loss_relative_to_the_zero_predictor(tmp_path):
    script = {1: [{0: 2.0, 1: 2.0, 2: 2.0}]}
    run, run_dir, _ = make_run(tmp_path, script, "rounds=1")
    summary = run.run()
    record = run_dir.read_metrics()[0]
    assert record["mean_zero_loss"] == 2.0 and record["relative_loss"] == 0.5
    assert all(u["zero_loss"] == 2.0 for u in record["updates"])
    assert summary["relative_loss_per_round"] == [0.5]


class RaisingOnRound:
    """An evaluation that fails for one round (a crashed evaluation must not stop the run)."""

    def __init__(self, bad_round: int) -> None:
        self.bad_round, self.calls = bad_round, 0

    def __call__(self, weights, cfg):
        self.calls += 1
        if weights is not None and float(weights["backbone.w"][0]) == self.bad_round:
            raise RuntimeError("evaluation exploded")
        return {"R@1": 0.5, "R@5": 1.0, "knn_top1": 0.25, "queries": 4, "gallery": 8,
                "skipped": 0, "eval_s": 0.0}


def test_a_raising_evaluation_leaves_the_run_going(tmp_path):
    from fedvssl_ray.training.evaluator import InlineEvaluator

    script = {r: [{0: float(r), 1: float(r), 2: float(r)}] for r in (1, 2, 3)}
    run, run_dir, _ = make_run(tmp_path, script, "rounds=3", "eval.every=1", "strategy.beta=0",
                               f"data.root={tmp_path / 'data'}")
    evaluate = RaisingOnRound(bad_round=2)
    run.evaluator = InlineEvaluator(run.cfg, evaluate)
    run.eval_rounds = {1, 2, 3}
    events = []
    run.emit = events.append
    summary = run.run()
    assert summary["rounds"] == 3
    records = run_dir.read_metrics()
    assert "exploded" in records[1]["eval"]["error"]
    assert records[0]["eval"]["R@1"] == 0.5 and records[2]["eval"]["knn_top1"] == 0.25
    assert summary["eval"]["failed_rounds"] == [2] and summary["eval"]["last"]["round"] == 3
    assert [e["round"] for e in events if e["type"] == "eval_failed"] == [2]
    assert sorted(run_dir.read_evals()) == [0, 1, 2, 3]  # round 0: the random init
    assert evaluate.calls == 4
