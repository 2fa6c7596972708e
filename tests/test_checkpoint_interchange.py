"""Checkpoint interchange: CtP-named torch state dicts (export -> import exact), the Flower
baseline's pickled files only behind trust_pickle, and clear refusals of anything else."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvssl_ray.checkpoint import (
    CheckpointError,
    checkpoint_kind,
    ctp_to_torchvision_key,
    export_ctp_state_dict,
    import_ctp_state_dict,
    load_backbone_any,
    save_arrays,
    torchvision_to_ctp_key,
)
from fedvssl_ray.evaluation.weights import (
    BackboneCheckpointError,
    check_backbone_weights,
    expected_shapes,
)
from fedvssl_ray.models import build_backbone, build_ctp_model, get_weights

REPO = Path(__file__).resolve().parent.parent
FINETUNE = REPO / "experiments" / "finetune.py"


def narrow_backbone(seed: int = 3) -> dict[str, np.ndarray]:
    model = build_ctp_model("r3d10_narrow", num_frames=8, seed=seed)
    return get_weights(model, [k for k in model.state_dict() if k.startswith("backbone.")])


def test_key_mapping_follows_ctp_md_and_round_trips_every_r3d18_key():
    assert torchvision_to_ctp_key("stem.0.weight") == "stem.conv.weight"
    assert torchvision_to_ctp_key("stem.1.running_var") == "stem.bn.running_var"
    assert torchvision_to_ctp_key("layer1.0.conv1.0.weight") == "layer1.0.conv1.conv.weight"
    assert torchvision_to_ctp_key("layer3.1.conv2.1.bias") == "layer3.1.bn2.bias"
    assert torchvision_to_ctp_key("layer2.0.downsample.0.weight") == "layer2.0.downsample.conv.weight"
    assert torchvision_to_ctp_key("layer4.0.downsample.1.num_batches_tracked") == (
        "layer4.0.downsample_bn.num_batches_tracked")
    keys = list(build_backbone("r3d_18", "pretrain").state_dict())
    assert len(keys) == 120
    ctp = [torchvision_to_ctp_key(k) for k in keys]
    assert len(set(ctp)) == 120
    assert [ctp_to_torchvision_key("module.backbone." + k) for k in ctp] == keys
    with pytest.raises(KeyError):
        torchvision_to_ctp_key("fc.weight")


def test_ctp_export_import_is_exact(tmp_path):
    weights = narrow_backbone()
    head = {"head.fc1.weight": np.ones((2, 2), np.float32)}
    path = tmp_path / "ctp.pth"
    export_ctp_state_dict(path, {**weights, **head}, {"round": 4})
    raw = torch.load(path, weights_only=True)  # a plain torch checkpoint for CtP's own code
    assert set(raw) == {"state_dict", "meta"}
    assert all(k.startswith("backbone.") for k in raw["state_dict"])
    assert "backbone.stem.conv.weight" in raw["state_dict"]
    assert checkpoint_kind(path) == "torch"
    loaded = import_ctp_state_dict(path)
    assert list(loaded) == list(weights)
    for key, value in weights.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)
    again, meta = load_backbone_any(path, expected_shapes("r3d10_narrow"))
    assert meta["format"] == "ctp-state-dict" and again.keys() == weights.keys()


def test_native_checkpoint_is_read_as_is(tmp_path):
    path = tmp_path / "round-0002.npz"
    save_arrays(path, narrow_backbone(), {"round": 2})
    arrays, meta = load_backbone_any(path, expected_shapes("r3d10_narrow"))
    assert meta["round"] == 2 and meta["format"] == "native"
    assert arrays.keys() == narrow_backbone().keys()


# -- the Flower baseline's pickled files --------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_flower_file(path: Path, arrays: list[np.ndarray]) -> None:
    """``np.savez(path, parameters)`` as the baseline does, a 1-D object array of ndarrays."""
    holder = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        holder[i] = a
    with open(path, "wb") as fh:  # exactly at path (np.savez adds .npz to a bare name)
        np.savez(fh, holder)


def test_flower_file_loads_only_with_trust_pickle(tmp_path):
    weights = narrow_backbone()
    head = [np.zeros((3, 4), np.float32)]  # the CtP head follows the backbone in the list
    path = tmp_path / "round-540.npz"
    write_flower_file(path, [*weights.values(), *head])
    assert checkpoint_kind(path) == "pickled-npz"
    with pytest.raises(CheckpointError, match="trust_pickle=true"):
        load_backbone_any(path, expected_shapes("r3d10_narrow"))
    warnings = []
    loaded, meta = load_backbone_any(path, expected_shapes("r3d10_narrow"), trust_pickle=True,
                                     warn=warnings.append)
    assert meta == {"format": "flower", "arrays": len(weights) + 1}
    assert len(warnings) == 1 and "run code" in warnings[0]
    for key, value in weights.items():
        np.testing.assert_array_equal(loaded[key], value)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_finetune(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, str(FINETUNE), "model.backbone=r3d10_narrow", *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def test_pickled_payload_is_refused_without_trust_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    np.savez(evil, np.array(Exploit(marker), dtype=object))
    done = run_finetune(f"checkpoint={evil}", f"run_dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr
    assert "trust_pickle=true" in done.stderr and str(evil) in done.stderr
    assert not marker.exists()
    assert not (tmp_path / "run").exists()
    # trusted or not, the restricted unpickler still refuses anything but arrays
    warnings = []
    with pytest.raises(CheckpointError, match="refusing to load posix.system"):
        load_backbone_any(evil, expected_shapes("r3d10_narrow"), trust_pickle=True,
                          warn=warnings.append)
    assert warnings and not marker.exists()


@pytest.mark.parametrize("kind", ["garbage", "torch-no-backbone", "wrong-shapes", "short-list"])
def test_malformed_checkpoints_give_a_clear_error(tmp_path, kind):
    path = tmp_path / f"{kind}.bin"
    shapes = expected_shapes("r3d10_narrow")
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
        match = "expected a .npz of named arrays"
    elif kind == "torch-no-backbone":
        torch.save({"state_dict": {"head.fc1.weight": torch.ones(2)}}, path)
        match = "no backbone.* entries"
    elif kind == "wrong-shapes":
        write_flower_file(path, [np.zeros(s[:1] or (1,), np.float32) for s in shapes.values()])
        match = "expects"
    else:
        write_flower_file(path, [np.zeros(2, np.float32)])
        match = "fewer than"
    with pytest.raises(CheckpointError, match=match) as info:
        load_backbone_any(path, shapes, trust_pickle=True)
    assert str(path) in str(info.value)


def test_a_backbone_mismatch_names_the_matching_backbone(tmp_path):
    path = tmp_path / "round-0001.npz"
    save_arrays(path, narrow_backbone())
    arrays, _ = load_backbone_any(path, expected_shapes("r3d_18"))
    with pytest.raises(BackboneCheckpointError, match="model.backbone=r3d10_narrow"):
        check_backbone_weights(arrays, "r3d_18", str(path))
