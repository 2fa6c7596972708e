"""Every user mistake ends a command with exit 2 and one message naming the file or key and what
to do: no traceback, nothing written, no Ray started, and never an unpickled file.

The command-line cases run concurrently once per module (each is a fresh interpreter); the
other tampered checkpoints go straight to the loaders evaluate.py and finetune.py call.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedvssl_ray.checkpoint import CheckpointError, load_arrays, load_backbone_any, save_arrays
from fedvssl_ray.config import load_config
from fedvssl_ray.data.manifest import VideoRecord, write_manifest
from fedvssl_ray.run_dir import RunDir, RunDirError

ROOT = Path(__file__).resolve().parent.parent
BACKBONE = "r3d10_narrow"  # the synthetic preset's


@dataclass(frozen=True)
class Case:
    """One command line and the words its error message must hold."""

    script: str
    args: tuple[str, ...]
    words: tuple[str, ...]


class Tripwire:
    """Unpickling this creates ``marker``: proof that a loader unpickled a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def fake_dataset(root: Path, videos: int = 4) -> Path:
    """A prepared dataset's manifest (no video files: every check here fails before decoding)."""
    records = [VideoRecord(f"v{i}", f"raw/v{i}.avi", i % 2, f"c{i % 2}", 16, 25.0, 64, 48,
                           "mpeg4", 1000) for i in range(videos)]
    write_manifest(root / "manifests" / "train_split1.parquet", records, root=root,
                   dataset="synthetic", split="train1", class_names=["c0", "c1"])
    return root


def write_partitions(folder: Path, names: list[list[str]]) -> Path:
    folder.mkdir()
    for k, part in enumerate(names, 1):
        items = [{"name": name, "label": 1} for name in part]
        (folder / f"client_dist{k}.json").write_text(json.dumps(items))
    return folder


def committed_run(path: Path, data: Path) -> Path:
    """A run directory with rounds 1 and 2 complete (tiny arrays, two clients)."""
    cfg = load_config("synthetic", [f"data.root={data}", f"run_dir={path}", "rounds=3",
                                    "num_clients=2", "clients_per_round=2", "eval.every=0"])
    run = RunDir(path)
    run.create(cfg)
    for round_idx in (1, 2):
        heads = {c: {"head.w": np.full(3, c, np.float32)} for c in (0, 1)}
        run.save_round(round_idx, {"backbone.w": np.ones(4, np.float32)}, heads, {})
        run.append_metrics({"round": round_idx, "status": "ok"})
        run.mark_complete(round_idx, {0: round_idx, 1: round_idx}, {}, 1.0)
    return path


def backbone_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    """Tampered versions of a valid backbone checkpoint, by what is wrong with them."""
    from fedvssl_ray.evaluation.weights import expected_shapes

    good = {k: np.zeros(s, np.float32) for k, s in expected_shapes(BACKBONE).items()}
    first = next(iter(good))
    variants = {
        "keys": {**{k: v for k, v in good.items() if k != first}, "backbone.bogus": good[first]},
        "shape": {**good, first: good[first][:1]},
        "dtype": {**good, first: np.zeros(good[first].shape, "<U2")},
        "complex": {**good, first: good[first].astype(np.complex64)},
    }
    folder.mkdir()
    paths = {}
    for name, arrays in variants.items():
        paths[name] = folder / f"{name}.npz"
        save_arrays(paths[name], arrays)
    save_arrays(folder / "good.npz", good)
    paths["truncated"] = folder / "truncated.npz"
    paths["truncated"].write_bytes((folder / "good.npz").read_bytes()[:5000])
    paths["pickled"] = folder / "pickled.npz"
    with open(paths["pickled"], "wb") as fh:  # np.savez would add a suffix
        np.savez(fh, **{**good, first: np.array([Tripwire(marker)], dtype=object)})
    paths["flower"] = folder / "flower.npz"  # the Flower baseline's layout: one arr_0
    with open(paths["flower"], "wb") as fh:
        np.savez(fh, np.array([Tripwire(marker)], dtype=object))
    return paths


def cli_cases(tmp: Path) -> dict[str, Case]:
    """Build every command line's inputs under ``tmp``; ``tmp/out`` is where runs would go."""
    data = fake_dataset(tmp / "data")
    (tmp / "notdata").mkdir()
    (tmp / "notdata" / "notes.txt").write_text("mine")
    (tmp / "afile").write_text("a file")
    parts1 = write_partitions(tmp / "parts1", [["v0", "v1", "v2", "v3"]])
    parts_empty = write_partitions(tmp / "parts_empty", [["v0", "v1", "v2", "v3"], []])
    (tmp / "bad.yaml").write_text("client: [1, 2\n")
    (tmp / "list.yaml").write_text("- rounds: 3\n")
    (tmp / "unknown.yaml").write_text("client:\n  lrr: 0.1\n")
    runs = {name: committed_run(tmp / name, data) for name in ("run", "badckpt", "badstate",
                                                               "badhead")}
    ckpt = runs["badckpt"] / "checkpoints" / "round-0002.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    state = runs["badstate"] / "state" / "state.json"
    state.write_text(state.read_text()[:40])
    (runs["badhead"] / "state" / "heads" / "client-00001-round-0002.npz").write_bytes(b"junk" * 9)
    checkpoints = backbone_checkpoints(tmp / "ckpts", tmp / "unpickled")
    out = tmp / "out"
    new = (f"data.root={data}", f"run_dir={out}", "num_clients=2", "clients_per_round=2")

    def pretrain(*args: str, words: tuple[str, ...]) -> Case:
        return Case("pretrain.py", ("--engine", "plain", *args), words)

    return {
        "empty data.root": pretrain(f"run_dir={out}", "data.root=", words=("data.root",)),
        "data.root of other files": pretrain(f"run_dir={out}", f"data.root={tmp / 'notdata'}",
                                             words=("data.root=", "notes.txt")),
        "run_dir under a file": pretrain(*new[:1], f"run_dir={tmp / 'afile' / 'sub'}",
                                         words=("run_dir=", "afile is a file")),
        "run_dir of other files": pretrain(*new[:1], f"run_dir={tmp / 'notdata'}",
                                           words=("run_dir=", "not a run directory")),
        "run_dir holding a run": pretrain(*new[:1], f"run_dir={runs['run']}",
                                          words=("already holds a run", "--resume")),
        "missing partition_dir": pretrain(*new, f"data.partition_dir={tmp / 'nope'}",
                                          words=("data.partition_dir=", "nope")),
        "partition count": pretrain(*new, f"data.partition_dir={parts1}",
                                    words=("1 client partitions", "num_clients=1")),
        "empty partition": pretrain(*new, f"data.partition_dir={parts_empty}",
                                    words=("data.partition_dir=", "client_dist2.json")),
        "unparsable yaml": pretrain("--config", str(tmp / "bad.yaml"), *new,
                                    words=("bad.yaml",)),
        "top-level list": pretrain("--config", str(tmp / "list.yaml"), *new,
                                   words=("list.yaml", "mapping")),
        "unknown key in file": pretrain("--config", str(tmp / "unknown.yaml"), *new,
                                        words=("client.lrr", "unknown.yaml", "client.lr")),
        "missing config file": pretrain("--config", str(tmp / "missing.yaml"), *new,
                                        words=("missing.yaml", "does not exist")),
        "rounds=abc": pretrain(*new, "rounds=abc", words=("rounds='abc'", "not an integer")),
        "client.lr=-1": pretrain(*new, "client.lr=-1", words=("client.lr=-1", "> 0")),
        "corrupt checkpoint": pretrain("--resume", str(runs["badckpt"]),
                                       words=("checkpoints/round-0002.npz", "truncated",
                                              "resume from", "round 2")),
        "truncated state.json": pretrain("--resume", str(runs["badstate"]),
                                         words=("state.json is damaged",
                                                "resume from round 2")),
        "garbage client head": pretrain("--resume", str(runs["badhead"]),
                                        words=("client-00001-round-0002.npz",
                                               "not a readable .npz", "round 2")),
        "evaluate: pickled array": Case("evaluate.py", (
            f"checkpoint={checkpoints['pickled']}", f"data.root={data}", "--local"),
            ("pickled.npz", "never unpickled", "expected a .npz written by a run")),
        "finetune: wrong dtype": Case("finetune.py", (
            f"checkpoint={checkpoints['dtype']}", *new, "--engine", "plain"),
            ("dtype.npz", "wrong type", "<U2")),
    }


def run_case(case: Case) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / case.script), *case.args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> dict:
    """Every command-line case run once, concurrently: {name: (case, result)}, plus whether
    the inputs were left as they were."""
    tmp = tmp_path_factory.mktemp("user-errors")
    cases = cli_cases(tmp)
    before = snapshot(tmp)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(cases, pool.map(run_case, cases.values()), strict=True))
    return {"results": {n: (cases[n], results[n]) for n in cases},
            "unchanged": snapshot(tmp) == before, "tmp": tmp}


CLI_CASES = [
    "empty data.root", "data.root of other files", "run_dir under a file",
    "run_dir of other files", "run_dir holding a run", "missing partition_dir",
    "partition count", "empty partition", "unparsable yaml", "top-level list",
    "unknown key in file", "missing config file", "rounds=abc", "client.lr=-1",
    "corrupt checkpoint", "truncated state.json", "garbage client head",
    "evaluate: pickled array", "finetune: wrong dtype",
]


@pytest.mark.parametrize("name", CLI_CASES)
def test_a_mistake_exits_2_with_one_message_naming_it(cli, name):
    case, result = cli["results"][name]
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for word in case.words:
        assert word in result.stderr, (word, result.stderr)


def test_no_case_wrote_changed_or_unpickled_anything(cli):
    assert set(cli["results"]) == set(CLI_CASES)
    assert cli["unchanged"]
    assert not (cli["tmp"] / "out").exists() and not (cli["tmp"] / "unpickled").exists()


# -- checkpoints given to evaluate.py and finetune.py ---------------------------------------------


@pytest.fixture(scope="module")
def tampered(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    tmp = tmp_path_factory.mktemp("tampered")
    return backbone_checkpoints(tmp / "ckpts", tmp / "unpickled"), tmp / "unpickled"


@pytest.mark.parametrize(("kind", "expected"), [
    ("keys", "1 missing backbone entries"), ("shape", "mis-shaped"),
    ("dtype", "dtype <U2 (expected floating point)"), ("complex", "dtype complex64"),
    ("truncated", "truncated"), ("pickled", "never unpickled"),
])
def test_evaluate_refuses_a_tampered_checkpoint_naming_file_and_fault(tampered, kind, expected):
    from fedvssl_ray.evaluation.weights import load_backbone_checkpoint, load_classifier_checkpoint

    paths, marker = tampered
    for load in (load_backbone_checkpoint, load_classifier_checkpoint):
        with pytest.raises(CheckpointError) as err:
            load(paths[kind], BACKBONE)
        assert str(paths[kind]) in str(err.value) and expected in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(("kind", "expected"), [
    ("keys", "unexpected backbone entries"), ("shape", "mis-shaped"),
    ("dtype", "of the wrong type"), ("truncated", "not a zip archive"),
    ("pickled", "trust_pickle=true"),
])
def test_finetune_refuses_a_tampered_checkpoint_naming_file_and_fault(tampered, kind, expected):
    from fedvssl_ray.evaluation.weights import check_backbone_weights, expected_shapes

    paths, marker = tampered
    with pytest.raises(CheckpointError, match=expected) as err:
        arrays, _ = load_backbone_any(paths[kind], expected_shapes(BACKBONE))
        check_backbone_weights(arrays, BACKBONE, str(paths[kind]))
    assert str(paths[kind]) in str(err.value)
    assert not marker.exists()


def test_trusting_pickle_still_refuses_anything_but_arrays(tampered):
    paths, marker = tampered
    from fedvssl_ray.evaluation.weights import expected_shapes

    with pytest.raises(CheckpointError, match="refusing to load pathlib"):
        load_backbone_any(paths["flower"], expected_shapes(BACKBONE), trust_pickle=True)
    assert not marker.exists()


# -- run directories: never overwritten, and a full disk keeps the last round resumable --------


def test_create_refuses_a_directory_holding_a_run_or_other_files(tmp_path):
    cfg = load_config("synthetic", [f"run_dir={tmp_path / 'run'}"])
    run = committed_run(tmp_path / "run", tmp_path / "data")
    before = snapshot(run)
    with pytest.raises(RunDirError, match="already holds a run"):
        RunDir(run).create(cfg)
    assert snapshot(run) == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text("mine")
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir(tmp_path / "mine").create(cfg)
    assert (tmp_path / "mine" / "config.yaml").read_text() == "mine"
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["config.yaml"]


def test_a_full_disk_while_saving_a_round_keeps_the_last_round_resumable(tmp_path, monkeypatch):
    run = RunDir(committed_run(tmp_path / "run", tmp_path / "data"))
    before = snapshot(run.path)

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(RunDirError) as err:
        run.save_round(3, {"backbone.w": np.ones(4, np.float32)}, {0: {"head.w": np.ones(3)}}, {})
    monkeypatch.undo()
    message = str(err.value)
    assert "disk is full" in message and "round 2 is the last complete round" in message
    assert f"--resume {run.path}" in message
    assert snapshot(run.path) == before  # no temporary or half-written file left
    assert run.committed_round() == 2


def test_a_full_disk_mid_metrics_line_leaves_no_torn_line(tmp_path, monkeypatch):
    run = RunDir(committed_run(tmp_path / "run", tmp_path / "data"))
    before = run.metrics_path.read_bytes()
    real_write = os.write
    calls = []

    def half_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:7]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(RunDirError, match="disk is full.*round 2 is the last complete round"):
        run.append_metrics({"round": 3, "status": "ok", "mean_loss": 1.0})
    monkeypatch.undo()
    assert len(calls) == 2 and run.metrics_path.read_bytes() == before
    assert run.committed_round() == 2


def test_pretrain_reports_a_full_disk_mid_run_with_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import pretrain

    def disk_full(*args):
        raise RunDirError("saving round 3 in run: the disk is full; round 2 is the last complete "
                          "round: fix it, then continue with --resume run")

    monkeypatch.setattr(pretrain, "run", disk_full)
    data = fake_dataset(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_:
        pretrain.main(["--engine", "plain", f"data.root={data}", f"run_dir={tmp_path / 'run'}",
                       "num_clients=2", "clients_per_round=2"])
    assert exit_.value.code == 2
    assert "the disk is full; round 2" in capsys.readouterr().err


def test_a_saved_config_that_is_not_json_is_named(tmp_path):
    run = RunDir(committed_run(tmp_path / "run", tmp_path / "data"))
    (run.path / "config.json").write_text('{"seed": ')
    with pytest.raises(RunDirError, match=r"config\.json is not readable JSON"):
        run.read_config()


def test_load_arrays_names_what_is_wrong(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"x\.npz: not a readable \.npz archive"):
        load_arrays(path)
    save_arrays(path, {"a": np.zeros(2)}, {"round": 1})
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"\x93NUMPY") + 130] ^= 0xFF  # a flipped bit in the array data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="CRC"):
        load_arrays(path)


# -- the Ray cluster ------------------------------------------------------------------------------


def test_a_cluster_refusing_our_token_says_to_set_ray_auth_mode(monkeypatch):
    """Ray 2.60 joining a token-auth cluster without a token: ``ConnectionError`` raised from a
    ``RuntimeError`` whose text ends in the ``AuthenticationError`` of ``check_status``."""
    import ray

    from fedvssl_ray.actors.cluster import RayConnectError, start_ray

    def refused(**kwargs):
        try:
            raise RuntimeError(
                "Failed to connect to GCS. Last connection error: Traceback (most recent call "
                "last):\n  File \"python/ray/includes/common.pxi\", line 119, in "
                "ray._raylet.check_status\nray.exceptions.AuthenticationError: RPC error: "
                "InvalidAuthToken: Authentication token is missing or incorrect.")
        except RuntimeError as err:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from err

    monkeypatch.setattr(ray, "init", refused)
    cfg = load_config("synthetic", ["ray.address=10.0.0.1:6379"])
    with pytest.raises(RayConnectError, match="10.0.0.1:6379.*RAY_AUTH_MODE=token"):
        start_ray(cfg)

    def no_token(**kwargs):
        raise ray.exceptions.AuthenticationError(
            "Token authentication is enabled but no authentication token was found")

    monkeypatch.setattr(ray, "init", no_token)
    with pytest.raises(RayConnectError, match="RAY_AUTH_TOKEN"):
        start_ray(cfg)


def test_the_local_ray_has_no_dashboard_and_an_unreachable_cluster_is_named(monkeypatch):
    import ray

    from fedvssl_ray.actors.cluster import RayConnectError, start_ray

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start_ray(load_config("synthetic"))
    assert calls == [{"address": "local", "num_cpus": None, "include_dashboard": False}]

    def down(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.2:6379")

    monkeypatch.setattr(ray, "init", down)
    with pytest.raises(RayConnectError, match="10.0.0.2:6379.*cluster is up.*ray.address"):
        start_ray(load_config("synthetic", ["ray.address=10.0.0.2:6379"]))


# -- the source -----------------------------------------------------------------------------------


def test_no_eval_or_exec_in_the_source():
    calls = []
    for folder in ("fedvssl_ray", "experiments"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id in ("eval", "exec", "compile", "__import__")):
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}")
    assert calls == []
