"""The federated round loop, independent of where clients run.

Each round: sample clients (seeded by (seed, round)), let a :class:`ClientRunner` train them from
the current global, aggregate the successful updates with the configured strategy, hand the round
(checkpoint, heads, strategy state, metrics line) to the background writer and report progress;
the next round trains while it is written (:mod:`.commit`). The Ray engine and the plain
in-process loop differ only in their runner, so they compute the same weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from ..aggregation import NoValidUpdatesError, Weights, make_strategy
from ..config import Config
from ..run_dir import RunDir
from .commit import BackgroundWriter, HeadSource, RoundCommit, write_round
from .evaluator import (
    EvalResult,
    RoundEvaluator,
    eval_rounds,
    load_cached_initial,
    save_cached_initial,
    summarize,
)
from .messages import ClientResult
from .strategy_params import strategy_params

EventSink = Callable[[dict[str, Any]], None]


class RunStopped(RuntimeError):
    """The run cannot go on (too few clients succeeded twice in a row); state is kept to resume."""


@dataclass
class RoundOutcome:
    """What a runner returns for one round."""

    results: list[ClientResult]
    failures: dict[int, str]
    timings: dict[str, float] = field(default_factory=dict)


class ClientRunner(Protocol):
    """Trains the sampled clients of a round from the global weights, wherever they run."""

    def initial_global(self) -> Weights:
        """The round-0 global, from the seeded model init the clients share."""

    def run_round(
        self, global_weights: Weights, round_idx: int, client_ids: Sequence[int],
        heads: HeadSource, emit: EventSink,
    ) -> RoundOutcome: ...

    def close(self) -> None: ...


def loss_summary(results: Sequence[ClientResult]) -> dict[str, float | None]:
    """The round's mean CtP loss, the all-zero predictor's mean loss on the same clips, and
    their ratio (1.0: the model predicts no better than zero motion)."""
    losses = [r.update.loss for r in results]
    zeros = [r.zero_loss for r in results if r.zero_loss is not None]
    mean_loss = float(np.mean(losses)) if losses else None
    mean_zero = float(np.mean(zeros)) if zeros and len(zeros) == len(losses) else None
    relative = mean_loss / mean_zero if mean_loss is not None and mean_zero else None
    return {"mean_loss": mean_loss, "mean_zero_loss": mean_zero, "relative_loss": relative}


def sample_clients(seed: int, round_idx: int, num_clients: int, per_round: int) -> list[int]:
    """The clients of a round: drawn without replacement, seeded by (seed, round), sorted."""
    rng = np.random.default_rng([seed, round_idx])
    return sorted(int(c) for c in rng.choice(num_clients, size=per_round, replace=False))


class FederatedRun:
    """Drives rounds from the last complete one to ``cfg.rounds``."""

    def __init__(
        self, cfg: Config, run_dir: RunDir, runner: ClientRunner, emit: EventSink | None = None,
        evaluator: RoundEvaluator | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.runner = runner
        self.emit = emit or (lambda event: None)  # progress events, e.g. to the launching script
        self.strategy = make_strategy(cfg.strategy.name, **strategy_params(cfg))
        self.evaluator = evaluator
        self.eval_rounds = eval_rounds(cfg) if evaluator is not None else set()
        self.evals: dict[int, EvalResult] = {}
        self.writer = BackgroundWriter()

    def run(self) -> dict[str, Any]:
        """Run (or resume) to the last round; returns the summary also written to disk.

        Every round handed to the writer is committed before this returns or raises (a writer
        failure is raised instead); a round still training is left uncommitted.
        """
        try:
            summary = self._run_rounds()
        finally:
            self.writer.close()
        self.emit({"type": "done", "summary": summary})
        return summary

    def _run_rounds(self) -> dict[str, Any]:
        started = time.perf_counter()
        resume = self.run_dir.load_resume_state() if self.cfg.resume else None
        if resume is None:
            global_weights, start_round, elapsed = self.runner.initial_global(), 0, 0.0
            heads = HeadSource(self.run_dir, {})
            self.global_is_initial = True
        else:
            global_weights, start_round = resume.global_weights, resume.round
            elapsed = resume.elapsed_s
            heads = HeadSource(self.run_dir, resume.head_versions)
            self.global_is_initial = resume.global_is_initial
            self.strategy.load_state_dict(resume.strategy_state)
            self.strategy.load_state_arrays(resume.strategy_arrays)
            self.emit({"type": "resumed", "round": start_round})
        self._start_evaluation(None if resume else global_weights)
        for round_idx in range(start_round + 1, self.cfg.rounds + 1):
            global_weights = self._round(round_idx, global_weights, heads, started, elapsed)
            if round_idx in self.eval_rounds:
                self.evaluator.submit(round_idx, global_weights)
            self._collect_evaluations(wait=False)
        self._collect_evaluations(wait=True)
        self.writer.drain()
        summary = self._summary(time.perf_counter() - started + elapsed)
        self.run_dir.write_summary(summary)
        self.run_dir.write_plot()
        return summary

    def _start_evaluation(self, initial: Weights | None) -> None:
        """Evaluate the random init first (cached per dataset, backbone and seed), overlapped
        with round 1; ``initial`` is None on resume, where the evaluator rebuilds it."""
        if self.evaluator is None:
            return
        self.evals = self.run_dir.read_evals()
        if 0 in self.evals:
            return
        cached = load_cached_initial(self.cfg)
        if cached is not None:
            self._record_evaluation(0, cached)
        else:
            self.evaluator.submit(0, initial)

    def _collect_evaluations(self, wait: bool) -> None:
        """Record the evaluations that finished (every pending one with ``wait``)."""
        if self.evaluator is None:
            return
        for round_idx, result in self.evaluator.finished(wait=wait):
            if round_idx == 0:
                save_cached_initial(self.cfg, result)
            self._record_evaluation(round_idx, result)

    def _record_evaluation(self, round_idx: int, result: EvalResult) -> None:
        self.evals[round_idx] = result
        # through the writer: after the round's metrics line, never beside another write of it
        self.writer.submit(partial(self.run_dir.append_eval, round_idx, result))
        kind = "eval_failed" if "error" in result else "eval_done"
        self.emit({"type": kind, "round": round_idx, "result": result,
                   "initial": self.evals.get(0)})

    def _train_and_aggregate(
        self, round_idx: int, global_weights: Weights, clients: list[int], heads: HeadSource
    ) -> tuple[RoundOutcome, Weights, str, dict[str, Any], int]:
        """Train the round's clients and aggregate; retried once when fewer than
        ``min_clients`` updates survive screening (the strategy's state is rolled back first)."""
        cfg = self.cfg
        saved_state = self.strategy.state_arrays()
        for attempt in (1, 2):
            trained_from = time.perf_counter()
            outcome = self.runner.run_round(global_weights, round_idx, clients, heads, self.emit)
            results = sorted(outcome.results, key=lambda r: r.update.client_id)
            outcome.results = results
            trained = time.perf_counter()
            status = "ok"
            try:
                new_global = self.strategy.aggregate(
                    [r.update for r in results], previous=global_weights, round=round_idx,
                    previous_is_initial=self.global_is_initial,
                )
            except NoValidUpdatesError as err:
                new_global, status = global_weights, f"failed: {err}"
            last_report = self.strategy.last_report  # also set when every update was rejected
            report = last_report.to_dict() if last_report is not None else {}
            accepted = len(report.get("clients", ()))
            outcome.timings["clients_s"] = trained - trained_from
            outcome.timings["aggregate_s"] = time.perf_counter() - trained
            if accepted >= cfg.min_clients:
                return outcome, new_global, status, report, attempt
            self.strategy.load_state_arrays(saved_state)
            rejected = {str(r["client_id"]): r["reason"] for r in report.get("rejected", ())}
            if attempt == 1:
                self.emit({"type": "retry", "round": round_idx, "accepted": accepted,
                           "failures": outcome.failures, "rejected": rejected})
        raise RunStopped(
            f"round {round_idx}: only {accepted} of {len(clients)} client updates were accepted, "
            f"twice (min_clients={cfg.min_clients}); failed: {outcome.failures}; rejected: "
            f"{rejected}. The run stopped after round {round_idx - 1}; fix the cause and resume "
            f"with --resume {self.run_dir.path}"
        )

    def _round(
        self, round_idx: int, global_weights: Weights, heads: HeadSource, started: float,
        elapsed: float,
    ) -> Weights:
        cfg = self.cfg
        clients = sample_clients(cfg.seed, round_idx, cfg.num_clients, cfg.clients_per_round)
        self.emit({"type": "round_start", "round": round_idx, "rounds": cfg.rounds,
                   "clients": clients})
        round_start = time.perf_counter()
        outcome, new_global, status, report, attempts = self._train_and_aggregate(
            round_idx, global_weights, clients, heads
        )
        aggregated = time.perf_counter()
        accepted = {int(c["client_id"]) for c in report.get("clients", ())}
        if accepted:
            self.global_is_initial = False
        new_heads = {r.update.client_id: r.head for r in outcome.results
                     if r.update.client_id in accepted}
        heads.record(round_idx, new_heads)
        record = {
            "round": round_idx,
            "status": status,
            "clients": clients,
            "attempts": attempts,
            "accepted": len(accepted),
            "updates": [
                {"client": r.update.client_id, "loss": r.update.loss, "zero_loss": r.zero_loss,
                 "num_examples": r.update.num_examples, "steps": r.steps,
                 **{k: round(v, 4) for k, v in r.timings.items()}}
                for r in outcome.results
            ],
            **loss_summary(outcome.results),
            "aggregation": report,
            "failed": {str(c): msg for c, msg in outcome.failures.items()},
        }
        self.writer.drain()  # the previous round's write: at most one round waits in memory
        done = time.perf_counter()
        record["time"] = {
            "round_s": done - round_start,
            **{k: round(v, 4) for k, v in outcome.timings.items()},
            "checkpoint_s": done - aggregated,  # on the critical path: waiting for the writer
        }
        commit = RoundCommit(
            round_idx, new_global, new_heads, self.strategy.state_arrays(), record,
            dict(heads.versions), self.strategy.state_dict(), elapsed + done - started,
            self.global_is_initial,
        )
        self.writer.submit(partial(write_round, self.run_dir, commit, heads))
        self.emit({"type": "round_end", "round": round_idx, "rounds": cfg.rounds,
                   "mean_loss": record["mean_loss"], "relative_loss": record["relative_loss"],
                   "round_s": done - round_start, "failed": sorted(outcome.failures),
                   "status": status})
        return new_global

    def _summary(self, wall_s: float) -> dict[str, Any]:
        records = self.run_dir.read_metrics()
        losses = [r["mean_loss"] for r in records]
        last = max((r["round"] for r in records), default=0)
        return {
            "rounds": last,
            "loss_per_round": losses,
            "relative_loss_per_round": [r.get("relative_loss") for r in records],
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "failed_rounds": [r["round"] for r in records if r["status"] != "ok"],
            "checkpoint": str(self.run_dir.checkpoint_path(last)) if last else None,
            **({"eval": summarize(self.evals)} if self.evaluator else {}),
            "run_dir": str(self.run_dir.path),
            "wall_s": wall_s,
        }
