"""The evaluation actor: evaluates globals of a pretraining run while the next rounds train."""

from __future__ import annotations

import ray
from ray.exceptions import RayActorError, RayTaskError

from ..aggregation import Weights
from ..config import Config
from ..training.evaluator import EvalResult, evaluate_round


class EvalActor:
    """Holds the run's config; each call evaluates one global in this process."""

    def __init__(self, cfg: Config) -> None:
        import torch  # this process only evaluates: give it the CPUs it reserved

        torch.set_num_threads(max(1, int(cfg.eval.num_cpus)))
        self.cfg = cfg

    def evaluate(self, weights: Weights | None) -> EvalResult:
        return evaluate_round(weights, self.cfg)


RemoteEvalActor = ray.remote(EvalActor)


class RayEvaluator:
    """A :class:`~fedvssl_ray.training.evaluator.RoundEvaluator` on one evaluation actor."""

    def __init__(self, cfg: Config) -> None:
        self.actor = RemoteEvalActor.options(
            num_cpus=cfg.eval.num_cpus, num_gpus=cfg.eval.num_gpus, max_restarts=1,
            max_task_retries=0,
        ).remote(cfg)
        self.pending: list[tuple[int, ray.ObjectRef]] = []

    def submit(self, round_idx: int, weights: Weights | None) -> None:
        ref = ray.put(weights) if weights is not None else None
        self.pending.append((round_idx, self.actor.evaluate.remote(ref)))

    def finished(self, wait: bool = False) -> list[tuple[int, EvalResult]]:
        done = []
        while self.pending:
            round_idx, ref = self.pending[0]
            ready, _ = ray.wait([ref], timeout=None if wait else 0)
            if not ready:
                break
            self.pending.pop(0)
            try:
                done.append((round_idx, ray.get(ref)))
            except (RayActorError, RayTaskError) as err:
                done.append((round_idx, {"error": f"evaluation actor failed: {err}"[:500]}))
        return done

    def close(self) -> None:
        ray.kill(self.actor)
