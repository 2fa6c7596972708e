"""A run directory: the contract users and tools rely on, written atomically, readable on resume.

::

    <run_dir>/config.json, config.yaml   the fully resolved config
    <run_dir>/metrics.jsonl              one JSON object per round (with ``eval`` figures on
                                         the rounds evaluated)
    <run_dir>/eval.jsonl                 one line per evaluation of the global (round 0: init)
    <run_dir>/checkpoints/round-NNNN.npz the global (shared) weights after round N, no pickle
    <run_dir>/state/                     what a resume needs: state.json (the commit marker of
                                         the last complete round), client heads, strategy arrays
    <run_dir>/summary.json               final figures
    <run_dir>/plot.png                   relative loss and evaluation figures per round

A round is complete once ``state/state.json`` names it. Files of a later, incomplete round are
ignored and replaced on resume, so a run killed at any moment resumes to identical results. A
resume first checks, without changing anything, that the committed state is whole and that the
config still describes the same run (:func:`check_resume_config`); otherwise it stops with a
:class:`RunDirError` that says what is missing or which key differs.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import (
    CheckpointError,
    append_jsonl,
    load_arrays,
    save_arrays,
    save_json_atomic,
    save_text_atomic,
)
from .config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    flatten,
    format_config,
)

Weights = dict[str, np.ndarray]
_HEAD_FILE = re.compile(r"client-(\d+)-round-(\d+)\.npz$")
_ROUND_FILE = re.compile(r"round-(\d+)\.npz$")

RESUME_SAFE_KEYS = (
    "rounds", "round_timeout_s", "min_clients", "resume", "run_dir", "ray.",
    "client.num_gpus", "client.num_cpus", "client.num_actors", "client.torch_threads",
    "client.max_cached_clients", "data.loader", "data.decode_workers", "eval.", "finetune.",
)
"""Keys a resume may change (prefixes end with a dot): where and how fast the run goes, never
what its saved rounds mean."""


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
    global_is_initial: bool = False  # no round has aggregated an update yet


class RunDir:
    """Reads and writes one run's directory; every write is atomic."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.state_dir = self.path / "state"
        self.heads_dir = self.state_dir / "heads"
        self.metrics_path = self.path / "metrics.jsonl"
        self.eval_path = self.path / "eval.jsonl"
        self.summary_path = self.path / "summary.json"
        self.state_path = self.state_dir / "state.json"

    # -- creation and config -------------------------------------------------------------------

    def create(self, cfg: Config) -> None:
        """Start a fresh run here; refuses a directory that already holds a run, or files of
        something else (see :meth:`check_new`)."""
        self.check_new()
        with self._writing("creating the run directory"):
            for folder in (self.checkpoints, self.heads_dir):
                folder.mkdir(parents=True, exist_ok=True)
            self.write_config(cfg)

    def check_new(self) -> None:
        """Raise :class:`RunDirError`, changing nothing, unless a fresh run can start here: the
        directory is new, empty, or a run that never completed a round, and can be created."""
        if self.state_path.exists() or self.metrics_path.exists():
            raise RunDirError(
                f"{self.path} already holds a run; resume it with --resume {self.path} "
                "(or resume=true run_dir=...), or choose another run_dir"
            )
        if self.path.is_dir() and any(self.path.iterdir()) and not (
            self.path / "config.json"
        ).is_file():
            raise RunDirError(
                f"run_dir={self.path} is a folder of other files, not a run directory; choose "
                "a new or empty folder for run_dir"
            )
        existing = next(p for p in (self.path, *self.path.absolute().parents) if p.exists())
        if not existing.is_dir():
            raise RunDirError(
                f"run_dir={self.path}: {existing} is a file, not a folder; choose another run_dir"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise RunDirError(
                f"run_dir={self.path}: {existing} is not writable; choose a run_dir you can write"
            )

    def write_config(self, cfg: Config) -> None:
        with self._writing("writing the config"):
            save_json_atomic(self.path / "config.json", config_to_dict(cfg))
            save_text_atomic(self.path / "config.yaml", format_config(cfg))

    def read_config(self) -> Config:
        path = self.path / "config.json"
        if not path.is_file():
            raise RunDirError(f"{self.path} has no config.json: is it a run directory?")
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise RunDirError(
                f"{path} is not readable JSON ({err}); the file was edited or damaged: restore "
                "it, or start a new run with another run_dir"
            ) from None
        if not isinstance(values, dict):
            raise RunDirError(f"{path} does not hold a config (a JSON object); restore it")
        return config_from_dict(values, f" in {path}")

    @contextmanager
    def _writing(self, action: str) -> Iterator[None]:
        """Turn a failed write (full disk, read-only or missing folder) into a
        :class:`RunDirError` that says which round a resume continues from."""
        try:
            yield
        except OSError as err:
            raise RunDirError(self._write_failure(err, action)) from None

    def _write_failure(self, err: OSError, action: str) -> str:
        where = err.filename or self.path
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            problem = f"the disk is full (no space left writing {where})"
        else:
            problem = f"cannot write {where} ({err.strerror or err})"
        done = self._last_marked_round()
        if done is None:
            return f"{action} in {self.path}: {problem}. Fix it, or choose another run_dir."
        complete = f"round {done} is the last complete round" if done else "no round is complete"
        return (
            f"{action} in {self.path}: {problem}. No file was left half-written and {complete} "
            f"(a resume ignores the rest): fix it, then continue with --resume {self.path}"
        )

    def _last_marked_round(self) -> int | None:
        """The round ``state.json`` names (0 before round 1); None if this is no run yet."""
        if not (self.path / "config.json").is_file():
            return None
        try:
            return int(json.loads(self.state_path.read_text())["round"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

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
            self.save_head(client_id, round_idx, head)
        with self._writing(f"saving round {round_idx}"):
            save_arrays(self.checkpoint_path(round_idx), dict(global_weights), {"round": round_idx})
            save_arrays(self._strategy_path(round_idx), dict(strategy_arrays))

    def save_head(self, client_id: int, round_idx: int, head: Mapping[str, np.ndarray]) -> None:
        """Write a client's head trained in ``round_idx`` (part of that round's files)."""
        with self._writing(f"saving round {round_idx}"):
            save_arrays(self.head_path(client_id, round_idx), dict(head))

    def mark_complete(
        self,
        round_idx: int,
        head_versions: Mapping[int, int],
        strategy_state: Mapping[str, Any],
        elapsed_s: float,
        *,
        global_is_initial: bool = False,
    ) -> None:
        """Write ``state.json`` (the commit marker) for a saved round and drop superseded files."""
        strategy_file = self._strategy_path(round_idx)
        state = {
            "round": round_idx,
            "checkpoint": str(self.checkpoint_path(round_idx).relative_to(self.path)),
            "strategy_arrays": strategy_file.name,
            "head_versions": {str(c): v for c, v in sorted(head_versions.items())},
            "strategy": dict(strategy_state),
            "elapsed_s": elapsed_s,
            "global_is_initial": global_is_initial,
        }
        with self._writing(f"committing round {round_idx}"):
            save_json_atomic(self.state_path, state)
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
        with self._writing(f"recording round {record.get('round')}"):
            append_jsonl(self.metrics_path, dict(record))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics records; a last line torn by a crash in mid-write is left out."""
        return self._read_metrics_lines()[0]

    def _read_metrics_lines(self) -> tuple[list[dict[str, Any]], bool]:
        """The records and whether the file ends in a torn line; a bad line elsewhere raises."""
        if not self.metrics_path.is_file():
            return [], False
        lines = self.metrics_path.read_text(errors="replace").split("\n")
        records, torn = [], False
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if number == len(lines):  # no newline after it: a write cut short
                    torn = True
                    continue
                raise RunDirError(
                    f"{self.metrics_path} line {number} is not JSON; the file was edited or "
                    "damaged: restore it or start a new run_dir"
                ) from None
        return records, torn

    def append_eval(self, round_idx: int, result: Mapping[str, Any]) -> None:
        """Record an evaluation of the global after ``round_idx`` (0: the initial model) in
        ``eval.jsonl``, and in that round's metrics line (rewritten atomically)."""
        with self._writing(f"recording the evaluation of round {round_idx}"):
            append_jsonl(self.eval_path, {"round": round_idx, **result})
            records, _ = self._read_metrics_lines()
            if not any(r.get("round") == round_idx for r in records):
                return
            for record in records:
                if record.get("round") == round_idx:
                    record["eval"] = dict(result)
            self._write_lines(self.metrics_path, records)

    def read_evals(self) -> dict[int, dict[str, Any]]:
        """Every recorded evaluation by round (the latest if a round was evaluated twice)."""
        if not self.eval_path.is_file():
            return {}
        evals = {}
        for line in self.eval_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a torn last line
                continue
            evals[int(record.pop("round"))] = record
        return evals

    def _write_lines(self, path: Path, records: list[dict[str, Any]]) -> None:
        save_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))

    def write_plot(self) -> Path:
        """``plot.png``: the relative loss per round and the evaluations of the global."""
        from .plots import plot_runs, run_curves  # matplotlib only when a run ends

        curves = run_curves(self.read_metrics(), self.read_evals(), "global")
        with self._writing("writing plot.png"):
            return plot_runs([curves], self.path / "plot.png", str(self.path.name))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        with self._writing("writing summary.json"):
            save_json_atomic(self.summary_path, dict(summary))

    # -- resume ----------------------------------------------------------------------------------

    def committed_round(self) -> int:
        """The last complete round (0: none), after checking that a resume can continue from it.

        Reads only; a missing or damaged piece raises :class:`RunDirError` naming it.
        """
        state = self._read_state()
        return 0 if state is None else int(state["round"])

    def _read_state(self) -> dict[str, Any] | None:
        """The parsed commit marker with every file it names checked; None before round 1."""
        if not self.state_path.is_file():
            later = self._rounds_on_disk()
            if later:
                raise RunDirError(
                    f"cannot resume {self.path}: {self.state_path} (the record of the last "
                    f"complete round) is missing, but the directory holds rounds up to "
                    f"{max(later)} ({self._describe_rounds()}). Nothing was changed. Restore "
                    f"{self.state_path.name} to continue this run, or start a new run with "
                    "another run_dir."
                )
            return None
        try:
            state = json.loads(self.state_path.read_text())
            round_idx = int(state["round"])
            files = [self.path / state["checkpoint"], self.state_dir / state["strategy_arrays"]]
            versions = {int(c): int(v) for c, v in state["head_versions"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise RunDirError(
                f"cannot resume {self.path}: {self.state_path} is damaged ({type(err).__name__}: "
                f"{err}). Nothing was changed. {self._restore_hint()}"
            ) from None
        files += [self.head_path(c, v) for c, v in versions.items() if v > 0]
        missing = [str(f.relative_to(self.path)) for f in files if not f.is_file()]
        if missing:
            raise RunDirError(
                f"cannot resume {self.path} from round {round_idx}: {len(missing)} file(s) named "
                f"by {self.state_path.name} are missing: {', '.join(missing[:5])}. Nothing was "
                "changed."
            )
        self._check_readable(files, round_idx)
        return state

    def _check_readable(self, files: list[Path], round_idx: int) -> None:
        """Read every array file a resume needs; a damaged one raises :class:`RunDirError`."""
        damaged = []
        for path in files:
            try:
                load_arrays(path)
            except CheckpointError as err:
                damaged.append(str(err))
        if damaged:
            raise RunDirError(
                f"cannot resume {self.path} from round {round_idx}, its last complete round: "
                f"{len(damaged)} file(s) it needs are damaged: {damaged[0]}. Nothing was changed. "
                f"Round {round_idx} is the only round this run can resume from (the client heads "
                "and strategy state of earlier rounds are not kept): restore the file(s) from a "
                "backup, or start a new run with another run_dir"
            )

    def _restore_hint(self) -> str:
        """What to do when the commit marker is unreadable: the round it should name."""
        later = self._rounds_on_disk(after=0)
        if not later:
            return "Start a new run with another run_dir."
        return (
            f"The directory holds rounds up to {max(later)} ({self._describe_rounds()}): "
            f"restore {self.state_path.name} to resume from round {max(later)}, or start a new "
            "run with another run_dir."
        )

    def _rounds_on_disk(self, after: int = 1) -> set[int]:
        """Rounds after ``after`` that left files or metrics lines (after the first: evidence
        of a commit)."""
        rounds = {int(r.get("round", 0)) for r in self._read_metrics_lines()[0]}
        rounds |= {int(m[1]) for p in self.checkpoints.glob("round-*.npz")
                   if (m := _ROUND_FILE.search(p.name))}
        rounds |= {int(m[2]) for p in self.heads_dir.glob("client-*-round-*.npz")
                   if (m := _HEAD_FILE.search(p.name))}
        return {r for r in rounds if r > after}

    def _describe_rounds(self) -> str:
        found = [f"{len(self._read_metrics_lines()[0])} metrics.jsonl line(s)"]
        found.append(f"{len(list(self.checkpoints.glob('round-*.npz')))} checkpoint(s)")
        found.append(f"{len(list(self.heads_dir.glob('client-*.npz')))} client head file(s)")
        return ", ".join(found)

    def load_resume_state(self) -> ResumeState | None:
        """The last complete round, or None when no round finished; then drops the files and
        metrics lines of a later, uncommitted round. Checks everything before changing anything."""
        state = self._read_state()
        try:
            weights = load_arrays(self.path / state["checkpoint"])[0] if state else {}
            strategy_arrays = (
                load_arrays(self.state_dir / state["strategy_arrays"])[0] if state else {}
            )
        except CheckpointError as err:
            raise RunDirError(f"cannot resume {self.path}: {err}. Nothing was changed.") from None
        round_idx = int(state["round"]) if state else 0
        head_versions = {int(c): int(v) for c, v in state["head_versions"].items()} if state else {}
        with self._writing(f"dropping the files of rounds after round {round_idx}"):
            self._prune(head_versions, keep_strategy=self._strategy_path(round_idx))
            for path in self.checkpoints.glob("round-*.npz"):
                match = _ROUND_FILE.search(path.name)
                if match and int(match[1]) > round_idx:
                    path.unlink()
            self._truncate_metrics(round_idx)
            self._drop_temp_files()
        if state is None:
            return None
        return ResumeState(
            round_idx, weights, head_versions, state["strategy"], strategy_arrays,
            float(state.get("elapsed_s", 0.0)), bool(state.get("global_is_initial", False)),
        )

    def _drop_temp_files(self) -> None:
        """Delete the temporary files of atomic writes cut short by a killed process."""
        for folder in (self.path, self.checkpoints, self.state_dir, self.heads_dir):
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)

    def _truncate_metrics(self, last_round: int) -> None:
        """Keep only the metrics and evaluation lines of complete rounds (a killed run may have
        written more, or half a line)."""
        records, torn = self._read_metrics_lines()
        kept = [r for r in records if int(r.get("round", 0)) <= last_round]
        if len(kept) != len(records) or torn:
            self._write_lines(self.metrics_path, kept)
        evals = self.read_evals()
        if any(r > last_round for r in evals):
            self._write_lines(self.eval_path, [{"round": r, **v} for r, v in sorted(evals.items())
                                               if r <= last_round])


def check_resume_config(saved: Config, resumed: Config) -> None:
    """Refuse a resume whose config changes what the saved rounds mean (seed, data, model,
    clients, local training, strategy); only :data:`RESUME_SAFE_KEYS` may differ."""
    old, new = flatten(config_to_dict(saved)), flatten(config_to_dict(resumed))
    changed = [k for k in old if old[k] != new[k] and not k.startswith(RESUME_SAFE_KEYS)]
    changed = [k for k in changed if k not in RESUME_SAFE_KEYS]
    if changed:
        detail = ", ".join(f"{k} (saved {old[k]!r}, given {new[k]!r})" for k in changed)
        raise ConfigError(
            f"--resume cannot change {detail}: it changes what the saved rounds mean. Start a "
            "new run (another run_dir) instead. A resume may change only: "
            + ", ".join(k.rstrip(".") + ("*" if k.endswith(".") else "") for k in RESUME_SAFE_KEYS)
        )

