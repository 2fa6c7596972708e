"""A sweep's results from its trials' run directories: the table (CSV and text) and pictures.

Read from the run directories rather than Tune's own records, so a restored sweep, a trial
stopped early and one still running are all described the same way.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import config_to_dict, flatten
from ..plots import plot_heatmap, plot_runs, run_curves
from ..run_dir import RunDir

COLUMNS = ("rounds", "final_loss", "final_relative_loss", "best_R@1", "best_round", "last_R@1",
           "last_knn_top1", "wall_s", "stopped_early")


def collect_results(sweep_dir: str | Path, keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per trial run directory: the swept ``keys``, losses, best and last evaluation,
    rounds run, wall time, and whether it stopped before its last round."""
    rows = []
    for path in sorted((Path(sweep_dir) / "runs").glob("*/config.json")):
        run = RunDir(path.parent)
        cfg = run.read_config()
        flat = flatten(config_to_dict(cfg))
        records = run.read_metrics()
        evals = {r: e for r, e in run.read_evals().items() if r > 0 and "error" not in e}
        best = max(evals, key=lambda r: (evals[r]["R@1"], evals[r]["knn_top1"]), default=None)
        last = max(evals, default=None)
        row = {key: flat[key] for key in keys}
        row.update({
            "trial": path.parent.name,
            "rounds": len(records),
            "final_loss": records[-1]["mean_loss"] if records else None,
            "final_relative_loss": records[-1].get("relative_loss") if records else None,
            "best_R@1": evals[best]["R@1"] if best else None,
            "best_round": best,
            "last_R@1": evals[last]["R@1"] if last else None,
            "last_knn_top1": evals[last]["knn_top1"] if last else None,
            "wall_s": round(sum(r["time"]["round_s"] for r in records), 1),
            "stopped_early": len(records) < cfg.rounds,
        })
        rows.append(row)
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str) -> str:
    """The rows as aligned text, best ``metric`` first (fractions shown in %)."""
    columns = [*keys, *COLUMNS]
    ordered = sorted(rows, key=lambda r: -(r.get(metric) or 0.0))
    cells = [[_cell(c, row.get(c)) for c in columns] for row in ordered]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if column in ("best_R@1", "last_R@1", "last_knn_top1"):
        return f"{100 * value:.1f}%"
    if column == "wall_s":
        return f"{value:.1f}"
    if column in ("final_loss", "final_relative_loss"):
        return f"{value:.4f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_outputs(
    sweep_dir: str | Path, rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str
) -> list[Path]:
    """``results.csv``, ``heatmap.png`` (``metric`` over the first two swept keys) and
    ``curves.png`` (every trial) in the sweep directory."""
    sweep_dir = Path(sweep_dir)
    written = [_write_csv(sweep_dir / "results.csv", rows, ["trial", *keys, *COLUMNS])]
    if len(keys) >= 2 and rows:
        written.append(plot_heatmap(rows, keys[0], keys[1], metric, sweep_dir / "heatmap.png",
                                    f"{metric} per trial"))
    curves = []
    for row in rows:
        run = RunDir(sweep_dir / "runs" / row["trial"])
        curves.append(run_curves(run.read_metrics(), run.read_evals(), row["trial"]))
    written.append(plot_runs(curves, sweep_dir / "curves.png", f"{len(rows)} trials"))
    return written


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text.getvalue())
    os.replace(tmp, path)
    return path
