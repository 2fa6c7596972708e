"""Transforms and presets (CTP.md §6, §7; checklist items 16 and 19)."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from fedvssl_ray.data.clips import sample_rng
from fedvssl_ray.data.decode import scaled_size
from fedvssl_ray.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CtpTrainPreset,
    EvalPreset,
    FinetuneTrainPreset,
    adjust_hue_saturation,
    dynamic_brightness,
    dynamic_contrast,
    fixed_size,
    hsv_to_rgb,
    normalize,
    resize_clip,
    rgb_to_hsv,
    to_planar,
)


def _denormalize(imgs: np.ndarray) -> np.ndarray:
    """[3, T, H, W] normalised -> 0..255 floats."""
    mean = np.asarray(IMAGENET_MEAN)[:, None, None, None]
    std = np.asarray(IMAGENET_STD)[:, None, None, None]
    return (imgs * std + mean) * 255


def _ramp(width: int, height: int, frames: int = 4) -> np.ndarray:
    """Frames whose red channel is x, green y and blue the frame number."""
    clip = np.zeros((frames, height, width, 3), np.uint8)
    clip[..., 0] = np.arange(width)[None, None, :]
    clip[..., 1] = np.arange(height)[None, :, None]
    clip[..., 2] = np.arange(frames)[:, None, None]
    return clip


def test_geometry_sizes() -> None:
    assert [scaled_size(320, 240, s) for s in (112, 128, 144)] == [(149, 112), (171, 128), (192, 144)]
    assert CtpTrainPreset().short_edges == (112, 128, 144)
    assert FinetuneTrainPreset().sizes == ((149, 112), (171, 128), (192, 144))
    assert [fixed_size(240, 320, s) for s in FinetuneTrainPreset().sizes] == [
        (112, 149), (128, 171), (144, 192)
    ]
    assert EvalPreset().size == (171, 128)
    assert CtpTrainPreset(crop_size=64).short_edges == (64, 73, 82)


@pytest.mark.parametrize(("width", "height", "x", "y"), [(171, 128, 29, 8), (128, 171, 8, 29)])
def test_eval_centre_crop(width: int, height: int, x: int, y: int) -> None:
    imgs = EvalPreset()(_ramp(width, height))
    assert imgs.shape == (3, 4, 112, 112) and imgs.dtype == np.float32
    pixels = np.rint(_denormalize(imgs))
    assert pixels[0, 0, 0, 0] == x and pixels[1, 0, 0, 0] == y
    assert pixels[0, 0, 0, 111] == x + 111 and pixels[1, 0, 111, 0] == y + 111


def test_resize_clip_matches_bilinear_half_pixel() -> None:
    clip = np.random.default_rng(0).integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)
    out = resize_clip(clip, 45, 17)
    assert out.shape == (2, 17, 45, 3) and out.dtype == np.uint8

    def taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.maximum((np.arange(dst) + 0.5) * src / dst - 0.5, 0)
        i0 = np.minimum(np.floor(pos).astype(int), src - 1)
        return i0, np.minimum(i0 + 1, src - 1), pos - i0

    y0, y1, fy = taps(24, 17)
    x0, x1, fx = taps(32, 45)
    f = clip.astype(np.float64)
    rows = f[:, y0] * (1 - fy)[None, :, None, None] + f[:, y1] * fy[None, :, None, None]
    ref = rows[:, :, x0] * (1 - fx)[None, None, :, None] + rows[:, :, x1] * fx[None, None, :, None]
    assert np.abs(out - ref).max() <= 1.0
    assert resize_clip(clip, 32, 24) is clip


def test_hsv_known_colours() -> None:
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [255, 0, 10]])
    hsv = rgb_to_hsv(rgb.T.astype(np.uint8)).T
    expected = [[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 255], [0, 0, 0], [179, 255, 255]]
    assert hsv.tolist() == expected


def test_hsv_matches_colorsys() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (3, 5000), dtype=np.uint8)
    hsv = rgb_to_hsv(rgb).astype(int)
    ref = np.array([colorsys.rgb_to_hsv(*(rgb[:, i] / 255)) for i in range(5000)]).T
    hue_error = np.abs(hsv[0] - ref[0] * 180)
    hue_error = np.minimum(hue_error, 180 - hue_error)[ref[1] > 0]
    # OpenCV's 12-bit fixed point moves some near-ties by one level, as it does in OpenCV.
    assert hue_error.max() < 1 and np.mean(hue_error <= 0.5) > 0.95
    assert np.abs(hsv[1] - ref[1] * 255).max() < 1 and np.array_equal(hsv[2], np.rint(ref[2] * 255))
    hsv = np.random.default_rng(2).integers(0, 256, (3, 5000)).astype(np.uint8)
    hsv[0] %= 180
    back = hsv_to_rgb(hsv).astype(float)
    for i in range(0, 5000, 7):
        ref = np.array(colorsys.hsv_to_rgb(hsv[0, i] / 180, hsv[1, i] / 255, hsv[2, i] / 255)) * 255
        assert np.abs(back[:, i] - ref).max() <= 0.5 + 1e-3


def test_hue_saturation_adjustment() -> None:
    clip = np.random.default_rng(3).integers(0, 256, (3, 2, 8, 8), dtype=np.uint8)
    same = adjust_hue_saturation(clip, 0.0, 1.0)
    assert same.dtype == np.uint8
    assert np.array_equal(same, hsv_to_rgb(rgb_to_hsv(clip)))
    red = np.zeros((3, 1, 1, 1), np.uint8)
    red[0] = 200
    assert rgb_to_hsv(adjust_hue_saturation(red, -12.0, 1.0))[0].item() == 0  # clipped, no wrap
    assert rgb_to_hsv(adjust_hue_saturation(red, 6.0, 1.0))[0].item() == 6
    grey = adjust_hue_saturation(red, 0.0, 0.0)
    assert grey.ravel().tolist() == [200, 200, 200]
    # A float input is rounded to uint8 first.
    assert np.array_equal(adjust_hue_saturation(clip + np.float32(0.2), 3.0, 1.1),
                          adjust_hue_saturation(clip, 3.0, 1.1))


def test_brightness_contrast_and_normalize() -> None:
    clip = np.full((3, 3, 2, 2), 200, np.uint8)
    bright = dynamic_brightness(clip, np.array([-30.0, 0.0, 80.0]))
    assert bright.dtype == np.float32 and bright[:, :, 0, 0].T.tolist() == [[170] * 3, [200] * 3, [255] * 3]
    contrast = dynamic_contrast(clip, np.array([0.5, 1.0, 1.5]))
    assert contrast[0, :, 0, 0].tolist() == [100, 200, 255]
    imgs = normalize(np.full((3, 1, 1, 1), 255, np.uint8))
    expected = (1 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    assert np.allclose(imgs.ravel(), expected, atol=1e-6)
    assert to_planar(np.zeros((2, 4, 5, 3), np.uint8)).shape == (3, 2, 4, 5)


def test_ctp_preset_output_and_determinism() -> None:
    frames = np.random.default_rng(4).integers(0, 256, (16, 240, 320, 3), dtype=np.uint8)
    preset = CtpTrainPreset()
    out = preset(frames, sample_rng(0, 1))
    assert out["imgs"].shape == (3, 16, 112, 112) and out["imgs"].dtype == np.float32
    assert out["gt_trajs"].shape == (3, 16, 4) and out["gt_trajs"].dtype == np.float32
    assert np.array_equal(out["gt_trajs"], np.round(out["gt_trajs"]))
    assert np.array_equal(out["gt_weights"], np.ones((3, 16), np.float32))
    again = preset(frames, sample_rng(0, 1))
    assert all(np.array_equal(out[k], again[k]) for k in out)
    other = preset(frames, sample_rng(0, 2))
    assert not np.array_equal(out["imgs"], other["imgs"])
    pixels = _denormalize(out["imgs"])
    assert pixels.min() > -0.01 and pixels.max() < 255.01

    small = CtpTrainPreset(crop_size=64)(frames[:8], sample_rng(0, 1))
    assert small["imgs"].shape == (3, 8, 64, 64) and small["gt_trajs"].max() <= 64


def test_ctp_preset_crops_inside_the_scaled_frame() -> None:
    # No colour op, no flip: the crop of a ramp is a contiguous window of the scaled ramp.
    preset = CtpTrainPreset(flip_p=0.0, hue_sat_p=0.0, brightness_p=0.0, contrast_p=0.0)
    frames = _ramp(112, 112, frames=16)
    for i in range(20):
        out = preset(frames, sample_rng(5, i))
        pixels = np.rint(_denormalize(out["imgs"]))
        assert pixels.shape == (3, 16, 112, 112)
        row = pixels[0, 0, 0]  # red = scaled x, outside the patches mostly: non-decreasing
        boxes = out["gt_trajs"][:, 0]
        free = [x for x in range(112) if not any(b[0] <= x < b[2] and b[1] <= 0 < b[3] for b in boxes)]
        assert np.all(np.diff(row[free]) >= 0)


def test_finetune_preset() -> None:
    frames = np.random.default_rng(6).integers(0, 256, (16, 240, 320, 3), dtype=np.uint8)
    preset = FinetuneTrainPreset()
    out = preset(frames, sample_rng(1, 1))
    assert out.shape == (3, 16, 112, 112) and out.dtype == np.float32
    assert np.array_equal(out, preset(frames, sample_rng(1, 1)))
    portrait = preset(frames.transpose(0, 2, 1, 3), sample_rng(1, 2))
    assert portrait.shape == (3, 16, 112, 112)
