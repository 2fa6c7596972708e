"""Partition schemes (the baseline's IID and the authors' K-400 scheme reproduced exactly,
the general label-skew schemes seeded) and the Flower-compatible partition files."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from fedvssl_ray.data.manifest import VideoRecord
from fedvssl_ray.data.partition import (
    PartitionError,
    partition_summary,
    partition_videos,
    read_partitions,
    write_partitions,
)


@pytest.fixture(autouse=True)
def keep_global_random_state():
    """The reference transcriptions seed the module-level ``random``; restore it afterwards."""
    state = random.getstate()
    yield
    random.setstate(state)


def make_records(labels: list[int]) -> list[VideoRecord]:
    return [
        VideoRecord(f"C{lab}/v{i}", f"v{i}.avi", lab, f"C{lab}", 50, 25.0, 64, 48, "mpeg4", 10)
        for i, lab in enumerate(labels)
    ]


def ids(parts) -> list[list[str]]:
    return [[r.video_id for r in p] for p in parts]


def test_iid_reproduces_the_baseline_split():
    records = make_records([i % 101 for i in range(9537)])
    parts = partition_videos(records, 5, "iid", seed=7)
    assert [len(p) for p in parts] == [1907, 1907, 1908, 1907, 1908]
    flat = [vid for part in ids(parts) for vid in part]
    assert len(set(flat)) == 9537 and set(flat) == {r.video_id for r in records}
    reference = [r.video_id for r in records]
    random.seed(7)
    random.shuffle(reference)  # the baseline's exact calls
    assert flat == reference


def authors_k400(labels: list[int]) -> list[list[tuple[str, int]]]:
    """The authors' script, transcribed with the module-level ``random`` it used."""
    label_name = {i: [] for i in range(1, 401)}
    for i, lab in enumerate(labels):
        label_name[lab + 1].append(f"C{lab}/v{i}")
    lens = sorted(((i, len(label_name[i])) for i in range(1, 401)), key=lambda e: e[1])
    clients = [[] for _ in range(100)]
    for i in range(50):
        p1, p2 = lens[i : i + 4], lens[-i - 5 : -i - 1]
        for j in range(4):
            (l1, n1), (l2, n2) = p1[j], p2[j]
            random.seed(1234)
            random.shuffle(label_name[l1])
            random.seed(4321)
            random.shuffle(label_name[l2])
            clients[i] += [(e, l1) for e in label_name[l1][: n1 // 2]]
            clients[i] += [(e, l2) for e in label_name[l2][: n2 // 2]]
            clients[i + 50] += [(e, l1) for e in label_name[l1][n1 // 2 :]]
            clients[i + 50] += [(e, l2) for e in label_name[l2][n2 // 2 :]]
    return clients


def test_k400_noniid_reproduces_the_authors_scheme():
    rng = random.Random(0)
    labels = [c for c in range(400) for _ in range(rng.randint(10, 30))]
    rng.shuffle(labels)
    parts = partition_videos(make_records(labels), 100, "k400-noniid")
    expected = authors_k400(labels)
    assert [[(r.video_id, r.label + 1) for r in p] for p in parts] == expected
    classes = [frozenset(r.label for r in p) for p in parts]
    assert all(len(c) == 8 for c in classes)
    assert all(classes[i] == classes[i + 50] for i in range(50))
    held = Counter(r.video_id for p in parts for r in p)
    assert max(held.values()) > 1  # overlapping windows and in-place reshuffles duplicate videos


def test_k400_noniid_needs_an_even_client_count_and_enough_classes():
    with pytest.raises(PartitionError, match="even"):
        partition_videos(make_records(list(range(60))), 5, "k400-noniid")
    with pytest.raises(PartitionError, match="at least 54 classes"):
        partition_videos(make_records(list(range(20))), 100, "k400-noniid")


@pytest.mark.parametrize("scheme", ["classes", "dirichlet"])
def test_label_skew_schemes_are_seeded_and_use_every_video_once(scheme):
    records = make_records([i % 10 for i in range(400)])
    parts = partition_videos(records, 5, scheme, seed=3)
    assert ids(parts) == ids(partition_videos(records, 5, scheme, seed=3))
    assert ids(parts) != ids(partition_videos(records, 5, scheme, seed=4))
    flat = [vid for part in ids(parts) for vid in part]
    assert sorted(flat) == sorted(r.video_id for r in records)
    assert all(parts)


def test_classes_scheme_is_disjoint_when_slots_match_classes():
    records = make_records([i % 10 for i in range(200)])
    parts = partition_videos(records, 5, "classes", seed=1, classes_per_client=2)
    class_sets = [{r.label for r in p} for p in parts]
    assert all(len(s) == 2 for s in class_sets)
    assert sum(len(s) for s in class_sets) == len(set().union(*class_sets)) == 10
    shared = partition_videos(records, 4, "classes", seed=1, classes_per_client=3)
    assert all(len({r.label for r in p}) == 3 for p in shared)
    with pytest.raises(PartitionError, match="classes-per-client >= 2"):
        partition_videos(records, 5, "classes", classes_per_client=1)


def test_dirichlet_skew_grows_as_alpha_shrinks():
    records = make_records([i % 10 for i in range(1000)])

    def mean_classes(alpha: float) -> float:
        parts = partition_videos(records, 5, "dirichlet", seed=0, dirichlet_alpha=alpha)
        return sum(len({r.label for r in p}) for p in parts) / 5

    assert mean_classes(0.05) < mean_classes(100.0) == 10


def test_unknown_scheme_lists_the_choices():
    with pytest.raises(PartitionError, match=r"choose one of \['iid'"):
        partition_videos(make_records([0]), 1, "random")


def test_partition_files_round_trip_in_numeric_order(tmp_path):
    records = make_records([i % 3 for i in range(24)])
    parts = partition_videos(records, 12, "iid")
    write_partitions(tmp_path, parts)
    items = json.loads((tmp_path / "client_dist10.json").read_text())
    assert items[0] == {"name": parts[9][0].video_id, "label": parts[9][0].label + 1}
    assert ids(read_partitions(tmp_path, records)) == ids(parts)
    write_partitions(tmp_path, parts[:3])  # fewer clients: stale files go
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"client_dist{k}.json" for k in (1, 2, 3)]


def test_reading_partitions_names_missing_videos(tmp_path):
    records = make_records([0, 1, 2, 0])
    write_partitions(tmp_path, [records[:2], records[2:]])
    with pytest.raises(PartitionError, match=r"client_dist2.json: 1 of 2 videos .*'C0/v3'"):
        read_partitions(tmp_path, records[:3])
    (tmp_path / "client_dist2.json").rename(tmp_path / "client_dist5.json")
    with pytest.raises(PartitionError, match="must be 1..K"):
        read_partitions(tmp_path, records)


def test_summary_reports_sizes_classes_and_duplicates():
    records = make_records([0, 0, 1, 2])
    text = partition_summary([records[:3], records[2:]], ["Run", "Jump", "Swim"])
    assert "client   1:      3 videos,    2 classes  [Run:2, Jump:1]" in text
    assert text.endswith("total 5 entries, 4 unique videos, 1 held by more than one client")
