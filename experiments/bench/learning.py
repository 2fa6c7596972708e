"""Does federated CtP pretraining learn? Pretrained backbone vs its random init, over seeds.

For every seed S it runs, through the library calls the user commands make:

1. the pretraining of ``python experiments/pretrain.py --engine plain --config PRESET seed=S
   run_dir=runs/ls/TAG-sS [key=value ...]``: ``fedvssl_ray.config.load_config`` (preset, then
   the overrides, then ``seed`` and ``run_dir``), ``ensure_dataset``, ``RunDir.create``,
   ``ClientShards.from_config`` and ``fedvssl_ray.training.plain.run_plain``. A run directory
   that already holds the last round's checkpoint with the same config is reused, not rerun;
   with ``--fresh`` it is always rerun;
2. the evaluation of ``python experiments/evaluate.py --local checkpoint=<run>/checkpoints/
   round-NNNN.npz task=all seed=S``: ``load_backbone_checkpoint`` then
   ``fedvssl_ray.evaluation.evaluate_backbone(weights, cfg, "all")`` (retrieval R@1/5/10/20/50
   and k-NN top-1, every test video a query against the whole train split);
3. the same evaluation of the seeded random init, ``checkpoint=none seed=S``
   (``evaluate_backbone(None, cfg, "all")``, the round-0 global of that run), cached under
   ``runs/ls/random/`` per seed and feature spec.

``--threads`` sets torch's thread count (one thread avoids oversubscribing a shared machine);
it changes the numbers only through float rounding, which does compound over the rounds.
It prints one row per seed and the mean, min-max and standard deviation of R@1, R@5 and k-NN
top-1 for both, and of their differences; everything goes to ``runs/ls/TAG.json``.

The CtP head's init scale is the config key ``model.head_init_std`` (reference 0.001); it does
not change the backbone init, hence the random-init baseline.

examples:
  python experiments/bench/learning.py --seeds 1,2,3 --tag base
  python experiments/bench/learning.py --seeds 1,2,3 --tag lr05 client.lr=0.05
  python experiments/bench/learning.py --seeds 1 --tag h01 model.head_init_std=0.01 rounds=10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

from fedvssl_ray.checkpoint import save_json_atomic
from fedvssl_ray.config import config_to_dict, load_config
from fedvssl_ray.data.shards import ClientShards, ensure_dataset
from fedvssl_ray.evaluation import evaluate_backbone
from fedvssl_ray.evaluation.weights import load_backbone_checkpoint
from fedvssl_ray.run_dir import RunDir
from fedvssl_ray.training.plain import run_plain

OUT = Path("runs") / "ls"
MEASURES = (("R@1", ("retrieval", "R@1")), ("R@5", ("retrieval", "R@5")),
            ("kNN", ("knn", "top1")))


def metric(result: dict, path: tuple[str, str]) -> float:
    return 100.0 * result[path[0]][path[1]]


PRETRAINING = ("seed", "rounds", "num_clients", "clients_per_round", "min_clients",
               "strategy", "client", "data", "model")


def same_pretraining(a, b) -> bool:
    """Whether two configs describe the same pretraining (other sections may differ)."""
    a, b = config_to_dict(a), config_to_dict(b)
    return all(a.get(k) == b.get(k) for k in PRETRAINING)


def pretrain(cfg, run_dir: RunDir, fresh: bool, at_round: int) -> tuple[dict, float | None]:
    """Run the schedule unless ``run_dir`` already holds it with this config.

    With ``at_round`` set, a run directory of this config that holds that round's checkpoint
    (a stopped run) is used as it is: the losses come from its ``metrics.jsonl``.
    """
    if at_round and not fresh and run_dir.checkpoint_path(at_round).is_file():
        if same_pretraining(run_dir.read_config(), cfg):
            records = run_dir.read_metrics()[:at_round]
            return {"loss_per_round": [r.get("mean_loss") for r in records],
                    "relative_loss_per_round": [r.get("relative_loss") for r in records]}, None
    final = run_dir.checkpoint_path(cfg.rounds)
    summary_path = run_dir.path / "summary.json"
    if not fresh and final.is_file() and summary_path.is_file():
        if same_pretraining(run_dir.read_config(), cfg):
            return json.loads(summary_path.read_text()), None
    ensure_dataset(cfg)
    if run_dir.path.exists():
        import shutil

        shutil.rmtree(run_dir.path)
    run_dir.create(cfg)
    shards = ClientShards.from_config(cfg)
    started = time.perf_counter()
    summary = run_plain(cfg, run_dir, shards.stream_factory())
    return summary, time.perf_counter() - started


def random_init_result(cfg) -> dict:
    """``evaluate_backbone(None, cfg)``, cached per seed, backbone, data and feature spec."""
    key = json.dumps([cfg.seed, cfg.model.backbone, cfg.data.root, cfg.data.clip_len,
                      cfg.data.crop_size, cfg.eval.num_clips, cfg.eval.knn_k])
    data_stamp = Path(cfg.data.root) / "synthetic.json"
    if data_stamp.is_file():
        key += data_stamp.read_text()
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    path = OUT / "random" / f"seed{cfg.seed}-{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())
    started = time.perf_counter()
    result = evaluate_backbone(None, cfg, "all")
    result["wall_s"] = round(time.perf_counter() - started, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json_atomic(path, result)
    return result


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:6.2f} [{min(values):6.2f}, {max(values):6.2f}] sd {std:5.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="synthetic", help="preset or config file")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--tag", default="base", help="runs go to runs/ls/TAG-sS")
    parser.add_argument("--fresh", action="store_true", help="rerun existing pretraining runs")
    parser.add_argument("--round", type=int, default=0,
                        help="evaluate this round's checkpoint (0: the last); an existing run "
                        "that holds it is not rerun, even if it stopped before the last round")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for training and features (0: torch's default)")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = []
    for seed in seeds:
        run_path = OUT / f"{args.tag}-s{seed}"
        cfg = load_config(args.config, [*args.overrides, f"seed={seed}", f"run_dir={run_path}"])
        run_dir = RunDir(run_path)
        summary, train_s = pretrain(cfg, run_dir, args.fresh, args.round)
        weights, _ = load_backbone_checkpoint(run_dir.checkpoint_path(args.round or cfg.rounds),
                                              cfg.model.backbone)
        started = time.perf_counter()
        trained = evaluate_backbone(weights, cfg, "all")
        eval_s = time.perf_counter() - started
        save_json_atomic(run_path / f"learning-eval-r{args.round or cfg.rounds}.json", trained)
        random = random_init_result(cfg)
        losses = summary["loss_per_round"]
        relative = [x for x in summary.get("relative_loss_per_round", []) if x is not None]
        row = {
            "seed": seed,
            "round": args.round or cfg.rounds,
            "run_dir": str(run_path),
            "pretrain_s": None if train_s is None else round(train_s, 1),
            "eval_s": round(eval_s, 1),
            "queries": trained["queries"],
            "gallery": trained["gallery"],
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "relative_first": relative[0] if relative else None,
            "relative_last": relative[-1] if relative else None,
            "trained": {name: metric(trained, path) for name, path in MEASURES},
            "random": {name: metric(random, path) for name, path in MEASURES},
        }
        rows.append(row)
        rel = (f", relative loss {row['relative_first']:.3f} -> {row['relative_last']:.3f}"
               if relative else "")
        print(f"seed {seed}: pretrain {row['pretrain_s']} s, eval {row['eval_s']} s, "
              f"{row['queries']} queries / {row['gallery']} gallery; loss "
              f"{row['loss_first']:.4f} -> {row['loss_last']:.4f}{rel}; "
              + "; ".join(f"{n} {row['trained'][n]:.2f} vs random {row['random'][n]:.2f}"
                          for n, _ in MEASURES), flush=True)
    print(f"\n{args.tag}: {len(seeds)} seed(s) {seeds}; mean [min, max] sd, percent")
    for name, _ in MEASURES:
        trained = [r["trained"][name] for r in rows]
        random = [r["random"][name] for r in rows]
        diff = [t - r for t, r in zip(trained, random, strict=True)]
        print(f"  {name:4s} pretrained {spread(trained)} | random init {spread(random)} | "
              f"diff {spread(diff)}")
    OUT.mkdir(parents=True, exist_ok=True)
    save_json_atomic(OUT / f"{args.tag}.json", {
        "tag": args.tag, "config": args.config, "overrides": args.overrides,
        "seeds": seeds, "rows": rows,
        "resolved_config_seed0": config_to_dict(
            load_config(args.config, [*args.overrides, f"seed={seeds[0]}"])),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
