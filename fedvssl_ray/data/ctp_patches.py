"""CtP patch synthesis ("PatchMask", CTP.md §5): three patches that move and resize over a clip.

:func:`sample_patch_plan` makes every random draw, in the reference order (initial boxes,
trajectories, then per patch: source frame, alpha shape, soft edge, opacity, visibility), and
returns a :class:`PatchPlan`. :func:`paste_patches` then composites the patches without any
randomness. :func:`patch_mask` does both and returns the clip with its targets (:func:`patch_targets`).

The reference works on 112x112 crops. For another crop size the anchor scales and the centre
velocity are multiplied by ``min(H, W)/112`` (a factor of exactly 1 at 112, so nothing changes
there); the size random walk is relative and stays as it is.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from fedvssl_ray.data.keyframes import categorical, interpolate, key_frames

NUM_PATCHES = 3
ANCHOR_SCALES = (16, 24, 28, 32, 48, 64)
ANCHOR_RATIOS = (0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0)
SIZE_JITTER = 0.18  # initial w, h multiplied by exp(U(-j, j))
KEY_PROBS = (0.5, 0.3, 0.2)  # 0, 1 or 2 inner key frames
LOCATION_VELOCITY = 3.0  # centre shift per key gap of D frames: U(-3D, 3D) px (at 112)
SIZE_VELOCITY = 0.025  # size factor per key gap: exp(U(-0.025D, 0.025D))
VISIBLE_PROB = 0.8
SHAPES = ("rectangle", "ellipse", "rhombus")
SHAPE_PROBS = (0.5, 0.35, 0.15)
SOFT_EDGE_PROB = 0.5
SOFT_EDGE_RANGE = (0.30, 0.45)
OPACITY_RANGE = (0.8, 1.0)
REFERENCE_SIZE = 112


class PatchPlan(NamedTuple):
    """All random choices of one clip's patches; :func:`paste_patches` needs nothing else."""

    boxes: np.ndarray  # [N, T, 4] int64 xyxy, x2/y2 exclusive: paste locations and targets
    visible: np.ndarray  # [N, T] bool, pasted or not (frame 0 and src always True)
    src: np.ndarray  # [N] int64, the frame the patch content is cut from
    shape: np.ndarray  # [N] int64 index into SHAPES
    soft_edge: np.ndarray  # [N] float64 tp in [0.30, 0.45), or 0.0 for a hard edge
    opacity: np.ndarray  # [N, T] float64 in [0.8, 1.0]


@lru_cache(maxsize=8)
def _anchors(scale: float) -> np.ndarray:
    """[42, 2] anchor (w, h) = (s*sqrt(ratio), s/sqrt(ratio)) for every scale x ratio (read-only)."""
    s = np.repeat(np.asarray(ANCHOR_SCALES, dtype=np.float64) * scale, len(ANCHOR_RATIOS))
    r = np.sqrt(np.tile(np.asarray(ANCHOR_RATIOS, dtype=np.float64), len(ANCHOR_SCALES)))
    anchors = np.stack([s * r, s / r], axis=1)
    anchors.flags.writeable = False
    return anchors


def sample_initial_boxes(
    rng: np.random.Generator, height: int, width: int, *, num_patches: int = NUM_PATCHES
) -> tuple[np.ndarray, np.ndarray]:
    """Float centres and sizes ``[N, 2]`` (x, y) / (w, h) of the frame-0 boxes, drawn per patch."""
    anchors = _anchors(min(height, width) / REFERENCE_SIZE)
    centres = np.empty((num_patches, 2))
    sizes = np.empty((num_patches, 2))
    for n in range(num_patches):
        w, h = anchors[rng.integers(len(anchors))]
        w *= np.exp(rng.uniform(-SIZE_JITTER, SIZE_JITTER))
        h *= np.exp(rng.uniform(-SIZE_JITTER, SIZE_JITTER))
        w = min(max(w, 1.0), width - 1.0)
        h = min(max(h, 1.0), height - 1.0)
        x1 = rng.uniform(0, width - w)
        y1 = rng.uniform(0, height - h)
        centres[n] = (x1 + w / 2, y1 + h / 2)
        sizes[n] = (w, h)
    return centres, sizes


def sample_trajectories(
    rng: np.random.Generator,
    centres: np.ndarray,
    sizes: np.ndarray,
    height: int,
    width: int,
    *,
    num_frames: int = 16,
    speed: float = 1.0,
) -> np.ndarray:
    """Integer boxes ``[N, T, 4]`` from the initial centres/sizes: key-frame random walks.

    Centres move by U(-3D, 3D) per key gap D (times ``speed``; 1 is the reference), clipped so
    that a box of the INITIAL size stays inside; sizes walk by exp(U(-0.025D, 0.025D)) unclipped. Both are interpolated with random
    profiles, then boxes are clipped, rounded half to even and clipped again.
    """
    velocity = speed * LOCATION_VELOCITY * min(height, width) / REFERENCE_SIZE
    frame = np.array([width, height], dtype=np.float64)
    low, high = sizes / 2, frame - sizes / 2

    keys = key_frames(rng, KEY_PROBS, num_frames)
    c, walk = centres, [centres]
    for gap in np.diff(keys):
        c = np.clip(c + rng.uniform(-velocity * gap, velocity * gap, size=c.shape), low, high)
        walk.append(c)
    ctr = interpolate(keys, np.stack(walk), "random", rng)  # [T, N, 2]

    keys = key_frames(rng, KEY_PROBS, num_frames)
    s, walk = sizes, [sizes]
    for gap in np.diff(keys):
        s = s * np.exp(rng.uniform(-SIZE_VELOCITY * gap, SIZE_VELOCITY * gap, size=s.shape))
        walk.append(s)
    size = interpolate(keys, np.stack(walk), "random", rng)

    bounds = np.concatenate([frame, frame])
    boxes = np.clip(np.concatenate([ctr - size / 2, ctr + size / 2], axis=-1), 0, bounds)
    boxes = np.clip(np.rint(boxes), 0, bounds).astype(np.int64)
    return boxes.transpose(1, 0, 2)


def sample_patch_plan(
    rng: np.random.Generator, num_frames: int, height: int, width: int, *,
    num_patches: int = NUM_PATCHES, speed: float = 1.0,
) -> PatchPlan:
    """Every random draw of PatchMask for one ``[T, H, W]`` clip, in the reference order
    (``speed`` scales the patches' centre velocity; 1 is the reference)."""
    centres, sizes = sample_initial_boxes(rng, height, width, num_patches=num_patches)
    boxes = sample_trajectories(
        rng, centres, sizes, height, width, num_frames=num_frames, speed=speed
    )
    src = np.empty(num_patches, np.int64)
    shape = np.empty(num_patches, np.int64)
    soft_edge = np.zeros(num_patches)
    opacity = np.empty((num_patches, num_frames))
    visible = np.empty((num_patches, num_frames), bool)
    for n in range(num_patches):
        src[n] = rng.integers(num_frames)
        shape[n] = categorical(rng, SHAPE_PROBS)
        if rng.random() < SOFT_EDGE_PROB:
            soft_edge[n] = rng.uniform(*SOFT_EDGE_RANGE)
        keys = key_frames(rng, KEY_PROBS, num_frames)
        opacity[n] = interpolate(keys, rng.uniform(*OPACITY_RANGE, size=len(keys)))
        u = rng.random(num_frames)
        u[[0, src[n]]] = 0.0
        visible[n] = u <= VISIBLE_PROB
    return PatchPlan(boxes, visible, src, shape, soft_edge, opacity)


def alpha_base(shape: int, soft_edge: float, width: int, height: int) -> np.ndarray:
    """``[height, width]`` float32 alpha of a patch at its source size, before opacity."""
    dx = np.abs(np.arange(width) - (width - 1) // 2)[None, :] / width
    dy = np.abs(np.arange(height) - (height - 1) // 2)[:, None] / height
    if SHAPES[shape] == "rectangle":
        dist = np.maximum(dx, dy)
        base = np.ones((height, width))
    else:
        dist = np.sqrt(dx**2 + dy**2) if SHAPES[shape] == "ellipse" else dx + dy
        base = (dist < 0.5).astype(np.float64)
    if soft_edge:
        base = base * np.clip((0.5 - dist) / (0.5 - soft_edge), 0.0, 1.0)
    return base.astype(np.float32)


@lru_cache(maxsize=1024)
def bilinear_taps(src_size: int, dst_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV ``INTER_LINEAR`` taps along one axis: (lower index, upper index, float32 weight).

    Half-pixel centres, coordinates below 0 clamped to 0, upper index clamped to the last one.
    Cached (read-only arrays): patch sizes repeat.
    """
    pos = np.maximum((np.arange(dst_size) + 0.5) * (src_size / dst_size) - 0.5, 0.0)
    i0 = np.minimum(pos.astype(np.int64), src_size - 1)
    taps = (i0, np.minimum(i0 + 1, src_size - 1), (pos - i0).astype(np.float32))
    for a in taps:
        a.flags.writeable = False
    return taps


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[C, h, w]`` float32 -> ``[C, height, width]``, bilinear without antialiasing.

    Two taps per axis, gathered and blended elementwise: no BLAS call, whose thread pool costs
    more than these small patches (and contends with the data workers).
    """
    y0, y1, fy = bilinear_taps(image.shape[1], height)
    x0, x1, fx = bilinear_taps(image.shape[2], width)
    top = image.take(y0, axis=1)
    rows = image.take(y1, axis=1)
    rows -= top
    rows *= fy[:, None]
    rows += top
    left = rows.take(x0, axis=2)
    out = rows.take(x1, axis=2)
    out -= left
    out *= fx
    out += left
    return out


def paste_patches(clip: np.ndarray, plan: PatchPlan) -> np.ndarray:
    """Composite the plan's patches onto a copy of ``clip`` ``[C, T, H, W]`` uint8.

    Patches go largest mean area first; each visible one is blended in float and stored by
    truncation. Content is cut from ``clip`` itself, before any pasting. The crop and its alpha
    are resized together, once per distinct box size; the resized patch stays float (the
    reference rounds it to uint8 first: pixels may differ by one level).
    """
    out = clip.copy()
    sides = plan.boxes[..., 2:] - plan.boxes[..., :2]  # [N, T, 2] (w, h)
    area = sides[..., 0].mean(axis=1) * sides[..., 1].mean(axis=1)
    boxes, visible = plan.boxes.tolist(), plan.visible.tolist()
    opacity = plan.opacity.astype(np.float32)
    for n in np.argsort(-area, kind="stable").tolist():
        src = int(plan.src[n])
        sx1, sy1, sx2, sy2 = boxes[n][src]
        base = alpha_base(int(plan.shape[n]), float(plan.soft_edge[n]), sx2 - sx1, sy2 - sy1)
        source = np.concatenate([clip[:, src, sy1:sy2, sx1:sx2], base[None]], axis=0)
        resized: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for t, (x1, y1, x2, y2) in enumerate(boxes[n]):
            if not visible[n][t]:
                continue
            size = (x2 - x1, y2 - y1)
            if size not in resized:
                r = source if size == (sx2 - sx1, sy2 - sy1) else resize_bilinear(source, *size)
                resized[size] = r[:-1], r[-1:]
            patch, alpha = resized[size]
            alpha = alpha * opacity[n, t]
            region = out[:, t, y1:y2, x1:x2]
            blend = region * (1 - alpha)
            blend += patch * alpha
            region[...] = blend
    return out


def patch_mask(
    clip: np.ndarray, rng: np.random.Generator, *, num_patches: int = NUM_PATCHES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PatchMask on ``[C, T, H, W]`` uint8: (patched clip, gt_trajs [N,T,4] f32, gt_weights [N,T] f32)."""
    num_frames, height, width = clip.shape[1:]
    plan = sample_patch_plan(rng, num_frames, height, width, num_patches=num_patches)
    return (paste_patches(clip, plan), *patch_targets(plan))


def patch_targets(plan: PatchPlan) -> tuple[np.ndarray, np.ndarray]:
    """The plan's targets: ``gt_trajs [N, T, 4]`` float32 boxes and ``gt_weights [N, T]`` ones."""
    trajs = plan.boxes.astype(np.float32)
    return trajs, np.ones(trajs.shape[:2], np.float32)
