"""The pixel work of the CtP training preset in torch, on any device (CTP.md §5, §6).

:meth:`CtpTrainPreset.draw` makes every random choice on the CPU; :func:`augment_ctp_batch` then
applies a batch of those draws to decoded uint8 clips where the clips are (e.g. a GPU): scale
and crop, flip, PatchMask paste, hue/saturation, dynamic brightness and contrast, normalise.

Equality with :meth:`CtpTrainPreset.apply`: every step after the scale is the same arithmetic
(the same float64 tap positions and float32 blends, truncation of pasted pixels to uint8,
OpenCV's 8-bit HSV tables, float32 brightness/contrast/normalise), so from the same scaled crop
the outputs are bitwise equal (:func:`augment_crops`). The scale itself is a float bilinear
blend of the crop's taps rounded half to even, while the CPU path uses torch's uint8 CPU kernel
(fixed point): scaled pixels may differ by one level, which pasting and contrast can grow to two
or three. Clips without hue/saturation therefore agree within :data:`TOLERANCE` (max abs
difference in normalised units; one uint8 level is 1/(255*std) ~ 0.0175). OpenCV's hue does not
wrap (H is clipped to 0..179), so near red a one-level change can move a pixel's hue by the
whole shift: with hue/saturation a few percent of values may differ by more (measured up to ~1).
Boxes and weights are always equal.

With ``data.augment_on=device`` a client's clip stream yields :class:`DecodedBatch` (decoded
clips and their draws) instead of finished tensors, and the training step augments it on the
training device (:func:`fedvssl_ray.training.local.to_device`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedvssl_ray.data.ctp_patches import SHAPES, bilinear_taps, patch_targets
from fedvssl_ray.data.transforms import (
    HSV_H_TABLE,
    HSV_RGB_FACTORS,
    HSV_S_TABLE,
    NORM_OFFSET,
    NORM_SCALE,
    CtpDraw,
)

TOLERANCE = 0.05  # normalised units, about three uint8 levels
_RECTANGLE, _ELLIPSE = SHAPES.index("rectangle"), SHAPES.index("ellipse")


@dataclass(frozen=True)
class DecodedBatch:
    """A CtP training batch before its pixel work: decoded clips and every random draw.

    The clips keep their decoded size (videos of a shard may differ), so they travel as one
    tensor each; :func:`augment_ctp_batch` turns them into the batch the CPU path makes. A
    dataclass, so a ``DataLoader`` worker ships it as is (the tensors through shared memory).
    """

    frames: tuple[torch.Tensor, ...]  # [T, H, W, 3] uint8 RGB each, on the host
    draws: tuple[CtpDraw, ...]
    crop_size: int

    def __len__(self) -> int:
        return len(self.draws)


Batch = dict[str, torch.Tensor] | DecodedBatch
"""What a client's clip stream yields: finished tensors (``imgs``, ``gt_trajs``,
``gt_weights``), or a :class:`DecodedBatch` to augment where it is trained."""


def _taps(src: int, dst: int, start: int, count: int, flip: bool, device: torch.device) -> tuple:
    """Bilinear taps of output pixels ``start..start+count-1`` of a ``src -> dst`` resize (reversed if ``flip``)."""
    taps = [a[start : start + count] for a in bilinear_taps(src, dst)]
    return tuple(torch.from_numpy(np.array(a[::-1] if flip else a)).to(device) for a in taps)


def scale_crop(frames: torch.Tensor, params: CtpDraw, crop_size: int) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 -> the scaled, cropped (and flipped) clip ``[3, T, S, S]`` uint8.

    Only the crop's pixels are computed: two rows and two columns per pixel, blended in float32
    (rows first) and rounded half to even.
    """
    height, width = frames.shape[1:3]
    new_w, new_h = params.size
    y0, y1, fy = _taps(height, new_h, params.y, crop_size, False, frames.device)
    x0, x1, fx = _taps(width, new_w, params.x, crop_size, params.flip, frames.device)
    top, bottom = frames.index_select(1, y0), frames.index_select(1, y1)  # [T, S, W, 3]
    corners = [rows.index_select(2, x).float() for rows in (top, bottom) for x in (x0, x1)]
    wy = fy[:, None, None]
    left = corners[0] + (corners[2] - corners[0]) * wy
    right = corners[1] + (corners[3] - corners[1]) * wy
    out = left + (right - left) * fx[:, None]
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(3, 0, 1, 2)


def _axis_taps(
    pixels: torch.Tensor, start: torch.Tensor, size: torch.Tensor, src_size: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """For frame pixels ``[B, T, P]`` along one axis of boxes ``[B, T]``: (inside, tap 0, tap 1, weight).

    Taps are local source indices of the box's bilinear resize from ``src_size``, as
    :func:`bilinear_taps` (float64 positions, clamped), for ``i = p - start`` clamped into the box.
    """
    i = pixels - start[..., None]
    inside = (i >= 0) & (i < size[..., None])
    size = size.clamp(min=1)[..., None]
    i = torch.minimum(i.clamp(min=0), size - 1).double()
    ratio = src_size[..., None].double() / size.double()
    pos = ((i + 0.5) * ratio - 0.5).clamp(min=0.0)
    last = src_size[..., None] - 1
    i0 = torch.minimum(pos.long(), last)
    return inside, i0, torch.minimum(i0 + 1, last), (pos - i0.double()).float()


def _window(start: torch.Tensor, extent: int, frame: int) -> torch.Tensor:
    """Pixels ``[B, T, extent]`` of a window from ``start [B, T]``, moved left to fit the frame."""
    first = torch.minimum(start, torch.full_like(start, frame - extent))
    return first[..., None] + torch.arange(extent, device=start.device)


def _source_alpha(
    box: torch.Tensor, shape: torch.Tensor, soft: torch.Tensor, size: int
) -> torch.Tensor:
    """:func:`alpha_base` of each clip's source box ``[B, 4]``, placed in a ``[B, S, S]`` frame (0 outside)."""
    p = torch.arange(size, device=box.device)

    def dist(start: torch.Tensor, n: torch.Tensor) -> torch.Tensor:  # [B, S]
        i = p - start[:, None]
        return (i - (n[:, None] - 1) // 2).abs().double() / n[:, None].clamp(min=1).double()

    sw, sh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    dx, dy = dist(box[:, 0], sw)[:, None, :], dist(box[:, 1], sh)[:, :, None]
    shape, soft = shape.view(-1, 1, 1), soft.view(-1, 1, 1)
    rect = torch.maximum(dx, dy)
    dist = torch.where(shape == _RECTANGLE, rect, torch.where(shape == _ELLIPSE, (dx * dx + dy * dy).sqrt(), dx + dy))
    base = torch.where(shape == _RECTANGLE, torch.ones_like(dist), (dist < 0.5).double())
    edge = ((0.5 - dist) / (0.5 - soft)).clamp(0.0, 1.0)
    alpha = torch.where(soft > 0, base * edge, base).float()
    inside_x = (p >= box[:, 0, None]) & (p < box[:, 2, None])
    inside_y = (p >= box[:, 1, None]) & (p < box[:, 3, None])
    return torch.where(inside_y[:, :, None] & inside_x[:, None, :], alpha, 0.0)


def _paste_step(
    out: torch.Tensor,
    clip: torch.Tensor,
    boxes: torch.Tensor,
    visible: torch.Tensor,
    src: torch.Tensor,
    shape: torch.Tensor,
    soft: torch.Tensor,
    opacity: torch.Tensor,
) -> torch.Tensor:
    """Composite one patch per clip (``boxes [B, T, 4]`` etc.) onto ``out [B, 3, T, S, S]`` uint8.

    Each pixel of a visible box bilinearly samples the patch's source region of ``clip``
    (frame ``src``, before any pasting) and its alpha, then stores ``region*(1-a) + patch*a``
    truncated to uint8: the arithmetic of :func:`paste_patches`, per pixel. Work is done in one
    window per frame, as large as the step's largest box, which holds the frame's box.
    """
    batch, _, frames, size = out.shape[:4]
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    extent_x, extent_y = int(widths.max()), int(heights.max())
    if not (extent_x and extent_y):
        return out
    b_idx = torch.arange(batch, device=out.device)
    sbox = boxes[b_idx, src]  # [B, 4] box at the source frame
    alpha = _source_alpha(sbox, shape, soft, size)[:, None]
    source = torch.cat([clip[b_idx, :, src].float(), alpha], 1).flatten(2)  # [B, 4, S*S]
    sx, sy, sw, sh = sbox[:, 0], sbox[:, 1], sbox[:, 2] - sbox[:, 0], sbox[:, 3] - sbox[:, 1]
    sx, sy, sw, sh = (v[:, None].expand(-1, frames) for v in (sx, sy, sw, sh))  # [B, T]
    px, py = _window(boxes[..., 0], extent_x, size), _window(boxes[..., 1], extent_y, size)
    in_x, x0, x1, fx = _axis_taps(px, boxes[..., 0], widths, sw)
    in_y, y0, y1, fy = _axis_taps(py, boxes[..., 1], heights, sh)
    cols = [sx[..., None] + x for x in (x0, x1)]  # [B, T, X] source columns
    rows = [(sy[..., None] + y) * size for y in (y0, y1)]
    window = (batch, -1, frames, extent_y, extent_x)

    def sample(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:  # -> [B, 4, T, Y, X]
        index = (row[..., :, None] + col[..., None, :]).flatten(1)
        return source.gather(2, index[:, None].expand(-1, 4, -1)).view(window)

    top_left, top_right = sample(rows[0], cols[0]), sample(rows[0], cols[1])
    bottom_left, bottom_right = sample(rows[1], cols[0]), sample(rows[1], cols[1])
    wy, wx = fy[:, None, :, :, None], fx[:, None, :, None, :]
    left = top_left + (bottom_left - top_left) * wy
    right = top_right + (bottom_right - top_right) * wy
    patch = left + (right - left) * wx
    alpha = patch[:, 3:] * opacity[:, None, :, None, None]

    at = (py[..., :, None] * size + px[..., None, :]).flatten(2)[:, None].expand(-1, 3, -1, -1)
    flat = out.flatten(3)  # [B, 3, T, S*S]
    region = flat.gather(3, at).view(window)
    blend = region.float() * (1 - alpha)
    blend += patch[:, :3] * alpha
    mask = (in_y[..., :, None] & in_x[..., None, :] & visible[..., None, None])[:, None]
    pasted = torch.where(mask, blend.to(torch.uint8), region)
    return flat.scatter(3, at, pasted.flatten(3)).view(out.shape)


def paste_batch(clip: torch.Tensor, draws: Sequence[CtpDraw]) -> torch.Tensor:
    """PatchMask paste of every clip's plan onto ``[B, 3, T, S, S]`` uint8 (a new tensor).

    Patches go largest mean area first within each clip, as :func:`paste_patches`.
    """
    device = clip.device
    plans = [d.plan for d in draws]
    boxes = np.stack([p.boxes for p in plans])  # [B, N, T, 4]
    sides = boxes[..., 2:] - boxes[..., :2]
    area = sides[..., 0].mean(axis=2) * sides[..., 1].mean(axis=2)
    order = np.argsort(-area, axis=1, kind="stable")  # [B, N]

    def by_order(a: np.ndarray) -> list[torch.Tensor]:
        a = np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)
        return list(torch.from_numpy(np.ascontiguousarray(a)).to(device).unbind(1))

    steps = zip(
        by_order(boxes),
        by_order(np.stack([p.visible for p in plans])),
        by_order(np.stack([p.src for p in plans])),
        by_order(np.stack([p.shape for p in plans])),
        by_order(np.stack([p.soft_edge for p in plans])),
        by_order(np.stack([p.opacity for p in plans]).astype(np.float32)),
        strict=True,
    )
    out = clip
    for step in steps:
        out = _paste_step(out, clip, *step)
    return out


_HSV: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _hsv_on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's 8-bit HSV lookup tables (as :mod:`transforms`) on ``device``, cached."""
    if device not in _HSV:
        _HSV[device] = tuple(
            torch.from_numpy(a).to(device) for a in (HSV_S_TABLE, HSV_H_TABLE, HSV_RGB_FACTORS)
        )
    return _HSV[device]


def hue_saturation(clip: torch.Tensor, hue_lut: torch.Tensor, sat_lut: torch.Tensor) -> torch.Tensor:
    """:func:`adjust_hue_saturation` of ``[B, 3, ...]`` uint8 RGB with per-clip 256-entry LUTs ``[B, 256]``."""
    s_table, h_table, factors = _hsv_on(clip.device)
    r, g, b = clip.to(torch.int32).unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    num = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = h_table[(num + 255) * 256 + diff].long().flatten(1)
    s = s_table[v * 256 + diff].long().flatten(1)
    h = hue_lut.gather(1, h).clamp(max=179)
    s = sat_lut.gather(1, s)
    index = (h * 256 + s).view(v.shape)
    v = v.float()
    return torch.stack([torch.round(v * factors[c][index]) for c in range(3)], dim=1).to(torch.uint8)


def _levels(draws: Sequence[CtpDraw], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip hue and saturation LUTs ``[B, 256]`` (int64), as :func:`adjust_hue_saturation`."""
    levels = np.arange(256, dtype=np.float64)
    hue = [np.clip(np.rint(levels + d.hue_sat[0]), 0, 179) for d in draws]
    sat = [np.clip(np.rint(levels * d.hue_sat[1]), 0, 255) for d in draws]
    return tuple(torch.from_numpy(np.stack(a).astype(np.int64)).to(device) for a in (hue, sat))


def _per_frame(draws: Sequence[CtpDraw], field: str, default: float, frames: int) -> np.ndarray:
    """``[B, T]`` float32 brightness offsets or contrast factors, ``default`` where not drawn."""
    rows = [getattr(d, field) for d in draws]
    return np.stack([np.full(frames, default) if r is None else r for r in rows]).astype(np.float32)


def augment_crops(clip: torch.Tensor, draws: Sequence[CtpDraw]) -> dict[str, torch.Tensor]:
    """Every step after the scale and crop: ``[B, 3, T, S, S]`` uint8 crops -> a training batch.

    Returns, on the crops' device, ``imgs [B, 3, T, S, S]`` float32 normalised, ``gt_trajs
    [B, 3, T, 4]`` and ``gt_weights [B, 3, T]``; bitwise equal to :meth:`CtpTrainPreset.apply`
    from the same crops.
    """
    device = clip.device
    clip = paste_batch(clip, draws)
    coloured = [i for i, d in enumerate(draws) if d.hue_sat is not None]
    if coloured:
        index = torch.tensor(coloured, device=device)
        luts = _levels([draws[i] for i in coloured], device)
        clip = clip.index_copy(0, index, hue_saturation(clip[index], *luts))
    view = (-1, 1, clip.shape[2], 1, 1)
    offsets = torch.from_numpy(_per_frame(draws, "brightness", 0.0, clip.shape[2])).to(device)
    factors = torch.from_numpy(_per_frame(draws, "contrast", 1.0, clip.shape[2])).to(device)
    imgs = clip.float().add_(offsets.view(view)).clamp_(0, 255)  # +0 and *1 change nothing
    imgs.mul_(factors.view(view)).clamp_(0, 255)
    imgs.mul_(torch.from_numpy(NORM_SCALE).to(device).view(1, 3, 1, 1, 1))
    imgs.add_(torch.from_numpy(NORM_OFFSET).to(device).view(1, 3, 1, 1, 1))
    targets = [patch_targets(d.plan) for d in draws]
    trajs, weights = (torch.from_numpy(np.stack(a)).to(device) for a in zip(*targets, strict=True))
    return {"imgs": imgs, "gt_trajs": trajs, "gt_weights": weights}


def augment_ctp_batch(
    frames: Sequence[torch.Tensor], draws: Sequence[CtpDraw], *, crop_size: int = 112
) -> dict[str, torch.Tensor]:
    """Apply CtP draws to decoded clips ``[T, H, W, 3]`` uint8 RGB (all on one device).

    Returns, on that device, the batch of :func:`augment_crops`: ``imgs`` within
    :data:`TOLERANCE` of :meth:`CtpTrainPreset.apply`, ``gt_trajs``/``gt_weights`` equal.
    """
    crops = [scale_crop(f, d, crop_size) for f, d in zip(frames, draws, strict=True)]
    return augment_crops(torch.stack(crops), draws)
