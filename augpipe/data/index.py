"""The image index: what decoding an image file taught (readable or not, its height, width and
pixel count, its pixel digest), kept in one SQLite file beside the user's cache, keyed by the
file's absolute path, size and modification time. A command on a data set it has seen before
decodes only the files that are new or changed since.

The index is a cache: a corrupt file is replaced, and one that can not be opened or written is
warned about in one line and done without; no command ever stops because of it.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("augpipe")

INDEX_NAME = "image-index.sqlite"
SCHEMA_VERSION = 1

# What the index says of a file (``Facts.status``). TOO_LARGE and UNREADABLE keep the pixel count
# where it was known, so that the verdict can be made for whatever --max-pixels a command uses.
OK, UNREADABLE, TOO_LARGE = 0, 1, 2
UNKNOWN = -1  # not in the index, changed since, or not decidable at this --max-pixels

DIGEST_BYTES = 16

# Rows written per transaction while a scan runs: a scan that is killed keeps what it committed.
BATCH = 2000
# Seconds a command waits for another one's write transaction before doing without the index.
BUSY_TIMEOUT_S = 60

_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def cache_dir() -> Path:
    """$AUGPIPE_CACHE_DIR, else $XDG_CACHE_HOME/augpipe, else ~/.cache/augpipe."""
    own = os.environ.get("AUGPIPE_CACHE_DIR")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "augpipe"


def index_path() -> Path:
    return cache_dir() / INDEX_NAME


@dataclass
class Facts:
    """Per item of a source, what is known of its image (numpy arrays, no Python object per item)."""

    status: np.ndarray  # int8: OK, UNREADABLE, TOO_LARGE or UNKNOWN
    height: np.ndarray  # int32, 0 where not readable
    width: np.ndarray  # int32
    pixels: np.ndarray  # int64: the pixel count (header or decoded), 0 where never known
    digest: np.ndarray  # uint8 (n, 16): pixel_digest of readable images

    @classmethod
    def unknown(cls, n: int) -> Facts:
        return cls(
            np.full(n, UNKNOWN, np.int8),
            np.zeros(n, np.int32),
            np.zeros(n, np.int32),
            np.zeros(n, np.int64),
            np.zeros((n, DIGEST_BYTES), np.uint8),
        )

    def verdict(self, max_pixels: int) -> np.ndarray:
        """OK / UNREADABLE / TOO_LARGE per item at ``max_pixels``, or UNKNOWN where the file must
        be decoded to tell (unknown, or refused as too large under a lower limit than this one).
        It is what ``read_image`` would answer: the size check comes before the decoding."""
        out = self.status.copy()
        big = self.pixels > max_pixels
        out[(self.status == OK) & big] = TOO_LARGE
        out[(self.status == UNREADABLE) & big] = TOO_LARGE
        out[(self.status == TOO_LARGE) & ~big] = UNKNOWN
        return out


def file_keys(paths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(absolute path as bytes, size, mtime_ns) of each path; size -1 where the file can not be
    stat-ed (it is never found in the index, and is decoded, which reports it)."""
    n = len(paths)
    sizes = np.full(n, -1, np.int64)
    mtimes = np.zeros(n, np.int64)
    cwd = os.getcwd()
    texts = paths.texts() if isinstance(paths, StrColumn) else (os.fspath(p) for p in paths)
    parts, names = [], []
    for i, p in enumerate(texts):
        # Not normalised (abspath would be most of the time here): the data set's own spelling.
        name = os.fsencode(p if os.path.isabs(p) else os.path.join(cwd, p))
        names.append(name)
        try:
            st = os.stat(name)
        except (OSError, ValueError):
            pass
        else:
            sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
        if len(names) == 8192:  # in arrays as it goes: no list of every path at once
            parts.append(np.array(names, dtype=bytes))
            names = []
    if names:
        parts.append(np.array(names, dtype=bytes))
    keys = np.concatenate(parts) if parts else np.zeros(0, "S1")
    return keys, sizes, mtimes


class ImageIndex:
    """One connection to the index file. Every method that touches the file turns SQLite's
    failures into a warning and a disabled index (``self.ok`` false) instead of an exception."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.conn: sqlite3.Connection | None = None
        self.ok = False

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path=None) -> ImageIndex:
        index = cls(Path(path) if path is not None else index_path())
        index._connect(retry=True)
        return index

    def _connect(self, retry: bool) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are begun and ended here, explicitly.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            self._give_up(err)
            return
        try:
            # WAL: readers never wait for a writer, and two commands can scan at once.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS images (path BLOB PRIMARY KEY, size INTEGER NOT NULL, "
                    "mtime_ns INTEGER NOT NULL, status INTEGER NOT NULL, height INTEGER NOT NULL, "
                    "width INTEGER NOT NULL, pixels INTEGER NOT NULL, digest BLOB) WITHOUT ROWID"
                )
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            elif version != SCHEMA_VERSION:
                conn.close()
                log.warning(
                    "image index %s: written by another augpipe version (schema %d); images are decoded without it",
                    self.path,
                    version,
                )
                return
            conn.execute("SELECT count(*) FROM images WHERE path = x''").fetchone()
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            if retry and getattr(err, "sqlite_errorcode", None) in _CORRUPT_CODES:
                log.warning("image index %s is corrupt (%s): starting a new one", self.path, err)
                self._remove_files()
                self._connect(retry=False)
                return
            self._give_up(err)
            return
        self.conn, self.ok = conn, True

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(f"{self.path}{suffix}")

    def _give_up(self, err) -> None:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        log.warning("image index %s not usable (%s): images are decoded without it", self.path, reason)
        self.close()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
        self.conn, self.ok = None, False

    # -- reading and writing --------------------------------------------------------------------
    def lookup(self, keys: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray) -> Facts:
        """The facts of each file whose row matches its path, size and mtime; UNKNOWN elsewhere.

        One range query over the paths in sorted order, matched by ``np.searchsorted`` chunk by
        chunk: no Python object per file is kept, whatever the size of the data set."""
        n = len(keys)
        facts = Facts.unknown(n)
        if not self.ok or n == 0:
            return facts
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        try:
            cur = self.conn.execute(
                "SELECT path, size, mtime_ns, status, height, width, pixels, digest FROM images "
                "WHERE path BETWEEN ? AND ? ORDER BY path",
                (bytes(ordered[0]), bytes(ordered[-1])),
            )
            while True:
                rows = cur.fetchmany(10_000)
                if not rows:
                    break
                self._match(rows, ordered, order, keys.dtype.itemsize, sizes, mtimes, facts)
        except sqlite3.Error as err:
            self._failed(err)
            return Facts.unknown(n)
        return facts

    @staticmethod
    def _match(rows, ordered, order, itemsize, sizes, mtimes, facts) -> None:
        # A stored path longer than every wanted one can not be among them (and would be cut
        # short by the conversion below).
        rows = [r for r in rows if len(r[0]) <= itemsize and not r[0].endswith(b"\0")]
        if not rows:
            return
        paths = np.array([r[0] for r in rows], dtype=ordered.dtype)
        pos = np.minimum(np.searchsorted(ordered, paths), len(ordered) - 1)
        hit = ordered[pos] == paths
        if not hit.any():
            return
        cols = np.array([r[1:7] for r in rows], dtype=np.int64)
        item = order[pos]
        hit &= (sizes[item] == cols[:, 0]) & (mtimes[item] == cols[:, 1])
        ks = np.flatnonzero(hit)
        items = item[ks]
        facts.status[items], facts.height[items], facts.width[items], facts.pixels[items] = cols[ks, 2:6].T
        digests = [rows[k][7] for k in ks.tolist()]
        good = np.array([d is not None and len(d) == DIGEST_BYTES for d in digests], dtype=bool)
        if good.any():
            joined = b"".join(d for d, g in zip(digests, good.tolist()) if g)
            facts.digest[items[good]] = np.frombuffer(joined, np.uint8).reshape(-1, DIGEST_BYTES)
        # A readable image must have its digest (the duplicate check needs it): decode it again.
        facts.status[items[~good & (cols[ks, 2] == OK)]] = UNKNOWN

    def record(self, rows) -> None:
        """Store (path bytes, size, mtime_ns, status, height, width, pixels, digest bytes or None)
        rows, in one transaction (callers pass at most ``BATCH`` at a time)."""
        if not self.ok or not rows:
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.conn.execute("COMMIT")
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            self._failed(err)

    def _failed(self, err) -> None:
        log.warning("image index %s failed (%s): carrying on without it", self.path, err)
        self.close()

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM images").fetchone()[0] if self.ok else 0

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        if not self.ok:
            return 0
        n = self.count()
        self.conn.execute("DELETE FROM images")
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("VACUUM")
        return n


def index_info(path=None) -> dict:
    """Where the index is, how many files it describes and its size on disk (with its WAL)."""
    path = Path(path) if path is not None else index_path()
    size = sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))
    entries = 0
    if path.exists():
        index = ImageIndex.open(path)
        entries = index.count()
        index.close()
    return {"path": str(path), "entries": entries, "bytes": size, "exists": path.exists()}


def clear_index(path=None) -> int:
    """Empty the index (the file stays); returns the number of entries removed."""
    path = Path(path) if path is not None else index_path()
    if not path.exists():
        return 0
    index = ImageIndex.open(path)
    try:
        return index.clear()
    finally:
        index.close()


# -- compact per-item text ----------------------------------------------------------------------
class StrColumn(Sequence):
    """A read-only sequence of strings held in one byte buffer and one array of end offsets:
    about 8 bytes plus the text per item, where a list of str costs some 60 bytes more each and
    makes forked loader workers copy the pages whose reference counts they touch. Indexing gives
    str (a slice gives a list); it compares equal to a list or tuple of the same strings."""

    __slots__ = ("_buf", "_ends", "_view")

    def __init__(self, strings=()):
        encoded = [self._encode(s) for s in strings]
        ends = np.cumsum([len(e) for e in encoded], dtype=np.int64) if encoded else np.zeros(0, np.int64)
        self._set(np.frombuffer(b"".join(encoded), np.uint8), ends)

    def _set(self, buf: np.ndarray, ends: np.ndarray) -> None:
        self._buf, self._ends = buf, ends
        self._view = memoryview(buf) if len(buf) else memoryview(b"")

    @staticmethod
    def _encode(s) -> bytes:
        return s.encode("utf-8", "surrogateescape")

    def _text(self, i: int) -> str:
        start = int(self._ends[i - 1]) if i else 0
        return str(self._view[start : int(self._ends[i])], "utf-8", "surrogateescape")

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        n = len(self._ends)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("index out of range")
        return self._item(i)

    def _item(self, i: int):
        return self._text(i)

    def text(self, i: int) -> str:
        """Item ``i`` as str, whatever the column hands out."""
        return self._text(operator.index(i))

    def texts(self):
        """Every item as str, in order (one decoding pass)."""
        raw = self._buf.tobytes()
        start = 0
        for end in self._ends.tolist():
            yield raw[start:end].decode("utf-8", "surrogateescape")
            start = end

    def __iter__(self):
        if type(self)._item is StrColumn._item:
            return self.texts()
        return (self._item(i) for i in range(len(self)))

    def take(self, indices) -> StrColumn:
        """The items at ``indices``, as a column of the same kind (no Python object per item)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        starts = np.concatenate([[0], self._ends[:-1]]) if len(self._ends) else self._ends
        lengths = (self._ends - starts)[idx]
        ends = np.cumsum(lengths, dtype=np.int64)
        gather = np.repeat(starts[idx] - (ends - lengths), lengths) + np.arange(int(ends[-1]) if len(ends) else 0)
        out = type(self).__new__(type(self))
        out._set(self._buf[gather], ends)
        return out

    def __eq__(self, other):
        if isinstance(other, (list, tuple, StrColumn)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        shown = list(self[:5])
        return f"{type(self).__name__}({shown}{' ...' if len(self) > 5 else ''}, {len(self)} items)"

    def __getstate__(self):
        return {"buf": self._buf.tobytes(), "ends": self._ends}

    def __setstate__(self, state):
        self._set(np.frombuffer(state["buf"], np.uint8).copy(), state["ends"])


class PathColumn(StrColumn):
    """A ``StrColumn`` of file paths whose items are ``Path`` objects, made when asked for."""

    __slots__ = ()

    @staticmethod
    def _encode(p) -> bytes:
        return os.fspath(p).encode("utf-8", "surrogateescape")

    def _item(self, i: int) -> Path:
        return Path(self._text(i))
