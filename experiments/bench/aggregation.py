"""Benchmark of the server aggregation on the real R3D-18 + CtP-head layout.

Aggregates K client updates (FedVSSL alpha=0.9, beta=1, round 2, so K+1 sources with the
previous global) over all 126 entries (40.29 M float32 values, 161 MB per model) and
reports, for each K:

* time, against the machine's memory-bandwidth limit measured in the same run: K+1 in-place
  ``np.add(a, b, out=a)`` over a model's worth of float32 (one add per source);
* peak extra memory during ``aggregate`` (tracemalloc, which sees numpy's buffers), in model
  copies;
* the same sum with a float64 accumulator, for the precision/speed decision;
* the float32 accumulation error against an exact float64 sum.

Client models are synthesised from the layout (no torch); at most 5 distinct ones are built
and reused cyclically, which changes nothing for memory traffic (161 MB per update is far
beyond any cache).

    python experiments/bench/aggregation.py            # K = 5 and 50
    python experiments/bench/aggregation.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import platform
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from fedvssl_ray.aggregation import ClientUpdate, WeightedSum, make_strategy

Layout = dict[str, tuple[tuple[int, ...], np.dtype]]


def ctp_r3d18_layout() -> Layout:
    """State-dict layout of the CtP model: torchvision R3D-18 backbone + CtP head."""
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    layout: Layout = {}

    def conv_bn(conv: str, bn: str, c_out: int, c_in: int, kernel: tuple[int, int, int]) -> None:
        layout[f"backbone.{conv}.weight"] = ((c_out, c_in, *kernel), f32)
        for name in ("weight", "bias", "running_mean", "running_var"):
            layout[f"backbone.{bn}.{name}"] = ((c_out,), f32)
        layout[f"backbone.{bn}.num_batches_tracked"] = ((), i64)

    conv_bn("stem.0", "stem.1", 64, 3, (3, 7, 7))
    c_in = 64
    for stage, c_out in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            conv_bn(f"{p}.conv1.0", f"{p}.conv1.1", c_out, c_in if block == 0 else c_out, (3, 3, 3))
            conv_bn(f"{p}.conv2.0", f"{p}.conv2.1", c_out, c_out, (3, 3, 3))
            if block == 0 and stage > 1:
                conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", c_out, c_in, (1, 1, 1))
        c_in = c_out
    layout["head.temporal_conv.weight"] = ((512, 512, 2, 1, 1), f32)
    layout["head.temporal_conv.bias"] = ((512,), f32)
    layout["head.fc1.weight"] = ((512, 12800), f32)
    layout["head.fc1.bias"] = ((512,), f32)
    layout["head.pred_head.weight"] = ((64, 512), f32)
    layout["head.pred_head.bias"] = ((64,), f32)
    return layout


def check_layout(layout: Layout) -> None:
    """Entry and parameter counts of FEDVSSL.md section 3 (buffers excluded from params)."""
    backbone = [k for k in layout if k.startswith("backbone.")]
    params = {
        part: sum(
            int(np.prod(s))
            for k, (s, _) in layout.items()
            if k.startswith(part)
            and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        for part in ("backbone.", "head.")
    }
    assert (len(backbone), len(layout) - len(backbone)) == (120, 6), len(backbone)
    assert params == {"backbone.": 33_166_272, "head.": 7_111_744}, params


def synth_model(
    layout: Layout, rng: np.random.Generator, base: dict | None = None
) -> dict[str, np.ndarray]:
    """Random weights (or ``base`` plus small noise), int64 counters near 477."""
    out = {}
    for key, (shape, dtype) in layout.items():
        if dtype.kind == "i":
            out[key] = np.array(477 + int(rng.integers(0, 2)), dtype)
        elif base is None:
            out[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)
        else:
            noise = rng.standard_normal(shape, dtype=np.float32)
            noise *= np.float32(1e-3)
            noise += base[key]
            out[key] = noise
    return out


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def add_time(n_values: int, repeats: int) -> float:
    """Best time of one in-place float32 ``np.add`` over ``n_values``: the bandwidth limit."""
    a = np.ones(n_values, np.float32)
    b = np.full(n_values, 1e-6, np.float32)
    return best_time(lambda: np.add(a, b, out=a), repeats)


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak memory allocated by ``fn`` beyond what was live before it (result kept alive)."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return peak - before


def float64_sum(layout: Layout, updates, previous, coeffs: np.ndarray) -> dict[str, np.ndarray]:
    """The same weighted sum with a float64 accumulator, cast back to float32 at the end."""
    wide = {k: (s, np.dtype(np.float64)) for k, (s, _) in layout.items()}
    acc = WeightedSum(wide)
    for u, c in zip(updates, coeffs, strict=True):
        acc.add(u.weights, 0.5 * c)
    acc.add(previous, 0.5)
    return {k: v.astype(layout[k][1]) for k, v in acc.result().items()}


def precision_row(k: int, size: int, rng: np.random.Generator) -> float:
    """Max |float32 sum - exact sum| / (2^-24 max|x|) for k clients near a common model."""
    base = rng.standard_normal(size, dtype=np.float32) * np.float32(0.05)
    sources = [
        base + np.float32(1e-3) * rng.standard_normal(size, dtype=np.float32) for _ in range(k)
    ]
    w = rng.random(k)
    w /= w.sum()
    acc = WeightedSum({"x": ((size,), np.dtype(np.float32))})
    exact = np.zeros(size)
    for src, wk in zip(sources, w, strict=True):
        acc.add({"x": src}, wk)
        exact += wk * src.astype(np.float64)
    err = np.abs(acc.result()["x"].astype(np.float64) - exact)
    return float(err.max() / (2.0**-24 * max(float(np.abs(s).max()) for s in sources)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: K=2, one repeat")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=None, help="K values (default 5 50)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ks = args.clients or ([2] if args.quick else [5, 50])
    repeats = 1 if args.quick else args.repeats

    layout = ctp_r3d18_layout()
    check_layout(layout)
    model_bytes = sum(int(np.prod(s)) * d.itemsize for s, d in layout.values())
    n_values = sum(int(np.prod(s)) for s, _ in layout.values())
    rng = np.random.default_rng(0)
    previous = synth_model(layout, rng)
    distinct = [synth_model(layout, rng, base=previous) for _ in range(min(max(ks), 5))]
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}")
    print(
        f"model: {len(layout)} entries, {n_values / 1e6:.2f} M values, {model_bytes / 1e6:.1f} MB"
    )

    t_add = add_time(n_values, max(repeats, 5))
    print(
        f"np.add(a, b, out=a) over one model: {t_add * 1e3:.1f} ms "
        f"({3 * 4 * n_values / t_add / 1e9:.1f} GB/s)"
    )

    print()
    print("| K | aggregate | limit (K+1) x add | ratio | peak extra memory | float64 accumulator |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        updates = [
            ClientUpdate(i, distinct[i % len(distinct)], 1907 + i % 2, 1.0 + 0.01 * i)
            for i in range(k)
        ]
        strategy = make_strategy("fedvssl", alpha=0.9, beta=1, shared="all")

        def run(strategy=strategy, updates=updates):
            return strategy.aggregate(updates, previous=previous, round=2)

        t = best_time(run, repeats)
        peak = peak_extra_bytes(run)
        coeffs = np.array([c.weight for c in strategy.last_report.clients])
        t64 = best_time(lambda u=updates, c=coeffs: float64_sum(layout, u, previous, c), repeats)
        limit = (k + 1) * t_add
        print(
            f"| {k} | {t * 1e3:.0f} ms | {limit * 1e3:.0f} ms | {limit / t:.0%} "
            f"| {peak / model_bytes:.2f} copies ({peak / 1e6:.0f} MB) | {t64 * 1e3:.0f} ms ({t64 / t:.2f}x) |"
        )

    print()
    print("float32 accumulation error against the exact sum, convex weights, u = 2^-24:")
    print("| sources | max error / (u max|x|) | max error / max|x| |")
    print("|---|---|---|")
    size = 1 << 16 if args.quick else 1 << 20
    for k in (5,) if args.quick else (5, 50, 100):
        rel = precision_row(k, size, np.random.default_rng(k))
        print(f"| {k} | {rel:.2f} | {rel * 2.0**-24:.1e} |")


if __name__ == "__main__":
    main()
