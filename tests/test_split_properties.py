"""Properties of ``split_dataset`` over random data sets, and of the readers of user-written
files over random text: what must hold whatever the class sizes, keys, ratios and seeds are."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import _make_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augpipe.data.datasets import open_dataset
from augpipe.data.sources import ImageSource
from augpipe.data.split import read_manifest, split_dataset
from augpipe.errors import AugpipeError, DataError

SPLITS = ("train", "val", "test")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ratio = st.one_of(st.sampled_from([0.0, 0.1, 0.2, 0.25, 1 / 3]), st.floats(0, 0.49))
keys_st = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


@st.composite
def datasets(draw, min_items=0, max_items=60):
    """(keys, labels, given, class names): up to 5 classes, some perhaps empty; splits given for
    none of the items, as train/test folders would give them, or as any mixture."""
    keys = draw(st.lists(keys_st, min_size=min_items, max_size=max_items, unique=True))
    n_classes = draw(st.integers(1, 5))
    labels = draw(st.lists(st.integers(0, n_classes - 1), min_size=len(keys), max_size=len(keys)))
    mode = draw(st.sampled_from(["none", "train/test", "any"]))
    choices = {"none": [None], "train/test": ["train", "test"], "any": [None, "train", "val", "test"]}[mode]
    given_ = draw(st.lists(st.sampled_from(choices), min_size=len(keys), max_size=len(keys)))
    return keys, np.asarray(labels, dtype=np.int64), given_, [f"c{i}" for i in range(n_classes)]


def quota(n: int, r: float) -> int:
    """The documented per-class count: round(n * ratio), halves up, at least 1 when r > 0."""
    return 0 if r == 0 else max(1, math.floor(n * r + 0.5))


def expected_plan(labels, given_, val, test):
    """The splits that are carved, each class's pool size and its quota per carved split, and
    whether some class is too small to reach train and every carved split."""
    present = {g for g in given_ if g}
    carve = [s for s, r in (("test", test), ("val", val)) if s not in present and r > 0]
    pools = Counter(int(c) for c, g in zip(labels, given_) if g in (None, "train"))
    quotas = {c: {s: quota(n, {"val": val, "test": test}[s]) for s in carve} for c, n in pools.items()}
    too_small = bool(carve) and any(n - sum(quotas[c].values()) < 1 for c, n in pools.items())
    return carve, pools, quotas, too_small


def split_or_none(keys, labels, given_, val, test, seed, names, previous=None):
    """The assignment, or None where split_dataset refuses with the documented error, which it
    must do exactly when a class is too small."""
    _, _, _, too_small = expected_plan(labels, given_, val, test)
    try:
        out = split_dataset(keys, labels, given_, val=val, test=test, seed=seed, previous=previous, class_names=names)
    except DataError as err:
        assert too_small and "too few" in str(err), err
        return None
    assert not too_small
    return out


@FAST
@given(data=datasets(), val=ratio, test=ratio, seed=st.integers(0, 2**32 - 1))
def test_partition_and_stratification(data, val, test, seed):
    keys, labels, given_, names = data
    out = split_or_none(keys, labels, given_, val, test, seed, names)
    if out is None:
        return
    # (a) a partition: one split per item, and splits the source gave are kept
    assert len(out) == len(keys)
    assert all(s in SPLITS for s in out)
    carve, pools, quotas, _ = expected_plan(labels, given_, val, test)
    for s, g in zip(out, given_):
        if g in ("val", "test"):
            assert s == g
        else:  # the pool: carved splits are taken from it, the rest stays train
            assert s in ["train"] + carve
    # (b) stratified: per class, each carved split gets exactly its quota of the pool
    for c, n in pools.items():
        got = Counter(s for s, lab, g in zip(out, labels, given_) if lab == c and g in (None, "train"))
        for s in carve:
            assert got[s] == quotas[c][s], (c, s, n, got)
        assert got["train"] == n - sum(quotas[c].values()) >= 1 or not carve


@FAST
@given(data=datasets(), val=ratio, test=ratio, seed=st.integers(0, 2**32 - 1), order=st.randoms(use_true_random=False))
def test_same_inputs_in_any_order_give_the_same_assignment(data, val, test, seed, order):
    keys, labels, given_, names = data
    out = split_or_none(keys, labels, given_, val, test, seed, names)
    if out is None:
        return
    perm = list(range(len(keys)))
    order.shuffle(perm)
    again = split_dataset(
        [keys[i] for i in perm],
        labels[perm],
        [given_[i] for i in perm],
        val=val,
        test=test,
        seed=seed,
        class_names=names,
    )
    assert {keys[i]: s for i, s in zip(perm, again)} == dict(zip(keys, out))


@FAST
@given(
    old=datasets(min_items=1),
    new=datasets(min_items=1),
    val=ratio,
    test=ratio,
    seed=st.integers(0, 2**32 - 1),
    seed2=st.integers(0, 2**32 - 1),
)
def test_adding_items_with_the_previous_assignment_moves_no_old_item(old, new, val, test, seed, seed2):
    keys, labels, given_, names = old
    first = split_or_none(keys, labels, given_, val, test, seed, names)
    if first is None:
        return
    previous = dict(zip(keys, first))
    # New items: other keys, given no split (a grown folder), perhaps in classes the old lacked.
    added = [k for k in new[0] if k not in previous]
    all_keys = keys + added
    all_labels = np.concatenate([labels, np.resize(new[1], len(added))]) if added else labels
    all_given = given_ + [None] * len(added)
    all_names = [f"c{i}" for i in range(max(len(names), len(new[3])))]
    # Another seed on the call: the previous assignment, not the seed, decides the old items.
    grown = split_or_none(all_keys, all_labels, all_given, val, test, seed2, all_names, previous=previous)
    if grown is None:
        return
    for k, s in zip(all_keys, grown):
        if k in previous:
            assert s == previous[k], k
        else:
            assert s in SPLITS
    # New items fill each class's remaining quota and never push a split past it.
    carve, pools, quotas, _ = expected_plan(all_labels, all_given, val, test)
    for c in pools:
        in_class = [i for i in range(len(all_keys)) if all_labels[i] == c and all_given[i] in (None, "train")]
        kept = Counter(previous[all_keys[i]] for i in in_class if all_keys[i] in previous)
        got = Counter(grown[i] for i in in_class)
        fresh = sum(all_keys[i] not in previous for i in in_class)
        for s in carve:
            assert kept[s] <= got[s] <= max(kept[s], quotas[c][s])
            assert got[s] - kept[s] <= fresh


# -- readers of user-written files over random text ---------------------------------------------
# Files shaped like manifests, from pieces that reach each check: header comments, a column row,
# rows of fields (keys of the data set, labels, splits, quotes, NUL, newlines in quotes), and
# sometimes text with no shape at all.
VALUES = ["0", "7", "-1", "4294967296", "banana", "0.25", "1", "nan", "1e400", "", "\u0663", "+3"]
FIELDS = [
    "a/0000.png",
    "a/0001.png",
    "b/0000.png",
    "./a/0000.png",
    "a/../a/0000.png",
    "#1.png",
    "a",
    "b",
    " b ",
    "train",
    "val",
    "test",
    "valid",
    "holdout",
    "",
    " ",
    '"',
    '"a\nb"',
    '"x,y"',
    "\x00",
    "\ufeff",
    "z" * 300,
]
EOLS = ["\n", "\r\n", "\r"]
field = st.one_of(st.sampled_from(FIELDS), st.text(max_size=6))
row = st.lists(field, max_size=4).map(",".join)
comment = st.tuples(
    st.sampled_from(["seed", "val", "test", "fingerprint", "augpipe split manifest v1", ""]),
    st.one_of(st.sampled_from(VALUES), st.text(max_size=6)),
).map(lambda kv: f"# {kv[0]}: {kv[1]}")


@st.composite
def manifests(draw, columns):
    lines = (
        draw(st.lists(comment, max_size=4))
        + [draw(st.one_of(st.sampled_from(columns), row))]
        + draw(st.lists(row, max_size=6))
    )
    return "".join(line + draw(st.sampled_from(EOLS)) for line in lines)


def contents(columns):
    return st.one_of(manifests(columns), st.text(max_size=80), st.binary(max_size=80))


def write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def fake_source() -> ImageSource:
    keys = ["a/0000.png", "a/0001.png", "b/0000.png", "#1.png"]
    return ImageSource(
        "folder", Path("."), ["a", "b"], keys, np.array([0, 0, 1, 1]), [None] * 4, paths=[Path(k) for k in keys]
    )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("manifests")


@settings(max_examples=150, deadline=None)
@given(content=contents(["path,label,split", "index,label,split", "path,label"]))
def test_read_manifest_of_random_text_returns_or_raises_a_user_error(scratch, content):
    source = fake_source()
    try:
        previous, header = read_manifest(write(scratch / "m.csv", content), source)
    except AugpipeError as err:
        assert str(err) and "\n" not in str(err), str(err)
        return
    assert set(previous) <= set(source.keys) and set(previous.values()) <= set(SPLITS)
    assert isinstance(header.get("seed", 0), int) and 0 <= header.get("seed", 0) < 2**32
    assert 0 <= header.get("val", 0) < 1 and 0 <= header.get("test", 0) < 1


@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory):
    """Two classes of images beside which each example's manifest is written."""
    root = tmp_path_factory.mktemp("csv")
    _make_folder(root, {"a": 2, "b": 1}, size=4)
    return root


@settings(max_examples=150, deadline=None)
@given(content=contents(["path,label,split", "label,path", "path,label,split,path", "path,label"]))
def test_csv_manifest_of_random_text_opens_or_raises_a_user_error(csv_folder, content):
    try:
        src = open_dataset(write(csv_folder / "list.csv", content))
    except AugpipeError as err:
        assert str(err) and "\n" not in str(err), str(err)
        return
    # Whatever opened is sound: every item one file, one key, one non-empty label.
    assert len(src) > 0 and len(set(src.keys)) == len(src.keys)
    assert len({p.resolve() for p in src.paths}) == len(src)
    assert all(name.strip() for name in src.class_names) and src.labels.max() < len(src.class_names)
    assert set(src.given) <= {None, "train", "val", "test"}
