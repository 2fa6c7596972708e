"""Key frames, interpolation and PatchMask (CTP.md §5; checklist items 10-13)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedvssl_ray.data.clips import sample_rng
from fedvssl_ray.data.ctp_patches import (
    SHAPES,
    PatchPlan,
    alpha_base,
    paste_patches,
    patch_mask,
    resize_bilinear,
    sample_patch_plan,
)
from fedvssl_ray.data.keyframes import interpolate, key_frames


def test_key_frame_counts_and_positions() -> None:
    rng = np.random.default_rng(0)
    draws = [key_frames(rng, (0.5, 0.3, 0.2)) for _ in range(10_000)]
    assert all(k[0] == 0 and k[-1] == 15 and np.all(np.diff(k) > 0) for k in draws)
    lengths = Counter(len(k) for k in draws)
    for length, p in ((2, 0.5), (3, 0.3), (4, 0.2)):
        assert abs(lengths[length] / 10_000 - p) < 0.02
    middles = Counter(int(k[1]) for k in draws if len(k) == 3)
    assert set(middles) == {6, 7, 8, 9}
    assert all(abs(n / sum(middles.values()) - 0.25) < 0.03 for n in middles.values())
    pairs = {(int(k[1]), int(k[2])) for k in draws if len(k) == 4}
    assert pairs == {(4, 9), (4, 10), (5, 9), (5, 10)}

    dynamic = Counter(len(key_frames(rng, (0.7, 0.3))) for _ in range(10_000))
    assert set(dynamic) == {2, 3} and abs(dynamic[2] / 10_000 - 0.7) < 0.02


def test_interpolation_profiles() -> None:
    keys, values = np.array([0, 10]), np.array([0.0, 5.0])
    assert np.allclose(interpolate(keys, values, "uniform"), np.arange(11) * 0.5)
    accelerate = [0, 0.05, 0.2, 0.45, 0.8, 1.25, 1.8, 2.45, 3.2, 4.05, 5]
    assert np.allclose(interpolate(keys, values, "accelerate"), accelerate)
    decelerate = [0, 0.95, 1.8, 2.55, 3.2, 3.75, 4.2, 4.55, 4.8, 4.95, 5]
    assert np.allclose(interpolate(keys, values, "decelerate"), decelerate)
    # Several segments, vector values: every key value is hit exactly.
    keys = np.array([0, 7, 15])
    values = np.array([[0.0, 1.0], [7.0, -1.0], [3.0, 2.0]])
    out = interpolate(keys, values, "random", np.random.default_rng(1))
    assert out.shape == (16, 2) and np.array_equal(out[keys], values)
    with pytest.raises(ValueError, match="unknown profile"):
        interpolate(keys, values, "linear")


def test_random_profiles_are_shared_by_components() -> None:
    # One profile per segment: with values 0 -> 1 on every component, all columns agree.
    keys, values = np.array([0, 15]), np.array([[0.0] * 6, [1.0] * 6])
    picks = Counter()
    for i in range(3000):
        out = interpolate(keys, values, "random", np.random.default_rng(i))
        assert np.all(out == out[:, :1])
        picks[round(float(out[5, 0]), 6)] += 1
    fractions = sorted(n / 3000 for n in picks.values())
    assert np.allclose(fractions, [0.15, 0.15, 0.7], atol=0.03)


def _visible_mask(plan: PatchPlan, shape: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for n in range(plan.boxes.shape[0]):
        for t in np.flatnonzero(plan.visible[n]):
            x1, y1, x2, y2 = plan.boxes[n, t]
            mask[t, y1:y2, x1:x2] = True
    return mask


@pytest.mark.parametrize("size", [112, 64, 160])
def test_patch_mask_invariants(size: int) -> None:
    base = np.random.default_rng(size).integers(0, 256, (3, 16, size, size), dtype=np.uint8)
    for i in range(100):
        plan = sample_patch_plan(sample_rng(9, size, i), 16, size, size)
        boxes = plan.boxes
        assert boxes.shape == (3, 16, 4) and boxes.dtype == np.int64
        assert np.all((boxes[..., 0] >= 0) & (boxes[..., 0] < boxes[..., 2]) & (boxes[..., 2] <= size))
        assert np.all((boxes[..., 1] >= 0) & (boxes[..., 1] < boxes[..., 3]) & (boxes[..., 3] <= size))
        assert np.all(plan.visible[:, 0]) and np.all(plan.visible[np.arange(3), plan.src])
        assert np.all((plan.opacity >= 0.8) & (plan.opacity <= 1.0))
        out = paste_patches(base, plan)
        assert out.dtype == np.uint8 and out.shape == base.shape
        changed = (out != base).any(axis=0)
        assert not np.any(changed & ~_visible_mask(plan, changed.shape))

    clip, trajs, weights = patch_mask(base, sample_rng(9, size, 0))
    assert clip.dtype == np.uint8 and trajs.dtype == np.float32 and weights.dtype == np.float32
    assert trajs.shape == (3, 16, 4) and np.array_equal(trajs, np.round(trajs))
    assert np.array_equal(weights, np.ones((3, 16), np.float32))


def test_patch_mask_is_deterministic() -> None:
    base = np.random.default_rng(0).integers(0, 256, (3, 16, 112, 112), dtype=np.uint8)
    a, b = patch_mask(base, sample_rng(1, 2)), patch_mask(base, sample_rng(1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = patch_mask(base, sample_rng(1, 3))
    assert not np.array_equal(a[1], c[1])


def test_alpha_ranges_and_shapes() -> None:
    for shape in range(len(SHAPES)):
        for soft in (0.0, 0.3, 0.44):
            for w, h in ((9, 9), (20, 13), (64, 40)):
                alpha = alpha_base(shape, soft, w, h)
                assert alpha.shape == (h, w) and alpha.min() >= 0 and alpha.max() <= 1
                resized = resize_bilinear(alpha[None], w + 5, h - 2)[0]
                assert resized.min() >= 0 and resized.max() <= 1 + 1e-6
    assert np.array_equal(alpha_base(0, 0.0, 20, 13), np.ones((13, 20), np.float32))
    ellipse = alpha_base(1, 0.0, 21, 21)
    assert ellipse[10, 10] == 1 and ellipse[0, 0] == 0 and ellipse[10, 0] == 1


def test_hard_rectangle_alpha_equals_opacity() -> None:
    # Source frame white, every other frame black: a pasted pixel is 255 * alpha, truncated.
    for i in range(40):
        plan = sample_patch_plan(sample_rng(3, i), 16, 112, 112)
        plan = plan._replace(shape=np.zeros(3, np.int64), soft_edge=np.zeros(3))
        for n in range(3):
            clip = np.zeros((3, 16, 112, 112), np.uint8)
            clip[:, plan.src[n]] = 255
            single = PatchPlan(*(np.asarray(f)[n : n + 1] for f in plan))
            out = paste_patches(clip, single)
            for t in np.flatnonzero(single.visible[0]):
                if t == single.src[0]:
                    continue
                x1, y1, x2, y2 = single.boxes[0, t]
                expected = np.floor(255 * single.opacity[0, t])
                assert np.abs(out[:, t, y1:y2, x1:x2].astype(int) - expected).max() <= 1


def test_patch_statistics_match_the_reference() -> None:
    num_clips = 4000
    w0, visible, steps, largest, drift, shapes, soft = [], [], [], [], [], [], []
    for i in range(num_clips):
        plan = sample_patch_plan(sample_rng(11, i), 16, 112, 112)
        boxes = plan.boxes.astype(np.float64)
        w0.extend(boxes[:, 0, 2] - boxes[:, 0, 0])
        w0.extend(boxes[:, 0, 3] - boxes[:, 0, 1])
        visible.append(plan.visible[:, 1:].mean())
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        step = np.abs(np.diff(centre, axis=1))
        steps.append(step.mean())
        largest.append(step.max())
        drift.append(np.abs(centre[:, 15] - centre[:, 0]).mean())
        shapes.extend(plan.shape.tolist())
        soft.extend((plan.soft_edge > 0).tolist())
    assert abs(np.mean(w0) - 36.4) < 1.0
    assert abs(np.median(w0) - 31) <= 1
    assert abs(np.mean(visible) - 0.8125) < 0.005
    assert abs(np.mean(steps) - 1.24) < 0.05
    assert abs(np.mean(largest) - 3.6) < 0.15 and np.max(largest) <= 6.5
    assert abs(np.mean(drift) - 14.6) < 0.6
    frequencies = np.bincount(shapes, minlength=3) / len(shapes)
    assert np.allclose(frequencies, [0.5, 0.35, 0.15], atol=0.02)
    assert abs(np.mean(soft) - 0.5) < 0.02
