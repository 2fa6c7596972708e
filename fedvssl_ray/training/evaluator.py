"""Evaluation of the global backbone during pretraining, like a server-side evaluation each round.

Every ``eval.every`` rounds, and after the last round, the round loop hands the new global to a
:class:`RoundEvaluator`, which computes retrieval R@1/R@5 and k-NN top-1 on the test split (or a
seeded ``eval.max_videos`` subset of it) while the next round trains, where the evaluator runs
elsewhere (the Ray engine's evaluation actor). The random initialisation (round 0) is evaluated
too, once per dataset, backbone, seed and feature definition, and cached, since every
pretraining must beat it. A failed evaluation is reported, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..aggregation import Weights
from ..checkpoint import save_json_atomic
from ..config import Config

EvalResult = dict[str, Any]
"""Compact figures of one evaluation (``R@1``, ``R@5``, ``knn_top1``, counts), or ``error``."""


class RoundEvaluator(Protocol):
    """Evaluates globals handed to it; results come back, possibly later, by round."""

    def submit(self, round_idx: int, weights: Weights | None) -> None:
        """Start evaluating ``weights``, the global after ``round_idx`` (0 and None: the
        seeded initial model)."""

    def finished(self, wait: bool = False) -> list[tuple[int, EvalResult]]:
        """Results ready now (all submitted ones with ``wait``), in submission order."""

    def close(self) -> None: ...


def eval_rounds(cfg: Config) -> set[int]:
    """The rounds after which the global is evaluated: every ``eval.every``, and the last."""
    if not cfg.eval.every:
        return set()
    return {r for r in range(1, cfg.rounds + 1) if r % cfg.eval.every == 0} | {cfg.rounds}


def compact(result: dict[str, Any], eval_s: float) -> EvalResult:
    """The figures a round record keeps, from :func:`evaluate_backbone`'s full result."""
    recall = result.get("retrieval", {})
    return {
        "R@1": recall.get("R@1"),
        "R@5": recall.get("R@5"),
        "knn_top1": result.get("knn", {}).get("top1"),
        "queries": result["queries"],
        "gallery": result["gallery"],
        "skipped": len(result["skipped"]),
        "eval_s": round(eval_s, 3),
    }


def evaluate_global(weights: Weights | None, cfg: Config) -> EvalResult:
    """Retrieval and k-NN figures of one global, computed in this process."""
    from ..evaluation import evaluate_backbone  # torch loads with the features, not before

    started = time.perf_counter()
    result = evaluate_backbone(weights, cfg, ("retrieval", "knn"), max_videos=cfg.eval.max_videos)
    return compact(result, time.perf_counter() - started)


def evaluate_round(
    weights: Weights | None, cfg: Config,
    evaluate: Callable[[Weights | None, Config], EvalResult] = evaluate_global,
) -> EvalResult:
    """``evaluate(weights, cfg)``, with an exception turned into an ``error`` result."""
    try:
        return evaluate(weights, cfg)
    except Exception as err:  # reported in the round's record; the run goes on
        trace = traceback.format_exc(limit=3)
        return {"error": f"{type(err).__name__}: {err}", "trace": trace}


class InlineEvaluator:
    """Evaluates in this process when asked (the plain engine: no overlap, same figures)."""

    def __init__(self, cfg: Config, evaluate: Callable[[Weights | None, Config], EvalResult]
                 = evaluate_global) -> None:
        self.cfg = cfg
        self.evaluate = evaluate
        self.done: list[tuple[int, EvalResult]] = []

    def submit(self, round_idx: int, weights: Weights | None) -> None:
        self.done.append((round_idx, evaluate_round(weights, self.cfg, self.evaluate)))

    def finished(self, wait: bool = False) -> list[tuple[int, EvalResult]]:
        done, self.done = self.done, []
        return done

    def close(self) -> None:
        """Nothing to release."""


def initial_cache_path(cfg: Config) -> Path:
    """Where the random init's figures are cached: beside the dataset, keyed by everything
    that defines them (backbone, seed, clips, crop, subset size, k)."""
    key = json.dumps([cfg.model.backbone, cfg.seed, cfg.data.split, cfg.data.clip_len,
                      cfg.data.crop_size, cfg.eval.num_clips, cfg.eval.max_videos,
                      cfg.eval.knn_k])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cfg.data.root) / "eval-cache" / f"init-{cfg.model.backbone}-{digest}.json"


def load_cached_initial(cfg: Config) -> EvalResult | None:
    """The cached figures of the random init, if a previous run computed them."""
    try:
        result = json.loads(initial_cache_path(cfg).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and "error" not in result else None


def save_cached_initial(cfg: Config, result: EvalResult) -> None:
    """Cache the random init's figures (skipped silently where the dataset is read-only)."""
    if "error" in result:
        return
    path = initial_cache_path(cfg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_json_atomic(path, {**result, "cached": True})
    except OSError:
        pass


def summarize(results: dict[int, EvalResult]) -> dict[str, Any]:
    """Initial, last and best (by R@1, then k-NN) figures for ``summary.json``."""
    rounds = {r: res for r, res in results.items() if r > 0 and "error" not in res}
    summary: dict[str, Any] = {"initial": results.get(0)}
    if rounds:
        last = max(rounds)
        best = max(rounds, key=lambda r: (rounds[r]["R@1"] or 0.0, rounds[r]["knn_top1"] or 0.0))
        summary["last"] = {"round": last, **rounds[last]}
        summary["best"] = {"round": best, **rounds[best]}
    summary["failed_rounds"] = sorted(r for r, res in results.items() if "error" in res)
    return summary
