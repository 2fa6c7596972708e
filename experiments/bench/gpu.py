"""Clip supply per training actor, one client's CtP epoch on a GPU, and where clips are augmented.

A shard the size of a UCF-101 client's (``--clips`` 1,907 entries, cycling through 16 distinct
320x240 MPEG-4 AVIs like UCF-101's, made by the data benchmark's generator), 16x112x112 clips,
batch 4, seed 7.

* **Clip supply** (CPU only): clips per second delivered to one consumer that does
  nothing else, by N decode worker processes (``data.decode_workers=N``), by the in-process
  pipeline, and by the bare decode (PyAV ``read_frames`` of the same clips' frames in one
  process, no augmentation). The runs are interleaved (order rotated each repeat) and every
  ratio is taken within one repeat: supply / (N x bare decode) on the wall clock, and clips per
  CPU-second (this process plus its finished workers) against the bare decode's.
* **GPU** (when CUDA is available, or ``--train-on-cpu`` for a smoke check of the script): one
  client's local epoch over the shard (CtP on R3D-18 through ``ClientWorker``, as a client
  actor runs it): seconds, clips/s, data-wait fraction, GPU utilisation (``torch.cuda.utilization``,
  else ``nvidia-smi``), in fp32, in mixed precision, and in mixed precision with in-process
  decoding; then a round of 5 clients on one GPU, 1 actor (all the node's CPUs) against 5
  actors at ``client.num_gpus=0.2`` (a fifth of the CPUs each), rounds 1 (shards read) and 2.
* **Augmentation placement** (with the GPU stages, after them): ``data.augment_on=cpu``
  (decode workers or the training process augment) against ``device`` (they only decode; the
  training step augments on the GPU), with the node's decode workers and in-process, over the
  shard's first ``PLACEMENT_CLIPS`` (512) entries: clips per second delivered to the training
  step (batches made and put on the device ready for the model, no training; and clips per
  CPU-second) and one client's local epoch in mixed precision (seconds, clips/s, data wait,
  GPU utilisation).

    python experiments/bench/gpu.py --json gpu.json             # full
    python experiments/bench/gpu.py --quick --json gpu.json     # smoke run (128 clips, 1 repeat)
    python experiments/bench/gpu.py --json placement.json --parts placement   # placement only

``--parts`` chooses among ``supply``, ``epochs``, ``placement`` and ``rounds`` (default all);
without CUDA only ``supply`` runs, unless ``--train-on-cpu``.

Stages that would start after ``--time-limit`` seconds are skipped (and listed in the JSON);
the JSON is rewritten after every stage, so a run stopped from outside keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import torch

from fedvssl_ray.config import Config, load_config
from fedvssl_ray.data import decode
from fedvssl_ray.data.clips import sample_pretrain_clip
from fedvssl_ray.data.pipeline import (
    ClipMaker,
    ClipStream,
    EpochKeys,
    iter_ctp_batches,
    iter_process_batches,
)
from fedvssl_ray.data.shards import decode_options
from fedvssl_ray.training.local import to_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import make_videos  # noqa: E402  (the data benchmark's UCF-101-like videos)

SEED, BATCH, ROUND_CLIENTS = 7, 4, 5
PLACEMENT_CLIPS = 512  # shard entries of the placement runs (in-process CPU augmentation is slow)
PARTS = ("supply", "epochs", "placement", "rounds")
Shard = list[tuple[str, str]]


def cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (decode workers)."""
    own, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime


def count_clips(batches: Iterable[dict[str, torch.Tensor]]) -> int:
    return sum(len(b["imgs"]) for b in batches)


# ---------------------------------------------------------------------------------------------
# clip supply


def supply_runs(shard: Shard, workers: Sequence[int]) -> dict[str, tuple[int, Callable[[], int]]]:
    """name -> (processes it uses, run making one epoch's clips); all make the same clips."""
    stream = ClipStream(shard, batch_size=BATCH, seed=SEED)
    cache, plan = stream.cache, stream.plan(0, 0)
    maker = ClipMaker(EpochKeys(SEED, 0, 0, 0), stream.preset, stream.clip_len)
    frames = [
        (cache.payload(v), sample_pretrain_clip(cache.videos[v].num_frames, maker.keys.rng(p)).indices)
        for p, v in enumerate(plan.tolist())
    ]

    def bare() -> int:
        for data, indices in frames:
            decode.read_frames(data, indices)
        return len(frames)

    runs: dict[str, tuple[int, Callable[[], int]]] = {
        "bare decode (PyAV, 1 process)": (1, bare),
        "pipeline in-process": (1, lambda: count_clips(
            iter_ctp_batches(cache, plan, maker, batch_size=BATCH))),
    }
    for n in workers:
        runs[f"pipeline, {n} decode worker(s)"] = (n, lambda n=n: count_clips(
            iter_process_batches(cache, plan, maker, batch_size=BATCH, processes=n)))
    return runs


def measure_supply(shard: Shard, workers: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """Interleaved runs; each row's ratios are medians of per-repeat ratios to that repeat's bare
    decode."""
    runs = supply_runs(shard, workers)
    names = list(runs)
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            wall, cpu = time.perf_counter(), cpu_seconds()
            clips = runs[name][1]()
            timings[name].append((clips / (time.perf_counter() - wall), clips / (cpu_seconds() - cpu)))
            print(f"  repeat {r + 1}: {name}: {timings[name][-1][0]:.1f} clips/s", flush=True)
    bare = timings[names[0]]
    rows = []
    for name in names:
        n = runs[name][0]
        rates = timings[name]
        rows.append({
            "what": name,
            "processes": n,
            "clips_per_s": statistics.median(w for w, _ in rates),
            "clips_per_cpu_s": statistics.median(c for _, c in rates),
            "vs_n_bare": statistics.median(w / (n * b) for (w, _), (b, _) in zip(rates, bare, strict=True)),
            "vs_n_bare_range": [min(w / (n * b) for (w, _), (b, _) in zip(rates, bare, strict=True)),
                                max(w / (n * b) for (w, _), (b, _) in zip(rates, bare, strict=True))],
            "per_core_vs_bare": statistics.median(c / bc for (_, c), (_, bc) in zip(rates, bare, strict=True)),
        })
    return rows


# ---------------------------------------------------------------------------------------------
# GPU epoch and round


class GpuSampler:
    """Mean GPU utilisation (%) while it runs, sampled every 0.2 s; None if nothing reports it."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> float | None:
        if not torch.cuda.is_available():
            return None
        try:
            return float(torch.cuda.utilization())
        except Exception:  # no pynvml: ask nvidia-smi
            if not shutil.which("nvidia-smi"):
                return None
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True, text=True, timeout=5,
            )
            return float(out.stdout.strip().splitlines()[0]) if out.returncode == 0 else None

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            value = self.read()
            if value is None:
                return
            self.samples.append(value)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def client_shards(shard: Shard, clients: int) -> list[Shard]:
    """Client 0..clients-1 hold the shard (each its own copy and seeds); the last one, 8 clips,
    warms the model (cudnn autotuning) before anything is timed."""
    return [list(shard)] * clients + [shard[:8]]


class Streams:
    """Stream factory of the benchmark's clients (the run's decode workers); keeps what it
    built, so a shard can be read before the clock starts."""

    def __init__(self, cfg: Config, shards: list[Shard]) -> None:
        self.cfg, self.shards = cfg, shards
        self.built: dict[int, ClipStream] = {}

    def __call__(self, client_id: int) -> ClipStream:
        if client_id not in self.built:
            c, d = self.cfg.client, self.cfg.data
            self.built[client_id] = ClipStream(
                self.shards[client_id], crop_size=d.crop_size, clip_len=d.clip_len,
                batch_size=c.batch_size, seed=self.cfg.seed, client_id=client_id,
                augment_on=d.augment_on, **decode_options(self.cfg),
            )
        return self.built[client_id]


TINY = ("model.backbone=r3d10_narrow", "data.crop_size=32", "data.clip_len=8")
"""``--train-on-cpu`` trains this small model: it checks the script, it measures nothing."""


def bench_config(device: str, cpus: int, mixed: bool, *extra: str) -> Config:
    """The ucf101 preset on ``cpus`` CPUs of one actor (GPU: a whole GPU, automatic decode
    workers = cpus - 1; ``--train-on-cpu``: CPU clients with as many decode workers, TINY)."""
    gpu = device == "cuda"
    keys = [
        f"client.num_gpus={1 if gpu else 0}", f"client.num_cpus={cpus}",
        f"client.mixed_precision={str(mixed).lower()}",
        *([] if gpu else [f"data.decode_workers={max(0, cpus - 1)}", "client.torch_threads=1", *TINY]),
    ]
    return load_config("ucf101", [*keys, *extra])


def one_epoch(cfg: Config, shard: Shard) -> dict[str, Any]:
    """One client's local epoch (after a warm-up epoch of 8 clips) in this process."""
    from fedvssl_ray.training.client import ClientWorker

    shards = client_shards(shard, 1)
    streams = Streams(cfg, shards)
    worker = ClientWorker(cfg, streams)
    weights = worker.initial_global()
    worker.train(weights, 1, len(shards) - 1, threads=1)
    streams(0).cache.load()  # the shard is read before the clock starts
    with GpuSampler() as gpu:
        start = time.perf_counter()
        result = worker.train(weights, 1, 0, threads=1)
        seconds = time.perf_counter() - start
    clips = result.steps * cfg.client.batch_size
    return {
        "epoch_s": seconds, "clips": clips, "clips_per_s": clips / seconds,
        "data_wait": result.timings["data_wait_s"] / result.timings["train_s"],
        "gpu_util": gpu.mean, "decode_workers": streams(0).processes,
        "augment_on": cfg.data.augment_on,
    }


def delivered(cfg: Config, shard: Shard) -> dict[str, Any]:
    """Clips per second (and per CPU-second, this process and its ended decode workers) that one
    client's stream delivers to the training step: each batch made and put on the training
    device as the step takes it (``to_device``, which augments a decoded batch there), no model.
    A client of 8 clips runs first, to warm up the device's kernels."""
    device = torch.device("cuda" if cfg.client.num_gpus > 0 else "cpu")
    streams = Streams(cfg, client_shards(shard, 1))
    for client in (len(streams.shards) - 1, 0):
        streams(client).cache.load()  # the shard is read before the clock starts
        wall, cpu, clips = time.perf_counter(), cpu_seconds(), 0
        for batch in streams(client).batches(1):
            clips += len(to_device(batch, device)[0])
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {
        "clips": clips, "clips_per_s": clips / wall, "clips_per_cpu_s": clips / cpu,
        "decode_workers": streams(0).processes, "augment_on": cfg.data.augment_on,
    }


def placement_runs(device: str, cpus: int) -> dict[str, tuple[Config, str]]:
    """name -> (config, what it runs) of the placement comparison: both placements, with the
    node's decode workers and in-process, delivered clips and then a local epoch of each."""
    runs = {}
    for decoding, extra in (("decode workers", ()), ("in-process", ("data.decode_workers=0",))):
        for place in ("cpu", "device"):
            cfg = bench_config(device, cpus, True, f"data.augment_on={place}", *extra)
            for what in ("delivered", "epoch"):
                runs[f"{what}: augment on {place}, {decoding}"] = (cfg, what)
    return runs


def one_round(cfg: Config, shard: Shard, actors: int, rounds: int = 2) -> dict[str, Any]:
    """Round seconds of 5 clients on ``actors`` Ray actors sharing one device."""
    import ray

    from fedvssl_ray.training.client import ClientWorker

    @ray.remote
    class BenchClient:
        def __init__(self) -> None:
            self.worker = ClientWorker(cfg, Streams(cfg, client_shards(shard, ROUND_CLIENTS)))

        def initial_global(self) -> dict:
            return self.worker.initial_global()

        def train(self, weights: dict, round_idx: int, client_id: int) -> float:
            return self.worker.train(weights, round_idx, client_id, threads=1).timings["data_wait_s"]

    c = cfg.client
    pool = [BenchClient.options(num_cpus=c.num_cpus, num_gpus=c.num_gpus).remote() for _ in range(actors)]
    weights = ray.put(ray.get(pool[0].initial_global.remote()))
    ray.get([a.train.remote(weights, 1, ROUND_CLIENTS) for a in pool])  # warm-up: 8 clips each
    out: dict[str, Any] = {"actors": actors, "client.num_cpus": c.num_cpus, "client.num_gpus": c.num_gpus}
    for r in range(1, rounds + 1):
        with GpuSampler() as gpu:
            start = time.perf_counter()
            waits = ray.get([pool[k % actors].train.remote(weights, r, k) for k in range(ROUND_CLIENTS)])
            out[f"round{r}_s"] = time.perf_counter() - start
        out[f"round{r}_gpu_util"] = gpu.mean
        out[f"round{r}_data_wait_s"] = sum(waits)
    for actor in pool:
        ray.kill(actor)
    return out


def start_ray(cpus: int, device: str) -> bool:
    """A local Ray with this machine's CPUs (at least 5: on CPU, a smoke check, 5 one-CPU
    actors are let onto fewer cores) and its GPU."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=max(cpus, ROUND_CLIENTS), num_gpus=1 if device == "cuda" else 0,
             include_dashboard=False, log_to_driver=False)
    return True


# ---------------------------------------------------------------------------------------------


def print_supply(rows: list[dict[str, Any]]) -> None:
    print("\n| what | processes | clips/s (wall) | vs N x bare decode (wall) | clips per CPU-s | per core vs bare |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        lo, hi = row["vs_n_bare_range"]
        print(f"| {row['what']} | {row['processes']} | {row['clips_per_s']:.1f} | {row['vs_n_bare']:.0%} "
              f"({lo:.0%}-{hi:.0%}) | {row['clips_per_cpu_s']:.1f} | {row['per_core_vs_bare']:.0%} |")


def print_placement(results: dict[str, dict[str, Any]]) -> None:
    """The placement comparison as a table: one row per placement and decoding."""
    names = list(dict.fromkeys(name.split(": ", 1)[1] for name in results))  # in run order
    if not names:
        return
    print("\n| augmentation | decode workers | delivered clips/s | clips per CPU-s | epoch s "
          "| epoch clips/s | data wait | GPU util |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        d, e = results.get(f"delivered: {name}"), results.get(f"epoch: {name}")
        workers = (d or e)["decode_workers"]
        cells = [f"{d['clips_per_s']:.1f}", f"{d['clips_per_cpu_s']:.1f}"] if d else ["-", "-"]
        if e:
            util = "n/a" if e["gpu_util"] is None else f"{e['gpu_util']:.0f}%"
            cells += [f"{e['epoch_s']:.1f}", f"{e['clips_per_s']:.1f}", f"{e['data_wait']:.0%}"]
            cells.append(util)
        else:
            cells += ["-"] * 4
        print(f"| {name} | {workers} | " + " | ".join(cells) + " |")


def print_gpu(epochs: dict[str, dict[str, Any]], rounds: dict[str, dict[str, Any]]) -> None:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0f}%"

    if epochs:
        print("\n| one client's epoch | decode workers | s | clips/s | data wait | GPU util |")
        print("|---|---|---|---|---|---|")
        for name, e in epochs.items():
            print(f"| {name} | {e['decode_workers']} | {e['epoch_s']:.1f} | {e['clips_per_s']:.1f} "
                  f"| {e['data_wait']:.0%} | {pct(e['gpu_util'])} |")
    if rounds:
        print("\n| round of 5 clients | actors x (CPUs, GPU) | round 1 s | round 2 s | GPU util (round 2) |")
        print("|---|---|---|---|---|")
        for name, r in rounds.items():
            print(f"| {name} | {r['actors']} x ({r['client.num_cpus']:g}, {r['client.num_gpus']:g}) "
                  f"| {r.get('round1_s', float('nan')):.1f} | {r.get('round2_s', float('nan')):.1f} "
                  f"| {pct(r.get('round2_gpu_util'))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--clips", type=int, help="shard entries (default 1907, a UCF-101 client's; --quick 128)")
    parser.add_argument("--workers", default="1,2", help="decode worker counts of the supply runs")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the supply runs")
    parser.add_argument("--time-limit", type=float, default=540.0, help="seconds; later stages are skipped")
    parser.add_argument("--train-on-cpu", action="store_true",
                        help="run the GPU stages on the CPU (smoke check of the script without a GPU)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "fedvssl_bench_videos"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 clips, 1 repeat")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"any of: {', '.join(PARTS)}")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - set(PARTS):
        unknown = sorted(parts - set(PARTS))
        parser.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    if args.quick:
        args.repeats = 1
    args.clips = args.clips or (128 if args.quick else 1907)
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else ("cpu" if args.train_on_cpu else "")
    cpus = len(os.sched_getaffinity(0))
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    torch.set_num_threads(1)
    paths = make_videos(Path(args.data_dir), 16, 150)
    shard = [(f"{p.stem}#{i}", str(p)) for i, p in enumerate(islice(cycle(paths), args.clips))]
    report: dict[str, Any] = {
        "command": " ".join(sys.argv), "machine": f"{platform.machine()}, {cpus} CPUs",
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch": torch.__version__, "clips": len(shard), "skipped": [], "stages": {},
    }
    print(f"{report['machine']}; gpu {report['gpu']}; torch {torch.__version__}; shard of {len(shard)} "
          f"clips over {len(paths)} 320x240 MPEG-4 AVIs")

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        """Run one stage unless the time limit has passed; the JSON is rewritten after each."""
        if time.perf_counter() - started > args.time_limit:
            report["skipped"].append(name)
            print(f"skipped (time limit): {name}")
            return None
        print(f"{name} ...", flush=True)
        result = report["stages"][name] = fn()
        report["wall_s"] = time.perf_counter() - started
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
        return result

    supply = None
    if "supply" in parts:
        supply = stage("clip supply", lambda: measure_supply(shard, workers, args.repeats))
    epochs: dict[str, dict[str, Any]] = {}
    placement: dict[str, dict[str, Any]] = {}
    rounds: dict[str, dict[str, Any]] = {}
    if device and "epochs" in parts:
        for name, mixed, extra in (("fp32", False, ()), ("mixed precision", True, ()),
                                   ("mixed precision, in-process decode", True, ("data.decode_workers=0",))):
            result = stage(f"epoch: {name}", lambda m=mixed, e=extra: one_epoch(
                bench_config(device, cpus, m, *e), shard))
            if result:
                epochs[name] = result
    if device and "rounds" in parts and stage("ray start", lambda: start_ray(cpus, device)):
        import ray

        share = max(1, cpus // ROUND_CLIENTS)
        fraction = ("client.num_gpus=0.2",) if device == "cuda" else ()
        for name, actors, cfg in (
            ("1 actor", 1, bench_config(device, cpus, True)),
            ("5 actors, client.num_gpus=0.2", ROUND_CLIENTS,
             bench_config(device, share, True, *fraction)),
        ):
            result = stage(f"round: {name}", lambda a=actors, c=cfg: one_round(c, shard, a))
            if result:
                rounds[name] = result
        ray.shutdown()
    if device and "placement" in parts:
        part = shard[:PLACEMENT_CLIPS]
        for name, (cfg, what) in placement_runs(device, cpus).items():
            run = delivered if what == "delivered" else one_epoch
            result = stage(f"placement, {name}", lambda r=run, c=cfg: r(c, part))
            if result:
                placement[name] = result
    report["wall_s"] = time.perf_counter() - started
    if supply:
        print_supply(supply)
    print_gpu(epochs, rounds)
    print_placement(placement)
    if not device:
        print("\nno CUDA device: GPU stages not run (--train-on-cpu runs them on the CPU)")
    Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    print(f"\nwrote {args.json} ({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
