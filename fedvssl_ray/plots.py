"""Pictures of runs and sweeps (matplotlib, written atomically as PNG): a run's loss and
evaluation curves, a sweep's metric heatmap over two keys, every trial's curves."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402

RunCurves = Mapping[str, Any]
"""``{"label", "rounds", "relative_loss", "eval_rounds", "R@1", "knn_top1"}`` of one run."""


def run_curves(records: Sequence[Mapping[str, Any]], evals: Mapping[int, Mapping[str, Any]],
               label: str) -> dict[str, Any]:
    """A run's curves from its metrics records and evaluations (failed ones left out)."""
    ok = sorted(r for r, e in evals.items() if "error" not in e)
    return {
        "label": label,
        "rounds": [r["round"] for r in records],
        "mean_loss": [r.get("mean_loss") for r in records],
        "relative_loss": [r.get("relative_loss") for r in records],
        "eval_rounds": ok,
        "R@1": [evals[r]["R@1"] for r in ok],
        "knn_top1": [evals[r]["knn_top1"] for r in ok],
    }


def plot_runs(curves: Sequence[RunCurves], path: str | Path, title: str) -> Path:
    """Relative loss per round (left) and R@1 / k-NN top-1 per evaluated round (right)."""
    fig, (loss_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for curve in curves:
        loss_ax.plot(curve["rounds"], _numbers(curve["relative_loss"]), label=curve["label"])
        line, = eval_ax.plot(curve["eval_rounds"], _percent(curve["R@1"]), marker="o",
                             label=f"{curve['label']} R@1")
        eval_ax.plot(curve["eval_rounds"], _percent(curve["knn_top1"]), marker="x",
                     linestyle="--", color=line.get_color(), label=f"{curve['label']} k-NN")
    loss_ax.set(xlabel="round", ylabel="CtP loss / zero-predictor loss",
                title="relative loss (1.0: nothing learnt)")
    eval_ax.set(xlabel="round (0: random init)", ylabel="%", title="test split: R@1, k-NN top-1")
    loss_ax.ticklabel_format(axis="y", useOffset=False)
    for ax in (loss_ax, eval_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if curves:
        eval_ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def plot_heatmap(rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str, metric: str,
                 path: str | Path, title: str) -> Path:
    """``metric`` (a fraction, shown in %) of each trial on a grid of ``x_key`` x ``y_key``."""
    xs = sorted({row[x_key] for row in rows})
    ys = sorted({row[y_key] for row in rows})
    grid = [[math.nan] * len(xs) for _ in ys]
    for row in rows:
        value = row.get(metric)
        grid[ys.index(row[y_key])][xs.index(row[x_key])] = (
            math.nan if value is None else 100 * value
        )
    fig, ax = plt.subplots(figsize=(1.6 * len(xs) + 2.5, 1.2 * len(ys) + 1.8))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set(xlabel=x_key, ylabel=y_key, title=title)
    for i, line in enumerate(grid):
        for j, value in enumerate(line):
            text = "n/a" if math.isnan(value) else f"{value:.1f}"
            ax.text(j, i, text, ha="center", va="center", color="white")
    fig.colorbar(image, ax=ax, label=f"{metric} (%)")
    return _save(fig, path)


def _numbers(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _percent(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else 100 * v for v in values]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path
