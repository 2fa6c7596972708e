"""Command-line pieces shared by the entry points: preset + ``key=value`` overrides -> Config."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from fedvssl_ray.config import (
    DEFAULT_PRESET,
    Config,
    ConfigError,
    describe_keys,
    load_config,
    preset_names,
)


def config_parser(
    description: str, argv: list[str] | None = None, default_preset: str = DEFAULT_PRESET
) -> argparse.ArgumentParser:
    """An argument parser with ``--config PRESET_OR_FILE`` and positional overrides; its help
    lists every key with the value the chosen preset gives it."""
    preset = _preset_in(sys.argv[1:] if argv is None else argv, default_preset)
    try:
        shown = load_config(preset)
    except ConfigError:  # reported properly when the arguments are parsed
        preset, shown = default_preset, load_config(default_preset)
    epilog = (
        f"presets: {', '.join(preset_names())} (default {default_preset}), or a .yaml/.json file\n"
        "override any key as key=value with dotted keys, e.g.\n"
        "  strategy.alpha=1 rounds=100 client.num_gpus=1\n\n"
        f"keys (values of the {preset!r} preset):\n{describe_keys(shown)}"
    )
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=default_preset, metavar="PRESET_OR_FILE",
        help="preset name or config file (default: %(default)s)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def _preset_in(argv: list[str], default: str) -> str:
    """The ``--config`` value among the arguments, before they are parsed (for ``--help``)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=default)
    return pre.parse_known_args(argv)[0].config


def split_own_keys(
    overrides: list[str], keys: Iterable[str]
) -> tuple[dict[str, str], list[str]]:
    """The ``key=value`` arguments a script takes itself (``keys``, e.g. ``checkpoint=``), and
    the rest, which are config overrides."""
    keys = set(keys)
    own, rest = {}, []
    for text in overrides:
        key, sep, value = text.partition("=")
        if sep and key in keys:
            own[key] = value
        else:
            rest.append(text)
    return own, rest


def resolve_config(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    """Load the config named by ``args``; a config mistake exits 2 with its message."""
    try:
        return load_config(args.config, [*args.overrides, *(extra or [])])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean a user mistake (config, data, run directory, checkpoint, cluster
    access): their message says what to change, so they end a command with exit 2 and no
    traceback. Imports no torch: this runs before anything heavy."""
    from fedvssl_ray.actors.cluster import RayConnectError
    from fedvssl_ray.checkpoint import CheckpointError
    from fedvssl_ray.data.manifest import ManifestError
    from fedvssl_ray.data.partition import PartitionError
    from fedvssl_ray.data.prepare.common import PrepareError
    from fedvssl_ray.data.shards import DatasetMissingError, ShardsError
    from fedvssl_ray.run_dir import RunDirError

    return (ConfigError, RunDirError, DatasetMissingError, ShardsError, PrepareError,
            PartitionError, ManifestError, CheckpointError, RayConnectError)


def exit_on_error(fn, *args, **kwargs):
    """Call ``fn``; a user mistake (see :func:`user_errors`) exits 2 with its message."""
    try:
        return fn(*args, **kwargs)
    except user_errors() as err:
        raise fail(str(err)) from None


def fail(message: str) -> SystemExit:
    """Print ``error: message`` to stderr; the caller raises the returned exit-2 SystemExit."""
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(2)


class ProgressPrinter:
    """Prints progress events of a run: rounds, clients done, losses, ETA, final summary."""

    def __init__(self, cfg: Config, launched: float) -> None:
        self.cfg = cfg
        self.launched = launched
        self.round_times: list[float] = []
        self.first_round_s: float | None = None

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "shards":
            print(event["summary"], flush=True)
        elif kind == "actors_ready":
            print(f"{event['num_actors']} client actor(s) ready "
                  f"({time.perf_counter() - self.launched:.1f} s after launch)", flush=True)
        elif kind == "resumed":
            print(f"resuming after round {event['round']}", flush=True)
        elif kind == "round_start":
            if self.first_round_s is None:
                self.first_round_s = time.perf_counter() - self.launched
            print(f"round {event['round']}/{event['rounds']}: clients {event['clients']} "
                  f"(started {time.perf_counter() - self.launched:.1f} s after launch)", flush=True)
        elif kind == "client_done":
            print(f"  client {event['client']:>4} done ({event['done']}/{event['total']}) "
                  f"loss {event['loss']:.4f}", flush=True)
        elif kind == "client_failed":
            print(f"  client {event['client']:>4} FAILED: {short_failure(event['error'])}",
                  flush=True)
        elif kind == "retry":
            print(f"  only {event['accepted']} update(s) accepted (min_clients="
                  f"{self.cfg.min_clients}); retrying the round once", flush=True)
        elif kind == "eval_done":
            print(f"  evaluation of {_which(event['round'])}: {format_eval(event['result'])}"
                  + _versus(event), flush=True)
        elif kind == "eval_failed":
            print(f"  evaluation of {_which(event['round'])} FAILED (the run goes on): "
                  f"{event['result']['error']}", flush=True)
        elif kind == "round_end":
            self.round_times.append(event["round_s"])
            left = event["rounds"] - event["round"]
            eta = left * sum(self.round_times) / len(self.round_times)
            loss = "n/a" if event["mean_loss"] is None else f"{event['mean_loss']:.4f}"
            if event.get("relative_loss") is not None:
                loss += f" ({event['relative_loss']:.3f} of the zero predictor's)"
            print(f"round {event['round']}/{event['rounds']} {event['status']}: mean loss {loss}, "
                  f"{event['round_s']:.1f} s, ETA {eta:.0f} s", flush=True)

    def final(self, summary: dict) -> None:
        losses = ", ".join(f"{x:.4f}" if x is not None else "n/a"
                           for x in summary["loss_per_round"])
        first = f"{self.first_round_s:.1f}" if self.first_round_s is not None else "n/a"
        print(f"done: {summary['rounds']} rounds in {time.perf_counter() - self.launched:.1f} s "
              f"(first round started {first} s after launch)")
        print(f"mean CtP loss per round: {losses}")
        relative = [x for x in summary.get("relative_loss_per_round", []) if x is not None]
        if relative:
            print(f"relative to the all-zero predictor on the same clips (1.0 = nothing learnt): "
                  f"round 1 {relative[0]:.3f}, last round {relative[-1]:.3f}")
        evaluation = summary.get("eval") or {}
        if evaluation.get("last"):
            last, initial = evaluation["last"], evaluation.get("initial") or {}
            print(f"representation on the test split ({last['queries']} queries, "
                  f"{last['gallery']} gallery videos):")
            print(f"  {'global backbone after round ' + str(last['round']):<32}{format_eval(last)}")
            if initial and "error" not in initial:
                print(f"  {'same backbone at random init':<32}{format_eval(initial)}")
        print(f"final global checkpoint: {summary['checkpoint']}")
        print(f"metrics: {Path(summary['run_dir']) / 'metrics.jsonl'}; "
              f"summary: {Path(summary['run_dir']) / 'summary.json'}")


def short_failure(error: str) -> str:
    """A client's failure in one line: Ray's text on a dead actor loses the actor id and the
    boilerplate (the full text is in metrics.jsonl); anything else is shown as it is."""
    prefix = "client actor died: "
    if not error.startswith(prefix):
        return error
    reason = re.sub(r"The actor [0-9a-f]+ is (unavailable|dead): ", "", error[len(prefix):])
    reason = reason.replace(" The task may or may not have been executed on the actor.", "")
    return (f"its actor process died ({reason.rstrip('.')}); the actor restarts and the client "
            "rejoins a later round")


def format_eval(result: dict) -> str:
    """Retrieval and k-NN figures of one evaluation, in percent."""
    return (f"R@1 {_pct(result.get('R@1'))}, R@5 {_pct(result.get('R@5'))}, "
            f"k-NN top-1 {_pct(result.get('knn_top1'))}")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _which(round_idx: int) -> str:
    return "the random init" if round_idx == 0 else f"the global after round {round_idx}"


def _versus(event: dict) -> str:
    initial = event.get("initial")
    if event["round"] == 0 or not initial or "error" in initial:
        return ""
    return f" (random init: R@1 {_pct(initial['R@1'])}, k-NN {_pct(initial['knn_top1'])})"
