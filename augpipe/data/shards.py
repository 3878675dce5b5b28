"""WebDataset tar shards: a split data set written as ``train-000000.tar``, ``val-000000.tar`` ...
with a ``shards.json`` index, opened again as an ``ImageSource`` read by offset, and a batch
sampler that deals the shards to ranks and loader workers.

A sample is three members of one key: ``KEY.<jpg|png|...>`` (the encoded image: a file's own
bytes, arrays as lossless PNG), ``KEY.cls`` (the class index as text) and ``KEY.json``
(``{"key", "label", "split"}``: the item's identity in the data set it came from, its class name
and its split). The keys in the tar are sample numbers; the identity is in the json, so that the
shards keep the fingerprint and the split manifest of the data set they were written from.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import math
import os
import re
import tarfile
from pathlib import Path

import numpy as np

from augpipe.data.sources import SPLITS, ImageSource, shown
from augpipe.errors import ConfigError, DataError

log = logging.getLogger("augpipe")

INDEX_NAME = "shards.json"
FORMAT = "augpipe webdataset shards"
VERSION = 1
DEFAULT_MAX_COUNT = 1000  # enough shards to deal to many readers: CIFAR-10's 45,000 make 45
DEFAULT_MAX_SIZE = 1 << 30

# What open_shards accepts from disk: shards.json is a few hundred bytes a shard.
MAX_INDEX_BYTES = 16 << 20
MAX_CLS_BYTES = 32
MAX_JSON_BYTES = 64 << 10
IMAGE_EXTS = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff")
_SHARD_FILE = re.compile(r"^(train|val|test)-(\d{6,})\.tar$")
_TEMPORARY = re.compile(r"^\..+\.tmp\d+$")
_TAR_KEY = "{:08d}"  # the member key of sample n: digits only, no dot (WebDataset splits at the first dot)


# -- writing -------------------------------------------------------------------------------------
def _image_ext(data: bytes, fallback: str) -> str:
    """The member extension of encoded image bytes: what they are, else the file's suffix."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    fallback = fallback.lower().lstrip(".")
    return {"jpeg": "jpg", "tif": "tiff"}.get(fallback, fallback) if fallback in IMAGE_EXTS else "img"


def _encoded(source: ImageSource, i: int) -> tuple[bytes, str]:
    """(encoded bytes, member extension) of item ``i``: a file's own bytes, not re-encoded; an
    array as PNG, which is lossless."""
    if source.paths is not None:
        path = source.paths[i]
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise DataError(f"{path}: can not be read ({err.strerror or err})") from None
        return data, _image_ext(data, Path(path).suffix)
    if source.blobs is not None:
        try:
            data = source.blobs.read(i)
        except (OSError, ValueError) as err:
            raise DataError(f"{source.blobs.describe(i)}: can not be read ({err})") from None
        return data, _image_ext(data, Path(source.blobs.describe(i)).suffix)
    import cv2

    img = np.ascontiguousarray(source.arrays[i][..., ::-1])  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise DataError(f"{source.describe(i)}: could not be encoded as PNG")
    return buf.tobytes(), "png"


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_out_dir(out, data=None) -> dict | None:
    """Refuse, before any work, an ``out`` for the shards of the data set at path ``data`` that
    is the data set itself or inside its folder, a file, or a folder holding anything but a
    shard set augpipe wrote (whose checked index is returned; None for a new or empty folder)."""
    try:
        out = Path(os.path.realpath(Path(out).expanduser()))
        exists, is_dir, has_index = out.exists(), out.is_dir(), (out / INDEX_NAME).is_file()
    except (OSError, ValueError) as err:  # a NUL byte, a name too long
        raise DataError(f"--out {out}: not a usable path ({err})") from None
    try:
        data = None if data is None else Path(os.path.realpath(Path(data).expanduser()))
        data_is_dir = data is not None and data.is_dir()
    except (OSError, ValueError):
        data = None  # opening it will say what is wrong with it
    if data is not None and (_inside(out, data) if data_is_dir else out == data):
        what = "the data set itself" if out == data else f"inside the data set {data}"
        raise DataError(f"--out {out}: is {what}; choose a folder outside it")
    if not exists:
        return None
    if not is_dir:
        raise DataError(f"--out {out}: exists and is not a folder")
    if has_index:
        return _read_index(out / INDEX_NAME)
    try:
        # The lock and the temporaries of an interrupted write (files.temporary_name) are ours.
        entries = [e.name for e in os.scandir(out) if e.name != ".lock" and not _TEMPORARY.match(e.name)]
    except OSError as err:
        raise DataError(f"--out {out}: can not be read ({err.strerror or err})") from None
    if entries:
        raise DataError(
            f"--out {out}: the folder is not empty and holds no {INDEX_NAME} (it is not a shard "
            "set augpipe wrote); choose an empty or new folder"
        )
    return None


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable before the index that names their results."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_series(
    out: Path, split: str, items: list[int], source: ImageSource, max_count: int, max_size: float, opened: list[Path]
) -> list[tuple[Path, Path, int]]:
    """Write ``items`` as the shards of ``split``, each under its temporary name: (temporary,
    final name, sample count) of each. ``opened`` gets every temporary as it is created, so
    that the caller can remove them all when something fails."""
    import webdataset as wds

    from augpipe.files import temporary_name

    done: list[tuple[Path, Path, int]] = []
    handles: dict[str, object] = {}
    writer = None

    def opener(name: str):
        # Our own files rather than webdataset's gopen, which runs "pipe:..." names as commands.
        opened.append(Path(name))
        handles[name] = fh = open(name, "wb")
        return fh

    def finished(name: str):
        # webdataset has closed the tar stream (end blocks written) but not our file.
        fh = handles.pop(name)
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        done.append((Path(name), out / f"{split}-{len(done):06d}.tar", writer.count))

    # '%' in a folder name would otherwise be read as part of the shard-number pattern.
    pattern = str(temporary_name(out / f"{split}-SHARDNUM.tar")).replace("%", "%%").replace("SHARDNUM", "%06d")
    writer = wds.ShardWriter(
        pattern,
        maxcount=max_count,
        maxsize=max_size,
        post=finished,
        opener=opener,
        verbose=0,
        encoder=False,
        mtime=0,
        user="augpipe",
        group="augpipe",
    )
    try:
        for i in items:
            data, ext = _encoded(source, i)
            label = int(source.labels[i])
            meta = {"key": source.keys[i], "label": source.class_names[label], "split": split}
            writer.write(
                {
                    "__key__": _TAR_KEY.format(i),
                    ext: data,
                    "cls": str(label).encode(),
                    "json": json.dumps(meta, ensure_ascii=False).encode(),
                }
            )
        writer.close()
    except BaseException:
        # The tar stream would otherwise flush into the closed file when it is collected; what
        # it writes goes to a temporary that the caller removes.
        with contextlib.suppress(Exception):
            writer.tarstream.close()
        raise
    finally:
        for fh in handles.values():
            fh.close()
    return done


def write_shards(
    prepared, out_dir, *, max_count: int = DEFAULT_MAX_COUNT, max_size: int = DEFAULT_MAX_SIZE
) -> list[Path]:
    """Write ``prepared`` (a ``PreparedData``: readable images only, split) as WebDataset tar
    shards in ``out_dir``, one series a split (``train-000000.tar``, ``val-000000.tar`` ...),
    each shard at most ``max_count`` samples and, but for its last sample, ``max_size`` bytes of
    payload; then ``split.csv`` (the split manifest) and, last and atomically, ``shards.json``.
    Returns the shard paths written.

    Within a split the samples are in a seeded hash order of their keys, so that every shard
    mixes the classes (a streaming reader shuffles only within a buffer) and the same data set,
    seed and split always give the same bytes. Every shard is written under a temporary name and
    renamed only once all of them are complete: an interrupted write leaves no shard that looks
    finished, and a shard set already in ``out_dir`` stays whole until the new one is.
    """
    from augpipe.data.split import item_rank, write_manifest
    from augpipe.errors import WriteError
    from augpipe.files import exclusive_lock, remove_stale_temporaries, write_atomic, write_reason

    if not _is_int(max_count) or max_count < 1:
        raise ConfigError(f"--max-count must be a whole number of at least 1, got {max_count!r}")
    if isinstance(max_size, bool) or not isinstance(max_size, (int, float)) or not max_size >= 1:
        raise ConfigError(f"--max-size must be at least 1 byte, got {max_size!r}")
    source = prepared.source
    out = Path(os.path.realpath(Path(out_dir).expanduser()))
    # A manifest's or an .npz file's folder may hold the shards; a data set folder may not.
    old = check_out_dir(out, source.root if source.kind in ("folder", "cifar", "shards") else None)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"--out {out}: can not be created ({err.strerror or err})") from None
    lock = exclusive_lock(out, "writing shards there")
    try:
        remove_stale_temporaries(out)
        seed = int(prepared.seed)
        assignment = np.asarray(prepared.assignment)
        written: list[tuple[Path, Path, int]] = []
        opened: list[Path] = []
        try:
            for split in SPLITS:
                items = sorted(
                    (int(i) for i in np.flatnonzero(assignment == split)),
                    key=lambda i: item_rank(seed, f"shards\0{source.keys[i]}"),
                )
                if items:
                    written += _write_series(out, split, items, source, max_count, max_size, opened)
        except BaseException as err:
            for tmp in opened:
                tmp.unlink(missing_ok=True)
            if isinstance(err, OSError):  # a full disk while the shards are written: one line
                raise WriteError(
                    f"--out {out}: the shards can not be written ({write_reason(err)}); nothing was changed there"
                ) from None
            raise
        # Only now is a finished name touched, and the previous set stops being one first.
        try:
            (out / INDEX_NAME).unlink(missing_ok=True)
            for tmp, final, _ in written:
                os.replace(tmp, final)
            new = {final.name for _, final, _ in written}
            for entry in (old or {}).get("shards", []):
                if entry["file"] not in new:
                    (out / entry["file"]).unlink(missing_ok=True)
            _fsync_dir(out)
        except OSError as err:
            raise WriteError(f"--out {out}: can not be written ({write_reason(err)})") from None
        write_manifest(out / "split.csv", source, assignment, seed=seed, val=prepared.val, test=prepared.test)
        index = {
            "format": FORMAT,
            "version": VERSION,
            "class_names": list(source.class_names),
            "split": {
                "fingerprint": source.fingerprint(),
                "seed": seed,
                "val": float(prepared.val),
                "test": float(prepared.test),
            },
            "source": {"kind": source.kind, "root": os.path.abspath(source.root)},
            "counts": {s: int((assignment == s).sum()) for s in SPLITS},
            "shards": [
                {"split": final.name.split("-")[0], "file": final.name, "count": count} for _, final, count in written
            ],
        }
        write_atomic(out / INDEX_NAME, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
        _fsync_dir(out)
    finally:
        lock.close()
    return [final for _, final, _ in written]


# -- reading -------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_index(path: Path) -> dict:
    """shards.json, checked field by field: it is read from disk, so it may be anything."""
    from augpipe.files import read_bounded_text

    text = read_bounded_text(path, MAX_INDEX_BYTES, "shard index", error=DataError)
    try:
        index = json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError; so are 5000-digit numbers
        raise DataError(f"{path}: not valid JSON ({str(err).splitlines()[0][:200]})") from None

    def bad(what: str):
        return DataError(f"{path}: not a shard index augpipe wrote ({what})")

    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise bad(f"'format' must be {FORMAT!r}")
    if index.get("version") != VERSION:
        raise bad(f"'version' must be {VERSION}, found {shown(str(index.get('version')))[:40]}")
    names = index.get("class_names")
    if (
        not isinstance(names, list)
        or len(names) < 1
        or not all(isinstance(n, str) and n.strip() and len(n) <= 1000 for n in names)
    ):
        raise bad("'class_names' must be a list of non-empty names")
    if len(set(names)) != len(names):
        raise bad("'class_names' names a class twice")
    split = index.get("split")
    if not isinstance(split, dict):
        raise bad("'split' must be a mapping")
    fingerprint, seed = split.get("fingerprint"), split.get("seed")
    if not (isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{16}", fingerprint)):
        raise bad("'split.fingerprint' must be 16 hex digits")
    if not (_is_int(seed) and 0 <= seed < 2**32):
        raise bad("'split.seed' must be an integer from 0 to 2**32 - 1")
    for field in ("val", "test"):
        v = split.get(field)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < 1):
            raise bad(f"'split.{field}' must be a fraction in [0, 1)")
    shards = index.get("shards")
    if not isinstance(shards, list) or not shards:
        raise bad("'shards' must be a non-empty list")
    seen = set()
    for n, entry in enumerate(shards):
        if not isinstance(entry, dict):
            raise bad(f"shard {n} must be a mapping")
        name, where, count = entry.get("file"), entry.get("split"), entry.get("count")
        # A plain name of the form we write: never a path out of the folder, nor a link's name.
        m = _SHARD_FILE.match(name) if isinstance(name, str) else None
        if m is None:
            raise bad(f"shard {n}: 'file' must be a name like train-000000.tar, found {shown(str(name))[:80]!r}")
        if where != m.group(1):
            raise bad(f"shard {n}: 'split' must be {m.group(1)!r} for {name}")
        if not (_is_int(count) and count >= 1):
            raise bad(f"shard {n}: 'count' must be a whole number of at least 1")
        if name in seen:
            raise bad(f"{name} is listed twice")
        seen.add(name)
    return index


def _split_member(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name as WebDataset splits it (at the first dot of the last
    path component), or None for a name that must not be in a shard: absolute, with '..' or
    empty components, a control character, or no extension."""
    if not name or not name.isprintable() or "\\" in name or name.startswith("/"):
        return None
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    base = parts[-1]
    if "." not in base or base.startswith("."):
        return None
    stem, ext = base.split(".", 1)
    return "/".join(parts[:-1] + [stem]), ext


class ShardBlobs:
    """The encoded image of each item, as (shard file, byte offset, size) of its tar member:
    ``read(i)`` reads just those bytes, so any item is read at random, in any process."""

    def __init__(self, files: list[Path], shard: np.ndarray, offset: np.ndarray, size: np.ndarray, names: list[str]):
        self.files = files
        self.shard = shard
        self.offset = offset
        self.size = size
        self.names = names

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def shard_of_item(self) -> np.ndarray:
        """The index (into ``files``) of the shard that holds each item: what
        ``ShardBatchSampler`` deals by."""
        return self.shard

    def read(self, i: int) -> bytes:
        # A file opened per read: a descriptor kept open would be shared with forked loader
        # workers and the decoding threads, and thousands of shards would pass the fd limit.
        size = int(self.size[i])
        with open(self.files[self.shard[i]], "rb") as fh:
            data = os.pread(fh.fileno(), size, int(self.offset[i]))
        if len(data) != size:
            raise ValueError(f"the shard ends {size - len(data)} bytes early")
        return data

    def describe(self, i: int) -> str:
        return f"{self.files[self.shard[i]]}:{self.names[i]}"

    def index_keys(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(key, size, mtime_ns) of each item for the image index: the shard's absolute path and
        the member's offset, the member's size, the shard file's mtime. A shard written anew has
        a new mtime, so nothing learnt from the old one is taken for it."""
        mtimes = np.zeros(len(self.files), np.int64)
        for k, f in enumerate(self.files):
            try:
                mtimes[k] = os.stat(f).st_mtime_ns
            except OSError:
                mtimes[k] = -1
        prefixes = [os.fsencode(os.path.abspath(f)) + b"#" for f in self.files]
        keys = np.array(
            [prefixes[s] + str(int(o)).encode() for s, o in zip(self.shard.tolist(), self.offset.tolist())], dtype=bytes
        )
        mtimes = mtimes[self.shard]
        return keys, np.where(mtimes < 0, -1, self.size.astype(np.int64)), mtimes

    def subset(self, indices) -> ShardBlobs:
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        return ShardBlobs(
            self.files, self.shard[idx], self.offset[idx], self.size[idx], [self.names[i] for i in idx.tolist()]
        )


def _index_tar(path: Path, split: str, class_names: list[str], expect: int):
    """(key, label, (offset, size, member name)) of each sample in the tar at ``path``, checked."""

    def bad(what: str):
        return DataError(f"{path}: {what}")

    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise bad("the shard is missing (listed in shards.json)") from None
    except OSError as err:
        raise bad(f"can not be read ({err.strerror or err})") from None
    with fh:
        file_size = os.fstat(fh.fileno()).st_size
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        order: list[str] = []
        try:
            tf = tarfile.open(fileobj=fh, mode="r:")
            while True:
                m = tf.next()
                if m is None:
                    break
                if not m.isfile() or m.issparse():
                    kind = "a link" if (m.issym() or m.islnk()) else ("a folder" if m.isdir() else "not a plain file")
                    raise bad(f"member {shown(m.name)!r} is {kind}; a shard holds only files")
                parsed = _split_member(m.name)
                if parsed is None:
                    raise bad(f"member {shown(m.name)!r} is not a sample file's name (KEY.EXT, no '..', not absolute)")
                if m.offset_data + m.size > file_size:
                    raise bad(f"truncated: member {shown(m.name)!r} ends past the end of the file")
                key, ext = parsed
                parts = samples.get(key)
                if parts is None:
                    parts = samples[key] = {}
                    order.append(key)
                if ext in parts:
                    raise bad(f"member {shown(m.name)!r} is there twice")
                parts[ext] = m
            end = tf.offset
        except tarfile.TarError as err:
            raise bad(f"not a readable tar file ({err})") from None
        except (OSError, EOFError, ValueError, UnicodeError) as err:
            raise bad(f"not a readable tar file ({type(err).__name__}: {err})") from None
        # A tar ends with two zero blocks; tarfile stops quietly at a cut-off header instead.
        tail = os.pread(fh.fileno(), 1024, end)
        if len(tail) < 1024 or tail.count(0) != 1024:
            raise bad("truncated: the tar has no end-of-archive marker after its last member")
        if len(order) != expect:
            raise bad(f"holds {len(order)} sample(s), shards.json says {expect}")

        def member_bytes(m: tarfile.TarInfo, limit: int) -> bytes:
            if m.size > limit:
                raise bad(f"member {shown(m.name)!r} is {m.size:,} bytes, more than {limit:,}")
            return os.pread(fh.fileno(), m.size, m.offset_data)

        out = []
        for key in order:
            parts = samples[key]
            images = [e for e in parts if e.lower() in IMAGE_EXTS]
            if len(images) != 1 or "cls" not in parts or "json" not in parts:
                raise bad(
                    f"sample {shown(key)!r} must have one image, a .cls and a .json member, "
                    f"found {', '.join(sorted(parts))}"
                )
            text = member_bytes(parts["cls"], MAX_CLS_BYTES).decode("ascii", "replace").strip()
            if not (text.isascii() and text.isdigit()) or int(text) >= len(class_names):
                raise bad(
                    f"{key}.cls: the label {shown(text)[:40]!r} is not a class index from 0 to {len(class_names) - 1}"
                )
            label = int(text)
            try:
                meta = json.loads(member_bytes(parts["json"], MAX_JSON_BYTES).decode("utf-8"))
            except (ValueError, RecursionError, UnicodeDecodeError):
                raise bad(f"{key}.json: not valid UTF-8 JSON") from None
            if not isinstance(meta, dict) or not isinstance(meta.get("key"), str) or not meta["key"]:
                raise bad(f"{key}.json: must be a mapping with a non-empty 'key'")
            if meta.get("label") != class_names[label]:
                raise bad(
                    f"{key}.json: the label {shown(str(meta.get('label')))[:80]!r} is not class "
                    f"{label} ({class_names[label]!r}) of {key}.cls"
                )
            if meta.get("split") != split:
                raise bad(
                    f"{key}.json: the split {shown(str(meta.get('split')))[:20]!r} is not the shard's split {split!r}"
                )
            m = parts[images[0]]
            out.append((meta["key"], label, (m.offset_data, m.size, m.name)))
        return out


def open_shards(root) -> ImageSource:
    """The shard set in the folder ``root`` (its ``shards.json`` and tar files) as an
    ``ImageSource``: keys, labels and the split (``given``) that each sample stored, and
    ``blobs`` that read each image by offset. Everything read is checked; a problem is a
    ``DataError`` naming the file."""
    root = Path(root)
    index = _read_index(root / INDEX_NAME)
    class_names = index["class_names"]
    files, shard, offset, size, names = [], [], [], [], []
    keys, labels, given = [], [], []
    first: dict[str, Path] = {}
    for n, entry in enumerate(index["shards"]):
        path = root / entry["file"]
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise DataError(f"{path}: the shard is a link or not a plain file")
        files.append(path)
        for key, label, (off, length, name) in _index_tar(path, entry["split"], class_names, entry["count"]):
            if key in first:
                raise DataError(
                    f"{path}: the item {shown(key)!r} is also in {first[key]}: an item can be in only one shard"
                )
            first[key] = path
            keys.append(key)
            labels.append(label)
            given.append(entry["split"])
            shard.append(n)
            offset.append(off)
            size.append(length)
            names.append(name)
    source = ImageSource(
        "shards",
        root,
        list(class_names),
        keys,
        np.asarray(labels, dtype=np.int64),
        given,
        blobs=ShardBlobs(
            files,
            np.asarray(shard, dtype=np.int64),
            np.asarray(offset, dtype=np.int64),
            np.asarray(size, dtype=np.int64),
            names,
        ),
    )
    if source.fingerprint() != index["split"]["fingerprint"]:
        raise DataError(
            f"{root / INDEX_NAME}: the shards' items do not match its fingerprint (a shard "
            "replaced or edited since they were written)"
        )
    return source


def shard_index(source) -> np.ndarray | None:
    """The shard of each item of ``source`` (an ImageSource, also after ``subset``) when it was
    opened from shards, else None: what ``ShardBatchSampler`` deals by."""
    blobs = getattr(source, "blobs", None)
    return None if blobs is None or not isinstance(blobs, ShardBlobs) else blobs.shard_of_item


def read_index(root) -> dict:
    """The checked ``shards.json`` of the shard set in ``root``."""
    return _read_index(Path(root) / INDEX_NAME)


# -- sampling ------------------------------------------------------------------------------------
def _deal(sizes: np.ndarray, order: np.ndarray, lanes: int, tiebreak: np.ndarray) -> list[list[int]]:
    """Shards ``order`` (largest first, the given order among equal sizes) to ``lanes``, each to
    the lane with the fewest items so far (``tiebreak`` ranks lanes of equal load). Which lane
    takes which shard changes with the order; the lanes' loads do not, since lanes of equal load
    and shards of equal size are interchangeable."""
    order = order[np.argsort(-sizes[order], kind="stable")]
    heap = [(0, int(tiebreak[lane]), lane) for lane in range(lanes)]
    heapq.heapify(heap)
    dealt: list[list[int]] = [[] for _ in range(lanes)]
    for s in order.tolist():
        load, tb, lane = heapq.heappop(heap)
        dealt[lane].append(s)
        heapq.heappush(heap, (load + int(sizes[s]), tb, lane))
    return dealt


class ShardBatchSampler:
    """Batches of dataset positions for ``DataLoader(dataset, batch_sampler=...)`` such that each
    rank, and each loader worker within a rank, reads only its own shards.

    ``shard_of_item[j]`` is the shard of dataset position ``j`` (``shard_index(source)[indices]``).
    Every epoch (``set_epoch``) the shards are shuffled with (seed, epoch) and dealt to the
    ``world_size * max(1, num_workers)`` readers (rank ``r`` owns readers ``r*W .. r*W+W-1``),
    each shard to the reader with the fewest items so far. A reader's items are shuffled and cut
    into batches, and the batches of a rank's readers are interleaved, because a DataLoader hands
    batch ``k`` to worker ``k % num_workers``: worker ``w`` gets exactly reader ``w``'s batches.

    Every rank yields ``len(self) = W * B`` batches, ``B`` the same for every reader of every
    rank and every epoch (a rank with fewer would hang DDP), every batch of exactly
    ``batch_size`` items:

    - ``drop_last=False``: ``B = ceil(L / batch_size)``, ``L`` the item count of the fullest
      reader. Each reader is padded to ``B * batch_size`` items by repeating its own items
      (reshuffled), as torch's DistributedSampler pads: ``self.padding = world_size * W * B *
      batch_size - N`` items an epoch over all ranks. With shards of equal size that is less
      than one batch a reader when the shard count is a multiple of the readers, and up to a
      shard a reader when it is not (hence many small shards: ``--max-count``).
    - ``drop_last=True``: ``B = floor(L_min / batch_size)``, ``L_min`` the emptiest reader's
      count; each reader's items past ``B * batch_size`` wait for another epoch
      (``self.dropped`` items an epoch), nothing is repeated.

    With fewer shards than readers, items, not shards, are dealt (one log line says so): all
    items shuffled, padded cyclically to a multiple of readers and batch size, and reader ``l``
    takes every ``readers``-th. Deterministic for a given seed and epoch, on every rank.
    """

    def __init__(
        self,
        shard_of_item,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = False,
    ):
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("world_size", world_size, 1),
            ("num_workers", num_workers, 0),
            ("seed", seed, 0),
            ("rank", rank, 0),
        ):
            whole = _is_int(value) or isinstance(value, np.integer)
            if not whole or value < low:
                raise ConfigError(f"{name} must be a whole number of at least {low}, got {value!r}")
        if rank >= world_size:
            raise ConfigError(f"rank must be below world_size ({world_size}), got {rank}")
        shard_of_item = np.asarray(shard_of_item)
        if shard_of_item.ndim != 1 or not len(shard_of_item):
            raise DataError("the sampler needs a shard index for at least one item")
        if not np.issubdtype(shard_of_item.dtype, np.integer):
            raise DataError(f"shard indices must be integers, found {shard_of_item.dtype}")
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.num_workers, self.seed, self.drop_last = int(num_workers), int(seed), bool(drop_last)
        self.workers = max(1, self.num_workers)
        self.readers = self.world_size * self.workers
        self.n = len(shard_of_item)
        self.epoch = 0
        order = np.argsort(shard_of_item, kind="stable")
        _, starts = np.unique(shard_of_item[order], return_index=True)
        self._members = np.split(order, starts[1:])  # dataset positions of each shard
        self.sizes = np.asarray([len(m) for m in self._members], dtype=np.int64)
        self.by_shards = len(self._members) >= self.readers
        if self.by_shards:
            loads = [
                int(self.sizes[d].sum())
                for d in _deal(self.sizes, np.arange(len(self.sizes)), self.readers, np.arange(self.readers))
            ]
            fullest, emptiest = max(loads), min(loads)
        else:
            fullest, emptiest = math.ceil(self.n / self.readers), self.n // self.readers
            log.info(
                "%d shard(s) for %d rank(s) x %d worker(s): fewer shards than readers, so items, not shards, "
                "are dealt (each reader may read any shard); write more shards (--max-count) to avoid it",
                len(self._members),
                self.world_size,
                self.workers,
            )
        bs = self.batch_size
        self.batches_per_reader = emptiest // bs if self.drop_last else math.ceil(fullest / bs)
        slots = self.readers * self.batches_per_reader * bs
        self.padding = 0 if self.drop_last else slots - self.n
        self.dropped = self.n - slots if self.drop_last else 0
        if self.batches_per_reader == 0:
            log.warning(
                "the sampler yields no batch: a reader has %d item(s), fewer than the batch size %d (drop_last)",
                emptiest,
                bs,
            )
        elif self.padding > 0.1 * self.n:
            log.info(
                "%d of %d items an epoch are repeats to give every reader %d full batches (%d shards for %d "
                "readers: more, smaller shards need fewer)",
                self.padding,
                self.n,
                self.batches_per_reader,
                len(self._members),
                self.readers,
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.workers * self.batches_per_reader

    def _reader_items(self, epoch: int) -> list[np.ndarray]:
        """The dataset positions of each of this rank's readers this epoch, shuffled, before
        padding or dropping."""
        rng = np.random.default_rng([self.seed, epoch, 0])
        mine = range(self.rank * self.workers, (self.rank + 1) * self.workers)
        if not self.by_shards:
            perm = rng.permutation(self.n)
            slots = self.readers * self.batches_per_reader * self.batch_size
            if slots > self.n:  # repeats of the shuffled items, as DistributedSampler pads
                perm = np.resize(perm, slots)
            return [perm[lane :: self.readers] for lane in mine]
        order = rng.permutation(len(self._members))
        tiebreak = rng.permutation(self.readers)
        dealt = _deal(self.sizes, order, self.readers, tiebreak)
        out = []
        for lane in mine:
            items = np.concatenate([self._members[s] for s in dealt[lane]])
            out.append(np.random.default_rng([self.seed, epoch, 1, lane]).permutation(items))
        return out

    def __iter__(self):
        bs, nb = self.batch_size, self.batches_per_reader
        lanes = []
        for lane, items in enumerate(self._reader_items(self.epoch)):
            want = nb * bs
            if len(items) < want:
                # Padded with the reader's own items, in another order than the first pass.
                again = np.random.default_rng([self.seed, self.epoch, 2, self.rank * self.workers + lane])
                items = np.concatenate([items, np.resize(again.permutation(items), want - len(items))])
            lanes.append(items[:want].reshape(nb, bs))
        # (batches, workers, items) -> batch k is worker k % W's
        for batch in np.stack(lanes, axis=1).reshape(nb * self.workers, bs):
            yield batch.tolist()
