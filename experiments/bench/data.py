"""Benchmark of the CtP clip pipeline against the bare cost of decoding the same frames.

Videos like UCF-101's: 320x240, 25 fps, MPEG-4 Part 2 (Advanced Simple Profile, 2 B-frames,
as Xvid encodes by default) in AVI at about 500 kbit/s, key frames every 12 to 250 frames,
rendered by the synthetic dataset's generator. A client's shard lists every video
``--repeat`` times, so one epoch is long enough to time (the cache holds one copy per entry).

For one epoch's clips (same plan, same per-sample generators, hence the same frame indices)
it reports clips per second per core, i.e. clips per CPU-second (this process and everything
it started, Ray's processes included), which stays meaningful on a shared machine, and
wall-clock clips per second, of:

* the limit: ``decode.read_frames`` alone on each clip's 16 sampled indices (PyAV seeks to the
  key frame before the first index and decodes forward);
* the whole pipeline (decode + sample + scale/crop/flip + PatchMask + colour + normalise +
  torch batches), in-process on 1 and 2 threads and through Ray Data with 2 tasks, on the
  first epoch (cold: storage reads, probes, worker start) and on later ones (cached);
* where one clip's CPU time goes (decode, transforms, of which PatchMask), and memory.

    python experiments/bench/data.py            # 16 videos x 150 frames, shard of 128
    python experiments/bench/data.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import torch

from fedvssl_ray.data import decode
from fedvssl_ray.data.clips import sample_pretrain_clip
from fedvssl_ray.data.ctp_patches import patch_mask
from fedvssl_ray.data.pipeline import ClipStream, EpochKeys
from fedvssl_ray.data.synthetic import SyntheticSpec, encode_video, render_video
from fedvssl_ray.data.transforms import CtpTrainPreset, resize_clip, to_planar

GOPS = (12, 50, 100, 250)
BIT_RATE = 500_000
SEED, CLIENT, BATCH = 7, 0, 4


def make_videos(out_dir: Path, count: int, frames: int) -> list[Path]:
    """``count`` 320x240 MPEG-4 AVIs (reused if already there)."""
    spec = SyntheticSpec(num_classes=4, frames=frames, width=320, height=240)
    paths = []
    for i in range(count):
        path = out_dir / f"v{i:02d}_gop{GOPS[i % len(GOPS)]}_bf2_{frames}f.avi"
        if not path.is_file():
            frames_rgb = render_video(spec, i % 4, i)
            encode_video(
                path, frames_rgb, codec="mpeg4", gop=GOPS[i % len(GOPS)], bit_rate=BIT_RATE,
                options={"bf": "2"},  # Xvid's default: Advanced Simple Profile, 2 B-frames
            )
        paths.append(path)
    return paths


def rss_mib(pid: int | str = "self", field: str = "VmRSS") -> float:
    """Resident memory of a process from /proc (``VmHWM`` is its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used) for every process we can read."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def descendants(root: int, table: dict[int, tuple[int, float]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and every live process it started (Ray's included)."""
    table = _process_table()
    return sum(table[pid][1] for pid in descendants(os.getpid(), table))


def tree_rss_mib() -> float:
    """Resident memory of this process and its descendants (shared pages counted per process)."""
    return sum(rss_mib(pid) for pid in descendants(os.getpid(), _process_table()))


class Measure:
    """Clips, wall seconds and CPU seconds of one run; the best of several runs is kept."""

    def __init__(self, label: str, cores: int, cpu_clock: Callable[[], float]) -> None:
        self.label, self.cores, self.cpu_clock = label, cores, cpu_clock
        self.clips, self.wall, self.cpu = 0, math.inf, math.inf

    def run(self, fn: Callable[[], int], repeats: int = 1) -> Measure:
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), self.cpu_clock()
            clips = fn()
            wall, cpu = time.perf_counter() - wall, self.cpu_clock() - cpu
            if cpu / clips < self.cpu / max(self.clips, 1) or not self.clips:
                self.clips, self.cpu = clips, cpu
            self.wall = min(self.wall, wall / clips)
        return self

    @property
    def per_core(self) -> float:
        """Clips per CPU-second: clips per second per core, whatever else the machine runs."""
        return self.clips / self.cpu


def count_clips(batches: Iterable[dict[str, torch.Tensor]]) -> int:
    return sum(len(b["imgs"]) for b in batches)


def epoch_clips(stream: ClipStream, epoch: int) -> list[tuple[bytes, np.ndarray]]:
    """(video bytes, frame indices) of every clip of an epoch, as the pipeline draws them."""
    keys = EpochKeys(SEED, CLIENT, 0, epoch)
    videos = stream.cache.videos
    out = []
    for position, v in enumerate(stream.plan(0, epoch).tolist()):
        clip = sample_pretrain_clip(videos[v].num_frames, keys.rng(position))
        out.append((stream.cache.payload(v), clip.indices))
    return out


def bare_decode(clips: list[tuple[bytes, np.ndarray]], threads: int) -> int:
    """The limit: read_frames on each clip's indices, nothing else."""
    def one(item: tuple[bytes, np.ndarray]) -> int:
        decode.read_frames(item[0], item[1])
        return 1

    if threads == 1:
        return sum(map(one, clips))
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, clips))


def component_costs(clips: list[tuple[bytes, np.ndarray]], repeats: int) -> dict[str, float]:
    """CPU milliseconds per clip (best of ``repeats``) of decoding, of the whole CtP preset, and
    of its parts: scale+crop+flip (at the middle scale), PatchMask; colour and normalisation
    are the rest."""
    preset, keys = CtpTrainPreset(), EpochKeys(SEED, CLIENT, 0, 1)
    frames = [decode.read_frames(data, idx) for data, idx in clips]
    crops = [to_planar(resize_clip(f, 171, 128)[:, 8:120, 29:141][:, :, ::-1]) for f in frames]
    parts: dict[str, Callable[[], object]] = {
        "decode": lambda: [decode.read_frames(data, idx) for data, idx in clips],
        "transforms": lambda: [preset(f, keys.rng(i)) for i, f in enumerate(frames)],
        "scale+crop+flip": lambda: [
            to_planar(resize_clip(f, 171, 128)[:, 8:120, 29:141][:, :, ::-1]) for f in frames
        ],
        "PatchMask": lambda: [patch_mask(c, keys.rng(i)) for i, c in enumerate(crops)],
    }
    costs = {}
    for name, fn in parts.items():
        best = math.inf
        for _ in range(repeats):
            cpu = time.process_time()
            fn()
            best = min(best, time.process_time() - cpu)
        costs[name] = 1e3 * best / len(clips)
    costs["colour+normalise"] = costs["transforms"] - costs["scale+crop+flip"] - costs["PatchMask"]
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=8, help="shard lists every video this often")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best kept)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "fedvssl_bench_videos"))
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Data backend")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 videos x 60 frames")
    args = parser.parse_args()
    if args.quick:
        args.videos, args.frames, args.repeat, args.repeats = 4, 60, 2, 1

    torch.set_num_threads(1)
    paths = make_videos(Path(args.data_dir), args.videos, args.frames)
    size = sum(p.stat().st_size for p in paths)
    shard = [(f"{p.stem}#{r}", str(p)) for r in range(args.repeat) for p in paths]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}, "
          f"torch {torch.__version__}, numpy {np.__version__}, av {av.__version__}")
    print(f"{len(paths)} videos 320x240 x {args.frames} frames, mpeg4 AVI (2 B-frames), gops {GOPS}, "
          f"{size * 8 / (len(paths) * args.frames / 25) / 1000:.0f} kbit/s; shard of {len(shard)}")

    def stream(**kw: object) -> ClipStream:
        return ClipStream(shard, batch_size=BATCH, seed=SEED, client_id=CLIENT, **kw)

    rss_start = rss_mib()
    local = stream()
    rows = [Measure("pipeline in-process, 1 thread, cold epoch", 1, time.process_time)
            .run(lambda: count_clips(local.batches(0, 0)))]
    rss_cached = rss_mib()
    clips = epoch_clips(local, 1)
    bare = Measure("bare decode (read_frames), 1 thread", 1, time.process_time)
    bare.run(lambda: bare_decode(clips, 1), args.repeats)
    rows.insert(0, bare)
    rows.append(Measure("bare decode (read_frames), 2 threads", 2, time.process_time)
                .run(lambda: bare_decode(clips, 2), args.repeats))
    rows.append(Measure("pipeline in-process, 1 thread, cached", 1, time.process_time)
                .run(lambda: count_clips(local.batches(0, 1)), args.repeats))
    threaded = stream(workers=2)
    count_clips(threaded.batches(0, 0))
    rows.append(Measure("pipeline in-process, 2 threads, cached", 2, time.process_time)
                .run(lambda: count_clips(threaded.batches(0, 1)), args.repeats))
    costs = component_costs(clips[:64], args.repeats)

    ray_rss = 0.0
    if not args.no_ray:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        remote = stream(backend="ray_data", workers=2)
        rows.append(Measure("pipeline Ray Data, 2 tasks, cold epoch", 2, tree_cpu_seconds)
                    .run(lambda: count_clips(remote.batches(0, 0))))
        rows.append(Measure("pipeline Ray Data, 2 tasks, cached", 2, tree_cpu_seconds)
                    .run(lambda: count_clips(remote.batches(0, 1)), args.repeats))
        ray_rss = tree_rss_mib()
        ray.shutdown()

    print("\n| what | clips/s (wall) | CPU ms per clip | clips/s per core | vs bare decode |")
    print("|---|---|---|---|---|")
    for m in rows:
        print(f"| {m.label} | {1 / m.wall:.1f} | {1e3 * m.cpu / m.clips:.1f} | {m.per_core:.1f} "
              f"| {m.per_core / bare.per_core:.0%} |")
    print("\nCPU ms per clip, 1 thread: " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
    print(f"memory: RSS {rss_start:.0f} MiB before and {rss_cached:.0f} MiB after caching the shard "
          f"and making one epoch ({len(shard)} entries, "
          f"{size * args.repeat / 2**20:.0f} MiB of video), peak {rss_mib(field='VmHWM'):.0f} MiB"
          + (f"; with Ray (driver + Ray processes) {ray_rss:.0f} MiB" if ray_rss else ""))


if __name__ == "__main__":
    main()
