"""Data set sources: a folder of class folders, a CSV manifest, an .npz file or a CIFAR python
folder, all opened by ``open_dataset(path)`` into one ``ImageSource``."""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augpipe.data.images import decode_file, is_image_file
from augpipe.errors import DataError

log = logging.getLogger("augpipe")

SPLITS = ("train", "val", "test")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "test": "test", "testing": "test"}


def normalize_split_name(name: str) -> str | None:
    """'valid' -> 'val' and the like; '' -> None (no split given)."""
    name = name.strip().lower()
    if not name:
        return None
    if name not in _SPLIT_NAMES:
        raise DataError(f"unknown split name {name!r} (use train, val or test)")
    return _SPLIT_NAMES[name]


@dataclass
class ImageSource:
    """Items (identity key, label, given split) and the means to load each image.

    ``keys`` identify items stably: paths relative to the root for files, ``train/123``
    style indices for arrays. Splits and manifests are keyed by them.
    """

    kind: str
    root: Path
    class_names: list[str]
    keys: list[str]
    labels: np.ndarray
    given: list[str | None]
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def key_column(self) -> str:
        return "path" if self.paths is not None else "index"

    def load(self, i: int) -> np.ndarray | None:
        if self.arrays is not None:
            return self.arrays[i]
        return decode_file(self.paths[i])

    def describe(self, i: int) -> str:
        return str(self.paths[i]) if self.paths is not None else f"{self.root}[{self.keys[i]}]"

    def subset(self, indices) -> "ImageSource":
        idx = [int(i) for i in indices]
        return ImageSource(
            kind=self.kind, root=self.root, class_names=self.class_names,
            keys=[self.keys[i] for i in idx], labels=self.labels[idx],
            given=[self.given[i] for i in idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            arrays=None if self.arrays is None else self.arrays[idx],
        )

    def fingerprint(self) -> str:
        """Changes when any item is added, removed or relabelled."""
        h = hashlib.sha256()
        for key, label in sorted(zip(self.keys, self.labels.tolist())):
            h.update(f"{key}\t{self.class_names[label]}\n".encode())
        return h.hexdigest()[:16]

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names))


def open_dataset(path) -> ImageSource:
    """Open the data set at ``path``, detecting its kind from what is there."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    if root.is_file():
        suffix = root.suffix.lower()
        if suffix == ".csv":
            return _open_csv(root)
        if suffix == ".npz":
            return _open_npz(root)
        raise DataError(f"{root}: not a data set (expected a folder, a .csv manifest or an .npz file)")
    if (root / "data_batch_1").is_file() or ((root / "meta").is_file() and (root / "train").is_file()):
        return _open_cifar(root)
    return _open_folder(root)


def _subdirs(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
    except PermissionError as err:
        raise DataError(f"{folder}: can not be read ({err.strerror})") from None


def _image_files(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(Path(f)))
    return out


def _open_folder(root: Path) -> ImageSource:
    top = _subdirs(root)
    if not top:
        if not any(os.scandir(root)):
            raise DataError(f"{root}: the folder is empty")
        raise DataError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    split_dirs = [(e, _SPLIT_NAMES[e.name.lower()]) for e in top if e.name.lower() in _SPLIT_NAMES]
    if split_dirs:
        ignored = [e.name for e in top if e.name.lower() not in _SPLIT_NAMES]
        if ignored:
            log.warning("%s: ignoring folders beside the split folders: %s", root, ", ".join(ignored))
        groups = [(split, _subdirs(e.path)) for e, split in split_dirs]
    else:
        groups = [(None, top)]

    per_class: dict[str, list[tuple[str, str | None]]] = {}
    for split, class_dirs in groups:
        for entry in class_dirs:
            files = _image_files(entry.path)
            if not files:
                raise DataError(f"{entry.path}: class folder has no images")
            per_class.setdefault(entry.name, []).extend((f, split) for f in files)
    if not per_class:
        raise DataError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")

    class_names = sorted(per_class)
    paths, keys, labels, given = [], [], [], []
    for label, name in enumerate(class_names):
        for f, split in per_class[name]:
            paths.append(Path(f))
            keys.append(os.path.relpath(f, root).replace(os.sep, "/"))
            labels.append(label)
            given.append(split)
    return ImageSource("folder", root, class_names, keys, np.asarray(labels, dtype=np.int64), given, paths=paths)


def _open_csv(path: Path) -> ImageSource:
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte order mark before the header.
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(line for line in fh if not line.startswith("#")) if r]
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    if not rows:
        raise DataError(f"{path}: the manifest is empty")
    header = [c.strip().lower() for c in rows[0]]
    if "path" not in header or "label" not in header:
        raise DataError(f"{path}: the first row must name the columns path,label[,split]")
    ip, il = header.index("path"), header.index("label")
    isplit = header.index("split") if "split" in header else None
    entries, missing = [], []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) <= max(ip, il):
            raise DataError(f"{path}:{n}: expected path,label[,split]")
        f = (path.parent / row[ip].strip()).resolve()
        if not f.is_file():
            missing.append(row[ip])
        split = normalize_split_name(row[isplit]) if isplit is not None and isplit < len(row) else None
        entries.append((f, row[ip].strip(), row[il].strip(), split))
    if missing:
        raise DataError(f"{path}: the manifest names {len(missing)} missing file(s), first: {missing[0]}")
    if not entries:
        raise DataError(f"{path}: the manifest lists no images")
    class_names = sorted({e[2] for e in entries})
    index = {c: i for i, c in enumerate(class_names)}
    return ImageSource(
        "csv", path.parent, class_names, keys=[e[1] for e in entries],
        labels=np.asarray([index[e[2]] for e in entries], dtype=np.int64),
        given=[e[3] for e in entries], paths=[e[0] for e in entries],
    )


def _as_rgb_batch(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8, found {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DataError(f"{where}: images must be NHWC with 1, 3 or 4 channels, found shape {x.shape}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x[..., :3])


def _open_npz(path: Path) -> ImageSource:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:  # a truncated .npz is a bad zip
        raise DataError(f"{path}: not a readable .npz file ({err})") from None

    def array(key: str) -> np.ndarray:
        # Members are read lazily: object arrays (refused without pickle) and damaged members
        # fail only here.
        try:
            return data[key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"{path}:{key}: not a readable array ({err})") from None

    with data:
        names = set(data.files)
        if {"x", "y"} <= names:
            parts = [(None, "x", "y")]
        elif {"x_train", "y_train"} <= names:
            parts = [("train", "x_train", "y_train")]
            if {"x_test", "y_test"} <= names:
                parts.append(("test", "x_test", "y_test"))
        else:
            raise DataError(f"{path}: expected arrays x and y, or x_train, y_train[, x_test, y_test]")
        xs, ys, keys, given = [], [], [], []
        for split, xk, yk in parts:
            x = _as_rgb_batch(array(xk), f"{path}:{xk}")
            y = np.asarray(array(yk)).reshape(-1)
            if len(x) != len(y):
                raise DataError(f"{path}: {xk} has {len(x)} images but {yk} has {len(y)} labels")
            if not np.issubdtype(y.dtype, np.integer):
                raise DataError(f"{path}:{yk}: labels must be integers")
            xs.append(x)
            ys.append(y.astype(np.int64))
            keys += [f"{split}/{i}" if split else str(i) for i in range(len(x))]
            given += [split] * len(x)
        # Names saved as bytes (dtype S) would otherwise read "b'cat'".
        class_names = ([c.decode() if isinstance(c, bytes) else str(c) for c in array("class_names").tolist()]
                       if "class_names" in names else None)
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise DataError(f"{path}: train and test images differ in shape: {sorted(shapes)}")
    labels = np.concatenate(ys)
    if len(labels) == 0:
        raise DataError(f"{path}: no images")
    if labels.min() < 0:
        raise DataError(f"{path}: labels must not be negative")
    if class_names is None:
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    elif labels.max() >= len(class_names):
        raise DataError(f"{path}: label {labels.max()} has no entry in class_names ({len(class_names)} names)")
    return ImageSource("npz", path.parent, class_names, keys, labels, given, arrays=np.concatenate(xs))


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise DataError(f"{path}: not a readable CIFAR batch ({err})") from None


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images NHWC uint8, labels) of one batch file, checked: a wrong file must fail here with
    its name, not later as a reshape or indexing error."""
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataError(f"{path}: not a CIFAR batch (expected a dict with b'data' and {label_key!r})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key]).reshape(-1)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: CIFAR data must be N x 3072 (32x32x3), found shape {data.shape}")
    if len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise DataError(f"{path}: expected {len(data)} non-negative integer labels, found {len(labels)} "
                        f"of type {labels.dtype}")
    x = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, labels.astype(np.int64)


def _open_cifar(root: Path) -> ImageSource:
    if (root / "data_batch_1").is_file():  # CIFAR-10
        files = [("train", root / f"data_batch_{i}") for i in range(1, 6)] + [("test", root / "test_batch")]
        meta, label_key, names_key = root / "batches.meta", b"labels", b"label_names"
    else:  # CIFAR-100
        files = [("train", root / "train"), ("test", root / "test")]
        meta, label_key, names_key = root / "meta", b"fine_labels", b"fine_label_names"
    xs, ys, keys, given = [], [], [], []
    counters = {"train": 0, "test": 0}
    for split, f in files:
        if not f.is_file():
            raise DataError(f"{root}: CIFAR folder is missing {f.name}")
        x, y = _cifar_batch(f, label_key)
        xs.append(x)
        ys.append(y)
        start = counters[split]
        keys += [f"{split}/{start + i}" for i in range(len(x))]
        counters[split] += len(x)
        given += [split] * len(x)
    meta_data = _unpickle(meta) if meta.is_file() else {}
    names = meta_data.get(names_key) if isinstance(meta_data, dict) else None
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else None
    labels = np.concatenate(ys)
    class_names = class_names or [str(i) for i in range(int(labels.max()) + 1)]
    if labels.max() >= len(class_names):
        raise DataError(f"{meta}: label {labels.max()} has no entry in {names_key.decode()} ({len(class_names)} names)")
    return ImageSource("cifar", root, class_names, keys, labels, given, arrays=np.ascontiguousarray(np.concatenate(xs)))
