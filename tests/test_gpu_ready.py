"""GPU readiness on a CPU machine: the precision choice, the scaled step, batch transfer, the
GPU-only keys, and fractional-GPU client actors planned on fake GPU nodes."""

from __future__ import annotations

import contextlib

import pytest
import torch

from fedvssl_ray.actors.cluster import check_client_resources
from fedvssl_ray.actors.pool import plan_actors, plan_threads
from fedvssl_ray.config import ConfigError, describe_keys, load_config
from fedvssl_ray.training.client import ClientWorker
from fedvssl_ray.training.local import to_device
from fedvssl_ray.training.precision import Precision, choose_precision, scaled_step

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture
def gpu_with(monkeypatch: pytest.MonkeyPatch):
    """Fake a GPU's ``torch.cuda.is_bf16_supported``: a pre-Ampere GPU (no native bf16) answers
    True unless emulation is excluded, as torch's does."""

    def install(native_bf16: bool) -> None:
        def fake(including_emulation: bool = True) -> bool:
            return native_bf16 or including_emulation

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake)

    return install


@pytest.mark.parametrize(
    ("device", "mixed", "native_bf16", "dtype", "scaled"),
    [
        (CPU, True, True, None, False),  # the CPU trains in fp32 whatever the key says
        (CPU, False, True, None, False),
        (CUDA, False, True, None, False),  # the key off: fp32 on the GPU too
        (CUDA, True, True, torch.bfloat16, False),  # Ampere and later
        (CUDA, True, False, torch.float16, True),  # V100, T4: emulated bf16 is slow
    ],
)
def test_precision_choice(gpu_with, device, mixed, native_bf16, dtype, scaled) -> None:
    gpu_with(native_bf16)
    precision = choose_precision(device, mixed)
    assert precision == Precision(device.type, dtype)
    assert precision.needs_scaler is scaled


def test_fp32_is_a_plain_loop() -> None:
    fp32 = choose_precision(CPU, True)
    assert fp32.name == "fp32"
    assert isinstance(fp32.autocast(), contextlib.nullcontext)
    assert not fp32.grad_scaler().is_enabled()


def test_scaled_step_clips_the_unscaled_gradients() -> None:
    """With loss scaling on, the step equals the unscaled step: clipping sees true gradients."""

    def stepped(scaler: torch.amp.GradScaler) -> torch.Tensor:
        weight = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        optimizer = torch.optim.SGD([weight], lr=1.0)
        scaled_step((weight * weight).sum(), optimizer, scaler, [weight], grad_clip=1.0)
        return weight.detach()

    plain = stepped(torch.amp.GradScaler("cpu", enabled=False))
    scaled = stepped(torch.amp.GradScaler("cpu", init_scale=2.0**10))
    torch.testing.assert_close(plain, torch.tensor([3.0 - 0.6, 4.0 - 0.8]))
    torch.testing.assert_close(scaled, plain)


def test_cpu_batches_stay_where_they_are() -> None:
    batch = {"imgs": torch.randn(1, 3, 8, 4, 4), "gt_trajs": torch.zeros(1, 3, 8, 4),
             "gt_weights": torch.ones(1, 3, 8), "video_id": ["v0"]}
    imgs, trajs, weights = to_device(batch, CPU)
    assert imgs is batch["imgs"] and trajs is batch["gt_trajs"] and weights is batch["gt_weights"]
    laid_out = to_device(batch, CPU, channels_last=True)[0]
    assert laid_out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(laid_out, batch["imgs"], rtol=0, atol=0)


def test_gpu_keys_are_documented_and_checked() -> None:
    keys = describe_keys()
    assert "client.mixed_precision" in keys and "client.channels_last" in keys
    cfg = load_config("synthetic")
    assert cfg.client.mixed_precision is True and cfg.client.channels_last is False
    with pytest.raises(ConfigError, match="client.channels_last=true is a GPU memory layout"):
        load_config("synthetic", ["client.channels_last=true"])
    assert load_config("ucf101", ["client.channels_last=true"]).client.channels_last


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only process")
def test_a_gpu_client_without_cuda_says_so() -> None:
    cfg = load_config("ucf101", ["model.backbone=r3d10_narrow"])
    with pytest.raises(RuntimeError, match="client.num_gpus=1 but torch .* sees no CUDA device"):
        ClientWorker(cfg, lambda c: None)


ONE_GPU = [{"CPU": 16.0, "GPU": 1.0}]


def test_five_fractional_actors_share_one_gpu() -> None:
    assert 1.0 // 0.2 == 4.0  # why shares are not counted with float floor division
    cfg = load_config("ucf101", ["client.num_gpus=0.2"])
    assert plan_actors(cfg, cluster_cpus=16, cluster_gpus=1) == 5
    check_client_resources(cfg, ONE_GPU, 5)
    tenth = load_config("ucf101", ["client.num_gpus=0.1", "client.num_cpus=1",
                                   "num_clients=30", "clients_per_round=30"])
    assert 3.0 // 0.1 == 29.0
    assert plan_actors(tenth, cluster_cpus=48, cluster_gpus=3) == 30


def test_gpu_actors_are_also_planned_by_their_cpu_share() -> None:
    cfg = load_config("ucf101", ["client.num_gpus=0.2", "client.num_cpus=4"])
    assert plan_actors(cfg, cluster_cpus=16, cluster_gpus=1) == 4  # the CPUs bind first
    check_client_resources(cfg, ONE_GPU, 4)
    with pytest.raises(ConfigError, match="holds only 4 client actor"):
        check_client_resources(cfg, ONE_GPU, 5)


@pytest.mark.parametrize(("num_cpus", "threads"), [(2, 2), (3, 3), (0.5, 1), (0, 1)])
def test_fractional_gpu_actors_use_their_cpu_share(num_cpus: float, threads: int) -> None:
    cfg = load_config("ucf101", ["client.num_gpus=0.2", f"client.num_cpus={num_cpus}"])
    queues = [[c] for c in range(5)]  # one client per actor, all training at once
    plan = plan_threads(cfg, queues, {c: 10 for c in range(5)}, budget=16, single_node=True)
    assert plan == {c: threads for c in range(5)}
    assert sum(plan.values()) <= 16
