"""Splits: seeded, stratified, leak-free, stable as a data set grows, and kept in a manifest."""

from __future__ import annotations

import math
import shutil
from collections import Counter

import numpy as np
import pytest
from conftest import CIFAR_DIR
from hypothesis import given, settings
from hypothesis import strategies as st

from augpipe.data.datasets import open_dataset
from augpipe.data.prepare import prepare_data
from augpipe.data.split import check_ratios, describe_duplicates, read_manifest, split_dataset, write_manifest
from augpipe.errors import ConfigError, DataError


def items(counts: dict[str, int]):
    """Keys, labels and class names for ``{"class": n}``, as a folder source would give them."""
    keys, labels = [], []
    names = sorted(counts)
    for c, name in enumerate(names):
        keys += [f"{name}/{i:05d}.jpg" for i in range(counts[name])]
        labels += [c] * counts[name]
    return keys, np.asarray(labels), names


def per_class(labels, assignment, c):
    return Counter(assignment[np.asarray(labels) == c].tolist())


# -- determinism ---------------------------------------------------------------------------
def test_same_seed_same_assignment_different_seed_different():
    keys, labels, names = items({"a": 50, "b": 40})
    given_ = [None] * len(keys)
    a = split_dataset(keys, labels, given_, val=0.2, test=0.2, seed=7, class_names=names)
    b = split_dataset(keys, labels, given_, val=0.2, test=0.2, seed=7, class_names=names)
    c = split_dataset(keys, labels, given_, val=0.2, test=0.2, seed=8, class_names=names)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    # Another seed moves many items, not one or two.
    assert (a != c).sum() > 10


def test_assignment_does_not_depend_on_item_order():
    keys, labels, names = items({"a": 30, "b": 30})
    given_ = [None] * len(keys)
    a = dict(zip(keys, split_dataset(keys, labels, given_, seed=3)))
    order = np.random.default_rng(0).permutation(len(keys))
    shuffled_keys = [keys[i] for i in order]
    b = dict(zip(shuffled_keys, split_dataset(shuffled_keys, labels[order], given_, seed=3)))
    assert a == b


# -- stratification and leakage ------------------------------------------------------------
@pytest.mark.parametrize("val, test", [(0.1, 0.1), (0.15, 0.25), (0.0, 0.3), (0.2, 0.0), (0.33, 0.33)])
def test_stratified_within_one_image_per_class(val, test):
    counts = {"a": 10, "b": 23, "c": 57, "d": 101, "e": 7}
    keys, labels, names = items(counts)
    out = split_dataset(keys, labels, [None] * len(keys), val=val, test=test, seed=1, class_names=names)
    for c, name in enumerate(names):
        n = counts[name]
        got = per_class(labels, out, c)
        for split, ratio in (("val", val), ("test", test)):
            if ratio == 0:
                assert got[split] == 0
            else:
                assert got[split] >= 1
                assert abs(got[split] - n * ratio) <= 1, (name, split, got)
        assert got["train"] == n - got["val"] - got["test"]


@settings(max_examples=60, deadline=None, database=None)
@given(
    sizes=st.lists(st.integers(min_value=4, max_value=80), min_size=1, max_size=6),
    val=st.floats(min_value=0, max_value=0.4),
    test=st.floats(min_value=0, max_value=0.4),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_every_item_in_exactly_one_split_and_counts_stratified(sizes, val, test, seed):
    counts = {f"c{i}": n for i, n in enumerate(sizes)}
    keys, labels, names = items(counts)
    try:
        out = split_dataset(keys, labels, [None] * len(keys), val=val, test=test, seed=seed, class_names=names)
    except DataError as err:  # only for a class too small for three splits
        assert "too few" in str(err)
        return
    assert len(out) == len(keys)
    assert set(out.tolist()) <= {"train", "val", "test"}
    for c, name in enumerate(names):
        got = per_class(labels, out, c)
        for split, ratio in (("val", val), ("test", test)):
            expected = 0 if ratio == 0 else max(1, math.floor(counts[name] * ratio + 0.5))
            assert got[split] == expected
        assert got["train"] >= 1


def test_no_leakage_between_splits(tmp_path, make_folder):
    make_folder(tmp_path, {"a": 20, "b": 15, "c": 12}, size=8)
    data = prepare_data(tmp_path, val=0.2, test=0.2, seed=0)
    parts = {s: set(data.indices(s).tolist()) for s in ("train", "val", "test")}
    assert not parts["train"] & parts["val"]
    assert not parts["train"] & parts["test"]
    assert not parts["val"] & parts["test"]
    assert parts["train"] | parts["val"] | parts["test"] == set(range(len(data.source)))
    keys = {s: {data.source.keys[i] for i in parts[s]} for s in parts}
    assert sum(len(k) for k in keys.values()) == len(set(data.source.keys)) == 47


# -- manifests -----------------------------------------------------------------------------
def test_stable_when_images_are_added(tmp_path, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 20, "b": 20}, size=8)
    first = prepare_data(root, val=0.2, test=0.1, seed=5)
    manifest = write_manifest(tmp_path / "split.csv", first.source, first.assignment, seed=5, val=0.2, test=0.1)
    old = dict(zip(first.source.keys, first.assignment.tolist()))

    make_folder(root, {"a": 10, "b": 15, "new": 8}, size=8, seed=99, prefix="added_")
    # Other ratios and seed on the call: the manifest's own are used.
    grown = prepare_data(root, val=0.4, test=0.4, seed=0, split_file=manifest)
    assert (grown.seed, grown.val, grown.test) == (5, 0.2, 0.1)
    now = dict(zip(grown.source.keys, grown.assignment.tolist()))
    assert len(now) == 40 + 33
    for key, split in old.items():
        assert now[key] == split, key
    added = [k for k in now if k not in old]
    assert len(added) == 33 and all(now[k] in ("train", "val", "test") for k in added)
    # New items fill each class's quota, so the grown set stays stratified.
    for c, name in enumerate(grown.class_names):
        n = int((grown.source.labels == c).sum())
        got = per_class(grown.source.labels, grown.assignment, c)
        assert abs(got["val"] - 0.2 * n) <= 1 and abs(got["test"] - 0.1 * n) <= 1, (name, got)
    # Without the manifest the same seed would have moved some old items.
    fresh = prepare_data(root, val=0.2, test=0.1, seed=5)
    fresh_map = dict(zip(fresh.source.keys, fresh.assignment.tolist()))
    assert any(fresh_map[k] != s for k, s in old.items())


def test_manifest_round_trip_reproduces_exactly(tmp_path, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 12, "b": 9, "c": 14}, size=8)
    data = prepare_data(root, val=0.25, test=0.15, seed=11)
    m1 = write_manifest(tmp_path / "m1.csv", data.source, data.assignment, seed=11, val=0.25, test=0.15)
    again = prepare_data(root, seed=0, split_file=m1)
    assert again.source.keys == data.source.keys
    assert again.assignment.tolist() == data.assignment.tolist()
    m2 = write_manifest(
        tmp_path / "m2.csv", again.source, again.assignment, seed=again.seed, val=again.val, test=again.test
    )
    assert m1.read_bytes() == m2.read_bytes()
    previous, header = read_manifest(m1, data.source)
    assert previous == dict(zip(data.source.keys, data.assignment.tolist()))
    # Converted and checked, so that a caller's int() / float() can not fail on them.
    assert header["seed"] == 11 and header["val"] == 0.25 and header["test"] == 0.15
    assert header["fingerprint"] == data.source.fingerprint()
    # No temporary file left beside the manifest.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "m1.csv", "m2.csv"]


def test_manifest_for_array_sources_uses_index_keys(tmp_path, make_cifar10):
    root = make_cifar10(tmp_path / "c", per_batch=6, n_test=4, n_classes=2)
    data = prepare_data(root, val=0.2, test=0.2, seed=0)
    m = write_manifest(tmp_path / "m.csv", data.source, data.assignment, seed=0, val=0.2, test=0.2)
    lines = [line for line in m.read_text().splitlines() if not line.startswith("#")]
    assert lines[0] == "index,label,split"
    assert lines[1].startswith("train/0,class")
    assert prepare_data(root, split_file=m).assignment.tolist() == data.assignment.tolist()


@pytest.mark.parametrize(
    "body, message",
    [
        ("path,label,split\na/0000.png,zebra,train\n", "unknown labels, first: 'zebra'"),
        ("path,label,split\na/0000.png,a,train\na/9999.png,a,test\n", "missing from the data set, first: a/9999.png"),
        ("path,label,split\na/0000.png,b,train\n", "a/0000.png is labelled 'b'"),
        ("path,label,split\na/0000.png,a,holdout\n", "unknown split 'holdout'"),
        ("path,label,split\na/0000.png,a\n", "line 2"),
        ("path,label\na/0000.png,a\n", "not a split manifest"),
    ],
)
def test_bad_manifests(tmp_path, make_folder, body, message):
    root = make_folder(tmp_path / "ds", {"a": 4, "b": 4}, size=8)
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(DataError, match=message):
        read_manifest(tmp_path / "m.csv", open_dataset(root))


def test_write_manifest_into_missing_directory_or_onto_a_directory(tmp_path, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 4}, size=8)
    src = open_dataset(root)
    out = np.array(["train"] * 4, dtype=object)
    with pytest.raises(DataError, match="does not exist"):
        write_manifest(tmp_path / "nope" / "m.csv", src, out, seed=0, val=0, test=0)
    (tmp_path / "adir").mkdir()
    with pytest.raises(DataError, match="adir"):
        write_manifest(tmp_path / "adir", src, out, seed=0, val=0, test=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "ds"]
    assert not any((tmp_path / "adir").iterdir())


# -- given splits --------------------------------------------------------------------------
def test_given_train_test_split_is_respected(tmp_path, make_split_folder):
    root = make_split_folder(tmp_path, {"train": {"a": 20, "b": 11}, "test": {"a": 5, "b": 4}}, size=8)
    data = prepare_data(root, val=0.2, test=0.3, seed=2)
    src = data.source
    for key, given_, split in zip(src.keys, src.given, data.assignment):
        if given_ == "test":
            assert split == "test", key  # untouched
        else:
            assert split in ("train", "val"), key  # val carved from train only, test never grows
    assert (data.assignment == "test").sum() == 9
    for c, n_train in enumerate([20, 11]):
        got = per_class(src.labels, data.assignment, c)
        assert got["val"] == max(1, math.floor(n_train * 0.2 + 0.5))


def test_given_train_val_test_split_is_kept_whole(tmp_path, make_split_folder):
    root = make_split_folder(tmp_path, {"train": {"a": 6}, "valid": {"a": 3}, "test": {"a": 2}}, size=8)
    data = prepare_data(root, val=0.3, test=0.3, seed=0)
    assert data.assignment.tolist() == data.source.given


# -- duplicates ----------------------------------------------------------------------------
def test_duplicates_are_skipped_also_across_splits(tmp_path, make_split_folder):
    root = make_split_folder(tmp_path, {"train": {"a": 6, "b": 6}, "test": {"a": 2, "b": 2}}, size=8)
    shutil.copy(root / "train/a/0001.png", root / "test/b/copy.png")  # even under another label
    shutil.copy(root / "train/b/0002.png", root / "train/b/again.png")
    data = prepare_data(root, val=0, test=0.1, seed=0)
    assert data.duplicates["skipped"] == 2 and data.duplicates["groups"] == 2
    assert data.duplicates["label_conflict_groups"] == 1
    assert len(data.source) == 16  # the copies are left out: no test image was trained on
    text = describe_duplicates(data.duplicates)
    assert "2 exact copies skipped" in text and "1 label conflict(s)" in text


def test_no_duplicates_reported_as_none(tmp_path, make_folder):
    data = prepare_data(make_folder(tmp_path / "d", {"a": 4, "b": 4}, size=8), val=0, test=0.25, seed=0)
    assert data.duplicates["skipped"] == 0
    assert describe_duplicates(data.duplicates).endswith("none (no two images have the same pixels)")


# -- errors --------------------------------------------------------------------------------
def test_class_too_small_names_the_class():
    keys, labels, names = items({"plenty": 30, "tiny": 2})
    with pytest.raises(DataError, match=r"class 'tiny' has 2 image\(s\): too few"):
        split_dataset(keys, labels, [None] * len(keys), val=0.1, test=0.1, class_names=names)
    # Enough for train and test alone.
    out = split_dataset(keys, labels, [None] * len(keys), val=0, test=0.1, class_names=names)
    assert per_class(labels, out, 1) == Counter({"train": 1, "test": 1})


@pytest.mark.parametrize(
    "val, test, message",
    [
        (-0.1, 0.1, "--val must be a fraction"),
        (0.1, -0.5, "--test must be a fraction"),
        (1.0, 0.0, "--val must be a fraction"),
        (float("nan"), 0.1, "--val must be a fraction"),
        (0.5, 0.5, "must be below 1"),
        (0.7, 0.6, "must be below 1"),
    ],
)
def test_bad_ratios(val, test, message):
    with pytest.raises(ConfigError, match=message):
        check_ratios(val, test)
    keys, labels, _ = items({"a": 10})
    with pytest.raises(ConfigError, match=message):
        split_dataset(keys, labels, [None] * 10, val=val, test=test)


@pytest.mark.cifar
def test_shared_cifar10_split_keeps_its_test_set():
    src = open_dataset(CIFAR_DIR)
    out = split_dataset(src.keys, src.labels, src.given, val=0.1, test=0.2, seed=0, class_names=src.class_names)
    given_ = np.array(src.given, dtype=object)
    assert (out[given_ == "test"] == "test").all()
    assert (out == "test").sum() == 10000
    assert (out == "val").sum() == 5000
    for c in range(10):
        assert per_class(src.labels, out, c) == Counter({"train": 4500, "val": 500, "test": 1000})


def test_a_manifest_key_that_starts_with_a_hash_is_a_row_not_a_comment(tmp_path):
    from augpipe.data.datasets import open_dataset
    from augpipe.data.split import read_manifest, split_dataset, write_manifest

    root = tmp_path / "ds"
    for cls in ("#1", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            import cv2
            import numpy as np

            cv2.imwrite(str(root / cls / f"{i}.png"), np.full((4, 4, 3), i * 10 + len(cls), np.uint8))
    source = open_dataset(root)
    assignment = split_dataset(
        source.keys, source.labels, source.given, val=0.2, test=0.2, seed=0, class_names=source.class_names
    )
    write_manifest(tmp_path / "m.csv", source, assignment, seed=0, val=0.2, test=0.2)
    previous, header = read_manifest(tmp_path / "m.csv", source)
    assert previous == dict(zip(source.keys, assignment)) and header["seed"] == 0


# -- the manifest's header ------------------------------------------------------------------
def _manifest_with_header(tmp_path, make_folder, header: str):
    root = make_folder(tmp_path / "ds", {"a": 6, "b": 6}, size=8)
    source = open_dataset(root)
    out = split_dataset(source.keys, source.labels, source.given, val=0.2, test=0.2, seed=3)
    m = write_manifest(tmp_path / "m.csv", source, out, seed=3, val=0.2, test=0.2)
    body = [line for line in m.read_text().splitlines(keepends=True) if not line.startswith("#")]
    m.write_text(header + "".join(body))
    return root, source, m


@pytest.mark.parametrize(
    "header, field",
    [
        ("# seed: banana\n", "seed"),
        ("# seed: -1\n", "seed"),
        ("# seed: 4294967296\n", "seed"),  # 2**32
        ("# seed: +5\n", "seed"),
        ("# seed: 1_000\n", "seed"),
        ("# seed: 3.0\n", "seed"),
        ("# seed: ٣\n", "seed"),  # a digit to str.isdigit, not to a reader of the file
        ("# seed:\n", "seed"),
        ("# val: lots\n", "val"),
        ("# val: nan\n", "val"),
        ("# val: 1\n", "val"),
        ("# val: -0.1\n", "val"),
        ("# test: inf\n", "test"),
        ("# val: 0.6\n# test: 0.5\n", "val and test"),
    ],
)
def test_bad_manifest_header_fields_name_the_file_and_field(tmp_path, make_folder, header, field):
    root, source, m = _manifest_with_header(tmp_path, make_folder, header)
    with pytest.raises(DataError, match=rf"m.csv: the header fields? {field} ") as err:
        read_manifest(m, source)
    assert len(str(err.value).splitlines()) == 1
    # What prepare_data does with a split file: the same error, not a ValueError from int().
    with pytest.raises(DataError, match=rf"m.csv: the header fields? {field} "):
        prepare_data(root, split_file=m)


def test_bad_manifest_header_via_the_cli(tmp_path, make_folder, cli):
    _manifest_with_header(tmp_path, make_folder, "# seed: banana\n")
    res = cli("split", "ds", "--split-file", "m.csv", "--out", "new.csv")
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert (
        res.output.splitlines()[-1] == "Error: m.csv: the header field seed must be an integer from 0 to "
        "4294967295, got 'banana'"
    )
    assert not (tmp_path / "new.csv").exists()


def test_manifest_header_fields_are_converted_and_used(tmp_path, make_folder):
    root, source, m = _manifest_with_header(
        tmp_path, make_folder, "# augpipe split manifest v1\n# seed: 4294967295\n# val: 1e-1\n# test: 0\n# note: hi\n"
    )
    _, header = read_manifest(m, source)
    assert header["seed"] == 4294967295 and isinstance(header["seed"], int)
    assert header["val"] == 0.1 and header["test"] == 0.0 and isinstance(header["test"], float)
    assert header["note"] == "hi"
    data = prepare_data(root, split_file=m)
    assert (data.seed, data.val, data.test) == (4294967295, 0.1, 0.0)
    # Fields that are absent are left to the caller's defaults.
    _, source, m = _manifest_with_header(tmp_path / "2", make_folder, "")
    assert read_manifest(m, source)[1] == {}


def test_manifest_listing_a_key_twice(tmp_path, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 4, "b": 4}, size=8)
    (tmp_path / "m.csv").write_text("path,label,split\na/0000.png,a,train\na/0001.png,a,val\na/0000.png,a,test\n")
    with pytest.raises(DataError, match="a/0000.png is listed twice, lines 2 and 4"):
        read_manifest(tmp_path / "m.csv", open_dataset(root))


def test_manifest_with_a_field_too_large_for_csv(tmp_path, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 4}, size=8)
    big = '"' + "x" * 200_000 + '"'
    (tmp_path / "m.csv").write_text(f"# seed: 1\npath,label,split\na/0000.png,a,train\n{big},a,val\n")
    with pytest.raises(DataError, match="m.csv: line 4: not valid CSV"):
        read_manifest(tmp_path / "m.csv", open_dataset(root))
