"""Fine-tuning and the 10-clip test: the config section, scores and top-k by hand, a classifier
with known logits through the real test pipeline, a killed-and-resumed run, and the Ray Train
path with 1 and 2 workers on tiny videos."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvssl_ray.checkpoint import load_arrays, save_arrays
from fedvssl_ray.config import ConfigError, finetune_data, load_config, parse_lr_steps
from fedvssl_ray.data.synthetic import ensure_synthetic_dataset
from fedvssl_ray.evaluation.classification import (
    evaluate_classifier,
    mean_class_accuracy,
    topk_accuracy,
    video_scores,
)
from fedvssl_ray.evaluation.features import LogitModel
from fedvssl_ray.evaluation.spec import FeatureSpec
from fedvssl_ray.models import build_classifier, build_ctp_model, get_weights

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "finetune.py"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-synthetic")
    ensure_synthetic_dataset(
        root, num_classes=2, videos_per_class=4, frames=20, width=48, height=32, seed=5, log=None
    )
    return root


def tiny_args(root, run_dir, *extra: str) -> list[str]:
    return [f"data.root={root}", f"run_dir={run_dir}", "model.backbone=r3d10_narrow",
            "data.crop_size=32", "data.clip_len=8", "finetune.batch_size=2",
            "finetune.lr_steps=2", "finetune.num_cpus=1", "eval.num_clips=2",
            "eval.num_cpus=0", *extra]


# -- config ----------------------------------------------------------------------------------------


def test_presets_fine_tune_as_the_paper_and_cpu_sized():
    f = load_config("ucf101").finetune
    assert (f.epochs, f.lr, f.momentum, f.weight_decay, f.grad_clip, f.dropout) == (
        150, 0.01, 0.9, 5e-4, 40.0, 0.5)
    assert parse_lr_steps(f.lr_steps) == (60, 120)
    assert (f.batch_size, f.clip_len, f.stride, f.crop_size, f.num_gpus) == (4, 16, 2, 112, 1.0)
    synthetic = load_config("synthetic")
    assert synthetic.finetune.epochs <= 12 and synthetic.finetune.num_gpus == 0
    assert finetune_data(synthetic).data == synthetic.data  # defaults: the pretraining data
    k400 = finetune_data(load_config("k400"))
    assert (k400.data.dataset, k400.data.split) == ("ucf101", 1)
    cfg = load_config("synthetic", ["finetune.root=/x", "finetune.clip_len=8",
                                    "finetune.lr_steps= 1 , 3 ", "finetune.epochs=4"])
    assert finetune_data(cfg).data.root == "/x" and finetune_data(cfg).data.clip_len == 8
    assert parse_lr_steps(cfg.finetune.lr_steps) == (1, 3)


@pytest.mark.parametrize("text, pattern", [
    ("finetune.lr_steps=60;120", "comma-separated"),
    ("finetune.lr_steps=120,60", "strictly increasing"),
    ("finetune.lr_steps=0", "strictly increasing"),
    ("finetune.lr_steps=150", "at or after the last epoch"),
    ("finetune.epochs=0", "finetune.epochs=0"),
    ("finetune.lr=0", "finetune.lr=0"),
    ("finetune.momentum=-1", "finetune.momentum"),
    ("finetune.weight_decay=-1", "finetune.weight_decay"),
    ("finetune.lr_gamma=2", "finetune.lr_gamma"),
    ("finetune.grad_clip=-1", "finetune.grad_clip"),
    ("finetune.dropout=1", "finetune.dropout"),
    ("finetune.batch_size=0", "finetune.batch_size"),
    ("finetune.clip_len=12", "finetune.clip_len"),
    ("finetune.stride=0", "finetune.stride"),
    ("finetune.crop_size=40", "finetune.crop_size"),
    ("finetune.dataset=imagenet", "finetune.dataset"),
    ("finetune.split=4", "finetune.split"),
    ("finetune.workers=0", "finetune.workers"),
    ("finetune.num_gpus=-1", "finetune.num_cpus and finetune.num_gpus"),
    ("finetune.torch_threads=-1", "finetune.torch_threads"),
    ("finetune.decode_workers=-1", "finetune.decode_workers"),
    ("finetune.checkpoint_every=0", "finetune.checkpoint_every"),
    ("finetune.mixed_precision=maybe", "not a boolean"),
    ("finetune.trust_pickle=maybe", "not a boolean"),
    ("finetune.epoch=3", "did you mean 'finetune.epochs'"),
])
def test_bad_finetune_values_name_the_key(text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("ucf101", [text])


# -- scores and the test pipeline ------------------------------------------------------------------


def test_scores_average_clip_logits_then_softmax():
    clip_logits = np.array([
        [[4.0, 0, 0], [0, 2.0, 0]],  # mean (2, 1, 0): class 0
        [[0, 0, 1.0], [0, 0, 1.0]],  # class 2
        [[0, 3.0, 0], [0, -1.0, 2.0]],  # mean (0, 1, 1): tie, the lower id ranks first
    ])
    scores = video_scores(clip_logits)
    np.testing.assert_allclose(scores.sum(1), 1.0)
    np.testing.assert_allclose(scores[0], np.exp([2, 1, 0]) / np.exp([2, 1, 0]).sum())
    labels = np.array([1, 2, 2])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(1.0)  # 1 is 2nd, 2 is 2nd by tie
    assert mean_class_accuracy(scores, labels) == pytest.approx((0 + 0.5) / 2)


def known_classifier(bias: list[float], seed: int = 1) -> dict[str, np.ndarray]:
    """r3d10_narrow classifier whose logits are ``bias`` for every clip (zero weights)."""
    model = build_classifier("r3d10_narrow", num_classes=len(bias), seed=seed)
    with torch.no_grad():
        model.cls_head.fc_cls.weight.zero_()
        model.cls_head.fc_cls.bias.copy_(torch.tensor(bias))
    return get_weights(model)


def test_logit_model_averages_the_clips_of_each_video():
    spec = FeatureSpec("r3d10_narrow", num_clips=3, clip_len=8, crop_size=32, batch_size=2,
                       mode="finetune", output="logits")
    model = LogitModel(known_classifier([0.0, 0.0]), spec)
    model.model = torch.nn.Linear(1, 2)  # a stand-in: logits (x, -x) of each clip's mean value
    model.model.forward = lambda x: x.mean(dim=(1, 2, 3, 4))[:, None] * torch.tensor([1.0, -1.0])
    clips = np.zeros((2, 3, 3, 8, 32, 32), np.float32)
    clips[0, :, :] = np.array([1.0, 2.0, 6.0])[:, None, None, None, None]
    clips[1, :, :] = -1.0
    np.testing.assert_allclose(model(clips), [[3.0, -3.0], [-1.0, 1.0]], rtol=1e-6)


def test_known_logits_through_the_test_pipeline(tiny_root):
    cfg = load_config("synthetic", tiny_args(tiny_root, "unused"))
    result = evaluate_classifier(known_classifier([2.0, 0.5]), cfg)  # always class 0
    assert result["videos"] == 4 and result["num_classes"] == 2 and not result["skipped"]
    assert (result["top1"], result["top5"], result["mean_class_accuracy"]) == (0.5, 1.0, 0.5)
    assert result["test"]["clips_per_video"] == 2 and result["test"]["backbone_mode"] == "finetune"
    backbone_only = {k: v for k, v in known_classifier([2.0, 0.5]).items()
                     if k.startswith("backbone.")}
    with pytest.raises(ValueError, match="not a fine-tuned classifier"):
        evaluate_classifier(backbone_only, cfg)


# -- resume after a kill ---------------------------------------------------------------------------


def load_cli(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    spec = importlib.util.spec_from_file_location("finetune_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_killed_after_epoch_one_and_resumed_equals_uninterrupted(
    tiny_root, tmp_path, monkeypatch, capsys
):
    args = ["checkpoint=none", "--engine", "plain", "finetune.epochs=3", "finetune.test=false",
            "finetune.torch_threads=1"]
    killed = tmp_path / "killed"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args, *tiny_args(tiny_root, killed)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env,
    )
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1/3"):
                proc.kill()  # SIGKILL: nothing is cleaned up
                break
    finally:
        proc.kill()
        proc.wait()
    assert [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").open()][0] == 1
    cli = load_cli(monkeypatch)
    assert cli.main(["--resume", str(killed), "--engine", "plain"]) == 0
    assert "epochs 2-3" in capsys.readouterr().out
    straight = tmp_path / "straight"
    assert cli.main([*args, *tiny_args(tiny_root, straight)]) == 0
    a, meta = load_arrays(killed / "checkpoints" / "epoch-0003.npz")
    b, _ = load_arrays(straight / "checkpoints" / "epoch-0003.npz")
    assert meta["epoch"] == 3 and a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    records = [json.loads(line) for line in (killed / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[2]["lr"] == pytest.approx(0.001)  # x0.1 after epoch 2 (finetune.lr_steps=2)
    with pytest.raises(SystemExit) as stop:
        cli.main(["--resume", str(killed), "seed=3"])
    assert stop.value.code == 2 and "cannot change on resume" in capsys.readouterr().err


# -- Ray Train -------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_from_a_pretraining_checkpoint_with_1_and_2_workers(
    ray_cluster, tiny_root, tmp_path, monkeypatch, capsys
):
    ctp = build_ctp_model("r3d10_narrow", num_frames=8, seed=11)
    pretrained = tmp_path / "round-0003.npz"  # a global of a run with strategy.shared=all
    save_arrays(pretrained, get_weights(ctp), {"round": 3})
    cli = load_cli(monkeypatch)
    common = [f"checkpoint={pretrained}", "finetune.epochs=2", "finetune.lr_steps=1"]

    one = tmp_path / "one"
    assert cli.main([*common, *tiny_args(tiny_root, one, "finetune.test=false", *common[1:])]) == 0
    plain = tmp_path / "plain"
    assert cli.main([*common, "--engine", "plain",
                     *tiny_args(tiny_root, plain, "finetune.test=false", *common[1:])]) == 0
    a, _ = load_arrays(one / "checkpoints" / "epoch-0002.npz")
    b, _ = load_arrays(plain / "checkpoints" / "epoch-0002.npz")
    for key in a:  # Ray Data + one Ray Train worker = the in-process loop
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6, err_msg=key)

    two = tmp_path / "two"
    assert cli.main([*common, *tiny_args(tiny_root, two, "finetune.workers=2", *common[1:])]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" in printed
    records = [json.loads(line) for line in (two / "metrics.jsonl").open()]
    assert [(r["epoch"], r["workers"], r["examples"]) for r in records] == [(1, 2, 4), (2, 2, 4)]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["test"]["videos"] == 4 and 0 <= summary["test"]["top1"] <= 1
    assert json.loads((two / "test.json").read_text())["top5"] == 1.0  # 2 classes
    start = {k: v for k, v in get_weights(ctp).items() if k.startswith("backbone.")}
    final, meta = load_arrays(two / "checkpoints" / "epoch-0002.npz")
    assert meta["init"] == str(pretrained) and meta["num_classes"] == 2
    assert not np.array_equal(final["backbone.stem.0.weight"], start["backbone.stem.0.weight"])


def test_evaluate_task_test_command_line(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "experiments" /
                                                  "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    path = tmp_path / "epoch-0004.npz"
    save_arrays(path, known_classifier([0.5, 2.0]), {"epoch": 4})  # always class 1
    common = tiny_args(tiny_root, "unused")
    assert cli.main(["task=test", f"checkpoint={path}", "--local", *common]) == 0
    printed = capsys.readouterr().out
    assert "top-1                  50.00 %" in printed and "mean class accuracy" in printed
    saved = json.loads(path.with_suffix(".test.json").read_text())
    assert (saved["top1"], saved["top5"], saved["epoch"], saved["videos"]) == (0.5, 1.0, 4, 4)
    pretrained = tmp_path / "round-0001.npz"
    save_arrays(pretrained, {k: v for k, v in known_classifier([0.0, 0.0]).items()
                             if k.startswith("backbone.")})
    with pytest.raises(SystemExit) as stop:
        cli.main(["task=test", f"checkpoint={pretrained}", "--local", *common])
    assert stop.value.code == 2 and "not a fine-tuned checkpoint" in capsys.readouterr().err
