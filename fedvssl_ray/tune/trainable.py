"""A federated pretraining as a Ray Tune trial: the trainable, its resources, and its metrics.

Each trial is a whole run of the engine (driver, client actors, evaluation actor) whose actors
live in the trial's placement group: one bundle for the trial process, one per client actor and
one for the evaluation actor, so trials run side by side when the cluster has room and queue
when it has not. Every round is reported with ``tune.report``; the run directory (one per trial,
named by its swept values, under the sweep directory) is the trial's checkpoint: a restored
sweep resumes an unfinished trial from its last complete round.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from ray import tune

from ..config import Config, ConfigError, config_from_dict, config_to_dict, override
from ..run_dir import RunDir

TRIAL_CPUS = 0.1  # the trial process only launches the run and relays its progress
BASE_KEY = "base_config"
SWEEP_DIR_KEY = "sweep_dir"
EVAL_KEYS = ("R@1", "R@5", "knn_top1")


def trial_name(params: Mapping[str, Any]) -> str:
    """A readable, stable name from the swept values (``strategy.alpha=0.9,strategy.beta=1``)."""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={params[key]}" for key in sorted(params)) or "base"


def trial_config(base: Config, params: Mapping[str, Any], sweep_dir: str | Path) -> Config:
    """The run a trial makes: ``base`` with the swept ``params`` and the trial's own run
    directory; a fixed actor count and thread count, since trials share the cluster."""
    cfg = override(base, **{key.replace(".", "__"): value for key, value in params.items()})
    actors = cfg.client.num_actors or cfg.clients_per_round
    threads = cfg.client.torch_threads or max(1, int(cfg.client.num_cpus))
    run_dir = Path(sweep_dir) / "runs" / trial_name(params)
    return override(cfg, client__num_actors=actors, client__torch_threads=threads,
                    run_dir=str(run_dir))


def trial_resources(cfg: Config) -> tune.PlacementGroupFactory:
    """The placement group of one trial: the trial process, each client actor, and the
    evaluation actor (resources that are zero take no bundle)."""
    c, e = cfg.client, cfg.eval
    actor = _bundle(c.num_cpus, c.num_gpus)
    bundles = [{"CPU": TRIAL_CPUS}] + ([actor] * (c.num_actors or cfg.clients_per_round)
                                      if actor else [])
    if e.every and (evaluator := _bundle(e.num_cpus, e.num_gpus)):
        bundles.append(evaluator)
    return tune.PlacementGroupFactory(bundles)


def fit_to_cluster(base: Config, cpus: float, gpus: float) -> Config:
    """``base`` with ``client.num_actors`` chosen, when automatic, so that one trial fits the
    cluster (at most one actor per sampled client); a trial that cannot fit at all is refused,
    since Tune would keep it pending for ever."""
    c, e = base.client, base.eval
    if not c.num_actors:
        left_cpus = cpus - TRIAL_CPUS - (e.num_cpus if e.every else 0.0)
        left_gpus = gpus - (e.num_gpus if e.every else 0.0)
        fits = [base.clients_per_round]
        if c.num_cpus > 0:
            fits.append(int(left_cpus // c.num_cpus))
        if c.num_gpus > 0:
            fits.append(int(left_gpus // c.num_gpus))
        base = override(base, client__num_actors=max(1, min(fits)))
    need: dict[str, float] = {}
    for bundle in trial_resources(base).bundles:
        for key, value in bundle.items():
            need[key] = need.get(key, 0.0) + value
    have = {"CPU": cpus, "GPU": gpus}
    short = {k: v for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
    if short:
        raise ConfigError(
            f"one trial needs {need} (client.num_actors={base.client.num_actors} at "
            f"client.num_cpus={c.num_cpus:g}, client.num_gpus={c.num_gpus:g}, plus the trial "
            f"and the evaluation actor) but the cluster has {have}: lower client.num_actors, "
            "client.num_cpus / num_gpus or eval.num_cpus / num_gpus"
        )
    return base


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}


def round_metrics(event: Mapping[str, Any], evals: Mapping[int, Mapping[str, Any]]) -> dict:
    """What a trial reports after a round: loss, relative loss, and the newest evaluation
    (before the first one, the random init's, round 0, so the ranking metric is always there:
    0.0 only while even that one is still running)."""
    metrics = {"round": event["round"], "mean_loss": event["mean_loss"],
               "relative_loss": event.get("relative_loss")}
    done = [r for r, result in evals.items() if "error" not in result]
    latest = max(done) if done else None
    figures = evals[latest] if latest is not None else {}
    metrics.update({"eval_round": latest, **{k: figures.get(k) or 0.0 for k in EVAL_KEYS}})
    return metrics


def pretrain_trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: one federated pretraining, a report per round.

    ``config`` holds ``base_config`` (a :func:`config_to_dict` dict), ``sweep_dir`` and the
    swept dotted keys (e.g. ``strategy.alpha``); :func:`param_space` builds it. Give Tune
    :func:`with_trial_resources` (this function with its placement group).
    """
    from ..actors.driver import run_on_ray, start_driver

    params = {k: v for k, v in config.items() if k not in (BASE_KEY, SWEEP_DIR_KEY)}
    cfg = trial_config(config_from_dict(config[BASE_KEY]), params, config[SWEEP_DIR_KEY])
    run_dir = RunDir(cfg.run_dir)
    if run_dir.state_path.is_file() or run_dir.metrics_path.is_file():
        cfg = override(cfg, resume=True)  # a restored sweep: go on from the last full round
        run_dir.write_config(cfg)
    else:
        run_dir.create(cfg)
    evals: dict[int, dict[str, Any]] = run_dir.read_evals()
    reported = {"round": 0}

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] in ("eval_done", "eval_failed"):
            evals[event["round"]] = event["result"]
        elif event["type"] == "round_end":
            reported.update(round_metrics(event, evals))
            tune.report(dict(reported))

    driver = start_driver(cfg, run_dir.path)
    try:
        summary = run_on_ray(driver, on_event)
    finally:
        ray.kill(driver)  # ended: stop it now rather than with the trial's process
    final = round_metrics({"round": summary["rounds"], "mean_loss": summary["final_loss"],
                           "relative_loss": (summary["relative_loss_per_round"] or [None])[-1]},
                          run_dir.read_evals())
    if final != {k: reported.get(k) for k in final}:  # the last evaluation came after the round
        tune.report(final)


def with_trial_resources() -> Any:
    """:func:`pretrain_trainable` wrapped with the placement group each trial needs (from its
    own config, so a sweep over resources gets the right bundles)."""

    def trainable(config: dict[str, Any]) -> None:
        pretrain_trainable(config)

    def resources(config: dict[str, Any]) -> tune.PlacementGroupFactory:
        params = {k: v for k, v in config.items() if k not in (BASE_KEY, SWEEP_DIR_KEY)}
        base = config_from_dict(config[BASE_KEY])
        return trial_resources(trial_config(base, params, config[SWEEP_DIR_KEY]))

    trainable.__name__ = "fedvssl_pretrain"
    return tune.with_resources(trainable, resources)


def param_space(base: Config, grid: Mapping[str, list[Any]], sweep_dir: str | Path) -> dict:
    """Tune's search space: the base config, the sweep directory and a grid axis per key."""
    space: dict[str, Any] = {BASE_KEY: config_to_dict(base), SWEEP_DIR_KEY: str(sweep_dir)}
    space.update({key: tune.grid_search(list(values)) for key, values in grid.items()})
    return space
