"""Ray Tune sweep of federated pretraining runs (default: the paper's six FedVSSL variants).

The default grid is strategy.alpha in {0, 0.9, 1} x strategy.beta in {0, 1}: FedAvg, FedAvg+SWA,
FedAvg+loss-based (0.9), the same with SWA, loss-based and loss-based+SWA. Any key can be swept
with --grid key=v1,v2 (repeatable; it replaces the default grid). Each trial is a whole run
(driver, client actors, evaluation actor) in its own placement group, reporting every round;
trials are ranked by --metric, the newest evaluation of the global (eval.every must be set: the
presets' default is used, else every 5 rounds). The sweep directory holds results.csv,
heatmap.png (the metric over the first two swept keys), curves.png and one run directory per
trial (runs/<name>). An interrupted sweep resumes with --resume SWEEP_DIR: finished trials are
kept, unfinished ones go on from their last complete round.

examples:
  python experiments/sweep.py                                   # six variants, synthetic data
  python experiments/sweep.py --grid strategy.alpha=0,1 --grid client.lr=0.01,0.05 rounds=10
  python experiments/sweep.py --config ucf101 data.root=/data/ucf101 eval.every=5 eval.num_gpus=0.2 \
      --sweep-dir /shared/sweeps/ucf101 --scheduler asha
  python experiments/sweep.py --resume runs/sweeps/synthetic-20261201-101500
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from common import config_parser, exit_on_error, fail, resolve_config
from ray import tune

from fedvssl_ray.checkpoint import save_json_atomic
from fedvssl_ray.config import Config, ConfigError, config_to_dict, flatten, override
from fedvssl_ray.tune import trial_name
from fedvssl_ray.tune.trainable import BASE_KEY, SWEEP_DIR_KEY

DEFAULT_GRID = {"strategy.alpha": ["0", "0.9", "1"], "strategy.beta": ["0", "1"]}
METRICS = ("R@1", "R@5", "knn_top1", "relative_loss", "mean_loss")
SWEEP_FILE = "sweep.json"


def parse_args(argv: list[str] | None):
    parser = config_parser(__doc__, argv, default_preset="synthetic-sweep")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="sweep KEY over the values (repeatable); default: the six variants")
    parser.add_argument("--metric", default="R@1", choices=METRICS,
                        help="what trials are ranked (and stopped early) by (default: R@1)")
    parser.add_argument("--scheduler", choices=["none", "asha"], default="none",
                        help="asha: stop weak trials early (grace: one evaluation period)")
    parser.add_argument("--sweep-dir", help="default: runs/sweeps/<preset>-<timestamp>")
    parser.add_argument("--max-concurrent", type=int, default=0,
                        help="trials at once (default: as many as the cluster holds)")
    parser.add_argument("--resume", metavar="SWEEP_DIR",
                        help="finish an interrupted sweep (its saved settings are used)")
    return parser.parse_args(argv)


def parse_grid(base: Config, texts: list[str]) -> dict[str, list]:
    """``key=v1,v2`` texts as typed values per key, each checked through the config schema."""
    grid = {}
    for text in texts or [f"{k}={','.join(v)}" for k, v in DEFAULT_GRID.items()]:
        key, sep, values = text.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid {text!r} is not of the form key=v1,v2")
        typed = []
        for value in values.split(","):
            cfg = override(base, **{key.strip().replace(".", "__"): value.strip()})
            typed.append(flatten(config_to_dict(cfg))[key.strip()])
        grid[key.strip()] = typed
    return grid


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resume:
        sweep_dir = Path(args.resume)
        try:
            saved = json.loads((sweep_dir / SWEEP_FILE).read_text())
        except (OSError, ValueError) as err:
            print(f"error: {sweep_dir} is not a sweep directory ({err})", file=sys.stderr)
            return 2
        from fedvssl_ray.config import config_from_dict

        base = exit_on_error(config_from_dict, saved["base"])
        grid, metric, scheduler = saved["grid"], saved["metric"], saved["scheduler"]
    else:
        base = resolve_config(args)
        if not base.eval.every:
            base = override(base, eval__every=5)
        grid = exit_on_error(parse_grid, base, args.grid)
        metric, scheduler = args.metric, args.scheduler
        stem = Path(args.config).stem
        sweep_dir = Path(args.sweep_dir or f"runs/sweeps/{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        if args.print_config:
            print(json.dumps({"grid": grid, "metric": metric, "base": config_to_dict(base)},
                             indent=2))
            return 0
        if (sweep_dir / SWEEP_FILE).exists():
            print(f"error: {sweep_dir} already holds a sweep; finish it with --resume "
                  f"{sweep_dir} or choose another --sweep-dir", file=sys.stderr)
            return 2
        try:
            (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
            save_json_atomic(sweep_dir / SWEEP_FILE, {"base": config_to_dict(base), "grid": grid,
                                                      "metric": metric, "scheduler": scheduler})
        except OSError as err:
            raise fail(f"--sweep-dir {sweep_dir}: cannot write {err.filename or sweep_dir} "
                       f"({err.strerror or err}); choose a writable folder") from None
    return run_sweep(base, grid, metric, scheduler, sweep_dir.resolve(), args)


def run_sweep(base: Config, grid: dict, metric: str, scheduler: str, sweep_dir: Path,
              args) -> int:
    import ray

    from fedvssl_ray.actors.cluster import start_ray
    from fedvssl_ray.tune import (
        collect_results,
        fit_to_cluster,
        format_table,
        param_space,
        with_trial_resources,
        write_outputs,
    )

    exit_on_error(start_ray, base)
    # trials run in their own working directories: give them the dataset's absolute path
    base = override(base, data__root=str(Path(base.data.root).resolve()))
    resources = ray.cluster_resources()
    base = exit_on_error(fit_to_cluster, base, resources.get("CPU", 0.0),
                         resources.get("GPU", 0.0))
    print(f"each trial: {base.client.num_actors} client actor(s) at client.num_cpus="
          f"{base.client.num_cpus:g}, client.num_gpus={base.client.num_gpus:g}", flush=True)
    mode = "min" if metric in ("relative_loss", "mean_loss") else "max"
    trainable = with_trial_resources()
    experiment = str(sweep_dir / "tune")
    if args.resume and tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:
        asha = None
        if scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            asha = ASHAScheduler(time_attr="round", max_t=base.rounds,
                                 grace_period=max(1, base.eval.every), reduction_factor=2)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(base, grid, sweep_dir),
            tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=asha,
                                        max_concurrent_trials=args.max_concurrent or None),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=0,
                                      callbacks=[TrialProgress(metric)]),
        )
    results = tuner.fit()
    keys = list(grid)
    rows = collect_results(sweep_dir, keys)
    print(format_table(rows, keys, _table_metric(metric)))
    for path in write_outputs(sweep_dir, rows, keys, _table_metric(metric)):
        print(f"wrote {path}")
    failed = [r for r in results if r.error]
    for result in failed:
        print(f"trial {result.path} failed: {result.error}", file=sys.stderr)
    return 1 if failed else 0


class TrialProgress(tune.Callback):
    """One line per trial report and per finished trial (Tune's own tables are off)."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def on_trial_result(self, iteration, trials, trial, result, **info):
        print(f"{_name(trial)}: round {result['round']}, relative loss "
              f"{_fmt(result.get('relative_loss'))}, {self.metric} {_fmt(result.get(self.metric))}"
              f" (evaluated round {result.get('eval_round')})", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        done = sum(t.status == "TERMINATED" for t in trials) + 1
        print(f"{_name(trial)}: finished ({done}/{len(trials)} trials)", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"{_name(trial)}: FAILED ({trial.error_file})", flush=True)


def _name(trial) -> str:
    return trial_name({k: v for k, v in trial.config.items() if k not in (BASE_KEY, SWEEP_DIR_KEY)})


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _table_metric(metric: str) -> str:
    """The results-table column that ranks trials for ``metric``."""
    return {"R@1": "best_R@1", "knn_top1": "last_knn_top1"}.get(metric, "best_R@1")


if __name__ == "__main__":
    sys.exit(main())
