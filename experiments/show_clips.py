"""Draw a client's CtP training clips with their patch boxes, to see what the pretext task sees.

It builds the clips exactly as a client of the configured run would (same shards, seeds,
augmentations and PatchMask) and writes one PNG: a row per clip, every ``step``-th frame, each
pasted patch's box in its own colour. A patch that cannot be told from what it is pasted on
cannot be tracked, and CtP learns nothing from it.

examples:
  python experiments/show_clips.py out=clips.png                  # synthetic preset, client 0
  python experiments/show_clips.py --config ucf101 data.root=data/ucf101 client=3 round=2 out=u.png
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from common import config_parser, exit_on_error, fail, resolve_config, split_own_keys
from PIL import Image, ImageDraw

OWN_KEYS = {"out": "clips.png", "client": "0", "round": "1", "clips": "4", "step": "3",
            "zoom": "3"}
COLOURS = ("red", "lime", "cyan", "yellow", "magenta")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # the clips' normalisation (CTP.md §6)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def parse_args(argv: list[str] | None):
    parser = config_parser(__doc__)
    parser.usage = ("%(prog)s [out=FILE.png] [client=K] [round=R] [clips=N] [step=S] [zoom=Z] "
                    "[--config PRESET] [key=value ...]")
    args = parser.parse_intermixed_args(argv)
    given, args.overrides = split_own_keys(args.overrides, OWN_KEYS)
    own = {**OWN_KEYS, **given}
    try:
        numbers = {k: int(v) for k, v in own.items() if k != "out"}
    except ValueError as err:
        raise fail(f"client, round, clips, step and zoom take whole numbers: {err}") from None
    if min(numbers.values()) < 0 or min(numbers["clips"], numbers["step"], numbers["zoom"]) < 1:
        raise fail("clips, step and zoom must be >= 1; client and round >= 0")
    return args, own["out"], numbers


def render(imgs: np.ndarray, boxes: np.ndarray, step: int, zoom: int) -> Image.Image:
    """A grid: one row per clip ``imgs [N,3,T,S,S]`` (normalised), every ``step``-th frame, with
    the boxes ``[N,P,T,4]`` (xyxy pixels) drawn."""
    rows = []
    for clip, clip_boxes in zip(imgs, boxes, strict=True):
        pixels = np.clip((clip.transpose(1, 2, 3, 0) * STD + MEAN) * 255, 0, 255).astype(np.uint8)
        frames = []
        for t in range(0, pixels.shape[0], step):
            size = pixels.shape[1] * zoom
            frame = Image.fromarray(pixels[t]).resize((size, size), Image.NEAREST)
            draw = ImageDraw.Draw(frame)
            for p, box in enumerate(clip_boxes[:, t]):
                draw.rectangle([float(v) * zoom for v in box], outline=COLOURS[p % len(COLOURS)])
            frames.append(np.asarray(frame))
        rows.append(np.concatenate(frames, axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def collect(cfg, client: int, round_idx: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` clips of ``client``'s first local epoch in ``round_idx`` (as the
    training step takes them: ``data.augment_on=device`` batches are augmented here, on CPU)."""
    import torch

    from fedvssl_ray.data.shards import ClientShards
    from fedvssl_ray.training.local import to_device

    if client >= cfg.num_clients:
        raise fail(f"client={client}, but the run has num_clients={cfg.num_clients}")
    stream = exit_on_error(ClientShards.from_config, cfg).stream_factory()(client)
    imgs, boxes = [], []
    for batch in stream.batches(round_idx, 0):
        clips, trajs, _ = to_device(batch, torch.device("cpu"))
        imgs.append(clips.numpy())
        boxes.append(trajs.numpy())
        if sum(len(b) for b in imgs) >= count:
            break
    if not imgs:
        raise fail(f"client {client} has no clips to show")
    return np.concatenate(imgs)[:count], np.concatenate(boxes)[:count]


def main(argv: list[str] | None = None) -> int:
    args, out, numbers = parse_args(argv)
    cfg = resolve_config(args)
    imgs, boxes = collect(cfg, numbers["client"], numbers["round"], numbers["clips"])
    image = render(imgs, boxes, numbers["step"], numbers["zoom"])
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    image.save(partial, format="PNG")
    os.replace(partial, target)  # never a half-written picture
    print(f"{len(imgs)} clips of client {numbers['client']}, round {numbers['round']} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
