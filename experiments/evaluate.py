"""Evaluate a backbone's representation: retrieval R@k and k-NN top-1, test queries vs train gallery.

Features: the backbone's layer 4 (pretrain mode), average-pooled, over eval.num_clips uniform
clips per video with a centre crop, averaged per video; cosine similarity. The result is printed
and written as JSON next to the checkpoint (<stem>.eval-<task>.json), or for checkpoint=none
under runs/eval/ (out=FILE.json chooses the file). eval.max_videos=N evaluates a seeded subset
of N test queries against the whole train split.

examples:
  python experiments/evaluate.py checkpoint=none task=retrieval     # seeded random init, synthetic
  python experiments/evaluate.py checkpoint=runs/synthetic-20261125-101500/checkpoints/round-0020.npz task=all
  python experiments/evaluate.py --config ucf101 data.root=/data/ucf101 checkpoint=round-0020.npz task=knn
  python experiments/evaluate.py checkpoint=none task=knn --local   # one process, no Ray
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import config_parser, exit_on_error, resolve_config

from fedvssl_ray.checkpoint import save_json_atomic
from fedvssl_ray.config import Config, config_to_dict, format_config
from fedvssl_ray.data.manifest import ManifestError
from fedvssl_ray.evaluation import evaluate_backbone, format_result, parse_tasks
from fedvssl_ray.evaluation.splits import eval_videos
from fedvssl_ray.evaluation.weights import (
    BackboneCheckpointError,
    initial_backbone_weights,
    load_backbone_checkpoint,
)

OWN_KEYS = ("checkpoint", "task", "out")


def parse_args(argv: list[str] | None):
    parser = config_parser(__doc__)
    parser.usage = (
        "%(prog)s checkpoint=PATH|none [task=retrieval|knn|all] [out=FILE.json] "
        "[--config PRESET] [--local] [key=value ...]"
    )
    parser.add_argument(
        "--local", action="store_true",
        help="compute the features in this process without Ray (same numbers as the Ray path)",
    )
    args = parser.parse_intermixed_args(argv)
    own = {}
    rest = []
    for text in args.overrides:
        key, sep, value = text.partition("=")
        if sep and key in OWN_KEYS:
            own[key] = value
        else:
            rest.append(text)
    args.overrides = rest
    return args, own


def fail(message: str) -> SystemExit:
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(2)


def output_path(cfg: Config, checkpoint: str, task: str, out: str) -> Path:
    """Where the JSON goes: ``out=``, else next to the checkpoint, else under ``runs/eval/``."""
    if out:
        return Path(out)
    if checkpoint == "none":
        stem = f"none-{cfg.model.backbone}-seed{cfg.seed}-{cfg.data.dataset}"
        return Path("runs") / "eval" / f"{stem}.eval-{task}.json"
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.eval-{task}.json")


class EvalProgress:
    """Prints feature progress (videos done / total, rate, ETA), at most every few seconds."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.last = 0.0

    def __call__(self, event: dict) -> None:
        if event["type"] == "eval_start":
            print(f"features of {event['queries']} test and {event['gallery']} train videos",
                  flush=True)
            return
        done, total, elapsed = event["done"], event["total"], event["elapsed_s"]
        if done < total and elapsed - self.last < self.every_s:
            return
        self.last = elapsed
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        print(f"  {done}/{total} videos ({rate:.1f} videos/s, ETA {eta:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    launched = time.perf_counter()
    args, own = parse_args(argv)
    if "checkpoint" not in own or not own["checkpoint"]:
        raise fail("checkpoint=PATH|none is required (a .npz written by a run, or none)")
    try:
        tasks = parse_tasks(own.get("task", "all"))
    except ValueError as err:
        raise fail(str(err)) from None
    cfg = resolve_config(args)
    if args.print_config:
        print(format_config(cfg), end="")
        return 0
    checkpoint = own["checkpoint"]
    meta: dict = {}
    try:
        if checkpoint == "none":
            weights = initial_backbone_weights(cfg)
        else:
            weights, meta = load_backbone_checkpoint(checkpoint, cfg.model.backbone)
        exit_on_error(eval_videos, cfg)  # prepares the synthetic dataset; fails before Ray starts
    except (BackboneCheckpointError, ManifestError) as err:
        raise fail(str(err)) from None
    task_name = tasks[0] if len(tasks) == 1 else "all"
    out = output_path(cfg, checkpoint, task_name, own.get("out", ""))
    progress = EvalProgress()
    if args.local:
        result = evaluate_backbone(
            weights, cfg, tasks, max_videos=cfg.eval.max_videos, progress=progress
        )
    else:
        from fedvssl_ray.actors.cluster import start_ray
        from fedvssl_ray.actors.evaluation import evaluate_on_ray

        start_ray(cfg)
        result = exit_on_error(
            evaluate_on_ray, weights, cfg, tasks, max_videos=cfg.eval.max_videos,
            progress=progress,
        )
    result = {
        "checkpoint": checkpoint,
        "round": meta.get("round"),
        "engine": "local" if args.local else "ray",
        **result,
        "wall_s": round(time.perf_counter() - launched, 3),
        "config": config_to_dict(cfg),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_json_atomic(out, result)
    print(format_result(result))
    print(f"done in {result['wall_s']:.1f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
