"""Engine overhead: steady-state round time through Ray actors against the plain loop.

For each backbone, the same N rounds of K clients run twice on the same synthetic data: the plain
loop (one process, all cores' torch threads: the limit on one machine) and the Ray engine (driver
actor + client actors). Each client runs the local training of ``WORKLOAD``: 4 local epochs of
its shard every round on 16-frame clips (``client.local_epochs=4``, batch 4), SGD, replay.
Reported: steady-state seconds per round (rounds 2..N), their ratio, the split of an engine
round (critical path: broadcast, clients, aggregate, checkpoint hand-off; off it: the writer's
head fetch and write), the local steps per client and round, and the time from launch to the
first round. ``--scaling`` runs 10, 100 and 1000 total clients (5 per round, small backbone) and
reports round time and memory.

    python experiments/bench/rounds.py                 # both backbones, then nothing else
    python experiments/bench/rounds.py --scaling       # client-count scaling only
    python experiments/bench/rounds.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

from fedvssl_ray.actors.driver import run_on_ray, start_driver
from fedvssl_ray.config import Config, load_config
from fedvssl_ray.data.manifest import load_manifest
from fedvssl_ray.data.partition import write_partitions
from fedvssl_ray.data.shards import ClientShards
from fedvssl_ray.data.synthetic import ensure_synthetic_dataset
from fedvssl_ray.run_dir import RunDir
from fedvssl_ray.training.plain import run_plain

DATA = Path(os.environ.get("FEDVSSL_BENCH_DATA", "data/bench"))


# The local work every recorded figure was measured with: the synthetic preset's training as it
# was before it took the CPU-demo learning settings (16-frame clips, 4 local epochs replayed,
# SGD on the reference targets, beta 1), pinned so the figures stay reproducible.
WORKLOAD = [
    "data.clip_len=16", "client.local_epochs=4", "client.replay=true", "client.optimizer=sgd",
    "client.lr=0.01", "client.target_scale=1", "data.patch_speed=1", "model.head_init_std=0.001",
    "strategy.beta=1", "eval.every=5",
]


def bench_config(root: Path, run_dir: Path, backbone: str, rounds: int, clients: int,
                 per_round: int, extra: list[str]) -> Config:
    crop = 64 if backbone == "r3d10_narrow" else 32
    return load_config("synthetic", [
        *WORKLOAD, f"data.root={root}", f"run_dir={run_dir}", f"rounds={rounds}",
        f"num_clients={clients}", f"clients_per_round={per_round}", f"model.backbone={backbone}",
        f"data.crop_size={crop}", "client.batch_size=4", *extra,
    ])


def steady(records: list[dict], key: str = "round_s") -> float:
    """Mean of a time field over rounds 2..N (round 1 fills caches and warms up)."""
    values = [r["time"][key] for r in records[1:]] or [records[0]["time"][key]]
    return statistics.mean(values)


def run_plain_bench(cfg: Config) -> dict:
    run_dir = RunDir(cfg.run_dir)
    run_dir.create(cfg)
    started = time.perf_counter()
    run_plain(cfg, run_dir, ClientShards.from_config(cfg).stream_factory())
    return {"records": run_dir.read_metrics(), "wall_s": time.perf_counter() - started}


def run_engine_bench(cfg: Config) -> dict:
    """Launch-to-end of one engine run on the running Ray (started before, timed separately)."""
    run_dir = RunDir(cfg.run_dir)
    run_dir.create(cfg)
    launched = time.perf_counter()
    first_round = []

    def on_event(event: dict) -> None:
        if event["type"] == "round_start" and not first_round:
            first_round.append(time.perf_counter() - launched)

    driver = start_driver(cfg, run_dir.path)
    run_on_ray(driver, on_event, poll_s=0.1)
    memory = ray.get(driver.memory.remote())
    ray.kill(driver)
    return {"records": run_dir.read_metrics(), "wall_s": time.perf_counter() - launched,
            "first_round_s": first_round[0], "memory": memory}


SPLIT_KEYS = ("broadcast_s", "train_s", "clients_s", "aggregate_s", "checkpoint_s",
              "head_fetch_s", "write_s")
"""A round's time fields: on the critical path up to ``checkpoint_s`` (waiting for or doing the
round's writes), then the background writer's (absent where the round loop writes itself)."""


def split(records: list[dict]) -> dict[str, float]:
    return {k: round(steady(records, k), 3) for k in SPLIT_KEYS if k in records[-1]["time"]}


def local_work(records: list[dict]) -> dict[str, int]:
    """Local steps per client in a round (all local epochs), as the clients reported them."""
    steps = [u["steps"] for u in records[-1]["updates"]]
    return {"steps_per_client_min": min(steps), "steps_per_client_max": max(steps)}


def overhead(args, work: Path, init_s: float) -> list[dict]:
    rows = []
    root = DATA / "overhead"
    ensure_synthetic_dataset(root, num_classes=5, videos_per_class=8, frames=48, seed=3, log=None)
    for backbone in args.backbones:
        plain_cfg = bench_config(root, work / f"{backbone}-plain", backbone, args.rounds,
                                 args.clients, args.clients, [])
        plain = run_plain_bench(plain_cfg)
        for actors in args.actors:
            cfg = bench_config(root, work / f"{backbone}-engine-{actors}", backbone, args.rounds,
                               args.clients, args.clients, [f"client.num_actors={actors}"])
            engine = run_engine_bench(cfg)
            row = {
                "backbone": backbone,
                "num_actors": actors or "auto",
                "plain_round_s": round(steady(plain["records"]), 3),
                "engine_round_s": round(steady(engine["records"]), 3),
                "engine_split": split(engine["records"]),
                "plain_split": split(plain["records"]),
                "local_epochs": cfg.client.local_epochs,
                **local_work(engine["records"]),
                "engine_wall_s": round(engine["wall_s"], 2),
                "first_round_after_launch_s": round(engine["first_round_s"] + init_s, 2),
                "ray_init_s": round(init_s, 2),
            }
            row["ratio"] = round(row["engine_round_s"] / row["plain_round_s"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def fixed_size_partitions(root: Path, clients: int, videos: int, out: Path) -> Path:
    """``videos`` per client, cycling through the train list: the same work per client
    whatever the number of clients (videos repeat across clients once they run out)."""
    records = load_manifest(root / "manifests" / "train_split1.parquet").records
    parts = [[records[(c * videos + i) % len(records)] for i in range(videos)]
             for c in range(clients)]
    return write_partitions(out, parts)


def scaling(args, work: Path) -> list[dict]:
    rows = []
    root = DATA / "scaling"
    ensure_synthetic_dataset(root, num_classes=10, videos_per_class=8, frames=24, width=80,
                             height=60, seed=5, log=None)
    for clients in args.scaling_clients:
        parts = fixed_size_partitions(root, clients, 4, work / f"partitions-{clients}")
        cfg = bench_config(root, work / f"scaling-{clients}", "r3d10_narrow", args.rounds,
                           clients, 5, ["data.crop_size=32", "client.batch_size=2",
                                        f"data.partition_dir={parts}"])
        engine = run_engine_bench(cfg)
        memory = engine["memory"]
        row = {
            "total_clients": clients,
            "engine_round_s": round(steady(engine["records"]), 3),
            "driver_peak_rss_mb": round(memory["driver_peak_rss_mb"], 1),
            "actor_peak_rss_mb": [round(a["peak_rss_mb"], 1) for a in memory["actors"]],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["r3d10_narrow", "r3d_18"])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (scaling: 8)")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2],
                        help="client.num_actors values to run (0: automatic)")
    parser.add_argument("--scaling", action="store_true", help="run the client-count scaling")
    parser.add_argument("--scaling-clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--quick", action="store_true", help="2 rounds, small backbone only")
    args = parser.parse_args()
    if args.scaling and args.rounds == 4:
        args.rounds = 8  # round 1 fills caches; average the steady rounds over more of them
    if args.quick:
        args.rounds, args.backbones, args.scaling_clients = 2, ["r3d10_narrow"], [10, 20]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {"scaling": scaling(args, work)} if args.scaling else {
            "overhead": overhead(args, work, init_s)}
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
