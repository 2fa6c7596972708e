"""Can CtP leave the all-zero predictor at CPU scale? One model, one stream, fresh clips.

It builds the run's CtP model at its seeded init (``seeded_ctp_model``) and the clip stream of
client 0 of ``--config PRESET [key=value ...]`` (with ``num_clients=1``: the whole train split,
no federation), then trains on epoch after epoch of new clips (the stream's epoch ``e`` of round
``e``: new frames, augmentations and patches every time, never a replayed clip) with the
config's local optimiser (``client.optimizer``: SGD with momentum, or AdamW; its lr, weight decay
and grad clip) on CtP's loss at ``client.target_scale``. Every ``--every`` steps it prints the
mean CtP loss relative to the all-zero predictor's on the same batches (1.0: nothing learnt) and
the mean |prediction|, until ``--steps`` or ``--budget-s``. Output: one line per report, a JSON
list with ``--out``, and the trained backbone with ``--save`` (a run-style ``.npz`` that
``experiments/evaluate.py checkpoint=...`` reads).

examples:
  python experiments/bench/pretext.py --steps 3200 --threads 2 --save probe.npz   # the synthetic preset's settings
  python experiments/bench/pretext.py --steps 720 client.optimizer=sgd client.lr=0.01 client.target_scale=1 data.patch_speed=1
"""

from __future__ import annotations

import argparse
import time

import torch

from fedvssl_ray.checkpoint import save_arrays, save_json_atomic
from fedvssl_ray.config import load_config
from fedvssl_ray.data.shards import ClientShards
from fedvssl_ray.evaluation.weights import backbone_weights
from fedvssl_ray.models import ctp
from fedvssl_ray.training.client import seeded_ctp_model
from fedvssl_ray.training.local import LocalParams, make_optimizer, to_device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="synthetic", help="preset or config file")
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--every", type=int, default=48, help="steps per report")
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop after this (0: never)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", help="JSON file for the reports")
    parser.add_argument("--save", help="write the trained backbone here (.npz, for evaluate.py)")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [*args.overrides, "num_clients=1", "clients_per_round=1",
                                    "client.replay=false"])
    stream = ClientShards.from_config(cfg).stream_factory()(0)
    model = seeded_ctp_model(cfg)
    model.train()
    c = cfg.client
    optimizer = make_optimizer(model, LocalParams.from_config(c))
    reports, loss_sum, zero_sum, pred_sum, step, start = [], 0.0, 0.0, 0.0, 0, time.perf_counter()
    epoch = 0
    while step < args.steps:
        epoch += 1
        for batch in stream.batches(epoch, 0):
            imgs, trajs, weights = to_device(batch, torch.device("cpu"))  # augments a decoded one
            preds = model(imgs, ctp.make_rois(trajs))
            loss = ctp.ctp_loss(preds, trajs, weights, c.target_scale)["loss"]
            with torch.no_grad():
                zero = ctp.ctp_loss(torch.zeros_like(preds), trajs, weights, c.target_scale)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            optimizer.step()
            step += 1
            loss_sum, zero_sum = loss_sum + loss.item(), zero_sum + zero.item()
            pred_sum += preds.detach().abs().mean().item()
            if step % args.every == 0:
                elapsed = time.perf_counter() - start
                reports.append({"step": step, "relative_loss": loss_sum / zero_sum,
                                "mean_abs_pred": pred_sum / args.every, "elapsed_s": elapsed})
                print(f"step {step}: loss {loss_sum / zero_sum:.3f} of the zero predictor's, "
                      f"mean |pred| {pred_sum / args.every:.3f}, {elapsed:.0f} s", flush=True)
                loss_sum = zero_sum = pred_sum = 0.0
            if step >= args.steps or (args.budget_s and time.perf_counter() - start > args.budget_s):
                break
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            break
    if args.out:
        save_json_atomic(args.out, reports)
    if args.save:
        save_arrays(args.save, backbone_weights(model), {"pretext_steps": step})
        print(f"wrote the backbone after {step} steps to {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
