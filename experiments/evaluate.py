"""Evaluate a backbone's representation (retrieval R@k, k-NN top-1), or test a fine-tuned classifier.

task=test scores a fine-tuning checkpoint (checkpoints/epoch-NNNN.npz of experiments/finetune.py)
on the test split: 10 uniform clips x 1 centre crop per video, clip logits averaged, softmax;
top-1, top-5 and mean class accuracy. Without --config the fine-tuning run's own config.json
(next to its checkpoints/) is used, so the dataset, clip length and crop match; overrides apply
on top. The result goes to <stem>.test.json next to the checkpoint.

Features: the backbone's layer 4 (pretrain mode), average-pooled, over eval.num_clips uniform
clips per video with a centre crop, averaged per video; cosine similarity. The result is printed
and written as JSON next to the checkpoint (<stem>.eval-<task>.json), or for checkpoint=none
under runs/eval/ (out=FILE.json chooses the file). eval.max_videos=N evaluates a seeded subset
of N test queries against the whole train split.

examples:
  python experiments/evaluate.py checkpoint=none task=retrieval     # seeded random init, synthetic
  python experiments/evaluate.py checkpoint=runs/synthetic-20261125-101500/checkpoints/round-0010.npz task=all
  python experiments/evaluate.py --config ucf101 data.root=/data/ucf101 checkpoint=round-0020.npz task=knn
  python experiments/evaluate.py checkpoint=none task=knn --local   # one process, no Ray
  python experiments/evaluate.py task=test checkpoint=runs/finetune-synthetic-20261125-120000/checkpoints/epoch-0012.npz
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import config_parser, exit_on_error, fail, resolve_config, split_own_keys

from fedvssl_ray.checkpoint import save_json_atomic
from fedvssl_ray.config import (
    DEFAULT_PRESET,
    Config,
    apply_overrides,
    config_to_dict,
    format_config,
)
from fedvssl_ray.data.manifest import ManifestError
from fedvssl_ray.evaluation import evaluate_backbone, format_result, parse_tasks
from fedvssl_ray.evaluation.splits import eval_videos
from fedvssl_ray.evaluation.weights import (
    BackboneCheckpointError,
    initial_backbone_weights,
    load_backbone_checkpoint,
)
from fedvssl_ray.run_dir import RunDir

OWN_KEYS = ("checkpoint", "task", "out")


def parse_args(argv: list[str] | None):
    parser = config_parser(__doc__)
    parser.usage = (
        "%(prog)s checkpoint=PATH|none [task=retrieval|knn|all|test] [out=FILE.json] "
        "[--config PRESET] [--local] [key=value ...]"
    )
    parser.add_argument(
        "--local", action="store_true",
        help="compute the features in this process without Ray (same numbers as the Ray path)",
    )
    args = parser.parse_intermixed_args(argv)
    own, args.overrides = split_own_keys(args.overrides, OWN_KEYS)
    return args, own


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
            if event["gallery"]:
                print(f"features of {event['queries']} test and {event['gallery']} train videos",
                      flush=True)
            else:
                print(f"scoring {event['queries']} test videos", flush=True)
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
    if own.get("task") == "test":
        return main_test(args, own, launched)
    try:
        tasks = parse_tasks(own.get("task", "all"))
    except ValueError as err:
        raise fail(f"{err} (or test, for a fine-tuned classifier)") from None
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

        exit_on_error(start_ray, cfg)
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


def test_config(args, checkpoint: str) -> tuple[Config, str]:
    """The config of a test: the fine-tuning run's own (when --config is not given and the
    checkpoint sits in a run's checkpoints/), else the preset; overrides on top."""
    run_config = Path(checkpoint).resolve().parent.parent / "config.json"
    if args.config != DEFAULT_PRESET or not run_config.is_file():
        return resolve_config(args), args.config
    saved = exit_on_error(RunDir(run_config.parent).read_config)
    return exit_on_error(apply_overrides, saved, args.overrides), str(run_config)


def main_test(args, own: dict, launched: float) -> int:
    """task=test: the 10-clip test of a fine-tuned classifier."""
    from fedvssl_ray.evaluation.classification import evaluate_classifier, format_test_result
    from fedvssl_ray.evaluation.weights import load_classifier_checkpoint

    checkpoint = own.get("checkpoint", "")
    if not checkpoint or checkpoint == "none":
        raise fail("task=test needs checkpoint=PATH of a fine-tuned classifier "
                   "(checkpoints/epoch-NNNN.npz of experiments/finetune.py)")
    cfg, config_source = test_config(args, checkpoint)
    if args.print_config:
        print(format_config(cfg), end="")
        return 0
    try:
        weights, meta = load_classifier_checkpoint(checkpoint, cfg.model.backbone)
    except BackboneCheckpointError as err:
        raise fail(str(err)) from None
    out = Path(own["out"]) if own.get("out") else Path(checkpoint).with_suffix(".test.json")
    print(f"config: {config_source}", flush=True)
    if args.local:
        result = exit_on_error(evaluate_classifier, weights, cfg, progress=EvalProgress())
    else:
        from fedvssl_ray.actors.cluster import start_ray
        from fedvssl_ray.actors.evaluation import RayExtractor

        exit_on_error(start_ray, cfg)
        result = exit_on_error(evaluate_classifier, weights, cfg, progress=EvalProgress(),
                               extractor=exit_on_error(RayExtractor, cfg))
    result = {
        "checkpoint": checkpoint, "epoch": meta.get("epoch"),
        "engine": "local" if args.local else "ray", **result,
        "wall_s": round(time.perf_counter() - launched, 3), "config": config_to_dict(cfg),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_json_atomic(out, result)
    print(format_test_result(result))
    print(f"done in {result['wall_s']:.1f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
