"""Data set sources: a folder of class folders, a CSV manifest, an .npz file or a CIFAR python
folder, all opened by ``open_dataset(path)`` into one ``ImageSource``."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augpipe.data.images import IMAGE_EXTENSIONS, decode_file
from augpipe.data.index import PathColumn, StrColumn
from augpipe.errors import DataError
from augpipe.files import load_pickle

log = logging.getLogger("augpipe")

SPLITS = ("train", "val", "test")
_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def shown(text: str) -> str:
    """``text`` for an error message: as it is, or quoted and escaped where it holds a newline or
    other control character, so that the message stays one line that says what the file holds."""
    return text if text.isprintable() else repr(text)


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
    style indices for arrays. Splits and manifests are keyed by them. Keys and paths are kept as
    compact columns (``StrColumn``, ``PathColumn``: sequences of str and of Path, whatever was
    passed in), so that a data set of millions of files costs no Python object per item.
    """

    kind: str
    root: Path
    class_names: list[str]
    keys: list[str]  # a StrColumn once made
    labels: np.ndarray
    given: list[str | None]
    paths: list[Path] | None = None  # a PathColumn once made
    arrays: np.ndarray | None = None
    # Encoded images that are not files of their own (members of tar shards): an object with
    # read(i) -> bytes, describe(i) -> str and subset(indices) -> the same kind of object.
    blobs: object | None = None

    def __post_init__(self):
        if not isinstance(self.keys, StrColumn):
            self.keys = StrColumn(self.keys)
        if self.paths is not None and not isinstance(self.paths, PathColumn):
            self.paths = PathColumn(self.paths)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def key_column(self) -> str:
        return "path" if self.paths is not None else "index"

    def load(self, i: int) -> np.ndarray | None:
        if self.arrays is not None:
            return self.arrays[i]
        if self.blobs is not None:
            from augpipe.data.images import read_image_bytes

            return read_image_bytes(self.blobs.read(i))[0]
        return decode_file(self.paths[i])

    def describe(self, i: int) -> str:
        if self.paths is not None:
            return self.paths.text(i)
        if self.blobs is not None:
            return self.blobs.describe(i)
        return f"{self.root}[{self.keys[i]}]"

    def subset(self, indices) -> ImageSource:
        idx = [int(i) for i in indices]
        return ImageSource(
            kind=self.kind,
            root=self.root,
            class_names=self.class_names,
            keys=self.keys.take(idx),
            labels=self.labels[idx],
            given=[self.given[i] for i in idx],
            paths=None if self.paths is None else self.paths.take(idx),
            arrays=None if self.arrays is None else self.arrays[idx],
            blobs=None if self.blobs is None else self.blobs.subset(idx),
        )

    def fingerprint(self) -> str:
        """Changes when any item is added, removed or relabelled."""
        h = hashlib.sha256()
        for key, label in sorted(zip(self.keys, self.labels.tolist())):
            h.update(f"{key}\t{self.class_names[label]}\n".encode())
        return h.hexdigest()[:16]

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names))


# -- folder of class folders --------------------------------------------------------------------
def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links: a linked class folder is a class folder
    except OSError:
        return False


def _is_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def _scandir(folder) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"{folder}: can not be read ({err.strerror or err})") from None


def _subdirs(folder) -> list[os.DirEntry]:
    return [e for e in _scandir(folder) if not e.name.startswith(".") and _is_dir(e)]


def _image_files(folder: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(path, resolved path) of each image under ``folder``, in os.walk's top-down name order,
    and the linked folders found inside it. Those are not followed: one that points back up
    would loop, and one that points to another class would give its images two labels."""
    files, linked = [], []
    stack = [(folder, os.path.realpath(folder))]
    while stack:
        path, real = stack.pop()
        subdirs = []
        for e in _scandir(path):
            if e.name.startswith("."):
                continue
            if _is_dir(e):
                if _is_link(e):
                    linked.append(e.path)
                else:
                    subdirs.append(e)
            elif _is_image_name(e.name):
                # Resolving only the links keeps this to one system call per linked file.
                files.append((e.path, os.path.realpath(e.path) if _is_link(e) else os.path.join(real, e.name)))
        stack.extend((e.path, os.path.join(real, e.name)) for e in reversed(subdirs))
    return files, linked


def _is_image_name(name: str) -> bool:
    # is_image_file without a Path object: this runs for every file of a data set at every start.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_folder_links(root: Path, split_dirs, groups) -> None:
    """Refuse class and split folders that, through links, hold the data set itself or each
    other: their images would be counted again, under another label or in another split (a
    class folder linked to its parent became a class holding every image)."""
    top = Path(os.path.realpath(root))
    splits = [(e.path, Path(os.path.realpath(e.path))) for e, _ in split_dirs]
    classes = [(e.path, Path(os.path.realpath(e.path)), owner) for owner, class_dirs in groups for e in class_dirs]
    for kind, path, real in [("split", p, r) for p, r in splits] + [("class", p, r) for p, r, _ in classes]:
        if _inside(top, real):
            where = "the data set folder itself" if real == top else f"{real}, a folder above the data set"
            raise DataError(f"{path}: the {kind} folder is a link to {where}; it would hold every image")
    for i, (p1, r1) in enumerate(splits):
        for p2, r2 in splits[i + 1 :]:
            if _inside(r1, r2) or _inside(r2, r1):
                raise DataError(
                    f"{p1} and {p2}: one split folder is inside the other (through a link), "
                    "so their images would be in two splits"
                )
    for path, real, owner in classes:
        for split_path, split_real in splits:
            if split_path == owner:
                bad = _inside(split_real, real)
            else:
                bad = _inside(real, split_real) or _inside(split_real, real)
            if bad:
                raise DataError(
                    f"{path}: the class folder is {real} (through a link), which is or holds "
                    f"the split folder {split_path}"
                )
    # Sorted by path components, a folder's descendants follow it directly, so comparing
    # neighbours finds any class folder inside another without comparing every pair.
    ordered = sorted(classes, key=lambda c: c[1].parts)
    for (p1, r1, _), (p2, r2, _) in zip(ordered, ordered[1:]):
        if _inside(r2, r1):
            same = "is the same folder as" if r1 == r2 else "is inside"
            raise DataError(
                f"{p2}: the class folder {same} the class folder {p1} ({r2}, through a link), "
                "so its images would have two labels"
            )


def _open_folder(root: Path) -> ImageSource:
    entries = _scandir(root)
    top = [e for e in entries if not e.name.startswith(".") and _is_dir(e)]
    if not top:
        if not entries:
            raise DataError(f"{root}: the folder is empty")
        raise DataError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    split_dirs = [(e, _SPLIT_NAMES[e.name.lower()]) for e in top if e.name.lower() in _SPLIT_NAMES]
    if split_dirs:
        ignored = [e.name for e in top if e.name.lower() not in _SPLIT_NAMES]
        if ignored:
            log.warning("%s: ignoring folders beside the split folders: %s", root, ", ".join(ignored))
        groups = [(e.path, _subdirs(e.path)) for e, _ in split_dirs]
        split_of = {e.path: split for e, split in split_dirs}
    else:
        groups = [(None, top)]
        split_of = {None: None}
    _check_folder_links(root, split_dirs, groups)

    per_class: dict[str, list[tuple[str, str | None]]] = {}
    seen: dict[str, tuple[str, str]] = {}  # resolved image path -> (class, path as listed)
    linked_dirs = []
    for owner, class_dirs in groups:
        split = split_of[owner]
        for entry in class_dirs:
            files, linked = _image_files(entry.path)
            linked_dirs += linked
            if not files:
                raise DataError(f"{entry.path}: class folder has no images")
            for f, real in files:
                first = seen.setdefault(real, (entry.name, f))
                if first[0] != entry.name:
                    raise DataError(
                        f"{first[1]} and {f} are the same file ({real}) in class {first[0]!r} "
                        f"and class {entry.name!r}: an image can have only one label"
                    )
            per_class.setdefault(entry.name, []).extend((f, split) for f, _ in files)
    if not per_class:
        raise DataError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    if linked_dirs:
        log.warning(
            "%s: ignoring %d linked folder(s) inside class folders (only a class folder itself may "
            "be a link), first: %s",
            root,
            len(linked_dirs),
            linked_dirs[0],
        )

    class_names = sorted(per_class)
    paths, keys, labels, given = [], [], [], []
    # The listed paths start with the root as given: slicing it off is the relative path, at a
    # fraction of relpath's cost (a million images are listed at every start).
    prefix = os.path.join(str(root), "")
    for label, name in enumerate(class_names):
        for f, split in per_class[name]:
            paths.append(f)
            rel = f[len(prefix) :] if f.startswith(prefix) else os.path.relpath(f, root)
            keys.append(rel.replace(os.sep, "/") if os.sep != "/" else rel)
            labels.append(label)
            given.append(split)
    return ImageSource("folder", root, class_names, keys, np.asarray(labels, dtype=np.int64), given, paths=paths)


# -- CSV manifest -------------------------------------------------------------------------------
def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank row from the column row on. Lines starting with
    '#' are comments only before the column row: after it a path may start with '#'."""
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte order mark before the header.
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            lines = fh.readlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: can not be read ({err.strerror or err})") from None
    skip = 0
    while skip < len(lines) and (lines[skip].startswith("#") or not lines[skip].strip()):
        skip += 1
    reader = csv.reader(lines[skip:])
    rows = []
    while True:
        first = skip + reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as err:
            raise DataError(f"{path}: line {first}: not valid CSV ({err})") from None
        # A spreadsheet's trailing ",," rows are blank lines, not rows with an empty path.
        if any(c.strip() for c in row):
            rows.append((first, row))


def _open_csv(path: Path) -> ImageSource:
    rows = _csv_rows(path)
    if not rows:
        raise DataError(f"{path}: the manifest is empty")
    header = [c.strip().lower() for c in rows[0][1]]
    if "path" not in header or "label" not in header:
        raise DataError(f"{path}: the first row must name the columns path,label[,split]")
    for column in ("path", "label", "split"):
        if header.count(column) > 1:
            raise DataError(f"{path}: line {rows[0][0]}: the column {column!r} is named twice")
    ip, il = header.index("path"), header.index("label")
    isplit = header.index("split") if "split" in header else None
    entries, missing = [], []
    first_line: dict[Path, tuple[int, str, str]] = {}  # resolved file -> (line, path, label)
    for n, row in rows[1:]:
        if len(row) <= max(ip, il):
            raise DataError(f"{path}: line {n}: expected path,label[,split], found {len(row)} field(s)")
        name, label = row[ip].strip(), row[il].strip()
        if not name:
            raise DataError(f"{path}: line {n}: the path is empty")
        if not label:
            raise DataError(f"{path}: line {n}: the label of {shown(name)} is empty")
        try:
            f = (path.parent / name).resolve()
            found = f.is_file()
        except (OSError, ValueError) as err:  # a NUL byte, a name too long
            raise DataError(f"{path}: line {n}: {name!r} is not a usable path ({err})") from None
        if not found:
            missing.append(name)
        try:
            split = normalize_split_name(row[isplit]) if isplit is not None and isplit < len(row) else None
        except DataError as err:
            raise DataError(f"{path}: line {n}: {err}") from None
        # Keyed by the resolved file: "a/x.png" and "./a/x.png" are one image.
        earlier = first_line.setdefault(f, (n, name, label))
        if earlier[0] != n:
            if earlier[2] != label:
                raise DataError(
                    f"{path}: {shown(name)} is labelled {earlier[2]!r} on line {earlier[0]} and "
                    f"{label!r} on line {n}: an image can have only one label"
                )
            raise DataError(f"{path}: {shown(name)} is listed twice, lines {earlier[0]} and {n}")
        entries.append((f, name, label, split))
    if missing:
        raise DataError(f"{path}: the manifest names {len(missing)} missing file(s), first: {shown(missing[0])}")
    if not entries:
        raise DataError(f"{path}: the manifest lists no images")
    # Files outside the manifest's folder (../x.jpg, /abs/x.jpg) are allowed: a manifest is a list
    # its user wrote, often kept apart from the images (docs/reliability.md). Said, not silent.
    home = path.parent.resolve()
    outside = [e[1] for e in entries if not _inside(e[0], home)]
    if outside:
        log.info("%s names %d file(s) outside its folder, first: %s", path, len(outside), shown(outside[0]))
    class_names = sorted({e[2] for e in entries})
    index = {c: i for i, c in enumerate(class_names)}
    return ImageSource(
        "csv",
        path.parent,
        class_names,
        keys=[e[1] for e in entries],
        labels=np.asarray([index[e[2]] for e in entries], dtype=np.int64),
        given=[e[3] for e in entries],
        paths=[e[0] for e in entries],
    )


# -- arrays: .npz and CIFAR ---------------------------------------------------------------------
def _as_rgb_batch(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8, found {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DataError(f"{where}: images must be NHWC with 1, 3 or 4 channels, found shape {x.shape}")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise DataError(f"{where}: images must be at least 1x1 pixels, found shape {x.shape}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x[..., :3])


def _int_labels(y: np.ndarray, where: str) -> np.ndarray:
    """``y`` as int64, refusing what would be a silently wrong class: floats (NaN, 1.5, or 1.0
    that may be a regression target), booleans, strings, negatives, and values int64 can't hold."""
    if len(y) == 0:  # np.asarray([]) is float64; no labels are no wrong labels
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):  # numpy's bool is not an integer type
        raise DataError(f"{where}: labels must be integers, found {y.dtype}")
    if y.min() < 0:
        raise DataError(f"{where}: labels must not be negative, found {y.min()}")
    if y.max() > np.iinfo(np.int64).max:
        raise DataError(f"{where}: label {y.max()} is too large")
    return y.astype(np.int64)


def _name_list(names, where: str) -> list[str]:
    """Class names given as a list or 1-D array of str or bytes, each non-empty and distinct."""
    if isinstance(names, np.ndarray):
        if names.ndim != 1:
            raise DataError(f"{where}: class names must be a 1-D list, found shape {names.shape}")
        names = names.tolist()
    if not isinstance(names, (list, tuple)):
        raise DataError(f"{where}: class names must be a list, found {type(names).__name__}")
    out = []
    for i, n in enumerate(names):
        if isinstance(n, bytes):  # saved as bytes, a name would otherwise read "b'cat'"
            try:
                n = n.decode()
            except UnicodeDecodeError:
                raise DataError(f"{where}: class name {i} is not UTF-8 text ({n[:40]!r})") from None
        elif isinstance(n, (int, np.integer)) and not isinstance(n, bool):
            n = str(n)
        elif not isinstance(n, str):
            raise DataError(f"{where}: class name {i} must be text, found {type(n).__name__}")
        if not n.strip():
            raise DataError(f"{where}: class name {i} is empty")
        out.append(n)
    dup = next((n for i, n in enumerate(out) if n in out[:i]), None)
    if dup is not None:
        raise DataError(f"{where}: the class name {dup!r} is given twice")
    return out


def _classes(labels: np.ndarray, names: list[str] | None, where: str, field: str) -> tuple[list[str], np.ndarray]:
    """Class names and labels 0..K-1. Without names the classes are the label values that
    occur: labels {0, 1, 10000000} are three classes, not ten million mostly empty ones."""
    if len(labels) == 0:
        raise DataError(f"{where}: no images")
    if names is not None:
        if labels.max() >= len(names):
            raise DataError(f"{where}: label {labels.max()} has no entry in {field} ({len(names)} names)")
        return names, labels
    values = np.unique(labels)
    if values[-1] != len(values) - 1:
        shown = ", ".join(str(v) for v in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
        log.info("%s: the labels are %s; they are %d classes, named by their values", where, shown, len(values))
        labels = np.searchsorted(values, labels).astype(np.int64)
    return [str(v) for v in values.tolist()], labels


def _open_npz(path: Path) -> ImageSource:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # a truncated .npz is a bad zip
        raise DataError(f"{path}: not a readable .npz file ({err or type(err).__name__})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds one array, not the named arrays of an .npz file (save it with np.savez)")

    def array(key: str) -> np.ndarray:
        # Members are read lazily: object arrays (refused without pickle) and damaged members
        # fail only here.
        try:
            a = data[key]
        except (
            OSError,
            ValueError,
            EOFError,
            zipfile.BadZipFile,
            zlib.error,
            NotImplementedError,
            RuntimeError,
        ) as err:
            raise DataError(f"{path}:{key}: not a readable array ({err or type(err).__name__})") from None
        if not isinstance(a, np.ndarray):  # numpy hands back a member that is not .npy as bytes
            raise DataError(f"{path}:{key}: not a NumPy array")
        return a

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
            y = array(yk).reshape(-1)
            if len(x) != len(y):
                raise DataError(f"{path}: {xk} has {len(x)} images but {yk} has {len(y)} labels")
            xs.append(x)
            ys.append(_int_labels(y, f"{path}:{yk}"))
            keys += [f"{split}/{i}" if split else str(i) for i in range(len(x))]
            given += [split] * len(x)
        class_names = _name_list(array("class_names"), f"{path}:class_names") if "class_names" in names else None
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise DataError(f"{path}: train and test images differ in shape: {sorted(shapes)}")
    class_names, labels = _classes(np.concatenate(ys), class_names, str(path), "class_names")
    return ImageSource("npz", path.parent, class_names, keys, labels, given, arrays=np.concatenate(xs))


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images NHWC uint8, labels) of one batch file, checked: a wrong file must fail here with
    its name, not later as a reshape or indexing error."""
    # Never pickle.load: a crafted batch file would run code just by being opened.
    batch = load_pickle(path, what="CIFAR batch")
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataError(f"{path}: not a CIFAR batch (expected a dict with b'data' and {label_key!r})")
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key]).reshape(-1)
    except (ValueError, TypeError, OverflowError) as err:  # ragged lists and the like
        raise DataError(f"{path}: not a CIFAR batch ({err})") from None
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: CIFAR data must be N x 3072 (32x32x3), found shape {data.shape}")
    if data.dtype != np.uint8 and not (
        np.issubdtype(data.dtype, np.integer) and (data.size == 0 or (data.min() >= 0 and data.max() <= 255))
    ):
        raise DataError(f"{path}: CIFAR data must be bytes 0..255, found {data.dtype}")
    # np.asarray([]) is float64: an empty batch has no wrong labels.
    bad_labels = len(labels) and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0)
    if len(labels) != len(data) or bad_labels:
        raise DataError(
            f"{path}: expected {len(data)} non-negative integer labels, found {len(labels)} of type {labels.dtype}"
        )
    x = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, _int_labels(labels, str(path))


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
    class_names = None
    if meta.is_file():
        meta_data = load_pickle(meta, what="CIFAR meta file")
        if not isinstance(meta_data, dict):
            raise DataError(f"{meta}: not a CIFAR meta file (expected a dict with {names_key!r})")
        if meta_data.get(names_key) is not None:
            class_names = _name_list(meta_data[names_key], f"{meta}:{names_key.decode()}")
    class_names, labels = _classes(np.concatenate(ys), class_names, str(root), f"{meta.name}:{names_key.decode()}")
    return ImageSource("cifar", root, class_names, keys, labels, given, arrays=np.ascontiguousarray(np.concatenate(xs)))
