"""Federated CtP pretraining of a video backbone (FedVSSL) on Ray.

examples:
  python experiments/pretrain.py                        # built-in synthetic data, local Ray
  python experiments/pretrain.py --config ucf101 data.root=/data/ucf101 strategy.alpha=1
  python experiments/pretrain.py --resume runs/synthetic-20261125-101500 rounds=8
  python experiments/pretrain.py --engine plain         # same rounds in this process, no Ray
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import (
    ProgressPrinter,
    config_parser,
    exit_on_error,
    fail,
    resolve_config,
    user_errors,
)

from fedvssl_ray.config import Config, apply_overrides, format_config, override
from fedvssl_ray.data.shards import ClientShards
from fedvssl_ray.run_dir import RunDir, check_resume_config
from fedvssl_ray.training.rounds import RunStopped


def parse_args(argv: list[str] | None):
    parser = config_parser(__doc__, argv)
    parser.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue an interrupted run from its last complete round; overrides may change "
             "only rounds, timeouts, min_clients, ray.*, client resources and threads, "
             "data.loader and eval.* (e.g. rounds=N to extend it)",
    )
    parser.add_argument(
        "--engine", choices=["ray", "plain"], default="ray",
        help="ray: client actors driven by a driver actor (default); plain: the same rounds "
             "sequentially in this process, the reference for correctness and speed",
    )
    return parser.parse_args(argv)


def resolve_run(args) -> tuple[Config, RunDir]:
    """The config and run directory: a new run, or a saved one to resume (checked first:
    a resume that cannot continue the same run exits 2 and changes nothing)."""
    if args.resume:
        run_dir = RunDir(args.resume)
        saved = exit_on_error(run_dir.read_config)
        extra = ["resume=true", f"run_dir={run_dir.path}"]
        cfg = exit_on_error(apply_overrides, saved, [*args.overrides, *extra])
        exit_on_error(check_resume_config, saved, cfg)
        return cfg, run_dir
    cfg = resolve_config(args)
    if cfg.resume and not cfg.run_dir:
        print("config error: resume=true needs run_dir=... (or use --resume RUN_DIR)",
              file=sys.stderr)
        raise SystemExit(2)
    if not cfg.run_dir:
        stem = Path(args.config).stem
        cfg = override(cfg, run_dir=f"runs/{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    return cfg, RunDir(cfg.run_dir)


def rounds_left(cfg: Config, run_dir: RunDir) -> int:
    """Rounds a resume still has to run; exits 2 (nothing changed) when the committed state is
    unusable or ``rounds`` is below the rounds already done."""
    done = exit_on_error(run_dir.committed_round)
    if cfg.rounds < done:
        print(f"error: {run_dir.path} already has {done} complete rounds and rounds={cfg.rounds} "
              f"is fewer; nothing was changed. Give rounds={done + 1} or more to extend it.",
              file=sys.stderr)
        raise SystemExit(2)
    return cfg.rounds - done


def main(argv: list[str] | None = None) -> int:
    launched = time.perf_counter()
    args = parse_args(argv)
    cfg, run_dir = resolve_run(args)
    if args.print_config:
        print(format_config(cfg), end="")
        return 0
    if cfg.resume and rounds_left(cfg, run_dir) == 0:
        print(f"{run_dir.path} already has all {cfg.rounds} rounds; nothing to do (give "
              f"rounds=N to extend it)")
        return 0
    if not cfg.resume:
        exit_on_error(run_dir.check_new)
    # the dataset and the clients' partition are checked before anything is written or started
    shards = exit_on_error(ClientShards.from_config, cfg)
    exit_on_error(run_dir.write_config if cfg.resume else run_dir.create, cfg)
    progress = ProgressPrinter(cfg, launched)
    print(f"run directory: {run_dir.path}")
    try:
        summary = run(args.engine, cfg, run_dir, progress, shards)
    except RunStopped as err:
        print(f"run stopped: {err}", file=sys.stderr)
        return 1
    except user_errors() as err:  # e.g. the disk filled up: the message says what to resume
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with --resume {run_dir.path}", file=sys.stderr)
        return 130
    progress.final(summary)
    return 0


def run(engine: str, cfg: Config, run_dir: RunDir, progress: ProgressPrinter,
        shards: ClientShards) -> dict:
    """Run every round with the chosen engine; a stopped run raises :class:`RunStopped`, a
    user mistake found on the way (a full disk, a cluster that refuses us) its own error."""
    if engine == "plain":
        from fedvssl_ray.training.plain import run_plain

        progress({"type": "shards", "summary": shards.summary()})
        return run_plain(cfg, run_dir, shards.stream_factory(), progress)
    import ray

    from fedvssl_ray.actors.cluster import start_ray
    from fedvssl_ray.actors.driver import run_on_ray, start_driver

    exit_on_error(start_ray, cfg)
    try:
        return run_on_ray(exit_on_error(start_driver, cfg, run_dir.path), progress)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, (RunStopped, *user_errors())):
            raise err.cause from None
        raise
    finally:  # stop the processes a local Ray started before this one exits, whatever happened
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
