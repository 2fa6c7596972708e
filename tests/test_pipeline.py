"""Shard cache, epoch plan and the two clip pipelines (in-process and Ray Data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedvssl_ray.data import decode
from fedvssl_ray.data.pipeline import ClipStream, ShardCache, epoch_plan
from fedvssl_ray.data.synthetic import SyntheticSpec, encode_video, render_video

NUM_GOOD = 6


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """Six tiny MPEG-4 AVIs, one file of garbage and one missing file."""
    root = tmp_path_factory.mktemp("shard")
    spec = SyntheticSpec(frames=40, width=96, height=72)
    entries = []
    for i in range(NUM_GOOD):
        path = encode_video(root / f"v{i}.avi", render_video(spec, i % 4, i), gop=12)
        entries.append((f"v{i}", str(path)))
    (root / "corrupt.avi").write_bytes(b"RIFF" + bytes(range(256)) * 8)
    entries.append(("corrupt", str(root / "corrupt.avi")))
    entries.append(("missing", str(root / "missing.avi")))
    return entries


class CountingReader:
    """A storage reader that counts its reads."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, entry: tuple[str, str]) -> bytes:
        self.calls += 1
        return Path(entry[1]).read_bytes()


def _equal(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def test_epoch_plan_pads_with_its_first_entries() -> None:
    plan = epoch_plan(10, seed=7, client_id=1, round=2, epoch=0, batch_size=4)
    assert len(plan) == 12 and sorted(plan[:10]) == list(range(10))
    assert plan[10:].tolist() == plan[:2].tolist()
    again = epoch_plan(10, seed=7, client_id=1, round=2, epoch=0, batch_size=4)
    assert np.array_equal(plan, again)
    assert not np.array_equal(plan, epoch_plan(10, seed=7, client_id=1, round=3, epoch=0, batch_size=4))
    assert len(epoch_plan(10, seed=7, client_id=1, round=2, epoch=0, batch_size=4, pad=False)) == 10
    assert len(epoch_plan(8, seed=7, client_id=1, round=2, epoch=0, batch_size=4)) == 8
    assert epoch_plan(1, seed=0, client_id=0, round=0, epoch=0, batch_size=4).tolist() == [0] * 4


def test_shard_cache_reads_storage_once_and_skips_bad_videos(shard: list[tuple[str, str]]) -> None:
    reader = CountingReader()
    stream = ClipStream(shard, reader, batch_size=4, seed=1, client_id=3)
    assert stream.num_videos == NUM_GOOD and stream.skipped == 2
    assert [vid for vid, _ in stream.cache.skipped] == ["corrupt", "missing"]
    first = list(stream.batches(round=0))
    second = list(stream.batches(round=1))
    assert reader.calls == len(shard) and stream.cache.reads == len(shard)
    assert len(first) == len(second) == 2  # 6 videos padded to 8: two full batches
    batch = first[0]
    assert batch["imgs"].shape == (4, 3, 16, 112, 112) and batch["imgs"].dtype == torch.float32
    assert batch["gt_trajs"].shape == (4, 3, 16, 4) and batch["gt_weights"].shape == (4, 3, 16)
    assert torch.equal(batch["gt_weights"], torch.ones(4, 3, 16))
    assert not torch.equal(first[0]["imgs"], second[0]["imgs"])


def test_same_seed_same_batches_in_any_worker_count(shard: list[tuple[str, str]]) -> None:
    def run(workers: int, seed: int = 5) -> list[dict[str, torch.Tensor]]:
        stream = ClipStream(shard[:NUM_GOOD], batch_size=3, seed=seed, client_id=0, workers=workers)
        return list(stream.batches(round=4, epoch=1))

    inline = run(0)
    assert _equal(inline, run(0)) and _equal(inline, run(2))
    assert not torch.equal(inline[0]["imgs"], run(0, seed=6)[0]["imgs"])


def test_decode_failure_mid_epoch_is_skipped_and_counted(
    shard: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = decode.read_frames

    def flaky(src, indices, *, name=None, **kw):
        if name == "v2":
            raise decode.VideoDecodeError(name, "damaged packet")
        return real(src, indices, name=name, **kw)

    monkeypatch.setattr(decode, "read_frames", flaky)
    stream = ClipStream(shard[:NUM_GOOD], batch_size=4, seed=2)
    failing = sum(stream.cache.videos[v].video_id == "v2" for v in stream.plan(round=0))
    sizes = [len(b["imgs"]) for b in stream.batches(round=0)]
    assert sum(sizes) == 8 - failing and stream.skipped == 1  # logged and counted once
    assert stream.num_videos == NUM_GOOD - 1
    assert [len(b["imgs"]) for b in stream.batches(round=1)] == [4, 4]  # 5 videos padded to 8


def test_shard_cache_rejects_unknown_store() -> None:
    with pytest.raises(ValueError, match="unknown store"):
        ShardCache([], store="disk")  # type: ignore[arg-type]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_data_matches_in_process_with_busy_actor(ray_cluster, shard) -> None:
    """An actor holding every CPU consumes Ray Data batches: no deadlock, same tensors."""
    local = ClipStream(shard, batch_size=4, seed=9, client_id=2)
    expected = [{k: v.numpy() for k, v in b.items()} for b in local.batches(round=3, epoch=1)]

    @ray_cluster.remote(num_cpus=2)
    class Consumer:
        def __init__(self) -> None:
            self.stream = ClipStream(
                shard, batch_size=4, seed=9, client_id=2, backend="ray_data", workers=2
            )

        def epoch(self, round: int, epoch: int) -> tuple[list[dict[str, np.ndarray]], int, int]:
            batches = [{k: v.numpy() for k, v in b.items()} for b in self.stream.batches(round, epoch)]
            return batches, self.stream.skipped, self.stream.cache.reads

    consumer = Consumer.remote()
    for _ in range(2):  # the second epoch reuses the cached shard
        got, skipped, reads = ray_cluster.get(consumer.epoch.remote(3, 1), timeout=180)
        assert skipped == 2 and reads == len(shard)
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ray_cluster.kill(consumer)
