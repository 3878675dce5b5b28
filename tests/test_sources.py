"""Each kind of data set source, and decoding every kind of image file to RGB uint8 HWC."""

from __future__ import annotations

import pickle
import shutil

import cv2
import numpy as np
import pytest
from conftest import CIFAR_DIR, random_image, write_image

from augpipe.data.datasets import open_dataset
from augpipe.data.images import ImageStore, decode_file, is_image_file
from augpipe.errors import DataError


# -- folder of class folders ---------------------------------------------------------------
def test_folder_of_class_folders_mixed_extensions(tmp_path):
    rng = np.random.default_rng(1)
    written = {}
    for cls, names in {"cat": ["x.JPG", "y.png", "z.Bmp"], "dog": ["p.webp", "q.TIF", "r.jpeg", "s.tiff"]}.items():
        for name in names:
            img = random_image(rng, 12)
            write_image(tmp_path / cls / name, img)
            written[f"{cls}/{name}"] = img[:, :, ::-1]  # RGB
    # Not images: ignored, wherever they are.
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / "labels.csv").write_text("a,b\n")
    (tmp_path / "dog" / ".hidden.png").write_bytes(b"")
    (tmp_path / "README").write_text("top-level file")

    src = open_dataset(tmp_path)
    assert src.kind == "folder"
    assert src.class_names == ["cat", "dog"]
    assert sorted(src.keys) == sorted(written)
    assert src.given == [None] * 7
    assert src.class_counts().tolist() == [3, 4]
    for i, key in enumerate(src.keys):
        assert src.class_names[src.labels[i]] == key.split("/")[0]
        img = src.load(i)
        assert img.dtype == np.uint8 and img.shape == (12, 12, 3)
        if key.lower().endswith((".jpg", ".jpeg")):
            # lossy: what OpenCV decodes, with the channels swapped to RGB
            assert np.array_equal(img, cv2.imread(str(tmp_path / key))[:, :, ::-1])
        else:
            assert np.array_equal(img, written[key]), key


def test_folder_keys_do_not_depend_on_creation_order(tmp_path, make_folder):
    make_folder(tmp_path / "one", {"b": 3, "a": 3})
    make_folder(tmp_path / "two", {"a": 3, "b": 3})
    assert open_dataset(tmp_path / "one").keys == open_dataset(tmp_path / "two").keys


def test_images_in_nested_folders_belong_to_their_class(tmp_path, make_folder):
    make_folder(tmp_path, {"a": 2, "b": 2})
    make_folder(tmp_path / "a" / "more", {"deep": 2}, seed=5)
    src = open_dataset(tmp_path)
    assert src.class_names == ["a", "b"]
    assert src.class_counts().tolist() == [4, 2]
    assert "a/more/deep/0000.png" in src.keys


@pytest.mark.parametrize("val_name", ["val", "valid", "Validation"])
def test_folder_with_split_folders(tmp_path, make_split_folder, val_name):
    make_split_folder(tmp_path, {"train": {"a": 4, "b": 3}, val_name: {"a": 2, "b": 1}, "test": {"a": 1, "b": 2}})
    src = open_dataset(tmp_path)
    assert src.class_names == ["a", "b"]
    assert len(src) == 13
    for key, given, label in zip(src.keys, src.given, src.labels):
        top = key.split("/")[0]
        assert given == {"train": "train", "test": "test"}.get(top, "val")
        assert src.class_names[label] == key.split("/")[1]
    assert src.given.count("train") == 7 and src.given.count("val") == 3 and src.given.count("test") == 3


# -- CSV manifest --------------------------------------------------------------------------
def test_csv_manifest_paths_are_relative_to_the_csv(tmp_path, monkeypatch, make_folder):
    make_folder(tmp_path / "images", {"a": 3, "b": 3})
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "all.csv"
    manifest.write_text(
        "# comment lines are skipped\n"
        "path,label,split\n"
        "../images/a/0000.png,a,train\n"
        "../images/a/0001.png,a,\n"
        "../images/a/0002.png, a ,valid\n"
        "../images/b/0000.png,b,test\n"
        "../images/b/0001.png,b,train\n"
        "../images/b/0002.png,b\n"
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the CSV, not to the working directory
    src = open_dataset(manifest)
    assert src.kind == "csv"
    assert src.class_names == ["a", "b"]
    assert src.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert src.given == ["train", None, "val", "test", "train", None]
    assert src.keys[0] == "../images/a/0000.png"
    expected = cv2.imread(str(tmp_path / "images/b/0000.png"))[:, :, ::-1]
    assert np.array_equal(src.load(3), expected)


def test_csv_manifest_label_column_first_and_no_split(tmp_path, make_folder):
    make_folder(tmp_path, {"a": 2})
    (tmp_path / "m.csv").write_text("label,path\nx,a/0000.png\ny,a/0001.png\n")
    src = open_dataset(tmp_path / "m.csv")
    assert src.class_names == ["x", "y"]
    assert src.given == [None, None]


def test_csv_manifest_saved_with_a_byte_order_mark(tmp_path, make_folder):
    # Excel's "CSV UTF-8" starts the file with a BOM; the header must still be recognised.
    make_folder(tmp_path, {"a": 2})
    (tmp_path / "m.csv").write_text("path,label\na/0000.png,a\na/0001.png,a\n", encoding="utf-8-sig")
    assert len(open_dataset(tmp_path / "m.csv")) == 2


def test_csv_manifest_naming_missing_files(tmp_path, make_folder):
    make_folder(tmp_path, {"a": 2})
    (tmp_path / "m.csv").write_text("path,label\na/0000.png,a\na/gone.png,a\nb/gone2.png,b\n")
    with pytest.raises(DataError, match=r"2 missing file\(s\), first: a/gone.png"):
        open_dataset(tmp_path / "m.csv")


# -- .npz ----------------------------------------------------------------------------------
def test_npz_x_y(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([2, 0, 1, 2, 0]))
    src = open_dataset(tmp_path / "d.npz")
    assert src.kind == "npz"
    assert src.class_names == ["0", "1", "2"]
    assert src.keys == ["0", "1", "2", "3", "4"]
    assert src.given == [None] * 5
    assert src.labels.tolist() == [2, 0, 1, 2, 0]
    assert np.array_equal(src.load(3), x[3])  # npz arrays are RGB already: no channel swap


def test_npz_grayscale_and_rgba_become_rgb(tmp_path):
    gray = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(tmp_path / "g.npz", x=gray, y=np.array([0, 1]))
    img = open_dataset(tmp_path / "g.npz").load(1)
    assert img.shape == (4, 4, 3) and np.array_equal(img[..., 0], gray[1]) and np.array_equal(img[..., 2], gray[1])
    rgba = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=rgba, y=np.array([0, 1]))
    assert np.array_equal(open_dataset(tmp_path / "a.npz").load(0), rgba[0, ..., :3])


@pytest.mark.parametrize("names", [np.array(["cat", "dog", "emu"]), np.array([b"cat", b"dog", b"emu"])])
def test_npz_train_test_with_class_names(tmp_path, names):
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    xte = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.savez(
        tmp_path / "d.npz",
        x_train=xtr,
        y_train=np.array([[0], [1], [2], [1]]),  # (N, 1) like Keras
        x_test=xte,
        y_test=np.array([2, 0]),
        class_names=names,
    )
    src = open_dataset(tmp_path / "d.npz")
    assert src.class_names == ["cat", "dog", "emu"]
    assert src.keys == ["train/0", "train/1", "train/2", "train/3", "test/0", "test/1"]
    assert src.given == ["train"] * 4 + ["test"] * 2
    assert src.labels.tolist() == [0, 1, 2, 1, 2, 0]
    assert np.array_equal(src.load(5), xte[1])


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((2, 4, 4, 3), np.uint8)}, "expected arrays x and y"),
        ({"x": np.zeros((2, 4, 4, 3), np.float32), "y": np.array([0, 1])}, "must be uint8"),
        ({"x": np.zeros((2, 3, 5, 5), np.uint8), "y": np.array([0, 1])}, "NHWC"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0, 1, 1])}, "2 images but y has 3 labels"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0, -1])}, "negative"),
        (
            {"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0, 2]), "class_names": np.array(["a", "b"])},
            "label 2 has no entry",
        ),
    ],
)
def test_npz_bad_contents(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message):
        open_dataset(tmp_path / "d.npz")


def test_npz_truncated_or_with_object_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 1, 0, 1]))
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.npz"):
        open_dataset(tmp_path / "cut.npz")
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = np.zeros((4, 4, 3), np.uint8), np.zeros((5, 5, 3), np.uint8)
    np.savez(tmp_path / "obj.npz", x=objects, y=np.array([0, 1]))
    with pytest.raises(DataError, match="obj.npz"):
        open_dataset(tmp_path / "obj.npz")


# -- CIFAR python folders ------------------------------------------------------------------
def test_cifar10_python_folder(tmp_path, make_cifar10):
    root = make_cifar10(tmp_path / "cifar-10-batches-py", per_batch=3, n_test=4)
    src = open_dataset(root)
    assert src.kind == "cifar"
    assert src.class_names == [f"class{c}" for c in range(10)]
    assert len(src) == 19
    assert src.keys[:4] == ["train/0", "train/1", "train/2", "train/3"]
    assert src.keys[15:] == ["test/0", "test/1", "test/2", "test/3"]
    assert src.given == ["train"] * 15 + ["test"] * 4
    # Row layout: 1024 red values, then green, then blue, each row-major.
    with open(root / "data_batch_2", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    row, label = batch[b"data"][1], batch[b"labels"][1]
    img = src.load(4)  # data_batch_2 item 1
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [row[0], row[1024], row[2048]]
    assert img[1, 2].tolist() == [row[34], row[1024 + 34], row[2048 + 34]]
    assert src.labels[4] == label
    with open(root / "test_batch", "rb") as fh:
        assert src.labels[15:].tolist() == pickle.load(fh, encoding="bytes")[b"labels"]


def test_cifar100_python_folder(tmp_path, make_cifar100):
    root = make_cifar100(tmp_path / "cifar-100-python", n_train=6, n_test=3, n_fine=5)
    src = open_dataset(root)
    assert src.class_names == [f"fine{c}" for c in range(5)]
    assert src.given == ["train"] * 6 + ["test"] * 3
    with open(root / "train", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    assert src.labels[:6].tolist() == batch[b"fine_labels"]
    assert src.load(2)[31, 31].tolist() == [batch[b"data"][2][k * 1024 + 1023] for k in range(3)]


@pytest.mark.parametrize(
    "batch, message",
    [
        ({b"labels": [0, 1]}, "data_batch_1"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "data_batch_1"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, "data_batch_1"),
        ([1, 2, 3], "data_batch_1"),
    ],
)
def test_cifar_malformed_batches(tmp_path, make_cifar10, batch, message):
    root = make_cifar10(tmp_path / "c")
    with open(root / "data_batch_1", "wb") as fh:
        pickle.dump(batch, fh)
    with pytest.raises(DataError, match=message):
        open_dataset(root)


def test_cifar_missing_batch(tmp_path, make_cifar10):
    root = make_cifar10(tmp_path / "c")
    (root / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        open_dataset(root)


# -- decoding to RGB uint8 HWC -------------------------------------------------------------
@pytest.mark.parametrize("ext", [".png", ".jpg", ".JPG", ".bmp", ".webp", ".tif"])
def test_pure_red_bgr_file_decodes_to_rgb_red(tmp_path, ext):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 2] = 255  # BGR
    img = decode_file(write_image(tmp_path / f"red{ext}", red))
    assert img.dtype == np.uint8 and img.shape == (8, 8, 3)
    assert np.abs(img.astype(int) - [255, 0, 0]).max() <= 2  # JPEG may be off by a little


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    img = decode_file(write_image(tmp_path / "g.png", gray))
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(img[..., c], gray)


def test_rgba_png_drops_alpha_and_swaps_channels(tmp_path):
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 200, 100, 50, 128
    img = decode_file(write_image(tmp_path / "a.png", bgra))
    assert img.shape == (8, 8, 3)
    assert img[3, 3].tolist() == [50, 100, 200]


def test_16bit_png_is_scaled_to_8bit(tmp_path):
    bgr16 = np.zeros((4, 4, 3), np.uint16)
    bgr16[..., 0], bgr16[..., 1], bgr16[..., 2] = 65535, 32768, 0
    img = decode_file(write_image(tmp_path / "c16.png", bgr16))
    assert img.dtype == np.uint8 and img.shape == (4, 4, 3)
    assert img[0, 0].tolist() == [0, 127, 255]
    gray16 = np.full((4, 4), 65535, np.uint16)
    gray16[0, 0] = 0
    img = decode_file(write_image(tmp_path / "g16.png", gray16))
    assert img.shape == (4, 4, 3) and img[1, 1].tolist() == [255, 255, 255] and img[0, 0].tolist() == [0, 0, 0]


def test_palette_png_is_expanded(tmp_path):
    from PIL import Image

    index = np.zeros((6, 6), np.uint8)
    index[3:] = 1
    index[:, 4:] = 2
    pic = Image.fromarray(index, mode="P")
    pic.putpalette([255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (256 * 3 - 9))
    pic.save(tmp_path / "p.png")
    img = decode_file(tmp_path / "p.png")
    assert img.shape == (6, 6, 3)
    assert img[0, 0].tolist() == [255, 0, 0]
    assert img[5, 0].tolist() == [0, 255, 0]
    assert img[0, 5].tolist() == [10, 20, 30]


def test_unreadable_files_decode_to_none(tmp_path):
    rng = np.random.default_rng(0)
    good_jpg = write_image(tmp_path / "good.jpg", random_image(rng, 32))
    good_png = write_image(tmp_path / "good.png", random_image(rng, 32))
    assert decode_file(good_jpg) is not None and decode_file(good_png) is not None
    for good in (good_jpg, good_png):
        data = good.read_bytes()
        cut = tmp_path / f"cut{good.suffix}"
        cut.write_bytes(data[: len(data) // 2])
        assert decode_file(cut) is None, cut
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a picture")
    assert decode_file(tmp_path / "zero.png") is None
    assert decode_file(tmp_path / "text.jpg") is None
    assert decode_file(tmp_path / "absent.png") is None


def test_is_image_file():
    from pathlib import Path

    assert all(is_image_file(Path(f"x{e}")) for e in [".JPG", ".jpeg", ".Png", ".bmp", ".WEBP", ".tif", ".tiff"])
    assert not any(is_image_file(Path(n)) for n in ["x.txt", "x.gif", "x", ".x.png", "png"])


def test_image_store_caches_and_finds_bad_images(tmp_path, make_folder):
    root = make_folder(tmp_path, {"a": 3, "b": 3}, size=10)
    (root / "a" / "0001.png").write_bytes(b"")
    src = open_dataset(root)
    store, report = ImageStore.build(src, cache_mb=1)
    assert report.bad == [src.keys.index("a/0001.png")]
    assert report.cached and store.cached
    assert report.digests[report.bad[0]] is None
    assert sum(d is not None for d in report.digests) == 5
    keep = [i for i in range(len(src)) if i not in report.bad]
    sub = store.subset(keep)
    assert sub.shapes_equal and len(sub) == 5
    assert np.array_equal(sub[0], src.load(keep[0]))
    uncached, _ = ImageStore.build(src, cache_mb=0)
    assert not uncached.cached
    assert np.array_equal(uncached[2], src.load(2))
    with pytest.raises(DataError, match="0001.png"):
        uncached[report.bad[0]]


# -- open_dataset errors -------------------------------------------------------------------
def test_open_dataset_errors(tmp_path, make_folder):
    with pytest.raises(DataError, match="no such file or directory"):
        open_dataset(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="the folder is empty"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="no class subfolders"):
        open_dataset(tmp_path / "flat")
    root = make_folder(tmp_path / "ds", {"a": 2})
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"ds/b: class folder has no images"):
        open_dataset(root)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not a data set"):
        open_dataset(tmp_path / "x.txt")


@pytest.mark.cifar
def test_shared_cifar10_image_folder():
    src = open_dataset(CIFAR_DIR)
    assert src.kind == "folder"
    assert src.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(src) == 60000
    assert src.given.count("train") == 50000 and src.given.count("test") == 10000
    assert src.class_counts().tolist() == [6000] * 10
    for i in (0, 49999, 59999):
        img = src.load(i)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8


def test_copied_class_folder_is_one_more_class(tmp_path, make_folder):
    root = make_folder(tmp_path, {"a": 2, "b": 2})
    shutil.copytree(root / "b", root / "c")
    src = open_dataset(root)
    assert src.class_names == ["a", "b", "c"]
    assert np.array_equal(src.load(src.keys.index("b/0000.png")), src.load(src.keys.index("c/0000.png")))
