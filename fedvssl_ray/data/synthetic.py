"""The built-in dataset: short videos whose class is a kind of motion, laid out like UCF-101.

Every video shows two textured objects (ellipses or rectangles with random colour textures)
over a background mosaic of small flat coloured cells (version 4: cells about a ninth of the
short side, smaller than a CtP patch; version 3's large cells hid every patch cut from inside one,
version 2's fine, muted texture every patch) that pans in a random direction. The class decides only
how the objects move, in one of four families, each with direction or speed variants:

* ``Translate<deg>``: both objects drift in the class's direction (wrapping around the frame);
* ``RotateCcw`` / ``RotateCw`` (``X2``, ``X3``... for faster variants): they spin in place;
* ``ZoomIn`` / ``ZoomOut``: they grow or shrink (the zoom restarts every 64 frames);
* ``OrbitCcw`` / ``OrbitCw``: they circle around a random centre.

Class ``c`` belongs to family ``c % 4`` and is variant ``c // 4`` of it. Object sizes, shapes,
textures, positions, orientations and the background are drawn from the same distributions for
every class, so a single frame does not reveal the class: a classifier must use motion, and
CtP's patch tracking has real moving texture to follow.

The videos are real files encoded by PyAV (MPEG-4 Part 2 in AVI, like UCF-101) in the UCF-101
release layout: ``raw/v_<Class>_gXX_cYY.avi`` (flat) plus ``ucfTrainTestlist/`` with
``classInd.txt``, ``trainlist01.txt`` and ``testlist01.txt``. Videos come in groups of
``CLIPS_PER_GROUP`` per class; the first ``test_groups`` groups of every class are the test set
(at least one group stays in the train set). The defaults, 14 videos per class and 4 test
groups, hold out 8 test videos per class (64 queries: one query is 1.6 points of R@1) while the
train set, which pretraining reads, stays at 6 videos per class. That test share is far above
UCF-101's 7/25 on purpose: retrieval and k-NN need enough queries to resolve a difference. Everything is drawn from ``numpy.random.Generator``
streams seeded per video by ``(seed, class, video)``, and encoding is single-threaded, so the
same seed gives identical files with the same PyAV build (and identical decoded frames).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import av
import numpy as np

from fedvssl_ray.data.prepare.common import PrepareError
from fedvssl_ray.data.prepare.ucf101 import prepare_ucf101

GENERATOR_VERSION = 4
STAMP_NAME = "synthetic.json"
FAMILIES = ("Translate", "Rotate", "Zoom", "Orbit")
CLIPS_PER_GROUP = 2
_ZOOM_PERIOD = 64
_OWNED = {
    "raw", "ucfTrainTestlist", "manifests", "annotations", "partitions", "eval-cache", STAMP_NAME,
}


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and seed of the built-in dataset (the defaults suit a 2-core CPU demo)."""

    num_classes: int = 8
    videos_per_class: int = 14
    frames: int = 48
    width: int = 160
    height: int = 120
    fps: int = 25
    seed: int = 0
    test_groups: int = 4  # leading groups per class in the test split; at most all but one

    @property
    def groups(self) -> int:
        """Groups of ``CLIPS_PER_GROUP`` videos per class (the last may be short)."""
        return math.ceil(self.videos_per_class / CLIPS_PER_GROUP)

    @property
    def num_test_groups(self) -> int:
        """``test_groups``, capped so that at least one group per class is left to train on."""
        return min(self.test_groups, self.groups - 1)

    def validate(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.videos_per_class < 2 * CLIPS_PER_GROUP:
            raise ValueError(
                f"videos_per_class must be >= {2 * CLIPS_PER_GROUP} (one test and one train "
                f"group of {CLIPS_PER_GROUP}), got {self.videos_per_class}"
            )
        if self.test_groups < 1:
            raise ValueError(f"test_groups must be >= 1, got {self.test_groups}")
        if self.frames < 2 or self.fps < 1:
            raise ValueError(f"need frames >= 2 and fps >= 1, got {self.frames}, {self.fps}")
        if self.width < 32 or self.height < 32 or self.width % 2 or self.height % 2:
            raise ValueError(
                f"width and height must be even and >= 32, got {self.width}x{self.height}"
            )


def class_names(num_classes: int) -> list[str]:
    """Names of the synthetic classes, in label order."""
    names = []
    for c in range(num_classes):
        family, variant = FAMILIES[c % 4], c // 4
        if family == "Translate":
            count = len(range(0, num_classes, 4))
            names.append(f"Translate{round(360 * variant / count) % 360:03d}")
            continue
        level = variant // 2 + 1
        suffix = f"X{level}" if level > 1 else ""
        if family == "Zoom":
            names.append(("ZoomIn" if variant % 2 == 0 else "ZoomOut") + suffix)
        else:
            names.append(family + ("Ccw" if variant % 2 == 0 else "Cw") + suffix)
    return names


def encode_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    codec: str = "mpeg4",
    fps: int = 25,
    gop: int = 12,
    bit_rate: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB uint8 frames ``[H, W, 3]`` into ``path`` (container chosen by its suffix).

    Single-threaded so the bytes are reproducible. ``gop`` is the key-frame interval; MJPEG
    gets full-range ``yuvj420p`` pixels, every other codec ``yuv420p``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iterator = iter(frames)
    first = next(iterator)
    height, width = first.shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1
        if bit_rate is not None:
            stream.codec_context.bit_rate = bit_rate
        for image in (first, *iterator):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def h264_encoder() -> str | None:
    """The name of an H.264 encoder this PyAV build has, or None."""
    for name in ("libx264", "libopenh264", "h264"):
        if name in av.codecs_available:
            try:
                av.CodecContext.create(name, "w")
            except (av.FFmpegError, ValueError):
                continue
            return name
    return None


def _smooth_texture(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Seamlessly periodic random colour texture (float32 0..255): bilinear coarse noise + grain."""
    ny, nx = max(2, round(height / cell)), max(2, round(width / cell))
    coarse = 255 * rng.random((ny, nx, 3), dtype=np.float32)
    ys = np.arange(height, dtype=np.float32) * (ny / height)
    xs = np.arange(width, dtype=np.float32) * (nx / width)
    y0, x0 = ys.astype(np.intp), xs.astype(np.intp)
    y1, x1 = (y0 + 1) % ny, (x0 + 1) % nx
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x1] * fx
    bottom = coarse[y1][:, x0] * (1 - fx) + coarse[y1][:, x1] * fx
    grain = 40 * rng.random((height, width, 3), dtype=np.float32) - 20
    return np.clip(top * (1 - fy) + bottom * fy + grain, 0, 255)


def _cell_texture(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Seamlessly periodic mosaic (float32 0..255): flat random colours in toroidal Voronoi
    cells about ``cell`` pixels across, lightly shaded and grained. Cells smaller than a CtP
    patch give every patch edges of its own, so it stands out wherever it is pasted (on a fine,
    muted texture, or inside one large flat cell, it is invisible and its trajectory
    unlearnable). One seed per square of a jittered grid: each pixel's nearest seed is among
    the 3x3 squares around its own, which keeps the cost linear in the pixels."""
    rows, cols = max(3, round(height / cell)), max(3, round(width / cell))
    step = np.array([height / rows, width / cols], np.float32)
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), axis=-1)
    seeds = (grid + rng.random((rows, cols, 2), dtype=np.float32)) * step  # [rows, cols, 2]
    colours = rng.uniform(25, 230, (rows, cols, 3)).astype(np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    home_r = (ys / step[0]).astype(np.intp) + np.zeros_like(xs, dtype=np.intp)  # [H, W]
    home_c = (xs / step[1]).astype(np.intp) + np.zeros_like(ys, dtype=np.intp)
    best = np.full((height, width), np.inf, np.float32)
    nearest = np.zeros((height, width, 2), np.intp)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r, c = (home_r + dr) % rows, (home_c + dc) % cols
            dy = _wrap(ys - seeds[r, c, 0], height)
            dx = _wrap(xs - seeds[r, c, 1], width)
            dist = dy * dy + dx * dx
            closer = dist < best
            best = np.where(closer, dist, best)
            nearest[closer] = np.stack([r[closer], c[closer]], axis=-1)
    shade = 1 - 0.25 * np.sqrt(best) / cell
    grain = 16 * rng.random((height, width, 3), dtype=np.float32) - 8
    return np.clip(colours[nearest[..., 0], nearest[..., 1]] * shade[..., None] + grain, 0, 255)


def _wrap(d: np.ndarray, period: float) -> np.ndarray:
    """Signed toroidal difference in [-period/2, period/2)."""
    return (d + period / 2) % period - period / 2


def render_video(spec: SyntheticSpec, label: int, video: int) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` uint8 RGB of video ``video`` of class ``label``."""
    rng = np.random.default_rng([spec.seed, label, video])
    t_count, height, width = spec.frames, spec.height, spec.width
    short = min(height, width)
    tau = np.arange(t_count, dtype=np.float32) - (t_count - 1) / 2
    family, variant = label % 4, label // 4
    variants = len(range(family, spec.num_classes, 4))
    sign = 1.0 if variant % 2 == 0 else -1.0
    level = 1.0 + 0.5 * (variant // 2)

    # Background: a periodic texture twice the frame size, panned at a random velocity
    # (independent of the class); tiled 2x2 so every frame is one contiguous window.
    bg = _cell_texture(rng, 2 * height, 2 * width, cell=short / 9)
    tiled = np.tile(bg, (2, 2, 1))
    pan_angle, pan_speed = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.6) * short / 120
    oy = np.round(tau * pan_speed * math.sin(pan_angle)).astype(np.intp) % (2 * height)
    ox = np.round(tau * pan_speed * math.cos(pan_angle)).astype(np.intp) % (2 * width)
    video_f = np.stack([tiled[y : y + height, x : x + width] for y, x in zip(oy, ox, strict=True)])

    ys = np.arange(height, dtype=np.float32)[None, :, None]
    xs = np.arange(width, dtype=np.float32)[None, None, :]
    for _ in range(2):
        size = rng.uniform(0.10, 0.18) * short  # half-extent in pixels
        aspect = rng.uniform(0.6, 1.0)
        half = np.array([size, size * aspect], dtype=np.float32)
        if rng.random() < 0.5:
            half = half[::-1].copy()
        is_ellipse = rng.random() < 0.5
        texture = _smooth_texture(rng, 32, 32, cell=4)
        theta = np.full(t_count, rng.uniform(0, 2 * math.pi), dtype=np.float32)
        # A random size for every class, so the zoom classes' changing sizes do not stand out.
        scale = np.full(t_count, math.exp(rng.uniform(-0.3, 0.3)), dtype=np.float32)
        centre = (
            np.stack([rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height])
            .astype(np.float32)[None, :]
            .repeat(t_count, axis=0)
        )
        if family == 0:  # translate
            angle = 2 * math.pi * variant / variants + rng.uniform(-0.15, 0.15)
            speed = rng.uniform(1.0, 1.5) * short / 120
            centre += tau[:, None] * speed * np.array([math.cos(angle), -math.sin(angle)])
        elif family == 1:  # rotate
            theta += sign * level * rng.uniform(0.05, 0.08) * tau
        elif family == 2:  # zoom, restarting every _ZOOM_PERIOD frames
            phase = _wrap(tau, _ZOOM_PERIOD)
            scale *= np.exp(sign * level * rng.uniform(0.012, 0.018) * phase).astype(np.float32)
        else:  # orbit
            radius = rng.uniform(0.15, 0.25) * short
            phi = rng.uniform(0, 2 * math.pi) + sign * level * rng.uniform(0.08, 0.12) * tau
            centre += radius * np.stack([np.cos(phi), -np.sin(phi)], axis=1)
        dx = _wrap(xs - centre[:, 0, None, None], width)  # [T, 1, W]
        dy = _wrap(ys - centre[:, 1, None, None], height)  # [T, H, 1]
        cos_t, sin_t = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        s = scale[:, None, None]
        u = (cos_t * dx + sin_t * dy) / (half[0] * s)  # object coordinates in [-1, 1]
        v = (-sin_t * dx + cos_t * dy) / (half[1] * s)
        if is_ellipse:
            dist = np.sqrt(u * u + v * v)
        else:
            dist = np.maximum(np.abs(u), np.abs(v))
        alpha = (1 - dist) * half.min() * s  # > 0 inside; ramps over ~1 px at the edge
        inside = np.nonzero(alpha > 0)  # blend only the object's pixels
        a = np.minimum(alpha[inside], 1)[:, None]
        ti = np.clip(((v[inside] + 1) * 15.5).astype(np.intp), 0, 31)
        tj = np.clip(((u[inside] + 1) * 15.5).astype(np.intp), 0, 31)
        video_f[inside] = video_f[inside] * (1 - a) + texture[ti, tj] * a
    return np.clip(video_f + 0.5, 0, 255).astype(np.uint8)


def video_name(class_name: str, video: int) -> str:
    """UCF-101 style file stem ``v_<Class>_gXX_cYY`` of a class's ``video``-th clip."""
    return f"v_{class_name}_g{video // CLIPS_PER_GROUP + 1:02d}_c{video % CLIPS_PER_GROUP + 1:02d}"


def generate_synthetic(out_dir: str | Path, spec: SyntheticSpec) -> Path:
    """Write ``out/raw/*.avi`` and ``out/ucfTrainTestlist/`` for ``spec``; returns ``out``."""
    spec.validate()
    out_dir = Path(out_dir)
    names = class_names(spec.num_classes)
    test_groups = spec.num_test_groups
    train_lines, test_lines = [], []
    for label, name in enumerate(names):
        for video in range(spec.videos_per_class):
            stem = video_name(name, video)
            encode_video(
                out_dir / "raw" / f"{stem}.avi",
                render_video(spec, label, video),
                codec="mpeg4",
                fps=spec.fps,
                bit_rate=spec.width * spec.height * spec.fps // 8,
            )
            if video // CLIPS_PER_GROUP < test_groups:
                test_lines.append(f"{name}/{stem}.avi")
            else:
                train_lines.append(f"{name}/{stem}.avi {label + 1}")
    lists = out_dir / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (lists / "trainlist01.txt").write_text("".join(f"{line}\n" for line in train_lines))
    (lists / "testlist01.txt").write_text("".join(f"{line}\n" for line in test_lines))
    return out_dir


def ensure_synthetic_dataset(
    out_dir: str | Path,
    *,
    num_classes: int = 8,
    videos_per_class: int = 14,
    frames: int = 48,
    width: int = 160,
    height: int = 120,
    fps: int = 25,
    seed: int = 0,
    test_groups: int = 4,
    workers: int | None = None,
    log: TextIO | None = sys.stderr,
) -> Path:
    """Generate and prepare the built-in dataset in ``out_dir`` unless it is already there.

    Idempotent: a ``synthetic.json`` stamp records the parameters; with a matching stamp and
    manifests present it returns at once. Otherwise it regenerates (replacing only the folders
    it owns) and prepares it like UCF-101 into ``out/manifests/{train,test}_split1.parquet``.
    Returns ``out_dir``.
    """
    spec = SyntheticSpec(
        num_classes, videos_per_class, frames, width, height, fps, seed, test_groups
    )
    spec.validate()
    out_dir = Path(out_dir)
    stamp_path = out_dir / STAMP_NAME
    stamp = {"version": GENERATOR_VERSION, **asdict(spec)}
    manifests = [out_dir / "manifests" / f"{s}_split1.parquet" for s in ("train", "test")]
    if stamp_path.is_file() and all(m.is_file() for m in manifests):
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                return out_dir
        except json.JSONDecodeError:
            pass
    if out_dir.exists():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in _OWNED)
        if foreign:
            raise PrepareError(
                f"{out_dir} holds files that are not a synthetic dataset ({foreign[:3]}); "
                "choose an empty or new folder"
            )
        for name in _OWNED - {STAMP_NAME}:
            shutil.rmtree(out_dir / name, ignore_errors=True)
        stamp_path.unlink(missing_ok=True)
    generate_synthetic(out_dir, spec)
    prepare_ucf101(out_dir / "raw", out_dir / "ucfTrainTestlist", out_dir, workers=workers, log=log)
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
    return out_dir


def refresh_synthetic_dataset(out_dir: str | Path, log: TextIO | None = sys.stderr) -> Path:
    """Regenerate a dataset made by an older generator version, with the sizes it was made with
    (a current one, or a folder without a stamp, is left as it is)."""
    out_dir = Path(out_dir)
    try:
        stamp = json.loads((out_dir / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return out_dir
    if stamp.get("version") == GENERATOR_VERSION:
        return out_dir
    fields = set(SyntheticSpec.__dataclass_fields__)
    if log is not None:
        print(f"{out_dir} was made by synthetic generator version {stamp.get('version')}; "
              f"regenerating it with version {GENERATOR_VERSION}", file=log)
    return ensure_synthetic_dataset(
        out_dir, log=log, **{k: v for k, v in stamp.items() if k in fields}
    )
