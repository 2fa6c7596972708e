"""CtP augmentation split into draws and pixels, and its torch version (CTP.md §5, §6).

The pixel tolerance is :data:`device_augment.TOLERANCE` (max abs difference in normalised
units) for clips without hue/saturation; with it, at most :data:`HUE_OUTLIER_FRACTION` of the
values may exceed it (measured: under 0.04 without hue, under 2% beyond it with hue).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from fedvssl_ray.data import transforms
from fedvssl_ray.data.clips import sample_rng
from fedvssl_ray.data.device_augment import TOLERANCE, augment_crops, augment_ctp_batch
from fedvssl_ray.data.transforms import CtpTrainPreset, resize_clip, to_planar

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
    for k, (d, e) in enumerate(zip(draws, expected, strict=True)):
        diff = np.abs(out["imgs"][k].numpy() - e["imgs"])
        if d.hue_sat is None:
            assert diff.max() <= TOLERANCE, (k, diff.max())
        else:
            assert (diff > TOLERANCE).mean() <= HUE_OUTLIER_FRACTION, (k, (diff > TOLERANCE).mean())
