"""Clip transforms of CtP pretraining, fine-tuning and evaluation (CTP.md §6, §7).

Geometric ops take decoded ``[T, H, W, 3]`` uint8 RGB clips; after the crop a clip is made
planar, ``[3, T, H, W]`` (:func:`to_planar`), and PatchMask and the colour ops work on planes
(uint8, or float32 once a brightness or contrast op has run, never re-quantised). Three
presets chain them in the reference order with one draw per clip from a
``np.random.Generator`` and return ``[3, T, S, S]`` float32 normalised with the ImageNet mean
and std, optionally straight into a caller's batch slot (``out=``).

Resizes are bilinear without antialiasing (OpenCV ``INTER_LINEAR``, as the reference), done by
torch on the whole clip in uint8; results may differ from OpenCV by 1. Frames are decoded
straight to RGB, so there is no BGR swap; hue and saturation use OpenCV's 8-bit HSV
arithmetic (H in 0..179), which gives the same HSV from RGB as from BGR.

For a crop size other than the reference 112, every spatial size (short edges, fixed resizes)
is multiplied by ``crop_size/112`` and rounded; at 112 the reference sizes are used exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from fedvssl_ray.data.ctp_patches import PatchPlan, paste_patches, patch_targets, sample_patch_plan
from fedvssl_ray.data.decode import scaled_size
from fedvssl_ray.data.keyframes import interpolate, key_frames

REFERENCE_CROP = 112
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAIN_SHORT_EDGES = (112, 128, 144)
FINETUNE_SIZES = ((149, 112), (171, 128), (192, 144))  # (W, H) for landscape frames
EVAL_SIZE = (171, 128)
DYNAMIC_KEY_PROBS = (0.7, 0.3)  # brightness/contrast key frames: [0, T-1] or [0, m, T-1]

NORM_SCALE = (1.0 / (255.0 * np.asarray(IMAGENET_STD))).astype(np.float32)
NORM_OFFSET = (-np.asarray(IMAGENET_MEAN) / np.asarray(IMAGENET_STD)).astype(np.float32)


def _scaled(size: int, crop_size: int) -> int:
    """A reference pixel size for a ``crop_size`` crop: unchanged at 112."""
    return size if crop_size == REFERENCE_CROP else round(size * crop_size / REFERENCE_CROP)


def resize_clip(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 -> ``[T, height, width, 3]`` uint8, bilinear, no antialias."""
    if frames.shape[1:3] == (height, width):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # channels-last view
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return y.permute(0, 2, 3, 1).numpy()


def fixed_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """A landscape (W, H) target, swapped for portrait frames (the aspect is forced)."""
    return size if width >= height else (size[1], size[0])


def to_planar(frames: np.ndarray) -> np.ndarray:
    """``[T, H, W, C]`` -> contiguous ``[C, T, H, W]`` (same dtype); colour ops work on planes."""
    return np.ascontiguousarray(frames.transpose(3, 0, 1, 2))


def _hsv_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's 8-bit HSV arithmetic as lookup tables.

    RGB -> HSV uses 12-bit fixed point: ``S = (diff*round(255*2^12/V) + 2^11) >> 12`` and
    ``H = (num*round(180*2^12/(6*diff)) + 2^11) >> 12`` (+180 if negative), tabulated over
    (V, diff) and (num, diff). HSV -> RGB multiplies V by a factor of (H, S) per channel.
    """
    shift, half = 12, 1 << 11
    k = np.arange(1, 256)
    sdiv = np.concatenate([[0], np.rint((255 << shift) / k)]).astype(np.int64)
    hdiv = np.concatenate([[0], np.rint((180 << shift) / (6.0 * k))]).astype(np.int64)
    diff = np.arange(256)
    s_table = (diff[None, :] * sdiv[:, None] + half) >> shift  # [V, diff]
    num = np.arange(-255, 5 * 255 + 1)
    h_table = (num[:, None] * hdiv[None, :] + half) >> shift  # [num + 255, diff]
    h_table = np.where(h_table < 0, h_table + 180, h_table)

    h = np.arange(180, dtype=np.float32)[:, None] * np.float32(6.0 / 180.0)
    sat = np.arange(256, dtype=np.float32)[None, :] * np.float32(1.0 / 255.0)
    sector, f = np.floor(h).astype(np.int64) % 6, h - np.floor(h)
    tab = np.stack(np.broadcast_arrays(np.ones_like(sat), 1 - sat, 1 - sat * f, 1 - sat * (1 - f)))
    # For each of the 6 hue sectors, which of (v, p, q, t) gives R, G and B.
    pick = np.array([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])
    rows, cols = np.arange(180)[:, None], np.arange(256)[None, :]
    factors = np.stack([tab[p[sector], rows, cols] for p in pick]).reshape(3, -1)
    return s_table.astype(np.uint8).ravel(), h_table.astype(np.uint8).ravel(), factors


HSV_S_TABLE, HSV_H_TABLE, HSV_RGB_FACTORS = _hsv_tables()


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """``[3, ...]`` uint8 RGB -> uint8 HSV as OpenCV's ``COLOR_RGB2HSV`` (H 0..179, S, V 0..255)."""
    r, g, b = (c.astype(np.int16) for c in rgb)
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    num = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = HSV_H_TABLE.take((num + 255).astype(np.int32) * 256 + diff)
    s = HSV_S_TABLE.take(v.astype(np.int32) * 256 + diff)
    return np.stack([h, s, v.astype(np.uint8)])


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """``[3, ...]`` uint8 HSV (H 0..179) -> uint8 RGB as OpenCV's ``COLOR_HSV2RGB``."""
    index = np.minimum(hsv[0], 179).astype(np.int32) * 256 + hsv[1]
    v = hsv[2].astype(np.float32)
    out = np.empty(hsv.shape, np.uint8)
    for c in range(3):
        np.rint(v * HSV_RGB_FACTORS[c].take(index), out=out[c], casting="unsafe")
    return out


def adjust_hue_saturation(clip: np.ndarray, hue_shift: float, sat_factor: float) -> np.ndarray:
    """Shift 8-bit hue (no wrap, clipped to 0..179) and scale saturation of ``[3, ...]`` RGB.

    A float input is first rounded to uint8, as the reference does; the result is uint8.
    """
    rgb = clip if clip.dtype == np.uint8 else np.clip(np.rint(clip), 0, 255).astype(np.uint8)
    hsv = rgb_to_hsv(rgb)
    levels = np.arange(256, dtype=np.float64)
    hsv[0] = np.clip(np.rint(levels + hue_shift), 0, 179).astype(np.uint8).take(hsv[0])
    hsv[1] = np.clip(np.rint(levels * sat_factor), 0, 255).astype(np.uint8).take(hsv[1])
    return hsv_to_rgb(hsv)


def _float_target(clip: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``clip`` as float32 in ``out`` (which may be ``clip`` itself), or in a new array."""
    if out is None:
        return clip.astype(np.float32)
    if out is not clip:
        np.copyto(out, clip)
    return out


def dynamic_brightness(
    clip: np.ndarray, offsets: np.ndarray, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Add a per-frame offset ``[T]`` to ``[C, T, H, W]`` and clip to [0, 255]; float32 result.

    ``out`` (float32, may be ``clip``) receives the result; by default a new array does.
    """
    out = _float_target(clip, out)
    out += offsets.astype(np.float32)[None, :, None, None]
    return np.clip(out, 0, 255, out=out)


def dynamic_contrast(
    clip: np.ndarray, factors: np.ndarray, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Multiply ``[C, T, H, W]`` by a per-frame factor ``[T]`` (about 0), clip to [0, 255]."""
    out = _float_target(clip, out)
    out *= factors.astype(np.float32)[None, :, None, None]
    return np.clip(out, 0, 255, out=out)


def normalize(clip: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """``[3, T, H, W]`` in 0..255 -> float32 ``(x/255 - mean)/std`` per channel (into ``out``)."""
    out = _float_target(clip, out)
    out *= NORM_SCALE[:, None, None, None]
    out += NORM_OFFSET[:, None, None, None]
    return out


def _keyed_values(
    rng: np.random.Generator, num_frames: int, low: float, high: float, *, log: bool = False
) -> np.ndarray:
    """Per-frame values: U(low, high) at KF(T, (0.7, 0.3)) key frames, random profiles between.

    With ``log`` the key values are ``exp(U(low, high))`` factors.
    """
    keys = key_frames(rng, DYNAMIC_KEY_PROBS, num_frames)
    values = rng.uniform(low, high, size=len(keys))
    return interpolate(keys, np.exp(values) if log else values, "random", rng)


class CtpDraw(NamedTuple):
    """Every random choice of one CtP training clip; :meth:`CtpTrainPreset.apply` needs nothing else."""

    size: tuple[int, int]  # (W, H) after the short-edge scale
    x: int  # crop offset in the scaled frame
    y: int
    flip: bool
    plan: PatchPlan
    hue_sat: tuple[float, float] | None  # (hue shift, saturation factor) or None
    brightness: np.ndarray | None  # [T] float64 offsets or None
    contrast: np.ndarray | None  # [T] float64 factors or None


class CtpTrainPreset:
    """CtP pretraining augmentation (CTP.md §6): scale, crop, flip, PatchMask, colour, normalise.

    ``__call__(frames [T, H, W, 3] uint8 RGB, rng)`` returns ``imgs [3, T, S, S]`` float32,
    ``gt_trajs [3, T, 4]`` float32 (integer-valued xyxy) and ``gt_weights [3, T]`` ones. It is
    :meth:`draw` (every random number, in the reference order) then :meth:`apply` (pixels), so
    the pixel work can also run elsewhere (:mod:`fedvssl_ray.data.device_augment`).
    """

    def __init__(
        self,
        *,
        crop_size: int = 112,
        short_edges: Sequence[int] = PRETRAIN_SHORT_EDGES,
        flip_p: float = 0.5,
        hue_sat_p: float = 0.25,
        hue_delta: float = 12.0,
        sat_delta: float = 0.1,
        brightness_p: float = 0.5,
        brightness_delta: float = 30.0,
        contrast_p: float = 0.5,
        contrast_delta: float = 0.12,
        patch_speed: float = 1.0,
    ) -> None:
        self.crop_size = crop_size
        self.patch_speed = patch_speed
        self.short_edges = tuple(_scaled(s, crop_size) for s in short_edges)
        self.flip_p = flip_p
        self.hue_sat_p, self.hue_delta, self.sat_delta = hue_sat_p, hue_delta, sat_delta
        self.brightness_p, self.brightness_delta = brightness_p, brightness_delta
        self.contrast_p, self.contrast_delta = contrast_p, contrast_delta

    def draw(self, num_frames: int, height: int, width: int, rng: np.random.Generator) -> CtpDraw:
        """All random draws for a ``[T, H, W]`` clip, in the order the reference makes them."""
        short = self.short_edges[rng.integers(len(self.short_edges))]
        size = scaled_size(width, height, short)
        x = int(rng.integers(0, size[0] - self.crop_size + 1))
        y = int(rng.integers(0, size[1] - self.crop_size + 1))
        flip = bool(rng.random() < self.flip_p)
        plan = sample_patch_plan(
            rng, num_frames, self.crop_size, self.crop_size, speed=self.patch_speed
        )
        hue_sat = brightness = contrast = None
        u = rng.random()
        if 0 < u < self.hue_sat_p:
            hue = rng.uniform(-self.hue_delta, self.hue_delta)
            hue_sat = hue, float(np.exp(rng.uniform(-self.sat_delta, self.sat_delta)))
        if rng.random() < self.brightness_p:
            d = self.brightness_delta
            brightness = _keyed_values(rng, num_frames, -d, d)
        if rng.random() < self.contrast_p:
            d = self.contrast_delta
            contrast = _keyed_values(rng, num_frames, -d, d, log=True)
        return CtpDraw(size, x, y, flip, plan, hue_sat, brightness, contrast)

    def apply(
        self, frames: np.ndarray, params: CtpDraw, *, out: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The pixels of one training sample from its draws (no randomness); ``out`` as in ``__call__``."""
        x, y, crop = params.x, params.y, self.crop_size
        clip = resize_clip(frames, *params.size)[:, y : y + crop, x : x + crop]
        if params.flip:
            clip = clip[:, :, ::-1]
        clip = paste_patches(to_planar(clip), params.plan)
        trajs, weights = patch_targets(params.plan)
        if params.hue_sat is not None:
            clip = adjust_hue_saturation(clip, *params.hue_sat)
        imgs = _float_target(clip, out)  # from here on, every step works in place
        if params.brightness is not None:
            dynamic_brightness(imgs, params.brightness, out=imgs)
        if params.contrast is not None:
            dynamic_contrast(imgs, params.contrast, out=imgs)
        return {"imgs": normalize(imgs, out=imgs), "gt_trajs": trajs, "gt_weights": weights}

    def __call__(
        self, frames: np.ndarray, rng: np.random.Generator, *, out: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """One training sample; ``out`` (``[3, T, S, S]`` float32) receives ``imgs`` if given."""
        return self.apply(frames, self.draw(*frames.shape[:3], rng), out=out)


class FinetuneTrainPreset:
    """Fine-tuning augmentation (CTP.md §7): fixed resize, flip, brightness, contrast, hue/sat, crop.

    ``__call__(frames [T, H, W, 3] uint8 RGB, rng)`` returns ``[3, T, S, S]`` float32. The colour
    ops are pointwise, so the crop is taken before them (same result, less work); the draws
    keep the reference order.
    """

    def __init__(
        self,
        *,
        crop_size: int = 112,
        sizes: Sequence[tuple[int, int]] = FINETUNE_SIZES,
        flip_p: float = 0.35,
        brightness_p: float = 0.2,
        brightness_delta: float = 32.0,
        contrast_p: float = 0.2,
        contrast_delta: float = 0.2,
        hue_sat_p: float = 0.2,
        hue_delta: float = 12.0,
        sat_delta: float = 0.1,
    ) -> None:
        self.crop_size = crop_size
        self.sizes = tuple((_scaled(w, crop_size), _scaled(h, crop_size)) for w, h in sizes)
        self.flip_p = flip_p
        self.brightness_p, self.brightness_delta = brightness_p, brightness_delta
        self.contrast_p, self.contrast_delta = contrast_p, contrast_delta
        self.hue_sat_p, self.hue_delta, self.sat_delta = hue_sat_p, hue_delta, sat_delta

    def __call__(
        self, frames: np.ndarray, rng: np.random.Generator, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """One training clip; ``out`` (``[3, T, S, S]`` float32) receives it if given."""
        height, width = frames.shape[1:3]
        new_w, new_h = fixed_size(width, height, self.sizes[rng.integers(len(self.sizes))])
        flip = rng.random() < self.flip_p
        brightness = contrast = hue_sat = None
        if 0 < rng.random() < self.brightness_p:
            brightness = rng.uniform(-self.brightness_delta, self.brightness_delta)
        if 0 < rng.random() < self.contrast_p:
            contrast = np.exp(rng.uniform(-self.contrast_delta, self.contrast_delta))
        if 0 < rng.random() < self.hue_sat_p:
            hue = rng.uniform(-self.hue_delta, self.hue_delta)
            hue_sat = hue, np.exp(rng.uniform(-self.sat_delta, self.sat_delta))
        x = int(rng.integers(0, new_w - self.crop_size + 1))
        y = int(rng.integers(0, new_h - self.crop_size + 1))

        clip = resize_clip(frames, new_w, new_h)
        if flip:
            clip = clip[:, :, ::-1]
        clip = to_planar(clip[:, y : y + self.crop_size, x : x + self.crop_size])
        num_frames = clip.shape[1]
        if brightness is not None:
            clip = dynamic_brightness(clip, np.full(num_frames, brightness))
        if contrast is not None:
            in_place = clip if clip.dtype == np.float32 else None
            clip = dynamic_contrast(clip, np.full(num_frames, contrast), out=in_place)
        if hue_sat is not None:
            clip = adjust_hue_saturation(clip, *hue_sat)
        return normalize(clip, out=out)


class EvalPreset:
    """Test transform (CTP.md §7): resize to exactly 171x128 (portrait 128x171), centre crop.

    ``__call__(frames [T, H, W, 3] uint8 RGB)`` returns ``[3, T, S, S]`` float32; the crop starts
    at ``((W-S)//2, (H-S)//2)``, i.e. (29, 8) at the reference sizes.
    """

    def __init__(self, *, crop_size: int = 112, size: tuple[int, int] = EVAL_SIZE) -> None:
        self.crop_size = crop_size
        self.size = (_scaled(size[0], crop_size), _scaled(size[1], crop_size))

    def __call__(self, frames: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """One test clip; ``out`` (``[3, T, S, S]`` float32) receives it if given."""
        height, width = frames.shape[1:3]
        new_w, new_h = fixed_size(width, height, self.size)
        x, y = (new_w - self.crop_size) // 2, (new_h - self.crop_size) // 2
        clip = resize_clip(frames, new_w, new_h)[:, y : y + self.crop_size, x : x + self.crop_size]
        return normalize(to_planar(clip), out=out)
