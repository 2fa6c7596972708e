"""Evaluation of the global during pretraining, end to end on tiny videos: plain loop and Ray
engine give the same figures, the random init is evaluated once and cached."""

from __future__ import annotations

import pytest

from fedvssl_ray.config import load_config
from fedvssl_ray.data.shards import ClientShards
from fedvssl_ray.data.synthetic import ensure_synthetic_dataset
from fedvssl_ray.run_dir import RunDir
from fedvssl_ray.training.evaluator import initial_cache_path
from fedvssl_ray.training.plain import run_plain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-synthetic")
    ensure_synthetic_dataset(
        root, num_classes=2, videos_per_class=4, frames=20, width=48, height=32, seed=5, log=None
    )
    return root


def small_config(root, run_dir, *extra):
    return load_config("synthetic", [
        f"data.root={root}", f"run_dir={run_dir}", "rounds=2", "num_clients=2",
        "clients_per_round=2", "data.crop_size=32", "data.clip_len=8", "client.batch_size=2",
        "client.local_epochs=1", "client.torch_threads=1", "client.num_actors=1",
        "client.num_cpus=0.5", "eval.num_clips=2", "eval.num_cpus=0", "eval.knn_k=3", *extra])


def test_plain_and_ray_runs_evaluate_the_rounds_asked(ray_cluster, eval_root, tmp_path):
    import ray

    from fedvssl_ray.actors.driver import start_driver

    plain_cfg = small_config(eval_root, tmp_path / "plain", "eval.every=1")
    plain_dir = RunDir(plain_cfg.run_dir)
    plain_dir.create(plain_cfg)
    summary = run_plain(plain_cfg, plain_dir, ClientShards.from_config(plain_cfg).stream_factory())
    records = plain_dir.read_metrics()
    assert [sorted(r["eval"]) for r in records] == [
        ["R@1", "R@5", "eval_s", "gallery", "knn_top1", "queries", "skipped"]] * 2
    assert records[0]["eval"]["queries"] == 4 and records[0]["eval"]["gallery"] == 4
    assert summary["eval"]["last"]["round"] == 2 and summary["eval"]["initial"]["R@1"] >= 0
    assert initial_cache_path(plain_cfg).is_file()

    ray_cfg = small_config(eval_root, tmp_path / "ray", "eval.every=2")
    ray_dir = RunDir(ray_cfg.run_dir)
    ray_dir.create(ray_cfg)
    driver = start_driver(ray_cfg, ray_dir.path)
    try:
        ray_summary = ray.get(driver.run.remote())
    finally:
        ray.kill(driver)
    evals = ray_dir.read_evals()
    assert sorted(evals) == [0, 2]  # round 1 not asked for; round 0 from the cache
    assert evals[0].get("cached") is True
    assert "eval" not in ray_dir.read_metrics()[0]
    same = ("R@1", "R@5", "knn_top1", "queries", "gallery")
    assert {k: evals[2][k] for k in same} == {k: records[1]["eval"][k] for k in same}
    assert ray_summary["eval"]["best"]["round"] == 2
