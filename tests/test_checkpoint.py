"""Native checkpoints (atomic, no pickle) and the restricted importer of Flower checkpoints."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import types

import numpy as np
import pytest

from fedvssl_ray import checkpoint
from fedvssl_ray.checkpoint import (
    CheckpointError,
    append_jsonl,
    flower_list_to_backbone,
    import_flower_checkpoint,
    load_arrays,
    save_arrays,
    save_json_atomic,
)


def sample() -> dict[str, np.ndarray]:
    return {
        "global.backbone.conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "global.backbone.bn.num_batches_tracked": np.array(477, np.int64),
        "file": np.zeros(1, np.float16),  # a name np.savez could not take as a keyword
    }


def test_round_trip_keeps_names_order_dtypes_and_meta(tmp_path):
    path = tmp_path / "round-0003.npz"
    save_arrays(path, sample(), {"round": 3, "rng": [1, 2]})
    arrays, meta = load_arrays(path)
    assert list(arrays) == list(sample()) and meta == {"round": 3, "rng": [1, 2]}
    for key, value in sample().items():
        assert arrays[key].dtype == value.dtype
        np.testing.assert_array_equal(arrays[key], value)
    with np.load(path, allow_pickle=False) as npz:  # a plain npz for other tools
        assert "global.backbone.conv.weight" in npz.files
    assert os.listdir(tmp_path) == ["round-0003.npz"]


def test_meta_is_optional(tmp_path):
    save_arrays(tmp_path / "a.npz", {"x": np.ones(2)})
    assert load_arrays(tmp_path / "a.npz")[1] == {}


@pytest.mark.parametrize(
    "arrays", [{"__meta__": np.zeros(1)}, {"": np.zeros(1)}, {"x": np.array([None])}, {"x": [1, 2]}]
)
def test_refuses_reserved_names_and_non_numeric_arrays(tmp_path, arrays):
    with pytest.raises(ValueError):
        save_arrays(tmp_path / "a.npz", arrays)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_arrays(path, {"x": np.ones(2)}, {"round": 1})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np.lib.format, "write_array", broken)
    with pytest.raises(OSError, match="disk full"):
        save_arrays(path, {"x": np.zeros(2)}, {"round": 2})
    monkeypatch.undo()
    assert load_arrays(path)[1] == {"round": 1}
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_arrays(tmp_path / "nope.npz")


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04truncated", b""])
def test_corrupt_file_is_named(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.npz"):
        load_arrays(path)


def test_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "cut.npz"
    save_arrays(path, {"x": np.ones(1000)})
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="cut.npz"):
        load_arrays(path)


def test_object_arrays_are_not_loaded(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="obj.npz"):
        load_arrays(path)


def test_json_helpers(tmp_path):
    save_json_atomic(tmp_path / "summary.json", {"rounds": 2})
    save_json_atomic(tmp_path / "summary.json", {"rounds": 3})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"rounds": 3}
    append_jsonl(tmp_path / "metrics.jsonl", {"round": 1, "text": "a\nb"})
    append_jsonl(tmp_path / "metrics.jsonl", {"round": 2})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "summary.json"]


# -- Flower baseline checkpoints ------------------------------------------------------------------


@pytest.fixture
def flwr_parameters(monkeypatch):
    """A stand-in ``flwr.common.typing.Parameters`` importable by pickle during the test."""

    @dataclasses.dataclass
    class Parameters:
        tensors: list
        tensor_type: str

    Parameters.__module__ = "flwr.common.typing"
    Parameters.__qualname__ = "Parameters"
    typing_mod = types.ModuleType("flwr.common.typing")
    typing_mod.Parameters = Parameters
    monkeypatch.setitem(sys.modules, "flwr", types.ModuleType("flwr"))
    monkeypatch.setitem(sys.modules, "flwr.common", types.ModuleType("flwr.common"))
    monkeypatch.setitem(sys.modules, "flwr.common.typing", typing_mod)
    return Parameters


def to_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def flower_arrays(scale: float = 1.0) -> list[np.ndarray]:
    return [
        np.full((2, 3), scale, np.float32),
        np.array(7 * scale, np.float64),
        np.full((4,), -scale, np.float32),
    ]


@pytest.mark.parametrize("halves", [1, 2])
def test_import_pickled_parameters(tmp_path, flwr_parameters, halves):
    arrays = flower_arrays(0.9) + (flower_arrays(0.1) if halves == 2 else [])
    path = tmp_path / "round-5-weights.array.npz"
    np.savez(path, flwr_parameters([to_bytes(a) for a in arrays], "numpy.ndarray"))
    del sys.modules["flwr.common.typing"]  # the importer needs no flwr
    loaded = import_flower_checkpoint(path)
    assert len(loaded) == 3 * halves
    for got, want in zip(loaded, arrays, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_import_object_array_of_ndarrays(tmp_path):
    arrays = flower_arrays()
    packed = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        packed[i] = a
    np.savez(tmp_path / "round-540.npz", packed)
    loaded = import_flower_checkpoint(tmp_path / "round-540.npz")
    for got, want in zip(loaded, arrays, strict=True):
        np.testing.assert_array_equal(got, want)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_embedded_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    np.savez(tmp_path / "evil.npz", np.array(Exploit(marker), dtype=object))
    with pytest.raises(CheckpointError, match=r"evil\.npz.*refusing to load \w+\.system"):
        import_flower_checkpoint(tmp_path / "evil.npz")
    assert not marker.exists()


def test_other_classes_are_refused_by_name(tmp_path):
    np.savez(tmp_path / "odd.npz", np.array(Exploit, dtype=object))
    with pytest.raises(CheckpointError, match="refusing to load test_checkpoint.Exploit"):
        import_flower_checkpoint(tmp_path / "odd.npz")


def test_import_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        import_flower_checkpoint(tmp_path / "absent.npz")
    np.savez(tmp_path / "two.npz", np.ones(1), np.ones(2))
    with pytest.raises(CheckpointError, match="two.npz.*single member"):
        import_flower_checkpoint(tmp_path / "two.npz")


def test_flower_list_to_backbone_maps_positionally_and_checks_shapes():
    spec = {"backbone.conv.weight": (2, 3), "backbone.bn.num_batches_tracked": ()}
    two_l = flower_arrays(0.9) + flower_arrays(0.1)
    named = flower_list_to_backbone(two_l, spec)
    assert list(named) == list(spec)
    np.testing.assert_array_equal(named["backbone.conv.weight"], np.float32(0.9))
    with pytest.raises(
        ValueError, match=r"array 1 has shape \(\), but 'backbone.bn.weight' expects \(4,\)"
    ):
        flower_list_to_backbone(two_l, {"backbone.conv.weight": (2, 3), "backbone.bn.weight": (4,)})
    with pytest.raises(ValueError, match="fewer than"):
        flower_list_to_backbone(two_l[:1], spec)
