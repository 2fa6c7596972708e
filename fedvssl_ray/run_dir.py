"""A run directory: the contract users and tools rely on, written atomically, readable on resume.

::

    <run_dir>/config.json, config.yaml   the fully resolved config
    <run_dir>/metrics.jsonl              one JSON object per round
    <run_dir>/checkpoints/round-NNNN.npz the global (shared) weights after round N, no pickle
    <run_dir>/state/                     what a resume needs: state.json (the commit marker of
                                         the last complete round), client heads, strategy arrays
    <run_dir>/summary.json               final figures

A round is complete once ``state/state.json`` names it. Files of a later, incomplete round are
ignored and replaced on resume, so a run killed at any moment resumes to identical results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import append_jsonl, load_arrays, save_arrays, save_json_atomic
from .config import Config, config_from_dict, config_to_dict, format_config

Weights = dict[str, np.ndarray]
_HEAD_FILE = re.compile(r"client-(\d+)-round-(\d+)\.npz$")


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists without resume, or nothing to resume)."""


@dataclass(frozen=True)
class ResumeState:
    """Everything the round loop needs to continue after its last complete round."""

    round: int
    global_weights: Weights
    head_versions: dict[int, int]
    strategy_state: dict[str, Any]
    strategy_arrays: Weights
    elapsed_s: float


class RunDir:
    """Reads and writes one run's directory; every write is atomic."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.state_dir = self.path / "state"
        self.heads_dir = self.state_dir / "heads"
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.state_path = self.state_dir / "state.json"

    # -- creation and config -------------------------------------------------------------------

    def create(self, cfg: Config) -> None:
        """Start a fresh run here; refuses a directory that already holds a run."""
        if self.state_path.exists() or self.metrics_path.exists():
            raise RunDirError(
                f"{self.path} already holds a run; resume it with --resume {self.path} "
                "(or resume=true run_dir=...), or choose another run_dir"
            )
        for folder in (self.checkpoints, self.heads_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.write_config(cfg)

    def write_config(self, cfg: Config) -> None:
        save_json_atomic(self.path / "config.json", config_to_dict(cfg))
        tmp = self.path / "config.yaml.tmp"
        tmp.write_text(format_config(cfg))
        tmp.replace(self.path / "config.yaml")

    def read_config(self) -> Config:
        path = self.path / "config.json"
        if not path.is_file():
            raise RunDirError(f"{self.path} has no config.json: is it a run directory?")
        return config_from_dict(json.loads(path.read_text()), f" in {path}")

    # -- rounds ----------------------------------------------------------------------------------

    def checkpoint_path(self, round_idx: int) -> Path:
        return self.checkpoints / f"round-{round_idx:04d}.npz"

    def head_path(self, client_id: int, version: int) -> Path:
        return self.heads_dir / f"client-{client_id:05d}-round-{version:04d}.npz"

    def save_round(
        self,
        round_idx: int,
        global_weights: Mapping[str, np.ndarray],
        new_heads: Mapping[int, Mapping[str, np.ndarray]],
        strategy_arrays: Mapping[str, np.ndarray],
    ) -> None:
        """Write a finished round's arrays; the round counts only once :meth:`mark_complete`."""
        for client_id, head in new_heads.items():
            save_arrays(self.head_path(client_id, round_idx), dict(head))
        save_arrays(self.checkpoint_path(round_idx), dict(global_weights), {"round": round_idx})
        save_arrays(self._strategy_path(round_idx), dict(strategy_arrays))

    def mark_complete(
        self,
        round_idx: int,
        head_versions: Mapping[int, int],
        strategy_state: Mapping[str, Any],
        elapsed_s: float,
    ) -> None:
        """Write ``state.json`` (the commit marker) for a saved round and drop superseded files."""
        strategy_file = self._strategy_path(round_idx)
        save_json_atomic(
            self.state_path,
            {
                "round": round_idx,
                "checkpoint": str(self.checkpoint_path(round_idx).relative_to(self.path)),
                "strategy_arrays": strategy_file.name,
                "head_versions": {str(c): v for c, v in sorted(head_versions.items())},
                "strategy": dict(strategy_state),
                "elapsed_s": elapsed_s,
            },
        )
        self._prune(head_versions, keep_strategy=strategy_file)

    def _strategy_path(self, round_idx: int) -> Path:
        return self.state_dir / f"strategy-round-{round_idx:04d}.npz"

    def _prune(self, head_versions: Mapping[int, int], keep_strategy: Path) -> None:
        """Delete head files superseded by a committed round, and older strategy arrays."""
        for path in self.heads_dir.glob("client-*-round-*.npz"):
            match = _HEAD_FILE.search(path.name)
            if match and head_versions.get(int(match[1])) != int(match[2]):
                path.unlink(missing_ok=True)
        for path in self.state_dir.glob("strategy-round-*.npz"):
            if path != keep_strategy:
                path.unlink(missing_ok=True)

    def load_head(self, client_id: int, version: int) -> Weights:
        arrays, _ = load_arrays(self.head_path(client_id, version))
        return arrays

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        append_jsonl(self.metrics_path, dict(record))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        save_json_atomic(self.summary_path, dict(summary))

    # -- resume ----------------------------------------------------------------------------------

    def load_resume_state(self) -> ResumeState | None:
        """The last complete round, or None when no round finished; drops later partial files."""
        if not self.state_path.is_file():
            self._truncate_metrics(0)
            return None
        state = json.loads(self.state_path.read_text())
        round_idx = int(state["round"])
        weights, _ = load_arrays(self.path / state["checkpoint"])
        strategy_arrays, _ = load_arrays(self.state_dir / state["strategy_arrays"])
        head_versions = {int(c): int(v) for c, v in state["head_versions"].items()}
        self._prune(head_versions, keep_strategy=self.state_dir / state["strategy_arrays"])
        for path in self.checkpoints.glob("round-*.npz"):
            if int(path.stem.split("-")[1]) > round_idx:
                path.unlink()
        self._truncate_metrics(round_idx)
        return ResumeState(
            round_idx, weights, head_versions, state["strategy"], strategy_arrays,
            float(state.get("elapsed_s", 0.0)),
        )

    def _truncate_metrics(self, last_round: int) -> None:
        """Keep only the metrics lines of complete rounds (a killed run may have written more)."""
        records = self.read_metrics()
        kept = [r for r in records if int(r.get("round", 0)) <= last_round]
        if len(kept) != len(records):
            tmp = self.metrics_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tmp.replace(self.metrics_path)
