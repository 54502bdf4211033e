"""stratified_split sizes, stratification and determinism; split.json save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visionkit.data.splits import largest_remainder, load_split, save_split, stratified_split
from visionkit.errors import DataError


def _targets(n, num_classes, seed=0):
    return np.random.default_rng(seed).integers(0, num_classes, n).tolist()


def _check_partition(split, n, unused=0):
    everything = split["train"] + split["val"] + split["test"]
    assert len(everything) == len(set(everything)) == n - unused  # no overlap
    assert set(everything) <= set(range(n))
    for indices in split.values():
        assert indices == sorted(indices)
        assert all(isinstance(i, int) for i in indices)


def test_deterministic_per_seed():
    targets = _targets(500, 5)
    a = stratified_split(targets, seed=3)
    assert a == stratified_split(targets, seed=3)
    b = stratified_split(targets, seed=4)
    assert a != b
    assert {k: len(v) for k, v in a.items()} == {k: len(v) for k, v in b.items()}


def test_does_not_touch_global_rng():
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    stratified_split(_targets(100, 3), seed=1)
    assert np.random.random() == before


@pytest.mark.parametrize(
    "n, ratios, sizes",
    [
        (1000, (8, 1, 1), [800, 100, 100]),
        (1003, (8, 1, 1), [803, 100, 100]),  # 802.4/100.3/100.3: the spare unit goes to .4
        (1000, (0.8, 0.1, 0.1), [800, 100, 100]),
        (1001, (1, 1, 1), [334, 334, 333]),  # tie of remainders -> earlier split
        (10, (7, 3, 0), [7, 3, 0]),
    ],
)
def test_exact_sizes(n, ratios, sizes):
    split = stratified_split(_targets(n, 7), ratios=ratios, seed=0)
    assert [len(split[k]) for k in ("train", "val", "test")] == sizes
    _check_partition(split, n)


def test_largest_remainder():
    assert largest_remainder(1003, (8, 1, 1)) == [803, 100, 100]
    assert largest_remainder(7, (1, 1, 1)) == [3, 2, 2]
    assert sum(largest_remainder(12345, (0.7, 0.2, 0.1))) == 12345
    with pytest.raises(ValueError):
        largest_remainder(10, (0, 0, 0))


@pytest.mark.parametrize(
    "n, num_classes, ratios", [(1003, 7, (8, 1, 1)), (2000, 13, (6, 3, 1)), (997, 3, (1, 1, 1))]
)
def test_stratified_within_one_sample(n, num_classes, ratios):
    targets = np.asarray(_targets(n, num_classes, seed=n))
    split = stratified_split(targets.tolist(), ratios=ratios, seed=0)
    class_sizes = np.bincount(targets, minlength=num_classes)
    for name, indices in split.items():
        got = np.bincount(targets[indices], minlength=num_classes)
        fair = class_sizes * len(indices) / n
        assert np.all(np.abs(got - fair) < 1), (name, got, fair)
    _check_partition(split, n)


def test_small_classes_reach_every_split():
    targets = [0] * 3 + [1] * 50 + [2] * 50 + [3] * 4 + [4] * 2
    split = stratified_split(targets, seed=0)
    labels = np.asarray(targets)
    for name in ("train", "val", "test"):
        present = set(labels[split[name]].tolist())
        assert {0, 1, 2, 3} <= present, name  # class 4 has too few samples to be required
    _check_partition(split, len(targets))


def test_zero_ratio_gives_empty_split():
    split = stratified_split(_targets(100, 4), ratios=(9, 0, 1))
    assert split["val"] == [] and len(split["train"]) == 90 and len(split["test"]) == 10


def test_counts_mode():
    targets = _targets(300, 4)
    split = stratified_split(targets, counts=(100, 50, 25), seed=1)
    assert [len(split[k]) for k in ("train", "val", "test")] == [100, 50, 25]
    _check_partition(split, 300, unused=125)
    full = stratified_split(targets, counts=(200, 50, 50))
    _check_partition(full, 300)
    with pytest.raises(DataError, match="exceed the 300 samples"):
        stratified_split(targets, counts=(200, 100, 1))


def test_empty_targets():
    assert stratified_split([]) == {"train": [], "val": [], "test": []}


def test_save_load_round_trip(tmp_path):
    split = stratified_split(_targets(50, 3), seed=0)
    meta = {"num_samples": 50, "seed": 0, "ratios": (8, 1, 1)}
    path = tmp_path / "run" / "split.json"
    save_split(path, split, meta)
    assert json.loads(path.read_text())["meta"] == {"num_samples": 50, "seed": 0, "ratios": [8, 1, 1]}
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temporary file left
    assert load_split(path) == split
    assert load_split(path, expected_meta=meta) == split  # tuple vs saved list still matches


def test_load_mismatch_names_the_file(tmp_path):
    path = tmp_path / "split.json"
    save_split(path, stratified_split(_targets(3000, 3)), {"num_samples": 3000, "seed": 0})
    with pytest.raises(DataError, match="made for 3000 samples, the data set now has 2990") as err:
        load_split(path, expected_meta={"num_samples": 2990, "seed": 0})
    assert str(path) in str(err.value) and "the run was made with (its config.yaml)" in str(err.value)
    assert "delete" not in str(err.value)  # a new split would score the run on its training images
    with pytest.raises(DataError, match="seed=0") as err:
        load_split(path, expected_meta={"num_samples": 3000, "seed": 1})
    assert str(path) in str(err.value)


def test_load_corrupt_or_missing_file(tmp_path):
    path = tmp_path / "split.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot read split file") as err:
        load_split(path)
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "other.json")
