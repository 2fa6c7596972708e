"""Client training without Ray: ClientWorker and train_local on tiny clips and a narrow R3D-10."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from videos import video_record

from fedvssl_ray.config import Config, load_config
from fedvssl_ray.data import decode
from fedvssl_ray.data.pipeline import ClipStream, ShardCache
from fedvssl_ray.data.shards import ShardStreams
from fedvssl_ray.data.synthetic import SyntheticSpec, encode_video, render_video
from fedvssl_ray.models import build_ctp_model, ctp_loss, get_weights
from fedvssl_ray.training import client as client_module
from fedvssl_ray.training import local as local_module
from fedvssl_ray.training.client import ClientWorker
from fedvssl_ray.training.local import LocalParams, LocalStats, train_local
from fedvssl_ray.training.messages import ClientResult, NeedHead, client_seed
from fedvssl_ray.training.precision import Precision

CROP, CLIP_LEN, PATCHES = 32, 8, 3


def tiny_config(*extra: str) -> Config:
    """The synthetic preset shrunk to 8x32x32 clips, one local epoch, batch 2, no replay, with
    the reference optimiser (SGD), targets and head init."""
    return load_config(
        "synthetic",
        [
            "model.backbone=r3d10_narrow", f"data.crop_size={CROP}", f"data.clip_len={CLIP_LEN}",
            "client.batch_size=2", "client.local_epochs=1", "client.replay=false",
            "client.optimizer=sgd", "client.lr=0.01", "client.target_scale=1",
            "model.head_init_std=0.001", *extra,
        ],
    )


def fake_batch(size: int) -> dict[str, torch.Tensor]:
    """Random clips [B,3,T,S,S] with integer patch boxes inside the crop, every box labelled."""
    x1y1 = torch.randint(0, CROP - 16, (size, PATCHES, CLIP_LEN, 2))
    wh = torch.randint(8, 16, (size, PATCHES, CLIP_LEN, 2))
    return {
        "imgs": torch.randn(size, 3, CLIP_LEN, CROP, CROP),
        "gt_trajs": torch.cat([x1y1, x1y1 + wh], dim=-1).float(),
        "gt_weights": torch.ones(size, PATCHES, CLIP_LEN),
    }


class FakeStream:
    """In-memory clips with the given batch sizes each epoch, drawn from torch's global RNG
    (which the worker seeds per client and round); records what it yielded."""

    def __init__(self, sizes: Sequence[int], num_videos: int | None = None) -> None:
        self.sizes = list(sizes)
        self.num_videos = sum(sizes) if num_videos is None else num_videos
        self.yielded: list[dict[str, torch.Tensor]] = []
        self.excluded: set[str] = set()

    def batches(self, round: int, epoch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for size in self.sizes:
            batch = fake_batch(size)
            self.yielded.append(batch)
            yield batch

    def bad_video_ids(self) -> set[str]:
        return set(self.excluded)

    def exclude(self, video_ids) -> None:
        self.excluded |= set(video_ids)


def trained(worker: ClientWorker, global_weights, round_idx: int, client_id: int, **kw) -> ClientResult:
    result = worker.train(global_weights, round_idx, client_id, **kw)
    assert isinstance(result, ClientResult)
    return result


def perturbed(weights: dict[str, np.ndarray], shift: float) -> dict[str, np.ndarray]:
    """Every entry moved by ``shift`` (integers by one), so a missed load shows."""
    return {
        k: (v + shift).astype(v.dtype) if v.dtype.kind == "f" else v + 1 for k, v in weights.items()
    }


def assert_bit_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.fixture
def rounds_seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, np.ndarray], LocalStats]]:
    """(model state as training starts, stats) of every local round the worker runs."""
    seen: list[tuple[dict[str, np.ndarray], LocalStats]] = []

    def spy(model, batches, params, device, **options) -> LocalStats:
        state = get_weights(model)
        stats = train_local(model, batches, params, device, **options)
        seen.append((state, stats))
        return stats

    monkeypatch.setattr(client_module, "train_local", spy)
    return seen


@pytest.fixture
def optimizers(monkeypatch: pytest.MonkeyPatch) -> list[torch.optim.SGD]:
    """Every SGD built, each recording its state size and LR at each step."""
    made: list[torch.optim.SGD] = []

    class RecordingSgd(torch.optim.SGD):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.state_sizes: list[int] = []
            self.lrs: list[float] = []
            made.append(self)

        def step(self, closure=None):
            self.state_sizes.append(len(self.state))
            self.lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSgd)
    return made


@pytest.fixture
def known_losses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make the training loss of step i equal ``values[i]`` (the zero predictor scores 100)."""
    values: list[float] = []

    def fake(preds, gt_trajs, gt_weights, target_scale=1.0) -> dict[str, torch.Tensor]:
        if not torch.is_grad_enabled():
            return {"loss": torch.tensor(100.0)}
        return {"loss": preds.sum() * 0.0 + values.pop(0)}

    monkeypatch.setattr(local_module, "ctp_loss", fake)
    return values


@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """Five tiny real AVIs, ``(video_id, path)``."""
    root = tmp_path_factory.mktemp("client-shard")
    spec = SyntheticSpec(frames=24, width=64, height=48)
    return [
        (f"v{i}", str(encode_video(root / f"v{i}.avi", render_video(spec, i % 4, i), gop=12)))
        for i in range(5)
    ]


def clip_stream(entries: list[tuple[str, str]], cfg: Config, client_id: int) -> ClipStream:
    return ClipStream(
        entries, crop_size=cfg.data.crop_size, clip_len=cfg.data.clip_len,
        batch_size=cfg.client.batch_size, seed=cfg.seed, client_id=client_id,
    )


def test_one_fresh_optimizer_per_round_kept_across_its_epochs(optimizers) -> None:
    cfg = tiny_config("client.local_epochs=3")
    worker = ClientWorker(cfg, lambda c: FakeStream([2, 2]))
    g = worker.initial_global()
    for r in (1, 2):
        result = trained(worker, g, r, 0, head_version=r - 1)
        assert result.steps == 6
    assert len(optimizers) == 2  # one per round, whatever local_epochs is
    for opt in optimizers:
        assert len(opt.state_sizes) == 6
        assert opt.state_sizes[0] == 0  # fresh: no momentum buffer at a round's first step
        assert min(opt.state_sizes[1:]) > 0  # momentum carried across the round's epochs
        assert opt.lrs == [cfg.client.lr] * 6  # constant LR


def test_train_local_reports_every_step_and_the_zero_predictor() -> None:
    torch.manual_seed(0)
    model = build_ctp_model("r3d10_narrow", num_frames=CLIP_LEN, seed=1)
    batches = [fake_batch(2), fake_batch(2), fake_batch(1)]
    stats = train_local(model, batches, LocalParams(), torch.device("cpu"))
    assert stats.steps == 3 and stats.clips == 5 and stats.batch_sizes == (2, 2, 1)
    assert stats.mean_loss == pytest.approx(sum(stats.losses) / 3)
    zeros = [
        ctp_loss(torch.zeros(b["gt_trajs"].shape[0] * PATCHES, 4 * CLIP_LEN), b["gt_trajs"],
                 b["gt_weights"])["loss"].item()
        for b in batches
    ]
    assert stats.zero_loss == pytest.approx(np.mean(zeros), rel=1e-6)
    # the head starts at 1e-3 scale, so the first step predicts about zero: ratio near 1
    assert stats.losses[0] / zeros[0] == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="no training batches"):
        train_local(model, [], LocalParams(), torch.device("cpu"))


def test_client_reports_the_zero_loss_over_all_steps() -> None:
    stream = FakeStream([2, 2, 2])
    worker = ClientWorker(tiny_config("client.local_epochs=2"), lambda c: stream)
    result = trained(worker, worker.initial_global(), 1, 0)
    zeros = [
        ctp_loss(torch.zeros(b["gt_trajs"].shape[0] * PATCHES, 4 * CLIP_LEN), b["gt_trajs"],
                 b["gt_weights"])["loss"].item()
        for b in stream.yielded
    ]
    assert len(zeros) == result.steps == 6
    assert result.zero_loss == pytest.approx(np.mean(zeros), rel=1e-6)


def test_reported_loss_is_the_mean_over_every_step_of_every_epoch(known_losses) -> None:
    known_losses.extend([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    worker = ClientWorker(tiny_config("client.local_epochs=2"), lambda c: FakeStream([2, 2, 1]))
    result = trained(worker, worker.initial_global(), 1, 0)
    assert result.steps == 6 and result.update.loss == 3.5
    assert result.zero_loss == 100.0


def test_flower_compat_reports_the_baselines_windowed_loss(known_losses) -> None:
    known_losses.extend(float(i) for i in range(1, 26))
    cfg = tiny_config("strategy.name=flower-compat", "client.batch_size=1")
    worker = ClientWorker(cfg, lambda c: FakeStream([1] * 25))
    result = trained(worker, worker.initial_global(), 1, 0)
    assert result.update.loss == 10.5  # windows 5.5 and 15.5; steps 21..25 are never logged
    assert math.exp(-result.update.loss) == pytest.approx(2.7536449e-05)


def test_flower_compat_window_weighs_steps_by_batch_size(known_losses) -> None:
    known_losses.extend([1.0, 3.0])
    cfg = tiny_config("strategy.name=flower-compat", "strategy.loss_window=2")
    worker = ClientWorker(cfg, lambda c: FakeStream([1, 3]))
    assert trained(worker, worker.initial_global(), 1, 0).update.loss == 2.5


def test_flower_compat_with_fewer_steps_than_a_window_raises() -> None:
    cfg = tiny_config("strategy.name=flower-compat")
    worker = ClientWorker(cfg, lambda c: FakeStream([2, 2, 1]))
    with pytest.raises(ValueError, match=r"3 local steps.*strategy\.loss_window=10"):
        worker.train(worker.initial_global(), 1, 0)


def test_heads_stay_per_client_and_the_global_backbone_loads_exactly(rounds_seen) -> None:
    cfg = tiny_config()
    worker = ClientWorker(cfg, lambda c: FakeStream([2]))
    backbone = [k for k in get_weights(worker.model) if k.startswith("backbone.")]
    g1 = perturbed(worker.initial_global(), 0.25)
    first = {c: trained(worker, g1, 1, c) for c in (0, 1)}
    g2 = perturbed(g1, -0.5)
    trained(worker, g2, 2, 0, head_version=1)
    states = [state for state, _ in rounds_seen]
    for state, g in zip(states, (g1, g1, g2), strict=True):
        assert_bit_equal({k: state[k] for k in backbone}, g)
    for state, head in zip(states, (worker.init_head, worker.init_head, first[0].head), strict=True):
        assert_bit_equal({k: state[k] for k in worker.head_keys}, head)
    assert not np.array_equal(first[0].head["head.fc1.weight"], first[1].head["head.fc1.weight"])


def test_steps_per_epoch_are_whole_padded_batches_on_a_real_stream(tiny_videos, rounds_seen) -> None:
    cfg = tiny_config("client.local_epochs=2")
    stream = clip_stream(tiny_videos, cfg, 0)
    assert stream.num_batches(round=1) == math.ceil(5 / 2)
    worker = ClientWorker(cfg, lambda c: stream)
    result = trained(worker, worker.initial_global(), 1, 0)
    assert result.steps == 2 * 3 and result.update.num_examples == 5
    assert rounds_seen[0][1].batch_sizes == (2,) * 6  # the last batch is padded, not short


def test_gradient_norm_is_clipped_before_the_step() -> None:
    clip = 1e-3
    cfg = tiny_config(
        "client.lr=1.0", "client.momentum=0", "client.weight_decay=0", f"client.grad_clip={clip}"
    )
    worker = ClientWorker(cfg, lambda c: FakeStream([2]))
    g = worker.initial_global()
    result = trained(worker, g, 1, 0)
    params = {name for name, _ in worker.model.named_parameters()}
    before = {**g, **worker.init_head}
    after = {**result.update.weights, **result.head}
    change = math.sqrt(sum(
        float(np.sum((after[k].astype(np.float64) - before[k]) ** 2)) for k in params
    ))
    assert change == pytest.approx(clip, rel=1e-2)  # one step of lr 1: exactly the clipped norm


def test_data_seeds_follow_seed_client_and_round() -> None:
    assert client_seed(7, 0, 1) == client_seed(7, 0, 1)
    assert len({client_seed(7, 0, 1), client_seed(7, 1, 1), client_seed(7, 0, 2),
                client_seed(8, 0, 1)}) == 4

    def first_clip(cfg: Config, rounds_clients: list[tuple[int, int]]) -> list[torch.Tensor]:
        streams = {c: FakeStream([1]) for c in (0, 1)}
        worker = ClientWorker(cfg, streams.__getitem__)
        clips = []
        for r, c in rounds_clients:
            streams[c].yielded.clear()
            worker.train(worker.initial_global(), r, c)
            clips.append(streams[c].yielded[0]["imgs"])
        return clips

    cfg = tiny_config()
    a = first_clip(cfg, [(1, 0), (2, 0), (1, 1)])
    b = first_clip(cfg, [(1, 1), (1, 0)])
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])  # reproducible, order-free
    replay = first_clip(tiny_config("client.replay=true"), [(1, 0), (2, 0)])
    assert torch.equal(replay[0], replay[1]) and torch.equal(replay[0], a[0])
    other_seed = first_clip(tiny_config("seed=8"), [(1, 0)])
    assert not torch.equal(other_seed[0], a[0])
    assert_bit_equal(
        ClientWorker(tiny_config(), lambda c: FakeStream([1])).initial_global(),
        ClientWorker(tiny_config("seed=7"), lambda c: FakeStream([1])).initial_global(),
    )


def test_an_evicted_head_comes_back_from_the_caller(rounds_seen) -> None:
    worker = ClientWorker(tiny_config(), lambda c: FakeStream([2]), max_cached_clients=1)
    g = worker.initial_global()
    mine = trained(worker, g, 1, 0)
    trained(worker, g, 1, 1)
    assert worker.train(g, 2, 0, head_version=1) == NeedHead(0, 1)
    trained(worker, g, 2, 0, head_version=1, head=mine.head)
    state = rounds_seen[-1][0]
    assert_bit_equal({k: state[k] for k in worker.head_keys}, mine.head)


def test_known_bad_videos_stay_excluded_after_eviction(
    tiny_videos, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = decode.read_frames
    decoded: list[str] = []

    def flaky(src, indices, *, name=None, **kw):
        decoded.append(name)
        if name == "v2":
            raise decode.VideoDecodeError(name, "damaged packet")
        return real(src, indices, name=name, **kw)

    monkeypatch.setattr(decode, "read_frames", flaky)
    cfg = tiny_config()
    shards = {0: tiny_videos[:3], 1: tiny_videos[3:]}
    built: list[ClipStream] = []

    def factory(client_id: int) -> ClipStream:
        built.append(clip_stream(shards[client_id], cfg, client_id))
        return built[-1]

    worker = ClientWorker(cfg, factory, max_cached_clients=1)
    g = worker.initial_global()
    first = trained(worker, g, 1, 0)
    assert "v2" in decoded and [vid for vid, _ in built[0].cache.skipped] == ["v2"]
    trained(worker, g, 1, 1)  # evicts client 0's stream
    decoded.clear()
    again = trained(worker, g, 2, 0, head_version=1, head=first.head)
    rebuilt = built[-1]
    assert rebuilt is not built[0] and worker.streams[0] is rebuilt
    assert "v2" not in decoded and {"v0", "v1"} <= set(decoded)
    assert rebuilt.cache.reads == 2 and [v.video_id for v in rebuilt.cache.videos] == ["v0", "v1"]
    assert again.update.num_examples == 2 and rebuilt.skipped == 1
    assert rebuilt.bad_video_ids() == {"v2"}  # kept through any number of evictions


def test_shard_cache_exclude_before_and_after_loading(tiny_videos) -> None:
    fresh = ShardCache(tiny_videos)
    fresh.exclude(["v1", "v3"])
    assert [v.video_id for v in fresh.videos] == ["v0", "v2", "v4"] and fresh.reads == 3
    assert fresh.bad_ids() == {"v1", "v3"}
    loaded = ShardCache(tiny_videos)
    loaded.load()
    loaded.exclude(["v1"])
    assert [loaded.videos[i].video_id for i in loaded.usable()] == ["v0", "v2", "v3", "v4"]
    assert loaded.bad_ids() == {"v1"} and len(loaded.skipped) == 1



def test_head_init_std_scales_the_head_init_and_leaves_the_backbone():
    from fedvssl_ray.config import ConfigError
    from fedvssl_ray.training.client import seeded_ctp_model

    base = ["model.backbone=r3d10_narrow", "data.crop_size=32", "data.clip_len=8"]
    reference = seeded_ctp_model(
        load_config("synthetic", [*base, "model.head_init_std=0.001"])
    ).state_dict()
    wider = seeded_ctp_model(load_config("synthetic", [*base, "model.head_init_std=0.01"]))
    for key, value in wider.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(value, reference[key]), key
    for key in ("head.fc1.weight", "head.pred_head.weight"):
        torch.testing.assert_close(wider.state_dict()[key], 10 * reference[key])
    with pytest.raises(ConfigError, match="model.head_init_std"):
        load_config("synthetic", ["model.head_init_std=0"])


def test_mixed_precision_leaves_cpu_training_bit_identical() -> None:
    """On CPU ``client.mixed_precision`` (a user override through load_config) changes nothing."""
    results = {}
    for flag in ("true", "false"):
        cfg = tiny_config(f"client.mixed_precision={flag}")
        assert cfg.client.mixed_precision is (flag == "true")
        worker = ClientWorker(cfg, lambda c: FakeStream([2, 1]))
        assert worker.precision == Precision("cpu") and not worker.channels_last
        results[flag] = trained(worker, worker.initial_global(), 1, 0)
    on, off = results["true"], results["false"]
    assert_bit_equal(on.update.weights, off.update.weights)
    assert_bit_equal(on.head, off.head)
    assert on.update.loss == off.update.loss


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_loss_scaling_train_in_fp32_weights(dtype: torch.dtype) -> None:
    """The GPU's mixed-precision step (autocast forward, scaled backward, clip on unscaled
    gradients) run on CPU autocast: finite losses, fp32 weights that moved."""
    torch.manual_seed(0)
    model = build_ctp_model("r3d10_narrow", num_frames=CLIP_LEN, seed=1)
    before = get_weights(model)
    stats = train_local(model, [fake_batch(1)], LocalParams(grad_clip=1.0), torch.device("cpu"),
                        precision=Precision("cpu", dtype))
    assert stats.steps == 1 and math.isfinite(stats.losses[0])
    after = get_weights(model)
    assert all(after[k].dtype == before[k].dtype for k in before)
    assert not np.array_equal(after["head.pred_head.weight"], before["head.pred_head.weight"])



def test_optimizer_and_target_scale_keys_reach_the_local_round(monkeypatch) -> None:
    """``client.optimizer=adamw`` builds one fresh AdamW per round; ``client.target_scale``
    shrinks the targets, so the zero predictor's loss is scored on the scaled targets."""
    made: list[torch.optim.AdamW] = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    stream = FakeStream([2, 2])
    cfg = tiny_config("client.optimizer=adamw", "client.lr=0.002", "client.target_scale=10")
    worker = ClientWorker(cfg, lambda c: stream)
    result = trained(worker, worker.initial_global(), 1, 0)
    assert len(made) == 1 and made[0].param_groups[0]["lr"] == 0.002
    assert made[0].param_groups[0]["weight_decay"] == cfg.client.weight_decay

    def zero_loss(scale: float) -> float:
        return float(np.mean([
            ctp_loss(torch.zeros(b["gt_trajs"].shape[0] * PATCHES, 4 * CLIP_LEN), b["gt_trajs"],
                     b["gt_weights"], scale)["loss"].item()
            for b in stream.yielded
        ]))

    assert result.zero_loss == pytest.approx(zero_loss(10.0), rel=1e-6)
    assert zero_loss(10.0) < zero_loss(1.0) / 5  # the targets are 10x smaller


def test_patch_speed_scales_how_far_the_patches_move(tiny_videos) -> None:
    """``data.patch_speed`` (through load_config and a run's client stream): 0 keeps every patch
    centre where it starts; 3 moves them farther than the reference speed."""
    root = Path(tiny_videos[0][1]).parent
    records = tuple(video_record(vid, 24) for vid, _ in tiny_videos)

    def mean_travel(speed: str) -> float:
        stream = ShardStreams((records,), root, tiny_config(f"data.patch_speed={speed}"))(0)
        trajs = torch.cat([b["gt_trajs"] for b in stream.batches(1)])
        centres = (trajs[..., :2] + trajs[..., 2:]) / 2
        return (centres - centres[:, :, :1]).abs().mean().item()

    assert mean_travel("0") <= 0.5  # rounding of the boxes only
    assert mean_travel("3") > 1.5 * mean_travel("1") > 0
