"""CtP augmentation split into draws and pixels, and its torch version (CTP.md §5, §6).

The pixel tolerance is :data:`device_augment.TOLERANCE` (max abs difference in normalised
units) for clips without hue/saturation; with it, at most :data:`HUE_OUTLIER_FRACTION` of the
values may exceed it (measured: under 0.04 without hue, under 2% beyond it with hue).

``data.augment_on=device`` is checked through the path a run takes: the config, the client's
clip stream (in-process and with decode workers), and the training step's ``to_device``.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from videos import synthetic_shard

from fedvssl_ray.config import ConfigError, load_config
from fedvssl_ray.data import decode, transforms
from fedvssl_ray.data.clips import sample_rng
from fedvssl_ray.data.device_augment import (
    TOLERANCE,
    DecodedBatch,
    augment_crops,
    augment_ctp_batch,
)
from fedvssl_ray.data.manifest import VideoRecord
from fedvssl_ray.data.shards import ShardStreams
from fedvssl_ray.data.transforms import CtpTrainPreset, resize_clip, to_planar
from fedvssl_ray.training import local
from fedvssl_ray.training.client import ClientWorker, round_batches

HUE_OUTLIER_FRACTION = 0.03
PRESET = CtpTrainPreset()

# sha256 prefixes of (imgs, gt_trajs, gt_weights) of CtpTrainPreset before it was split into
# draw and apply: seed sample_rng(7, k), noise frames of _DIGEST_SIZES[k % 4] (see _noise).
_DIGEST_SIZES = ((320, 240), (240, 320), (171, 128), (160, 120))
_DIGESTS = (
    "2eb7a8e39b5b88be", "087b7a1753d6a764", "15c6a7b35d65278a", "8906b67849486ea7",
    "ae208c3d47a82158", "2a07d4d19d4712fc", "c7e864f216d53a16", "2786c5a53d355848",
)


def _noise(k: int, width: int, height: int) -> np.ndarray:
    return np.random.default_rng(100 + k).integers(0, 256, (16, height, width, 3), dtype=np.uint8)


def _smooth(k: int, width: int, height: int) -> np.ndarray:
    """Noise upscaled 8x: image-like gradients, with hues all round the circle."""
    small = _noise(k, width // 8 + 1, height // 8 + 1)
    return np.ascontiguousarray(resize_clip(small, width, height))


def _numpy_resize(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Float64 bilinear resize rounded to uint8: machine-independent, unlike torch's uint8 kernel."""
    if frames.shape[1:3] == (height, width):
        return frames

    def taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.maximum((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0)
        i0 = np.minimum(pos.astype(np.int64), src - 1)
        return i0, np.minimum(i0 + 1, src - 1), pos - i0

    y0, y1, fy = taps(frames.shape[1], height)
    x0, x1, fx = taps(frames.shape[2], width)
    f = frames.astype(np.float64)
    rows = f[:, y0] + (f[:, y1] - f[:, y0]) * fy[None, :, None, None]
    out = rows[:, :, x0] + (rows[:, :, x1] - rows[:, :, x0]) * fx[None, None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_preset_outputs_unchanged_by_the_draw_apply_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transforms, "resize_clip", _numpy_resize)
    for k, expected in enumerate(_DIGESTS):
        sample = PRESET(_noise(k, *_DIGEST_SIZES[k % 4]), sample_rng(7, k))
        digest = hashlib.sha256()
        for key in ("imgs", "gt_trajs", "gt_weights"):
            digest.update(np.ascontiguousarray(sample[key]).tobytes())
        assert digest.hexdigest()[:16] == expected, k


def test_draw_uses_the_generator_like_the_preset() -> None:
    frames = _noise(0, 171, 128)
    drawn = PRESET.draw(16, 128, 171, rng := sample_rng(3, 1))
    after_draw = rng.random()
    PRESET(frames, rng := sample_rng(3, 1))
    assert rng.random() == after_draw
    applied = PRESET.apply(frames, drawn)
    for key, value in PRESET(frames, sample_rng(3, 1)).items():
        assert np.array_equal(applied[key], value)


@pytest.fixture(scope="module")
def batch() -> tuple[list[np.ndarray], list[transforms.CtpDraw], list[dict[str, np.ndarray]]]:
    """Eight clips of five frame sizes (one needs no resize), noise and smooth content."""
    sizes = ((320, 240), (240, 320), (171, 128), (160, 120), (112, 112))
    frames, draws = [], []
    for k in range(8):
        width, height = sizes[k % 5]
        frames.append((_smooth if k % 2 else _noise)(k, width, height))
        draws.append(PRESET.draw(16, height, width, sample_rng(7, k)))
    assert {d.hue_sat is None for d in draws} == {True, False} and {d.flip for d in draws} == {True, False}
    assert any(d.brightness is not None for d in draws) and any(d.contrast is not None for d in draws)
    return frames, draws, [PRESET.apply(f, d) for f, d in zip(frames, draws, strict=True)]


def test_steps_after_the_scale_are_bitwise_equal(batch) -> None:
    frames, draws, expected = batch
    crops = []
    for f, d in zip(frames, draws, strict=True):
        crop = resize_clip(f, *d.size)[:, d.y : d.y + 112, d.x : d.x + 112]
        crops.append(to_planar(crop[:, :, ::-1] if d.flip else crop))
    out = augment_crops(torch.from_numpy(np.stack(crops)), draws)
    for key in ("imgs", "gt_trajs", "gt_weights"):
        assert out[key].dtype == torch.float32
        assert np.array_equal(out[key].numpy(), np.stack([e[key] for e in expected])), key


def test_device_batch_matches_the_cpu_preset(batch) -> None:
    frames, draws, expected = batch
    out = augment_ctp_batch([torch.from_numpy(f) for f in frames], draws)
    assert out["imgs"].shape == (8, 3, 16, 112, 112) and out["imgs"].dtype == torch.float32
    assert np.array_equal(out["gt_trajs"].numpy(), np.stack([e["gt_trajs"] for e in expected]))
    assert np.array_equal(out["gt_weights"].numpy(), np.stack([e["gt_weights"] for e in expected]))
    want = torch.from_numpy(np.stack([e["imgs"] for e in expected]))
    assert_pixels_close(out["imgs"], want, draws)


def assert_pixels_close(got: torch.Tensor, want: torch.Tensor, draws) -> None:
    """Clip by clip within TOLERANCE; with hue/saturation, all but HUE_OUTLIER_FRACTION of it."""
    for k, d in enumerate(draws):
        diff = (got[k] - want[k]).abs()
        if d.hue_sat is None:
            assert diff.max() <= TOLERANCE, (k, diff.max())
        else:
            outliers = (diff > TOLERANCE).float().mean()
            assert outliers <= HUE_OUTLIER_FRACTION, (k, outliers)


# ---------------------------------------------------------------------------------------------
# data.augment_on=device through the config, the client's stream and its training step

CPU = torch.device("cpu")
USER_KEYS = [
    "model.backbone=r3d10_narrow", "data.crop_size=32", "data.clip_len=8", "client.batch_size=4",
    "client.local_epochs=2", "client.num_cpus=3", "client.torch_threads=1",
]


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[VideoRecord, ...]]:
    """Eight tiny AVIs of three frame sizes (one portrait), as manifest records under one root."""
    root = tmp_path_factory.mktemp("augment-on")
    return root, tuple(synthetic_shard(root, 8, frames=24, sizes=((64, 48), (48, 64), (80, 60))))


def stream_batches(shard, *keys: str) -> list:
    """Round 3 of client 0, as a run with these overrides streams it (v2 fails to decode)."""
    root, records = shard
    cfg = load_config("synthetic", [*USER_KEYS, *keys])
    stream = ShardStreams((records,), root, cfg)(0)
    return list(round_batches(stream, 3, cfg.client.local_epochs))


@pytest.mark.parametrize("decode_workers", [0, 2])
def test_device_placement_gives_the_cpu_batches(
    shard, decode_workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = decode.read_frames

    def flaky(src, indices, *, name=None, **kw):  # forked workers inherit the patch
        if name == "v2":
            raise decode.VideoDecodeError(name, "damaged packet")
        return real(src, indices, name=name, **kw)

    monkeypatch.setattr(decode, "read_frames", flaky)
    expected = stream_batches(shard, "data.decode_workers=0")
    got = stream_batches(shard, "data.augment_on=device", f"data.decode_workers={decode_workers}")
    # epoch 1: v2 fails in the second batch; epoch 2 leaves it out (7 videos, padded to 8)
    assert [len(b) for b in got] == [len(b["imgs"]) for b in expected] == [3, 4, 4, 4]
    for batch, want in zip(got, expected, strict=True):
        assert isinstance(batch, DecodedBatch) and all(f.dtype == torch.uint8 for f in batch.frames)
        imgs, trajs, weights = local.to_device(batch, CPU)
        for key, value in zip(local.BATCH_TENSORS, (imgs, trajs, weights), strict=True):
            assert value.dtype == want[key].dtype and value.shape == want[key].shape, key
        assert torch.equal(trajs, want["gt_trajs"]) and torch.equal(weights, want["gt_weights"])
        assert_pixels_close(imgs, want["imgs"], batch.draws)


def test_augment_on_is_checked() -> None:
    assert load_config("synthetic").data.augment_on == "cpu"
    allowed = r"data.augment_on='gpu' is not allowed; choose one of \['cpu', 'device'\]"
    with pytest.raises(ConfigError, match=allowed):
        load_config("synthetic", ["data.augment_on=gpu"])
    with pytest.raises(ConfigError, match="data.augment_on=device needs data.loader=local"):
        load_config("synthetic", ["data.augment_on=device", "data.loader=ray_data"])


def test_a_client_trains_on_clips_augmented_by_its_training_step(
    shard, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = []

    def spy(frames, draws, **kw):
        devices.append({f.device for f in frames})
        return augment_ctp_batch(frames, draws, **kw)

    monkeypatch.setattr(local, "augment_ctp_batch", spy)
    root, records = shard
    losses = []
    for placement in ("cpu", "device"):  # one step each: four videos, batch 4
        keys = [*USER_KEYS, "client.local_epochs=1", f"data.augment_on={placement}"]
        cfg = load_config("synthetic", keys)
        worker = ClientWorker(cfg, ShardStreams((records[:4],), root, cfg))
        result = worker.train(worker.initial_global(), 1, 0)
        assert result.steps == 1
        losses.append(result.update.loss)
    assert devices == [{CPU}]  # the device placement's step, on the worker's device
    assert math.isfinite(losses[1]) and losses[1] == pytest.approx(losses[0], rel=0.01)
