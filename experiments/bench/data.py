"""Benchmark of the CtP clip pipeline against the bare cost of decoding the same frames.

Videos like UCF-101's: 320x240, 25 fps, MPEG-4 Part 2 in AVI at about 500 kbit/s, with key
frames every 12 to 250 frames (Xvid encoders used anything in that range), rendered by the
synthetic dataset's generator. A client's shard lists every video ``--repeat`` times, so one
epoch is long enough to time (the cache still holds one copy per shard entry, as it would).

For one epoch's clips (same plan, same per-sample generators, hence the same frame indices)
it reports clips per second per core of:

* the limit: ``decode.read_frames`` alone on each clip's 16 sampled indices (PyAV seeks to the
  key frame before the first index and decodes forward), on 1 thread and on 2 threads;
* the whole pipeline (decode + sample + scale/crop/flip + PatchMask + colour + normalise +
  batching into torch tensors), in-process on 1 and 2 threads and through Ray Data with 2
  tasks, on the first epoch (cold: storage reads, probes, worker start) and later epochs
  (cached);
* where the time of one clip goes (decode, transforms, of which PatchMask), and peak memory.

    python experiments/bench/data.py            # 16 videos x 150 frames, shard of 128
    python experiments/bench/data.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fedvssl_ray.data import decode
from fedvssl_ray.data.clips import sample_pretrain_clip
from fedvssl_ray.data.ctp_patches import patch_mask
from fedvssl_ray.data.pipeline import ClipStream, EpochKeys
from fedvssl_ray.data.synthetic import SyntheticSpec, encode_video, render_video
from fedvssl_ray.data.transforms import CtpTrainPreset, to_planar

GOPS = (12, 50, 100, 250)
BIT_RATE = 500_000
SEED, CLIENT, BATCH = 7, 0, 4


def make_videos(out_dir: Path, count: int, frames: int) -> list[Path]:
    """``count`` 320x240 MPEG-4 AVIs (reused if already there)."""
    spec = SyntheticSpec(num_classes=4, frames=frames, width=320, height=240)
    paths = []
    for i in range(count):
        path = out_dir / f"v{i:02d}_gop{GOPS[i % len(GOPS)]}_{frames}f.avi"
        if not path.is_file():
            frames_rgb = render_video(spec, i % 4, i)
            encode_video(path, frames_rgb, codec="mpeg4", gop=GOPS[i % len(GOPS)], bit_rate=BIT_RATE)
        paths.append(path)
    return paths


def rss_mib(pid: int | str = "self", field: str = "VmRSS") -> float:
    """Resident memory of a process from /proc (``VmHWM`` is the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def ray_workers_rss_mib() -> float:
    """Summed resident memory of this machine's Ray worker processes (``ray::`` commands)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if cmdline.startswith(b"ray::"):
                total += rss_mib(pid)
        except OSError:
            continue
    return total


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    """(seconds, clips) of one call returning a clip count."""
    start = time.perf_counter()
    clips = fn()
    return time.perf_counter() - start, clips


def count_clips(batches: Iterable[dict[str, torch.Tensor]]) -> int:
    return sum(len(b["imgs"]) for b in batches)


def epoch_clips(stream: ClipStream, epoch: int) -> list[tuple[bytes, int, np.ndarray]]:
    """(video bytes, position, frame indices) of every clip of an epoch, as the pipeline draws them."""
    keys = EpochKeys(SEED, CLIENT, 0, epoch)
    videos = stream.cache.videos
    out = []
    for position, v in enumerate(stream.plan(0, epoch).tolist()):
        clip = sample_pretrain_clip(videos[v].num_frames, keys.rng(position))
        out.append((stream.cache.payload(v), position, clip.indices))
    return out


def bare_decode(clips: list[tuple[bytes, int, np.ndarray]], threads: int) -> int:
    """The limit: read_frames on each clip's indices, nothing else."""
    def one(item: tuple[bytes, int, np.ndarray]) -> int:
        return len(decode.read_frames(item[0], item[2]))

    if threads == 1:
        return sum(map(one, clips)) // 16
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, clips)) // 16


def best_rate(fn: Callable[[], int], repeats: int) -> float:
    """Best clips/s over ``repeats`` runs (the machine may be shared)."""
    return max(clips / seconds for seconds, clips in (timed(fn) for _ in range(repeats)))


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
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"{len(paths)} videos 320x240 x {args.frames} frames, mpeg4 AVI, gops {GOPS}, "
          f"{size * 8 / (len(paths) * args.frames / 25) / 1000:.0f} kbit/s; shard of {len(shard)}")

    def stream(**kw: object) -> ClipStream:
        return ClipStream(shard, batch_size=BATCH, seed=SEED, client_id=CLIENT, **kw)

    # Cold: a fresh stream's first epoch reads and probes the shard.
    local = stream()
    cold_s, cold_n = timed(lambda: count_clips(local.batches(0, 0)))
    clips = epoch_clips(local, 1)
    rss_cache = rss_mib()
    rows: list[tuple[str, float, int]] = []  # (label, clips/s, cores)

    bare1 = best_rate(lambda: bare_decode(clips, 1), args.repeats)
    bare2 = best_rate(lambda: bare_decode(clips, 2), args.repeats)
    rows += [("bare decode (read_frames), 1 thread", bare1, 1), ("bare decode, 2 threads", bare2, 2)]
    rows.append(("pipeline in-process, 1 thread, cold epoch", cold_n / cold_s, 1))
    rate = best_rate(lambda: count_clips(local.batches(0, 1)), args.repeats)
    rows.append(("pipeline in-process, 1 thread, cached", rate, 1))
    threaded = stream(workers=2)
    count_clips(threaded.batches(0, 0))
    rate = best_rate(lambda: count_clips(threaded.batches(0, 1)), args.repeats)
    rows.append(("pipeline in-process, 2 threads, cached", rate, 2))
    del threaded

    # Where one clip's time goes (1 thread, same clips).
    preset = CtpTrainPreset()
    frames = [decode.read_frames(data, idx) for data, _, idx in clips[:64]]
    keys = EpochKeys(SEED, CLIENT, 0, 1)
    t_transform, _ = timed(lambda: [preset(f, keys.rng(i)) for i, f in enumerate(frames)] and 0)
    crops = [to_planar(f[:, :112, :112]) for f in frames]
    t_patch, _ = timed(lambda: [patch_mask(c, keys.rng(i)) for i, c in enumerate(crops)] and 0)
    ms_transform, ms_patch = 1e3 * t_transform / len(frames), 1e3 * t_patch / len(frames)

    ray_rss = 0.0
    if not args.no_ray:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        remote = stream(backend="ray_data", workers=2)
        cold_s, cold_n = timed(lambda: count_clips(remote.batches(0, 0)))
        rows.append(("pipeline Ray Data, 2 tasks, cold epoch", cold_n / cold_s, 2))
        rate = best_rate(lambda: count_clips(remote.batches(0, 1)), args.repeats)
        rows.append(("pipeline Ray Data, 2 tasks, cached", rate, 2))
        ray_rss = ray_workers_rss_mib()
        ray.shutdown()

    print(f"\n| what | clips/s | cores | clips/s per core | vs bare decode per core |")
    print("|---|---|---|---|---|")
    for label, rate, cores in rows:
        limit = bare1 if cores == 1 else bare2 / 2
        print(f"| {label} | {rate:.1f} | {cores} | {rate / cores:.1f} | {rate / cores / limit:.0%} |")
    print(f"\nper clip, 1 thread: bare decode {1e3 / bare1:.1f} ms; transforms {ms_transform:.1f} ms "
          f"(PatchMask {ms_patch:.1f} ms)")
    print(f"memory: driver RSS {rss_cache:.0f} MiB after caching the shard ({len(shard)} entries, "
          f"{size * args.repeat / 2**20:.0f} MiB of video), driver peak {rss_mib(field='VmHWM'):.0f} MiB"
          + (f", Ray workers {ray_rss:.0f} MiB" if ray_rss else ""))


if __name__ == "__main__":
    main()
