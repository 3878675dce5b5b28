"""A user's bad data set must end in one DataError that names what is wrong: never code run
from a pickle, never a traceback, never a silently wrong set of classes or labels.

Each ``bad_*`` case below is one kind of bad input; ``test_bad_input_via_the_cli`` runs them all
through ``augpipe split``, the other tests look at the library's answer more closely.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
from conftest import _make_cifar10, _make_cifar100, _make_folder, cifar_rows, error_line, write_image

from augpipe.data.datasets import open_dataset
from augpipe.errors import DataError


class RunsCode:
    """Pickles into a call of ``func(*args)``: what a crafted data file would hold."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def dump(path, obj, protocol=2):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


def assert_one_error_line(result, needle, *not_written):
    line = error_line(result, codes=(1,))
    assert needle in line, line
    for path in not_written:
        assert not path.exists(), f"{path} was written"


# -- pickles: CIFAR batches and meta files run no code ---------------------------------------
def evil_payloads(marker):
    return {
        "os.system": RunsCode(os.system, f"touch {marker}"),
        "exec": RunsCode(exec, f"open({str(marker)!r}, 'w').close()"),
        # Hidden inside an otherwise well-formed batch, where a loader might not look.
        "nested": {
            b"data": cifar_rows(np.random.default_rng(0), 2),
            b"labels": [0, 1],
            b"filenames": [RunsCode(os.system, f"touch {marker}")],
        },
    }


@pytest.mark.parametrize("payload", ["os.system", "exec", "nested"])
@pytest.mark.parametrize("target", ["data_batch_1", "test_batch", "batches.meta"])
def test_crafted_cifar10_pickle_is_refused_and_runs_nothing(tmp_path, payload, target):
    marker = tmp_path / "pwned"
    root = _make_cifar10(tmp_path / "c10")
    dump(root / target, evil_payloads(marker)[payload])
    with pytest.raises(DataError, match=rf"{target}: not a readable CIFAR .*refused to load") as err:
        open_dataset(root)
    assert len(str(err.value).splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("target", ["train", "meta"])
def test_crafted_cifar100_pickle_is_refused_and_runs_nothing(tmp_path, target):
    marker = tmp_path / "pwned"
    root = _make_cifar100(tmp_path / "c100")
    dump(root / target, RunsCode(os.system, f"touch {marker}"), protocol=4)
    with pytest.raises(DataError, match=f"{target}: not a readable CIFAR"):
        open_dataset(root)
    assert not marker.exists()


def test_crafted_cifar_batch_via_split_is_one_error_line(tmp_path, cli):
    marker = tmp_path / "pwned"
    root = _make_cifar10(tmp_path / "c10")
    dump(root / "data_batch_1", RunsCode(os.system, f"touch {marker}"))
    res = cli("split", "c10", "--out", "m.csv")
    assert_one_error_line(
        res, "data_batch_1: not a readable CIFAR batch (refused to load posix.system)", tmp_path / "m.csv"
    )
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("labels_as", ["list", "array", "numpy scalars"])
def test_real_cifar_batches_still_load(tmp_path, protocol, labels_as):
    """What the CIFAR files hold, written by today's numpy at old and new pickle protocols:
    arrays, lists, numpy scalars and bytes keys must all pass the allow-list."""
    root = _make_cifar10(tmp_path / "c10", per_batch=2, n_test=3, n_classes=4)
    rng = np.random.default_rng(7)
    data = cifar_rows(rng, 3)
    labels = {
        "list": [3, 0, 2],
        "array": np.array([3, 0, 2], np.int64),
        "numpy scalars": [np.int64(3), np.int32(0), np.uint8(2)],
    }[labels_as]
    dump(
        root / "data_batch_1",
        {
            b"batch_label": b"training batch 1 of 5",
            b"data": data,
            b"labels": labels,
            b"filenames": [b"a.png", b"b.png", b"c.png"],
        },
        protocol,
    )
    names = [b"cat", b"dog", b"emu", b"fox"]
    dump(
        root / "batches.meta",
        {
            b"label_names": names if labels_as == "list" else np.array(names),
            b"num_cases_per_batch": 10000,
            b"num_vis": 3072,
        },
        protocol,
    )
    src = open_dataset(root)
    assert src.class_names == ["cat", "dog", "emu", "fox"]
    assert src.labels[:3].tolist() == [3, 0, 2]
    assert len(src) == 3 + 4 * 2 + 3
    img = src.load(1)
    assert img[0, 0].tolist() == [data[1][0], data[1][1024], data[1][2048]]


# -- CIFAR contents --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "meta, message",
    [
        ([b"cat", b"dog"], "not a CIFAR meta file"),
        ({b"label_names": 5}, "class names must be a list, found int"),
        ({b"label_names": [b"cat", 1.5] + [b"x%d" % i for i in range(8)]}, "class name 1 must be text, found float"),
        ({b"label_names": [b"caf\xe9"] + [b"x%d" % i for i in range(9)]}, "class name 0 is not UTF-8 text"),
        ({b"label_names": [b"cat", b"cat"] + [b"x%d" % i for i in range(8)]}, "the class name 'cat' is given twice"),
        ({b"label_names": [b"  "] + [b"x%d" % i for i in range(9)]}, "class name 0 is empty"),
        ({b"label_names": [b"cat", b"dog"]}, "has no entry in batches.meta:label_names (2 names)"),
    ],
)
def test_cifar_meta_with_wrong_contents(tmp_path, meta, message):
    root = _make_cifar10(tmp_path / "c10", n_classes=10)
    dump(root / "batches.meta", meta)
    with pytest.raises(DataError, match="batches.meta") as err:
        open_dataset(root)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "batch, message",
    [
        ({b"data": [[0] * 3072, [0] * 100], b"labels": [0, 1]}, "not a CIFAR batch"),  # ragged rows
        ({b"data": np.full((2, 3072), 300, np.int64), b"labels": [0, 1]}, "bytes 0..255, found int64"),
        ({b"data": np.full((2, 3072), 0.5), b"labels": [0, 1]}, "bytes 0..255, found float64"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.0, 1.0]}, "integer labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[0, 1], [1]]}, "not a CIFAR batch"),
    ],
)
def test_cifar_batch_with_wrong_contents(tmp_path, batch, message):
    root = _make_cifar10(tmp_path / "c10")
    dump(root / "data_batch_2", batch)
    with pytest.raises(DataError, match="data_batch_2") as err:
        open_dataset(root)
    assert message in str(err.value)


def test_cifar_batch_of_small_integers_is_taken_as_bytes(tmp_path):
    root = _make_cifar10(tmp_path / "c10", per_batch=2)
    data = cifar_rows(np.random.default_rng(3), 2)
    dump(root / "data_batch_1", {b"data": data.astype(np.int64), b"labels": [1, 2]})
    src = open_dataset(root)
    assert src.load(1)[0, 0].tolist() == [data[1][0], data[1][1024], data[1][2048]]


def test_cifar_with_no_images_at_all(tmp_path):
    root = _make_cifar10(tmp_path / "c10")
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        # Protocol 4: at protocol 2 Python 3 writes empty bytes as a call of bytes(), which
        # the unpickler's allow-list refuses.
        dump(root / name, {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, protocol=4)
    with pytest.raises(DataError, match="no images"):
        open_dataset(root)


def test_cifar_without_meta_numbers_the_classes_it_has(tmp_path, caplog):
    root = _make_cifar100(tmp_path / "c100", n_train=4, n_test=2)
    (root / "meta").unlink()
    (root / "meta").mkdir()  # the folder is still told apart by name; the names are gone
    dump(root / "train", {b"data": cifar_rows(np.random.default_rng(0), 4), b"fine_labels": [7, 10**7, 7, 2]})
    dump(root / "test", {b"data": cifar_rows(np.random.default_rng(1), 2), b"fine_labels": [2, 10**7]})
    # A meta folder is not a meta file, and without one the train/test layout is not CIFAR.
    (root / "meta").rmdir()
    dump(root / "meta", {b"coarse_label_names": [b"c"]})
    with caplog.at_level(logging.INFO, logger="augpipe"):
        src = open_dataset(root)
    assert src.class_names == ["2", "7", "10000000"]
    assert src.labels.tolist() == [1, 2, 1, 0, 0, 2]
    assert "they are 3 classes" in caplog.text


# -- .npz labels -----------------------------------------------------------------------------
def npz(tmp_path, y, n=None, **extra):
    y = np.asarray(y)
    n = len(y) if n is None else n
    x = np.random.default_rng(0).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=y, **extra)
    return tmp_path / "d.npz"


def test_npz_sparse_labels_are_as_many_classes_as_values(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="augpipe"):
        src = open_dataset(npz(tmp_path, [10_000_000, 0, 1, 1, 0, 10_000_000]))
    assert src.class_names == ["0", "1", "10000000"]
    assert src.labels.tolist() == [2, 0, 1, 1, 0, 2]
    assert src.class_counts().tolist() == [2, 2, 2]
    assert "the labels are 0, 1, 10000000; they are 3 classes" in caplog.text


def test_npz_labels_with_a_gap_are_renumbered_and_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="augpipe"):
        src = open_dataset(npz(tmp_path, np.array([5, 3, 5, 3], np.uint16)))
    assert src.class_names == ["3", "5"] and src.labels.tolist() == [1, 0, 1, 0]
    assert src.labels.dtype == np.int64
    assert "they are 2 classes" in caplog.text


def test_npz_labels_zero_to_k_are_kept_as_they_are_without_a_log(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="augpipe"):
        src = open_dataset(npz(tmp_path, [2, 0, 1, 2]))
    assert src.class_names == ["0", "1", "2"] and src.labels.tolist() == [2, 0, 1, 2]
    assert "classes" not in caplog.text


def test_npz_labels_index_the_class_names_even_when_one_class_is_absent(tmp_path):
    src = open_dataset(npz(tmp_path, [2, 0, 2], class_names=np.array(["cat", "dog", "emu"])))
    assert src.class_names == ["cat", "dog", "emu"] and src.labels.tolist() == [2, 0, 2]


@pytest.mark.parametrize(
    "y, extra, message",
    [
        (np.array([True, False]), {}, "labels must be integers, found bool"),
        (np.array([0.0, 1.0]), {}, "labels must be integers, found float64"),
        (np.array([0.0, np.nan]), {}, "labels must be integers, found float64"),
        (np.array(["0", "1"]), {}, "labels must be integers, found <U1"),
        (np.array([0, 2**63], np.uint64), {}, "label 9223372036854775808 is too large"),
        (np.array([0, -3]), {}, "labels must not be negative, found -3"),
        (np.array([0, 1]), {"class_names": np.array("cat")}, "must be a 1-D list, found shape ()"),
        (np.array([0, 1]), {"class_names": np.array([["a", "b"]])}, "must be a 1-D list, found shape (1, 2)"),
        (np.array([0, 1]), {"class_names": np.array(["a", "a"])}, "the class name 'a' is given twice"),
        (np.array([0, 1]), {"class_names": np.array([b"a", b"\xff"])}, "class name 1 is not UTF-8 text"),
        (np.array([0, 1]), {"class_names": np.array(["a", " "])}, "class name 1 is empty"),
        (np.array([0, 1]), {"class_names": np.array([0.5, 1.5])}, "class name 0 must be text, found float"),
        (np.array([0, 1]), {"class_names": np.array(["a"])}, "label 1 has no entry in class_names (1 names)"),
    ],
)
def test_npz_bad_labels_and_class_names(tmp_path, y, extra, message):
    with pytest.raises(DataError, match="d.npz") as err:
        open_dataset(npz(tmp_path, y, **extra))
    assert message in str(err.value)


def test_npz_images_of_zero_pixels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 0, 0, 3), np.uint8), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"at least 1x1 pixels, found shape \(2, 0, 0, 3\)"):
        open_dataset(tmp_path / "d.npz")


def test_npz_that_is_not_an_npz(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DataError, match="empty.npz: not a readable .npz file"):
        open_dataset(tmp_path / "empty.npz")
    np.save(tmp_path / "one.npy", np.zeros((2, 4, 4, 3), np.uint8))
    os.replace(tmp_path / "one.npy", tmp_path / "one.npz")
    with pytest.raises(DataError, match="one.npz: holds one array"):
        open_dataset(tmp_path / "one.npz")
    with zipfile.ZipFile(tmp_path / "raw.npz", "w") as z:  # members that are not .npy files
        z.writestr("x", b"\0" * 48)
        z.writestr("y", b"\0\1")
    with pytest.raises(DataError, match="raw.npz:x: not a NumPy array"):
        open_dataset(tmp_path / "raw.npz")
    dump(tmp_path / "pickled.npz", RunsCode(os.system, f"touch {tmp_path / 'pwned'}"))
    with pytest.raises(DataError, match="pickled.npz: not a readable .npz file"):
        open_dataset(tmp_path / "pickled.npz")
    assert not (tmp_path / "pwned").exists()


def test_npz_with_a_damaged_compressed_member(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "d.npz", x=x, y=np.zeros(64, np.int64))
    data = bytearray((tmp_path / "d.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "d.npz") as z:
        info = z.getinfo("x.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 20, start + info.compress_size - 20, 7):  # scramble the deflate stream
        data[i] ^= 0x5A
    (tmp_path / "d.npz").write_bytes(bytes(data))
    with pytest.raises(DataError, match="d.npz:x: not a readable array"):
        open_dataset(tmp_path / "d.npz")


# -- folders: links that would count images twice ---------------------------------------------
def test_class_folder_linked_to_the_data_set_itself(tmp_path):
    root = _make_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=8)
    (root / "c").symlink_to(root, target_is_directory=True)
    with pytest.raises(DataError, match=r"ds/c: the class folder is a link to the data set folder itself"):
        open_dataset(root)


def test_class_folder_linked_to_a_folder_above_the_data_set(tmp_path):
    root = _make_folder(tmp_path / "top" / "ds", {"a": 3, "b": 3}, size=8)
    (root / "up").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(DataError, match=r"ds/up: the class folder is a link to .*, a folder above the data set"):
        open_dataset(root)


def test_class_folder_linked_into_another_class_folder(tmp_path):
    root = _make_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=8)
    _make_folder(root / "a" / "more", {"x": 2}, size=8, seed=3)
    (root / "c").symlink_to(root / "a" / "more", target_is_directory=True)
    with pytest.raises(DataError, match=r"ds/c: the class folder is inside the class folder .*ds/a"):
        open_dataset(root)


def test_two_class_folders_linked_to_one_folder(tmp_path):
    elsewhere = _make_folder(tmp_path / "elsewhere", {"cats": 3}, size=8) / "cats"
    root = _make_folder(tmp_path / "ds", {"a": 3}, size=8)
    (root / "b").symlink_to(elsewhere, target_is_directory=True)
    (root / "c").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(DataError, match=r"ds/c: the class folder is the same folder as the class folder .*ds/b"):
        open_dataset(root)


def test_split_folders_linked_into_each_other(tmp_path, make_split_folder):
    root = make_split_folder(tmp_path / "ds", {"train": {"a": 4, "b": 4}, "test": {"a": 2, "b": 2}}, size=8)
    (root / "val").symlink_to(root / "train", target_is_directory=True)
    with pytest.raises(DataError, match="one split folder is inside the other"):
        open_dataset(root)


def test_split_folder_linked_to_the_data_set(tmp_path, make_split_folder):
    root = make_split_folder(tmp_path / "ds", {"train": {"a": 4}}, size=8)
    (root / "test").symlink_to(root, target_is_directory=True)
    with pytest.raises(DataError, match="ds/test: the split folder is a link to the data set folder itself"):
        open_dataset(root)


def test_class_folder_linked_to_a_class_of_another_split(tmp_path, make_split_folder):
    root = make_split_folder(tmp_path / "ds", {"train": {"a": 4, "b": 4}, "test": {"a": 2}}, size=8)
    (root / "test" / "b").symlink_to(root / "train" / "b", target_is_directory=True)
    with pytest.raises(DataError, match=r"test/b: the class folder is .*split folder .*ds/train"):
        open_dataset(root)


def test_class_folder_linked_to_its_own_split_folder(tmp_path, make_split_folder):
    root = make_split_folder(tmp_path / "ds", {"train": {"a": 4}, "test": {"a": 2}}, size=8)
    (root / "train" / "all").symlink_to(root / "train", target_is_directory=True)
    with pytest.raises(DataError, match=r"train/all: the class folder is .*split folder .*ds/train"):
        open_dataset(root)


def test_class_folders_linked_from_elsewhere_still_work(tmp_path):
    store = _make_folder(tmp_path / "store", {"cats": 3, "dogs": 2}, size=8, seed=4)
    root = _make_folder(tmp_path / "ds", {"a": 2}, size=8)
    (root / "cat").symlink_to(store / "cats", target_is_directory=True)
    (root / "dog").symlink_to(os.path.relpath(store / "dogs", root), target_is_directory=True)
    src = open_dataset(root)
    assert src.class_names == ["a", "cat", "dog"]
    assert src.class_counts().tolist() == [2, 3, 2]
    assert "cat/0002.png" in src.keys and "dog/0001.png" in src.keys
    import cv2

    i = src.keys.index("cat/0002.png")
    assert np.array_equal(src.load(i), cv2.imread(str(store / "cats" / "0002.png"))[:, :, ::-1])


def test_linked_split_and_data_set_folders_still_work(tmp_path, make_split_folder):
    store = make_split_folder(tmp_path / "store", {"train": {"a": 4, "b": 4}, "test": {"a": 2, "b": 2}}, size=8)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train").symlink_to(store / "train", target_is_directory=True)
    (tmp_path / "ds" / "test").symlink_to(store / "test", target_is_directory=True)
    (tmp_path / "link").symlink_to(tmp_path / "ds", target_is_directory=True)
    src = open_dataset(tmp_path / "link")
    assert len(src) == 12 and src.given.count("test") == 4
    assert src.keys[0] == "test/a/0000.png"


def test_one_image_file_in_two_classes(tmp_path):
    root = _make_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=8)
    (root / "b" / "also.png").symlink_to(root / "a" / "0001.png")
    with pytest.raises(DataError) as err:
        open_dataset(root)
    msg = str(err.value)
    assert "ds/a/0001.png and " in msg and "ds/b/also.png are the same file" in msg
    assert "class 'a' and class 'b'" in msg


def test_linked_folder_inside_a_class_is_not_followed_and_is_reported(tmp_path, caplog):
    root = _make_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=8)
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    (root / "a" / "other").symlink_to(root / "b", target_is_directory=True)
    with caplog.at_level(logging.INFO, logger="augpipe"):
        src = open_dataset(root)
    assert src.class_counts().tolist() == [3, 3]
    assert "ignoring 2 linked folder(s) inside class folders" in caplog.text


def test_nested_folders_keep_their_order_and_keys(tmp_path):
    root = _make_folder(tmp_path / "ds", {"a": 2}, size=8)
    _make_folder(root / "a" / "z", {"deep": 1}, size=8, seed=1)
    _make_folder(root / "a" / "b", {"c": 1}, size=8, seed=2)
    write_image(root / "a" / "zz.png", np.zeros((4, 4, 3), np.uint8))
    # os.walk's order: a folder's own files by name, then each subfolder in turn.
    assert open_dataset(root).keys == ["a/0000.png", "a/0001.png", "a/zz.png", "a/b/c/0000.png", "a/z/deep/0000.png"]


def test_broken_link_as_an_image_is_an_unreadable_image(tmp_path):
    from augpipe.data.prepare import prepare_data

    root = _make_folder(tmp_path / "ds", {"a": 4, "b": 4}, size=8)
    (root / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert len(open_dataset(root)) == 9
    data = prepare_data(root, val=0, test=0.25)
    assert data.skipped == [str(root / "a" / "gone.png")] and len(data.source) == 8
    with pytest.raises(DataError, match="1 unreadable image"):
        prepare_data(root, val=0, test=0.25, strict=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folders(tmp_path):
    root = _make_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=8)
    _make_folder(root / "a" / "sub", {"x": 2}, size=8, seed=1)
    (root / "a" / "sub").chmod(0)
    try:
        with pytest.raises(DataError, match="ds/a/sub: can not be read"):
            open_dataset(root)
        (root / "a" / "sub").chmod(0o755)
        (root / "b").chmod(0)
        with pytest.raises(DataError, match="ds/b: can not be read"):
            open_dataset(root)
    finally:
        (root / "a" / "sub").chmod(0o755)
        (root / "b").chmod(0o755)


# -- CSV manifests ----------------------------------------------------------------------------
def csv_ds(tmp_path, body: str):
    _make_folder(tmp_path / "img", {"a": 4, "b": 4}, size=8)
    (tmp_path / "list.csv").write_text(body, encoding="utf-8")
    return tmp_path / "list.csv"


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "path,label\nimg/a/0000.png,a\nimg/a/0001.png,a\nimg/a/0000.png,b\n",
            "img/a/0000.png is labelled 'a' on line 2 and 'b' on line 4",
        ),
        (
            "# made by hand\npath,label\nimg/a/0000.png,a\nimg/a/0001.png,a\nimg/b/0000.png,b\nimg/b/0001.png,b\n"
            "\nimg/a/0000.png,a\n",
            "img/a/0000.png is listed twice, lines 3 and 8",
        ),
        (
            "path,label\nimg/a/0000.png,a\n./img/a/../a/0000.png,a\n",
            "./img/a/../a/0000.png is listed twice, lines 2 and 3",
        ),
        ("path,label\nimg/a/0000.png,a\nimg/a/0001.png, \n", "line 3: the label of img/a/0001.png is empty"),
        ("path,label\nimg/a/0000.png,a\n,b\n", "line 3: the path is empty"),
        ("path,label,split\nimg/a/0000.png,a,train\nimg/a/0001.png\n", "line 3: expected path,label[,split], found 1"),
        (
            "path,label,split\nimg/a/0000.png,a,train\nimg/a/0001.png,a,holdout\n",
            "line 3: unknown split name 'holdout'",
        ),
        ("path,label\n", "the manifest lists no images"),
        ("# only a comment\n\n", "the manifest is empty"),
        ("path,label,path\nimg/a/0000.png,a,x\n", "the column 'path' is named twice"),
        ("path,label\nimg/a/\x000000.png,a\n", "line 2: 'img/a/\\x000000.png' is not a usable path"),
        ("path,label\n" + "x" * 5000 + ".png,a\n", "line 2: 'xxxx"),
        ('path,label\nimg/a/0000.png,a\n"' + "y" * 200_000 + '",a\n', "line 3: not valid CSV (field larger than"),
        ("path,label\n#img/a/0000.png,a\n", "1 missing file(s), first: #img/a/0000.png"),
    ],
)
def test_bad_csv_manifests(tmp_path, body, message):
    with pytest.raises(DataError) as err:
        open_dataset(csv_ds(tmp_path, body))
    assert message in str(err.value)
    assert str(tmp_path / "list.csv") in str(err.value)


def test_csv_row_starting_with_a_hash_after_the_header_is_a_row(tmp_path):
    path = csv_ds(
        tmp_path, "# comments before the header only\n\npath,label\n#1.png,hash\nimg/a/0000.png,a\n# 2.png,hash\n"
    )
    shutil.copy(tmp_path / "img/b/0000.png", tmp_path / "#1.png")
    shutil.copy(tmp_path / "img/b/0001.png", tmp_path / "# 2.png")
    src = open_dataset(path)
    assert src.keys == ["#1.png", "img/a/0000.png", "# 2.png"]
    assert src.class_names == ["a", "hash"] and src.labels.tolist() == [1, 0, 1]


def test_csv_trailing_empty_rows_of_a_spreadsheet_are_blank_lines(tmp_path):
    body = "path,label,split\r\nimg/a/0000.png,a,\r\nimg/b/0000.png,b,test\r\n,,\r\n , ,\r\n"
    src = open_dataset(csv_ds(tmp_path, body))
    assert src.keys == ["img/a/0000.png", "img/b/0000.png"] and src.given == [None, "test"]


def test_csv_quoted_field_over_two_lines_counts_its_lines(tmp_path):
    path = csv_ds(tmp_path, 'path,label\n"img/a/0000.png","a"\n"img/a/0001.png","b\nc"\nimg/a/0000.png,a\n')
    with pytest.raises(DataError, match="listed twice, lines 2 and 5"):
        open_dataset(path)


# -- every case, through the command line -------------------------------------------------------
def _cifar_with(tmp_path, name, obj):
    root = _make_cifar10(tmp_path / "c10")
    dump(root / name, obj)
    return "c10"


def _npz_with(tmp_path, **arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    return "d.npz"


def _folder_with_link(tmp_path, name, target):
    root = _make_folder(tmp_path / "ds", {"a": 6, "b": 6}, size=8)
    (root / name).symlink_to(target(root), target_is_directory=True)
    return "ds"


def _csv(tmp_path, body):
    csv_ds(tmp_path, body)
    return "list.csv"


X2 = np.zeros((2, 4, 4, 3), np.uint8)
CLI_CASES = {
    "cifar code": (
        lambda t: _cifar_with(t, "data_batch_1", RunsCode(os.system, f"touch {t / 'pwned'}")),
        "refused to load posix.system",
    ),
    "cifar meta code": (
        lambda t: _cifar_with(t, "batches.meta", RunsCode(exec, "1")),
        "refused to load __builtin__.exec",
    ),
    "cifar meta names not a list": (
        lambda t: _cifar_with(t, "batches.meta", {b"label_names": 3}),
        "class names must be a list",
    ),
    "cifar ragged": (
        lambda t: _cifar_with(t, "data_batch_1", {b"data": [[1], [2, 3]], b"labels": [0, 1]}),
        "not a CIFAR batch",
    ),
    "npz huge labels as ten million classes": (
        lambda t: _npz_with(t, x=X2, y=np.array([0, 2**63], np.uint64)),
        "too large",
    ),
    "npz bool labels": (lambda t: _npz_with(t, x=X2, y=np.array([True, False])), "found bool"),
    "npz name 0-d": (lambda t: _npz_with(t, x=X2, y=np.array([0, 1]), class_names=np.array("ab")), "1-D list"),
    "npz empty": (lambda t: (t / "d.npz").write_bytes(b"") or "d.npz", "not a readable .npz file"),
    "class link to root": (lambda t: _folder_with_link(t, "c", lambda r: r), "link to the data set folder itself"),
    "class link into class": (lambda t: _folder_with_link(t, "c", lambda r: r / "a"), "same folder as the class"),
    "csv two labels": (lambda t: _csv(t, "path,label\nimg/a/0000.png,a\nimg/a/0000.png,b\n"), "on line 2 and 'b'"),
    "csv listed twice": (lambda t: _csv(t, "path,label\nimg/a/0000.png,a\nimg/a/0000.png,a\n"), "listed twice"),
    "csv empty label": (lambda t: _csv(t, "path,label\nimg/a/0000.png,\n"), "line 2: the label"),
    "csv header only": (lambda t: _csv(t, "path,label,split\n"), "lists no images"),
    "csv not utf-8": (
        lambda t: (t / "list.csv").write_bytes(b"path,label\nx.png,caf\xe9\n") and "list.csv",
        "not a UTF-8 text file",
    ),
    "csv short row": (lambda t: _csv(t, "path,label\nimg/a/0000.png\n"), "line 2: expected path,label"),
    "csv unknown split": (
        lambda t: _csv(t, "path,label,split\nimg/a/0000.png,a,dev\n"),
        "line 2: unknown split name 'dev'",
    ),
    "csv NUL": (lambda t: _csv(t, "path,label\nimg\x00.png,a\n"), "is not a usable path"),
    "csv huge field": (lambda t: _csv(t, 'path,label\n"' + "z" * 140_000 + '",a\n'), "not valid CSV"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_input_via_the_cli(tmp_path, cli, case):
    setup, needle = CLI_CASES[case]
    source = setup(tmp_path)
    res = cli("split", source, "--val", "0", "--out", "m.csv")
    assert_one_error_line(res, needle, tmp_path / "m.csv")
    assert not (tmp_path / "pwned").exists()
