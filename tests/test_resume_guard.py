"""``pretrain.py --resume`` as a user runs it: it continues the same run or stops with exit 2
and leaves every file as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedvssl_ray.data.synthetic import ensure_synthetic_dataset

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "pretrain.py"


def pretrain(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--engine", "plain", *args],
                          capture_output=True, text=True, timeout=timeout)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A plain-engine run of 3 rounds on tiny synthetic videos."""
    root = tmp_path_factory.mktemp("resume-data")
    ensure_synthetic_dataset(
        root, num_classes=2, videos_per_class=4, frames=20, width=48, height=32, seed=3, log=None
    )
    run = tmp_path_factory.mktemp("resume-runs") / "base"
    result = pretrain(f"data.root={root}", f"run_dir={run}", "rounds=3", "num_clients=2",
                      "clients_per_round=2", "data.crop_size=32", "data.clip_len=8",
                      "client.batch_size=2", "client.local_epochs=1", "client.torch_threads=1",
                      "eval.every=0")
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["run_dir"] = str(copy)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_a_missing_commit_marker_stops_the_resume_and_changes_nothing(run_copy):
    (run_copy / "state" / "state.json").unlink()
    before = snapshot(run_copy)
    result = pretrain("--resume", str(run_copy), "rounds=1")
    assert result.returncode == 2
    assert "state.json" in result.stderr and "rounds up to 3" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(run_copy) == before


def test_a_checkpoint_named_by_the_commit_marker_must_exist(run_copy):
    (run_copy / "checkpoints" / "round-0003.npz").unlink()
    before = snapshot(run_copy)
    result = pretrain("--resume", str(run_copy), "rounds=4")
    assert result.returncode == 2 and "checkpoints/round-0003.npz" in result.stderr
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("change", ["seed=8", "strategy.alpha=0.5", "data.crop_size=48",
                                    "client.lr=0.1", "num_clients=3"])
def test_an_override_that_changes_the_run_is_refused(run_copy, change):
    before = snapshot(run_copy)
    result = pretrain("--resume", str(run_copy), "rounds=4", change)
    assert result.returncode == 2
    assert change.split("=")[0] in result.stderr and "saved rounds mean" in result.stderr
    assert snapshot(run_copy) == before


def test_fewer_rounds_than_done_is_refused_and_equal_is_nothing_to_do(run_copy):
    before = snapshot(run_copy)
    fewer = pretrain("--resume", str(run_copy), "rounds=2")
    assert fewer.returncode == 2 and "already has 3 complete rounds" in fewer.stderr
    same = pretrain("--resume", str(run_copy))
    assert same.returncode == 0 and "nothing to do" in same.stdout
    assert snapshot(run_copy) == before


def test_a_torn_last_metrics_line_resumes_cleanly(run_copy):
    with open(run_copy / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 4, "status": "ok", "mean_lo')  # a crash in mid-write
    result = pretrain("--resume", str(run_copy), "rounds=4", "client.torch_threads=2")
    assert result.returncode == 0, result.stderr
    lines = (run_copy / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3, 4]
    assert json.loads((run_copy / "config.json").read_text())["client"]["torch_threads"] == 2
