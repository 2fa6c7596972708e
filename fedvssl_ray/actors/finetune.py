"""Fine-tuning on Ray Train: a ``TorchTrainer`` around the Ray-free epoch loop of
:mod:`fedvssl_ray.training.finetune`.

* Workers: ``ScalingConfig(num_workers=finetune.workers, use_gpu=finetune.num_gpus > 0,
  resources_per_worker={"CPU": finetune.num_cpus, "GPU": finetune.num_gpus})``; the model is
  wrapped for DDP by ``ray.train.torch.prepare_model`` (gloo on CPU, NCCL on GPU).
* Data: one Ray Data dataset per worker, ``train_<rank>``, holding that worker's rows
  ``(epoch, position, video)`` for every remaining epoch in training order (the seeded,
  strided share of :func:`~fedvssl_ray.training.finetune.worker_rows`); a ``map_batches``
  stage decodes, samples and augments the clips (:func:`~fedvssl_ray.training.finetune.
  decode_train_rows`) in tasks that reserve no CPU and run at most ``decode_workers`` at once,
  so they never wait behind the workers' CPUs (RAY.md). Datasets are passed to the trainer
  unsplit (``DataConfig(datasets_to_split=[])``, order preserved) and each worker reads its own
  through ``ray.train.get_dataset_shard``: which worker sees which clip never depends on timing.
* State: rank 0 writes each epoch to the run directory (checkpoint, metrics line, resume state)
  and every worker reports the epoch's figures with ``ray.train.report``. A resume starts the
  trainer again from the run directory's last state (the run directory must be on storage the
  workers share, as for pretraining).
"""

from __future__ import annotations

import math
import sys
import time
from itertools import groupby
from typing import Any

import numpy as np
import ray

from ..config import Config, ConfigError, config_from_dict, config_to_dict
from ..evaluation.spec import EvalVideo
from ..models import Weights
from ..training.finetune import (
    FinetuneParams,
    FinetuneRunDir,
    decode_train_rows,
    worker_rows,
)

ROWS_PER_BLOCK = 16  # clips one decode task makes


def check_finetune_resources(cfg: Config, cluster: dict[str, float]) -> None:
    """Raise :class:`ConfigError` naming the key when the workers cannot all run at once."""
    f = cfg.finetune
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    if f.num_gpus > 0 and gpus == 0:
        raise ConfigError(
            f"finetune.num_gpus={f.num_gpus:g} but the cluster has no GPU: set "
            "finetune.num_gpus=0 to fine-tune on CPU"
        )
    if f.workers * f.num_gpus > gpus + 1e-9:
        raise ConfigError(
            f"finetune.workers={f.workers} x finetune.num_gpus={f.num_gpus:g} but the cluster "
            f"has {gpus:g} GPU(s): lower finetune.workers or finetune.num_gpus"
        )
    if f.workers * f.num_cpus > cpus + 1e-9:
        raise ConfigError(
            f"finetune.workers={f.workers} x finetune.num_cpus={f.num_cpus:g} but the cluster "
            f"has {cpus:g} CPU(s): lower finetune.workers or finetune.num_cpus"
        )


def worker_datasets(
    cfg: Config, videos: list[EvalVideo], start_epoch: int
) -> dict[str, Any]:
    """``{"train_<rank>": Dataset}``: each worker's clips for epochs after ``start_epoch``."""
    f = cfg.finetune
    params = FinetuneParams.from_config(cfg)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    spare = cpus - math.ceil(f.workers * f.num_cpus)  # cores the workers leave to decoding
    decode_workers = f.decode_workers or max(1, spare // f.workers)
    videos_ref = ray.put(videos)
    datasets = {}
    for rank in range(f.workers):
        rows = worker_rows(len(videos), seed=cfg.seed, epochs=range(start_epoch + 1, f.epochs + 1),
                           rank=rank, world_size=f.workers, batch_size=f.batch_size)
        total = len(rows["video"])
        per_block = max(ROWS_PER_BLOCK, f.batch_size)
        blocks = [{k: v[i : i + per_block] for k, v in rows.items()}
                  for i in range(0, total, per_block)]
        ds = ray.data.from_numpy([np.stack([b["epoch"], b["position"], b["video"]], 1)
                                  for b in blocks])
        datasets[f"train_{rank}"] = ds.map_batches(
            _decode_task, batch_size=None,
            fn_kwargs={"videos": [videos_ref], "seed": cfg.seed, "clip_len": params.clip_len,
                       "stride": params.stride, "crop_size": params.crop_size},
            compute=ray.data.TaskPoolStrategy(size=decode_workers), num_cpus=0,
        )
    return datasets


def _decode_task(batch: dict[str, np.ndarray], *, videos: list, **kwargs: Any) -> dict:
    """Ray Data map: ``data`` rows ``[epoch, position, video]`` -> decoded, augmented clips."""
    import torch

    torch.set_num_threads(1)  # the resize is the one torch op; parallelism comes from tasks
    table = batch["data"]
    rows = {"epoch": table[:, 0], "position": table[:, 1], "video": table[:, 2]}
    return decode_train_rows(rows, videos=ray.get(videos[0]), **kwargs)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: build the classifier, resume if asked, train the remaining epochs
    on its dataset shard; rank 0 writes each epoch to the run directory."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from ..training.finetune import (
        EpochStats,
        build_finetune_model,
        epoch_record,
        epoch_seed,
        make_optimizer,
        make_scheduler,
        restore_training_state,
        train_one_epoch,
        training_state,
    )

    cfg = config_from_dict(config["cfg"])
    f = cfg.finetune
    params = FinetuneParams.from_config(cfg)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(f.torch_threads or max(1, math.floor(f.num_cpus)))
    init = ray.get(config["init"][0]) if config["init"] else None
    state = ray.get(config["state"][0]) if config["state"] else None
    model = build_finetune_model(cfg.model.backbone, config["num_classes"], params, init)
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, params)
    if state is not None:
        restore_training_state(model, optimizer, state)
    start = config["start_epoch"]
    scheduler = make_scheduler(optimizer, params, start)
    device = ray.train.torch.get_device()
    run = FinetuneRunDir(config["run_dir"]) if rank == 0 else None
    batches = ray.train.get_dataset_shard(f"train_{rank}").iter_torch_batches(
        batch_size=f.batch_size, device=device
    )

    def epoch_of(batch: dict) -> int:
        epochs = batch["epoch"]
        if bool((epochs != epochs[0]).any()):
            raise RuntimeError("a batch spans two epochs: the dataset rows are misaligned")
        return int(epochs[0])

    for epoch, group in groupby(batches, key=epoch_of):
        torch.manual_seed(epoch_seed(params.seed, epoch, rank))
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        stats = train_one_epoch(model, group, optimizer, params, device)
        scheduler.step()
        if world > 1:
            totals = torch.from_numpy(stats.as_array())
            dist.all_reduce(totals)
            stats = EpochStats.from_array(totals.numpy())
            stats.steps //= world
        record = epoch_record(epoch, stats, lr, time.perf_counter() - started,
                              config["num_videos"])
        record["workers"] = world
        if run is not None:
            keep = epoch == f.epochs or epoch % f.checkpoint_every == 0
            run.save_epoch(epoch, training_state(model, optimizer), record, config["meta"],
                           keep_checkpoint=keep)
            loss = "n/a" if record["loss"] is None else f"{record['loss']:.4f}"
            acc = "n/a" if record["train_top1"] is None else f"{100 * record['train_top1']:.1f}%"
            # written, not printed: Ray Train patches print() and would show the line twice
            sys.stdout.write(f"epoch {epoch}/{f.epochs}: loss {loss}, train top-1 {acc}, "
                             f"lr {lr:g}, {record['epoch_s']:.1f} s\n")
            sys.stdout.flush()
        ray.train.report({k: v for k, v in record.items() if v is not None})


def run_on_ray_train(
    cfg: Config,
    run: FinetuneRunDir,
    videos: list[EvalVideo],
    num_classes: int,
    meta: dict[str, Any],
    init: Weights | None,
) -> None:
    """Train the epochs the run directory still lacks with a ``TorchTrainer``."""
    from ray.data import ExecutionOptions
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    f = cfg.finetune
    check_finetune_resources(cfg, ray.cluster_resources())
    start, state = run.load_state()
    if start >= f.epochs:
        return
    resources = {"CPU": f.num_cpus, **({"GPU": f.num_gpus} if f.num_gpus > 0 else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": config_to_dict(cfg), "run_dir": str(run.path.resolve()),
            "num_classes": num_classes, "num_videos": len(videos), "meta": meta,
            "start_epoch": start,
            "init": [ray.put(init)] if init is not None else None,
            "state": [ray.put(state)] if state is not None else None,
        },
        scaling_config=ScalingConfig(
            num_workers=f.workers, use_gpu=f.num_gpus > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name="ray-train", storage_path=str((run.path / "ray-train").resolve()),
            failure_config=FailureConfig(max_failures=0),
        ),
        datasets=worker_datasets(cfg, videos, start),
        dataset_config=DataConfig(
            datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)
        ),
    )
    trainer.fit()
