"""Fine-tune a backbone on a labelled video dataset with Ray Train, then test it (10 clips).

The classifier (R3D backbone in torchvision strides, average pool, dropout, linear) starts from
checkpoint=PATH (a pretraining run's checkpoints/round-NNNN.npz, a CtP-named torch state dict,
or with trust_pickle=true a Flower baseline / authors' pickled .npz) or from scratch
(checkpoint=none), and is trained on finetune.dataset (default: data.*) by finetune.workers Ray
Train workers (DDP). Each epoch goes to the run directory (metrics.jsonl, checkpoints/
epoch-NNNN.npz, state/ for resume); at the end the final model is tested on the test split
(top-1, top-5, mean class accuracy) and test.json and summary.json are written.

examples:
  python experiments/finetune.py checkpoint=runs/synthetic-20261125-101500/checkpoints/round-0010.npz
  python experiments/finetune.py checkpoint=none finetune.workers=2
  python experiments/finetune.py --config ucf101 data.root=/data/ucf101 checkpoint=round-0020.npz
  python experiments/finetune.py --resume runs/finetune-synthetic-20261125-120000
  python experiments/finetune.py checkpoint=none --engine plain    # one process, no Ray
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import config_parser, exit_on_error, fail, resolve_config

from fedvssl_ray.checkpoint import CheckpointError, save_json_atomic
from fedvssl_ray.config import Config, ConfigError, apply_overrides, format_config, override
from fedvssl_ray.data.manifest import ManifestError
from fedvssl_ray.evaluation.weights import BackboneCheckpointError, expected_shapes
from fedvssl_ray.run_dir import RunDir

ALIASES = {"checkpoint": "finetune.checkpoint", "trust_pickle": "finetune.trust_pickle"}
RESUMABLE = ("finetune.epochs", "finetune.workers", "finetune.num_cpus", "finetune.num_gpus",
             "finetune.torch_threads", "finetune.decode_workers", "finetune.test",
             "finetune.trust_pickle", "eval.", "ray.")


def parse_args(argv: list[str] | None):
    parser = config_parser(__doc__, argv)
    parser.usage = ("%(prog)s checkpoint=PATH|none [trust_pickle=true] [--config PRESET] "
                    "[--resume RUN_DIR] [--engine ray|plain] [key=value ...]")
    parser.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue an interrupted fine-tuning from its last complete epoch; overrides may "
             "change only finetune.epochs, finetune resources, finetune.test, eval.* and ray.*",
    )
    parser.add_argument(
        "--engine", choices=["ray", "plain"], default="ray",
        help="ray: Ray Train workers fed by Ray Data (default); plain: one process, no Ray",
    )
    args = parser.parse_intermixed_args(argv)
    args.overrides = [_alias(text) for text in args.overrides]
    return args


def _alias(text: str) -> str:
    key, sep, value = text.partition("=")
    return f"{ALIASES[key]}={value}" if sep and key in ALIASES else text


def resolve_run(args) -> tuple[Config, object, bool]:
    """(config, run directory, resuming)."""
    from fedvssl_ray.training.finetune import FinetuneRunDir

    if args.resume:
        run = FinetuneRunDir(args.resume)
        saved = exit_on_error(run.read_config)
        for text in args.overrides:
            key = text.partition("=")[0]
            if not key.startswith(RESUMABLE):
                raise fail(f"{key} cannot change on resume (only {', '.join(RESUMABLE)})")
        cfg = exit_on_error(apply_overrides, saved, args.overrides)
        if exit_on_error(run.epochs_done) == 0 and not run.state_path.parent.is_dir():
            raise fail(f"{run.path} is not a fine-tuning run directory")
        return cfg, run, True
    cfg = resolve_config(args)
    if not cfg.finetune.checkpoint:
        raise fail("checkpoint=PATH|none is required (the backbone to start from, or none)")
    if not cfg.run_dir:
        stem = Path(args.config).stem
        cfg = override(cfg, run_dir=f"runs/finetune-{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    exit_on_error(RunDir(cfg.run_dir).check_new)
    return cfg, FinetuneRunDir(cfg.run_dir), False


def load_init(cfg: Config):
    """The backbone to start from (None: from scratch), checked before anything starts."""
    from fedvssl_ray.checkpoint import load_backbone_any
    from fedvssl_ray.evaluation.weights import check_backbone_weights

    path = cfg.finetune.checkpoint
    if path == "none":
        return None
    if not Path(path).is_file():
        raise fail(f"{path}: no such checkpoint file")
    shapes = expected_shapes(cfg.model.backbone)
    try:
        arrays, _ = load_backbone_any(
            path, shapes, trust_pickle=cfg.finetune.trust_pickle,
            warn=lambda text: print(f"WARNING: {text}", file=sys.stderr),
        )
        return check_backbone_weights(arrays, cfg.model.backbone, path)
    except (CheckpointError, BackboneCheckpointError) as err:
        raise fail(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    from fedvssl_ray.training.finetune import checkpoint_meta, train_videos

    launched = time.perf_counter()
    args = parse_args(argv)
    cfg, run, resuming = resolve_run(args)
    if args.print_config:
        print(format_config(cfg), end="")
        return 0
    # a resume from a saved epoch needs no initial weights (nor the file they came from)
    init = None if resuming and exit_on_error(run.epochs_done) > 0 else load_init(cfg)
    try:
        videos, class_names = exit_on_error(train_videos, cfg)
    except ManifestError as err:
        raise fail(str(err)) from None
    meta = checkpoint_meta(cfg, len(class_names), class_names)
    exit_on_error(run.files.write_config if resuming else run.create, cfg)
    done = run.epochs_done()
    print(f"run directory: {run.path}")
    print(f"fine-tuning {cfg.model.backbone} from {cfg.finetune.checkpoint} on "
          f"{len(videos)} videos, {len(class_names)} classes; epochs {done + 1}-"
          f"{cfg.finetune.epochs} ({args.engine}, {cfg.finetune.workers} worker(s))", flush=True)
    try:
        result = run_all(args.engine, cfg, run, videos, class_names, meta, init, launched)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with --resume {run.path}", file=sys.stderr)
        return 130
    print_summary(result)
    return 0


def run_all(engine, cfg, run, videos, class_names, meta, init, launched) -> dict:
    """Train the remaining epochs, then test the final model; writes test.json, summary.json."""
    from fedvssl_ray.evaluation.classification import evaluate_classifier

    train_started = time.perf_counter()
    if engine == "plain":
        from fedvssl_ray.training.finetune import run_epochs_local

        run_epochs_local(cfg, run, videos, len(class_names), meta, init, progress=print_epoch)
        train_s = time.perf_counter() - train_started
        test = evaluate_classifier(final_weights(run, cfg), cfg) if cfg.finetune.test else None
        return finish(cfg, run, train_s, test, launched)
    import ray

    from fedvssl_ray.actors.cluster import start_ray
    from fedvssl_ray.actors.evaluation import RayExtractor
    from fedvssl_ray.actors.finetune import run_on_ray_train

    started = not ray.is_initialized()  # a caller's Ray (e.g. a test's) is used as it is
    if started:
        exit_on_error(start_ray, cfg)
    try:
        exit_on_error(run_on_ray_train, cfg, run, videos, len(class_names), meta, init)
        train_s = time.perf_counter() - train_started
        test = None
        if cfg.finetune.test:
            print("testing the final model (10-clip protocol)", flush=True)
            test_cfg = cfg
            if cfg.eval.num_gpus == 0 and cfg.finetune.num_gpus > 0:  # test where it trained
                test_cfg = override(cfg, eval__num_gpus=cfg.finetune.num_gpus)
            test = exit_on_error(evaluate_classifier, final_weights(run, cfg), test_cfg,
                                 extractor=exit_on_error(RayExtractor, test_cfg))
    finally:
        if started:
            ray.shutdown()
    return finish(cfg, run, train_s, test, launched)


def final_weights(run, cfg: Config) -> dict:
    from fedvssl_ray.checkpoint import load_arrays

    path = run.checkpoint_path(cfg.finetune.epochs)
    if not path.is_file():
        raise fail(f"{path}: the final checkpoint is missing; the training did not finish")
    return load_arrays(path)[0]


def finish(cfg: Config, run, train_s: float, test: dict | None, launched: float) -> dict:
    records = run.files.read_metrics()
    checkpoint = str(run.checkpoint_path(cfg.finetune.epochs))
    if test is not None:
        test = {"checkpoint": checkpoint, **test}
        save_json_atomic(run.test_path, test)
    summary = {
        "run_dir": str(run.path), "epochs": cfg.finetune.epochs, "workers": cfg.finetune.workers,
        "init": cfg.finetune.checkpoint, "loss_per_epoch": [r.get("loss") for r in records],
        "train_top1_per_epoch": [r.get("train_top1") for r in records],
        "checkpoint": checkpoint, "train_s": round(train_s, 3),
        "test": None if test is None else {k: test.get(k) for k in
                                           ("top1", "top5", "mean_class_accuracy", "videos")},
        "wall_s": round(time.perf_counter() - launched, 3),
    }
    run.write_summary(summary)
    return {"summary": summary, "test": test}


def print_epoch(event: dict) -> None:
    loss = "n/a" if event["loss"] is None else f"{event['loss']:.4f}"
    acc = "n/a" if event["train_top1"] is None else f"{100 * event['train_top1']:.1f}%"
    print(f"epoch {event['epoch']}/{event['epochs']}: loss {loss}, train top-1 {acc}, "
          f"lr {event['lr']:g}, {event['epoch_s']:.1f} s", flush=True)


def print_summary(result: dict) -> None:
    from fedvssl_ray.evaluation.classification import format_test_result

    summary, test = result["summary"], result["test"]
    if test is not None:
        print(format_test_result(test))
        print(f"test: top-1 {100 * test['top1']:.2f}%, top-5 {100 * test['top5']:.2f}%, "
              f"mean class accuracy {100 * test['mean_class_accuracy']:.2f}%")
    print(f"done: {summary['epochs']} epochs, training {summary['train_s']:.1f} s, "
          f"wall {summary['wall_s']:.1f} s; final checkpoint {summary['checkpoint']}")
    print(f"metrics: {Path(summary['run_dir']) / 'metrics.jsonl'}; "
          f"summary: {Path(summary['run_dir']) / 'summary.json'}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
