"""Joining or starting Ray, and whether the cluster can serve the config.

Resources are checked before any actor is created, so a config that asks for resources the
cluster does not have stops at once with the key to change, instead of waiting for ever on
Ray's "No available node types can fulfill resource request".
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

from ..config import Config, ConfigError

NodeResources = Mapping[str, float]


class RayConnectError(RuntimeError):
    """The existing Ray cluster cannot be joined; the message says what to set."""


AUTH_HELP = (
    "the cluster uses token authentication and this process sent no valid token. Set, in the "
    "shell that runs this command (and the one that runs `ray job submit`), what the cluster "
    "was started with: export RAY_AUTH_MODE=token, and the cluster's token in "
    "~/.ray/auth_token, RAY_AUTH_TOKEN_PATH=<file> or RAY_AUTH_TOKEN=<token> (`ray "
    "get-auth-token` on the head node prints it). A cluster started with RAY_AUTH_MODE=disabled "
    "needs RAY_AUTH_MODE=disabled here too"
)


REPORTED_BY_THE_RUN = (
    "A worker died or was killed while executing a task by an unexpected system error",
    "Failed to send wait complete",
)
"""Starts of the Ray lines this process leaves out: the raylet's paragraph on a worker process
that died, and its RPC error to the dead process that follows. The run reports the failure in
one line of its own (``client N FAILED: ...``, the reason in metrics.jsonl; a dead driver,
evaluation or fine-tuning worker ends in an error that names it)."""


def start_ray(cfg: Config) -> None:
    """Join ``ray.address`` (or the job's cluster under ``ray job submit``), else start locally
    with the dashboard off; a cluster that refuses us raises :class:`RayConnectError`.

    Ray's notice that a new local cluster turned token authentication on (printed when
    ``RAY_AUTH_MODE`` is unset; the README explains what it means for later clusters) and its
    lines in :data:`REPORTED_BY_THE_RUN` are left out of this process's output; every other Ray
    message, warnings and errors included, is printed as before.
    """
    import logging

    import ray
    from ray._private import worker as ray_worker

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is not None and not hasattr(printer, "reported_by_the_run"):

        def print_to_stdstream(data, *args, **kwargs):
            if data.get("pid") == "raylet":
                lines = [line for line in data.get("lines", ())
                         if not any(text in line for text in REPORTED_BY_THE_RUN)]
                if not lines:
                    return
                data = {**data, "lines": lines}
            printer(data, *args, **kwargs)

        print_to_stdstream.reported_by_the_run = True
        ray_worker.print_to_stdstream = print_to_stdstream  # before ray.init binds it

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    try:
        if cfg.ray.address:
            ray.init(address=cfg.ray.address)
        elif address:
            ray.init()
        else:
            ray.init(address="local", num_cpus=cfg.ray.num_cpus or None, include_dashboard=False)
    except ConnectionError as err:
        raise RayConnectError(_connect_failure(address, err)) from None
    except ray.exceptions.AuthenticationError as err:
        raise RayConnectError(_connect_failure(address, err)) from None


def _connect_failure(address: str | None, err: BaseException) -> str:
    """What went wrong joining the cluster at ``address``, and what to change."""
    where = f"the Ray cluster at {address}" if address else "Ray"
    if _is_auth_error(err):
        return f"cannot connect to {where}: {AUTH_HELP}"
    return (f"cannot connect to {where} ({err}): check that the cluster is up and that "
            "ray.address (or RAY_ADDRESS) names its head node, or unset both to start Ray here")


def _is_auth_error(err: BaseException | None) -> bool:
    """Whether ``err`` or an error it was raised from is Ray refusing a missing or wrong token
    (Ray 2.60 wraps it in ``ConnectionError`` <- ``RuntimeError`` whose text holds it)."""
    while err is not None:
        text = f"{type(err).__name__}: {err}"
        if "AuthenticationError" in text or "InvalidAuthToken" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def actors_that_fit(nodes: Sequence[NodeResources], num_cpus: float, num_gpus: float) -> int:
    """How many actors asking ``num_cpus`` and ``num_gpus`` each the nodes can hold at once."""
    total = 0
    for node in nodes:
        fits = [math.inf]
        if num_cpus > 0:
            fits.append(math.floor(node.get("CPU", 0.0) / num_cpus + 1e-9))
        if num_gpus > 0:
            fits.append(math.floor(node.get("GPU", 0.0) / num_gpus + 1e-9))
        total += min(fits)
    return int(total) if math.isfinite(total) else 1 << 30


def check_client_resources(
    cfg: Config, nodes: Sequence[NodeResources], num_actors: int
) -> None:
    """Raise :class:`ConfigError` naming the key to change when ``num_actors`` client actors at
    ``client.num_cpus`` / ``client.num_gpus`` each cannot all run on ``nodes`` at once."""
    c = cfg.client
    gpus = [node.get("GPU", 0.0) for node in nodes]
    cpus = [node.get("CPU", 0.0) for node in nodes]
    if c.num_gpus > 0 and max(gpus, default=0.0) == 0:
        raise ConfigError(
            f"client.num_gpus={c.num_gpus:g} but the cluster has no GPU: set client.num_gpus=0 "
            "to train on CPU"
        )
    if c.num_gpus > max(gpus, default=0.0):
        raise ConfigError(
            f"client.num_gpus={c.num_gpus:g} but the largest node has {max(gpus):g} GPU(s): set "
            f"client.num_gpus<={max(gpus):g}"
        )
    if c.num_cpus > max(cpus, default=0.0):
        raise ConfigError(
            f"client.num_cpus={c.num_cpus:g} but the largest node has {max(cpus, default=0):g} "
            f"CPU(s): set client.num_cpus<={max(cpus, default=0):g}"
        )
    fit = actors_that_fit(nodes, c.num_cpus, c.num_gpus)
    if num_actors > fit:
        raise ConfigError(
            f"client.num_actors={num_actors} but the cluster holds only {fit} client actor(s) at "
            f"client.num_cpus={c.num_cpus:g}, client.num_gpus={c.num_gpus:g}: set "
            f"client.num_actors=0 (as many as fit) or at most {fit}"
        )


def check_eval_resources(cfg: Config, nodes: Sequence[NodeResources], num_actors: int) -> None:
    """Raise :class:`ConfigError` when the evaluation actor (``eval.every``) cannot run next to
    the client actors: it would wait until the run ended, and the run waits for it."""
    if not cfg.eval.every:
        return
    e, c = cfg.eval, cfg.client
    for resource, key, per_eval, per_client in (
        ("CPU", "num_cpus", e.num_cpus, c.num_cpus), ("GPU", "num_gpus", e.num_gpus, c.num_gpus)
    ):
        total = sum(node.get(resource, 0.0) for node in nodes)
        left = total - num_actors * per_client
        if per_eval > left + 1e-9:
            raise ConfigError(
                f"eval.{key}={per_eval:g} but the cluster's {total:g} {resource}(s) leave "
                f"{max(left, 0):g} next to {num_actors} client actor(s) at client.{key}="
                f"{per_client:g}: set eval.{key}=0 to share theirs, or eval.every=0"
            )


def alive_nodes() -> list[dict[str, float]]:
    """The resources of every alive node of the connected Ray cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def cluster_can_grow() -> bool:
    """Whether an autoscaler can launch more node types for this cluster (best effort, from
    the status it publishes; a fixed or local cluster lists none)."""
    from ray.experimental import internal_kv

    try:
        raw = internal_kv._internal_kv_get("__autoscaling_status")
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    except Exception:  # no status published: treat as a fixed cluster
        return False
    launchable = (report.get("node_availability_summary") or {}).get("node_availabilities")
    return bool(launchable or report.get("pending_launches") or report.get("pending_nodes"))
