"""Frame-index samplers (CTP.md §6, §7; checklist items 14 and 15) and per-sample generators."""

from __future__ import annotations

import numpy as np
import pytest

from fedvssl_ray.data.clips import (
    eval_indices,
    eval_offsets,
    finetune_indices,
    sample_pretrain_clip,
    sample_rng,
)


def test_sample_rng_depends_only_on_its_keys() -> None:
    a = sample_rng(7, 1, 2, 3).random(4)
    assert np.array_equal(a, sample_rng(7, 1, 2, 3).random(4))
    assert not np.array_equal(a, sample_rng(7, 1, 2, 4).random(4))
    assert not np.array_equal(a, sample_rng(8, 1, 2, 3).random(4))
    # A trailing zero key is a different stream (plain SeedSequence would collide).
    assert not np.array_equal(a, sample_rng(7, 1, 2, 3, 0).random(4))


@pytest.mark.parametrize("num_frames", [1, 5, 16, 31, 46, 76, 77, 150, 300])
def test_pretrain_sampler_properties(num_frames: int) -> None:
    for i in range(400):
        clip = sample_pretrain_clip(num_frames, sample_rng(0, num_frames, i))
        idx, s = clip.indices, clip.stride
        assert idx.shape == (16,) and idx.dtype == np.int64
        assert 1 <= s <= 5
        assert idx.min() >= 0 and idx.max() <= num_frames - 1
        assert np.all(np.diff(idx) >= 0)
        expected = np.minimum(clip.start + s * np.arange(16), num_frames - 1)
        assert np.all(idx >= expected) and np.all(idx <= np.minimum(expected + s - 1, num_frames - 1))
        assert np.all(np.diff(idx) <= 2 * s - 1)
        if s == 1 and 16 <= num_frames:
            assert np.array_equal(idx, clip.start + np.arange(16))
        if num_frames <= 15 * s + 1:
            assert clip.start == 0
            assert idx[-1] == num_frames - 1  # the tail is clamped to the last frame


def test_pretrain_stride_and_start_distribution() -> None:
    clips = [sample_pretrain_clip(150, sample_rng(1, i)) for i in range(10_000)]
    strides = np.bincount([c.stride for c in clips], minlength=6)[1:] / len(clips)
    assert np.allclose(strides, 0.2, atol=0.02)
    starts = [c.start for c in clips if c.stride == 1]
    assert min(starts) == 0 and max(starts) == 150 - 16


def test_finetune_sampler() -> None:
    for num_frames in (10, 31, 32, 100):
        starts = set()
        for i in range(300):
            idx = finetune_indices(num_frames, sample_rng(2, i))
            start = int(idx[0])
            starts.add(start)
            assert np.array_equal(idx, np.minimum(start + 2 * np.arange(16), num_frames - 1))
        if num_frames <= 31:
            assert starts == {0}
        else:
            assert starts <= set(range(num_frames - 31 + 1)) and len(starts) > 1


@pytest.mark.parametrize(
    ("num_frames", "offsets"),
    [
        (100, [3, 10, 17, 24, 31, 37, 44, 51, 58, 65]),
        (164, [6, 19, 33, 46, 59, 73, 86, 99, 113, 126]),
        (300, [13, 40, 67, 94, 121, 147, 174, 201, 228, 255]),
        (41, list(range(10))),
        (33, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]),
        (32, [0] * 10),
        (20, [0] * 10),
        (1, [0] * 10),
    ],
)
def test_eval_offsets_table(num_frames: int, offsets: list[int]) -> None:
    assert eval_offsets(num_frames).tolist() == offsets


def test_eval_indices() -> None:
    idx = eval_indices(100)
    assert idx.shape == (10, 16)
    assert idx[0].tolist() == list(range(3, 34, 2))
    assert idx[9].tolist() == list(range(65, 96, 2))
    short = eval_indices(20)
    assert all(row.tolist() == [*range(0, 20, 2), 19, 19, 19, 19, 19, 19] for row in short)
