"""``data.decode_workers``: clips made in worker processes are the in-process clips, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from videos import synthetic_shard, video_record

from fedvssl_ray.config import ConfigError, load_config, override
from fedvssl_ray.data import decode
from fedvssl_ray.data.manifest import VideoRecord
from fedvssl_ray.data.shards import ShardStreams, decode_workers
from fedvssl_ray.training.client import round_batches

USER_KEYS = [
    "data.crop_size=32", "data.clip_len=8", "client.batch_size=3", "client.local_epochs=2",
    "client.num_cpus=3", "client.torch_threads=1", "data.decode_workers=2",
]


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[VideoRecord, ...]]:
    """Six tiny AVIs and one file of garbage, as manifest records under one root."""
    root = tmp_path_factory.mktemp("decode-workers")
    records = synthetic_shard(root, 6, frames=30)
    (root / "corrupt.avi").write_bytes(b"RIFF" + bytes(range(256)) * 8)
    return root, (*records, video_record("corrupt", 30))


def test_decode_workers_give_the_in_process_batches_with_a_bad_video(
    shard: tuple[Path, tuple[VideoRecord, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = decode.read_frames

    def flaky(src, indices, *, name=None, **kw):  # forked workers inherit the patch
        if name == "v2":
            raise decode.VideoDecodeError(name, "damaged packet")
        return real(src, indices, name=name, **kw)

    monkeypatch.setattr(decode, "read_frames", flaky)
    root, records = shard
    cfg = load_config("synthetic", USER_KEYS)

    def epochs(decode_workers: int) -> tuple[list[dict[str, torch.Tensor]], object, torch.Tensor]:
        run_cfg = override(cfg, data__decode_workers=decode_workers)
        stream = ShardStreams((records,), root, run_cfg)(0)
        assert stream.processes == decode_workers
        torch.manual_seed(0)
        batches = list(round_batches(stream, 3, run_cfg.client.local_epochs))
        return batches, stream, torch.rand(1)  # the trainer's torch RNG is left alone

    expected, inline, inline_rng = epochs(0)
    got, workers, workers_rng = epochs(2)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert workers.cache.skipped == inline.cache.skipped  # garbage at the probe, v2 mid-epoch
    assert workers.bad_video_ids() == inline.bad_video_ids() == {"corrupt", "v2"}
    assert workers.num_videos == inline.num_videos == 5
    assert [len(b["imgs"]) for b in got][-2:] == [3, 3]  # the second epoch leaves v2 out
    assert torch.equal(workers_rng, inline_rng)


def test_decode_workers_must_fit_the_client_actors_cpus() -> None:
    with pytest.raises(ConfigError, match=r"need 3 CPUs.*client.num_cpus>=3"):
        load_config("synthetic", ["data.decode_workers=2"])
    with pytest.raises(ConfigError, match=r"client.torch_threads to 1..1"):
        load_config("synthetic", ["data.decode_workers=2", "client.num_cpus=3"])
    with pytest.raises(ConfigError, match=r"data.decode_workers=-2 must be >= 0"):
        load_config("synthetic", ["data.decode_workers=-2"])
    gpu = load_config("synthetic", ["client.num_gpus=1", "client.num_cpus=4", "data.decode_workers=3"])
    assert decode_workers(gpu) == 3


def test_automatic_decode_workers_use_a_gpu_clients_cpu_share() -> None:
    assert decode_workers(load_config("synthetic")) == 0  # CPU clients decode in-process
    assert decode_workers(load_config("synthetic", ["client.num_gpus=0.2", "client.num_cpus=3"])) == 2
    assert decode_workers(load_config("synthetic", ["client.num_gpus=1"])) == 0  # 1 CPU: no spare
