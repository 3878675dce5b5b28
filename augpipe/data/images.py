"""Decoding image files to RGB uint8 HWC arrays, and the in-memory cache of decoded images."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import mmap
import os
import re
import struct
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from augpipe.errors import DataError

log = logging.getLogger("augpipe")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# Decoded data sets below this size are kept in memory, so epochs after the first decode
# nothing. CIFAR-10 (60,000 x 32x32x3) is 184 MB; ImageNet-sized sets stay on disk.
DEFAULT_CACHE_MB = 1024

# Pillow's decompression-bomb limit (a 9459 x 9459 picture). A PNG of a few dozen bytes can
# claim 60000 x 60000 pixels: OpenCV refuses it with an exception, and a real 20000 x 20000
# bilevel PNG of 48 KB decodes to 1.2 GB of RGB (2.5 GB while decoding).
DEFAULT_MAX_PIXELS = 89_478_485

# Why read_image gave no picture.
UNREADABLE = "unreadable"
TOO_LARGE = "too large"
MISSING = "no such file"  # gone since the data set was listed: not a file that fails to decode


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """OpenCV's decoded array (gray, BGR, BGRA; 8 or 16 bit or float) as RGB uint8 HWC."""
    import cv2

    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:  # gray + alpha
        return cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_file(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """The image at ``path`` as RGB uint8, or None when it is empty, truncated, not an image, or
    has more than ``max_pixels`` pixels."""
    return read_image(path, max_pixels=max_pixels)[0]


def read_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray | None, str | None]:
    """(RGB uint8 image, None), or (None, UNREADABLE or TOO_LARGE). Never raises: one bad file
    must not stop a command that reads thousands."""
    return inspect_file(path, max_pixels)[:2]


def read_image_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray | None, str | None]:
    """``read_image`` of an encoded image already in memory (a tar shard's member)."""
    return inspect_bytes(data, max_pixels)[:2]


def inspect_file(path, max_pixels: int = DEFAULT_MAX_PIXELS):
    """``inspect_bytes`` of the file at ``path``; a file that can not be read is UNREADABLE, and
    not lasting (a permission or a mount can change without the file changing)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None, MISSING, 0, False
    except (OSError, ValueError, MemoryError):
        return None, UNREADABLE, 0, False
    return inspect_bytes(data, max_pixels)


def inspect_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(image or None, problem or None, pixels, lasting): what ``read_image`` answers, the pixel
    count it was decided by (from the header or the decoded image; 0 where never known), and
    whether the answer belongs to the bytes alone (false after running out of memory), so that
    the image index may keep it."""
    import cv2

    if not data:
        return None, UNREADABLE, 0, True
    if data[:2] == b"\xff\xd8":
        # libjpeg returns a grey-padded picture for a truncated JPEG instead of failing.
        complete, size = jpeg_structure(data)
        if not complete:
            return None, UNREADABLE, 0, True
        pixels = size[0] * size[1] if size else None
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        pixels = w * h
    else:
        pixels = _pillow_pixels(data)
    # The size is known before decoding, so a decompression bomb never allocates anything.
    if pixels is not None and pixels > max_pixels:
        return None, TOO_LARGE, pixels, True
    if data[:4] in _TIFF_MAGIC:
        img = _tiff_with_alpha(data)
        if img is not None:
            return img, None, img.shape[0] * img.shape[1], True
    try:
        # ANYCOLOR|ANYDEPTH keeps 16-bit and palette data and still applies EXIF orientation.
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
        if img is None or img.size == 0:
            return None, UNREADABLE, pixels or 0, True
        # Formats whose header could not be read are checked after the fact.
        decoded = img.shape[0] * img.shape[1]
        if decoded > max_pixels:
            return None, TOO_LARGE, decoded, True
        return to_rgb8(img), None, max(pixels or 0, decoded), True
    except MemoryError:
        return None, UNREADABLE, pixels or 0, False
    except (cv2.error, ValueError, OverflowError, SystemError):
        # OpenCV raises instead of returning None above 2**30 pixels and for some corrupt files.
        return None, UNREADABLE, pixels or 0, True


# In entropy-coded data 0xFF is followed by 0x00 (a stuffed data byte), by RST0-7, or by more
# 0xFF fill bytes; any other byte after it is a marker that ends the scan.
_MARKER_AFTER_SCAN = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
# Start-of-frame markers (they carry the image size): C0-CF except DHT, JPG and DAC.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Bytes after 0xFF that no length follows: 0x00 (stray outside a scan), TEM, RST0-7, SOI, EOI,
# and 0xFF itself (a fill byte).
_NOT_A_SEGMENT = frozenset({0x00, 0x01, *range(0xD0, 0xDA), 0xFF})
_SEGMENT_HEAD = struct.Struct(">BBH")


def jpeg_structure(data: bytes) -> tuple[bool, tuple[int, int] | None]:
    """(complete, (width, height) or None) of the JPEG in ``data``, from its marker segments.

    Complete means the walk from SOI, over each segment by its length and over the entropy-coded
    data after each SOS, reaches the first image's EOI before the bytes run out. What follows
    that EOI (a phone's motion-photo video, trailing garbage) is not looked at, and an EOI inside
    a segment (the thumbnail JPEG in an EXIF block) is skipped with its segment.
    """
    n = len(data)
    pos = 2
    size = None
    head = _SEGMENT_HEAD.unpack_from
    while True:
        # It runs for every image of a data set: the usual case, a segment starting right at
        # pos, costs one unpack; the rest is the slow path below.
        if pos + 4 <= n:
            ff, marker, length = head(data, pos)
            if ff == 0xFF and marker not in _NOT_A_SEGMENT:
                end = pos + 2 + length
                if length < 2 or end > n:
                    return False, size
                if marker == 0xDA:  # SOS: the entropy-coded data runs to the next marker
                    found = _MARKER_AFTER_SCAN.search(data, end)
                    if found is None:
                        return False, size
                    pos = found.start()
                    continue
                if marker in _SOF_MARKERS and size is None and length >= 7:
                    height, width = struct.unpack_from(">HH", data, pos + 5)
                    size = (width, height)
                pos = end
                continue
        if pos >= n:
            return False, size
        if data[pos] != 0xFF:
            # libjpeg skips stray bytes between segments (with a warning); so does the walk.
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return False, size
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return False, size
        marker = data[pos]
        if marker == 0xD9:  # EOI
            return True, size
        if marker in _NOT_A_SEGMENT:
            pos += 1
        else:
            pos -= 1  # the 0xFF before a segment's marker: read above, or truncated
            if pos + 4 > n:
                return False, size


_PILLOW_LOCK = threading.Lock()


def _pillow_pixels(data: bytes) -> int | None:
    """The pixel count in the header of an image Pillow can identify (BMP, WebP, TIFF ...), a
    lower bound of it for a decompression bomb beyond Pillow's own error limit, or None when
    Pillow can not read the header (OpenCV still gets to try)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    # The warnings filter is process-wide: the lock keeps decoding threads from restoring each
    # other's filters, and only Pillow's own bomb warning is silenced (the caller decides).
    with _PILLOW_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                return w * h
        except Image.DecompressionBombError:
            limit = Image.MAX_IMAGE_PIXELS
            return 2 * limit + 1 if limit else None
        except (OSError, ValueError, EOFError, SyntaxError, struct.error, MemoryError, TypeError, IndexError):
            return None


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


def _tiff_with_alpha(data: bytes) -> np.ndarray | None:
    """A TIFF with an alpha channel as RGB uint8, decoded by Pillow: OpenCV reads such TIFFs
    through libtiff's RGBA interface, which multiplies the colours by alpha, so RGBA(200, a=128)
    came out 100 where the same pixel from a PNG or WebP is 200. Like PNG's, the colours are kept
    and the alpha dropped. None (OpenCV decodes it) for a TIFF without alpha, or one Pillow can
    not decode (16-bit colour), or without Pillow."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return None
    with _PILLOW_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.mode not in ("RGBA", "RGBa", "LA", "La"):
                    return None
                im = ImageOps.exif_transpose(im)  # OpenCV applies the orientation tag too
                # RGBa / La: associated (premultiplied) alpha; convert divides it out.
                arr = np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "RGBa") else "LA"))
        except (
            OSError,
            ValueError,
            EOFError,
            SyntaxError,
            struct.error,
            MemoryError,
            TypeError,
            IndexError,
            Image.DecompressionBombError,
        ):
            return None
    if arr.ndim != 3 or arr.size == 0:
        return None
    if arr.shape[2] == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, :1], 3, axis=2))
    return np.ascontiguousarray(arr[:, :, :3])


def release_freed_memory() -> None:
    """Hand the heap freed by the decoding threads back to the OS (glibc keeps it per thread
    arena otherwise, and a run's resident memory stays that much higher to its end)."""
    import ctypes

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def pixel_digest(img: np.ndarray) -> bytes:
    """Identity of the decoded pixels: equal digests mean exact duplicates."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(img.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(img).tobytes())
    return h.digest()


class Digests:
    """The pixel digest of each item (None where it gave no image), held as one (n, 16) array
    instead of a bytes object per item. Indexing and iteration give bytes or None."""

    def __init__(self, table: np.ndarray, valid: np.ndarray):
        self.table = table
        self.valid = valid

    @classmethod
    def of(cls, digests) -> Digests:
        table = np.zeros((len(digests), 16), np.uint8)
        valid = np.zeros(len(digests), bool)
        for i, d in enumerate(digests):
            if d is not None:
                table[i], valid[i] = np.frombuffer(d, np.uint8), True
        return cls(table, valid)

    def __len__(self) -> int:
        return len(self.valid)

    def __getitem__(self, i: int) -> bytes | None:
        return self.table[i].tobytes() if self.valid[i] else None

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def take(self, indices) -> Digests:
        idx = np.asarray(indices, dtype=np.int64)
        return Digests(self.table[idx], self.valid[idx])

    def repeated(self) -> list[bytes | None]:
        """The digests that occur more than once, None for every other item: what a duplicate
        search needs, without a bytes object for each of the (mostly unique) others."""
        out: list[bytes | None] = [None] * len(self)
        if not self.valid.any():
            return out
        rows = np.ascontiguousarray(self.table).view(np.dtype((np.void, 16))).ravel()
        idx = np.flatnonzero(self.valid)
        _, inverse, counts = np.unique(rows[idx], return_inverse=True, return_counts=True)
        for i in idx[counts[inverse.ravel()] > 1].tolist():
            out[i] = self[i]
        return out


@dataclass
class DecodeReport:
    """What one pass over every image found."""

    bad: list[int] = field(default_factory=list)  # indices that gave no image, for any reason
    too_large: list[int] = field(default_factory=list)  # those of ``bad`` above max_pixels
    digests: Digests | list = field(default_factory=list)  # bytes or None per item
    cached: bool = False  # every readable image has its place in memory
    n_cached: int = 0  # readable images with a place in memory; the others are decoded when read
    decoded: int = 0  # files decoded by this pass (the image index knew the others)


def _shared_bytes(nbytes: int) -> np.ndarray:
    """Zeroed memory that forked processes share: MAP_SHARED | MAP_ANONYMOUS, so what a loader
    worker writes the main process and the other workers see. Pages cost nothing until written."""
    return np.frombuffer(mmap.mmap(-1, max(1, nbytes)), dtype=np.uint8)[:nbytes]


class SharedCache:
    """Decoded images in shared memory, filled as they are first read.

    Each slot (an item of the store that built it) has a place (chunk, offset) sized from its
    known shape, and a byte in a shared ``filled`` array set once its pixels are written. Two
    processes that decode the same image write the same bytes, so no lock is needed; the pixels
    are written before the flag."""

    CHUNK = 64 << 20

    def __init__(self, n: int):
        self.filled = _shared_bytes(n)
        self.chunk = np.full(n, -1, np.int32)
        self.offset = np.zeros(n, np.int64)
        self.shape = np.zeros((n, 2), np.int32)
        self.chunks: list[np.ndarray] = []
        self._free = 0
        self.nbytes = 0
        self._uniform = None

    def place(self, slots: np.ndarray, heights: np.ndarray, widths: np.ndarray, budget_left: int) -> None:
        """Give ``slots`` their places, one after the other, taking a new chunk (of at most
        ``budget_left`` bytes, which must hold them all) when the last one is full."""
        sizes = heights.astype(np.int64) * widths * 3
        total = int(sizes.sum())
        if not len(slots) or not total:
            return
        if total > self._free:
            # A chunk for exactly these when they are all there is (the index knew every shape).
            self.chunks.append(_shared_bytes(min(max(self.CHUNK, total), budget_left)))
            self._free = len(self.chunks[-1])
        self.chunk[slots] = len(self.chunks) - 1
        self.offset[slots] = len(self.chunks[-1]) - self._free + np.cumsum(sizes) - sizes
        self.shape[slots, 0], self.shape[slots, 1] = heights, widths
        self._free -= total
        self.nbytes += total

    def has_place(self, slot: int) -> bool:
        return self.chunk[slot] >= 0

    def _view(self, slot: int) -> np.ndarray:
        h, w = self.shape[slot].tolist()
        off = int(self.offset[slot])
        return self.chunks[int(self.chunk[slot])][off : off + h * w * 3].reshape(h, w, 3)

    def get(self, slot: int) -> np.ndarray | None:
        if not self.filled[slot]:
            return None
        if self._uniform is not None:  # one chunk, one shape: the common case, read every step
            buf, h, w = self._uniform
            off = int(self.offset[slot])
            return buf[off : off + h * w * 3].reshape(h, w, 3)
        return self._view(slot)

    def put(self, slot: int, img: np.ndarray) -> np.ndarray:
        """Keep ``img`` when ``slot`` has a place of its shape; returns what to hand out."""
        if self.chunk[slot] < 0:
            return img
        view = self._view(slot)
        if view.shape != img.shape:
            return img
        view[...] = img
        self.filled[slot] = 1  # after the pixels: a reader that sees the flag sees them
        return view

    def put_many(self, slots: np.ndarray, images: list) -> None:
        """``put`` of many, with the per-slot facts read once (it runs for every image of a scan)."""
        done = []
        for slot, c, off, (h, w), img in zip(
            slots.tolist(), self.chunk[slots].tolist(), self.offset[slots].tolist(), self.shape[slots].tolist(), images
        ):
            if c >= 0 and img.shape == (h, w, 3):
                self.chunks[c][off : off + h * w * 3] = img.reshape(-1)
                done.append(slot)
        self.filled[done] = 1

    def _settle(self) -> None:
        """Note whether every place is in one chunk and of one shape (``get``'s fast path)."""
        placed = self.chunk >= 0
        self._uniform = None
        if len(self.chunks) == 1 and placed.any():
            shapes = self.shape[placed]
            if (shapes == shapes[0]).all():
                self._uniform = (self.chunks[0], int(shapes[0, 0]), int(shapes[0, 1]))

    def filled_count(self) -> int:
        return int(np.count_nonzero(self.filled))


# The job that forked scan processes inherit (set just before the pool forks).
_SCAN_JOB = None


def _scan_one(store, i: int, budget):
    """(status, height, width, pixels, digest, image or None, lasting) of item ``i``; the image
    comes back only while it could still fit in the cache (``budget`` bytes left, or None)."""
    from augpipe.data.index import OK
    from augpipe.data.index import TOO_LARGE as BIG
    from augpipe.data.index import UNREADABLE as BAD

    img, problem, pixels, lasting = store.inspect(i)
    if img is None:
        return (BIG if problem == TOO_LARGE else BAD), 0, 0, pixels, None, None, lasting
    keep = img if budget is not None and img.nbytes <= budget.value else None
    return OK, img.shape[0], img.shape[1], pixels, pixel_digest(img), keep, lasting


@contextlib.contextmanager
def _one_cv2_thread():
    """OpenCV at one thread while the scan's processes are forked, as they should decode (one
    process per core already). Set in the parent, not in each child: a child that calls
    cv2.setNumThreads when the parent's OpenCV thread pool was running waits for pool threads
    that were not forked with it, for ever."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _scan_block(bounds):
    store, todo, budget = _SCAN_JOB
    return [_scan_one(store, int(i), budget) for i in todo[bounds[0] : bounds[1]]]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# Below this many files a scan stays in the calling process: starting processes costs more.
PROCESS_SCAN_MIN = 512
SCAN_BLOCK = 256


def _scan(store, todo: np.ndarray, workers: int | None, budget, progress: bool | None):
    """((lo, hi), the results of ``_scan_one`` for the items ``todo[lo:hi]``), block by block in
    order, with its progress (count, rate, time left) as ``augpipe.progress.mode(progress)`` says:
    a bar on a terminal, a line every 30 s elsewhere.

    Files are decoded in forked processes, one per core: cv2.imdecode releases the GIL, but the
    Python around it (reading, the JPEG structure walk, the digest) does not, and on 2 cores
    2 threads decoded 32x32 JPEGs at half the rate of one (bench/README.md). Sources that are not
    files (tar members, whose reader may hold an open file) keep a thread pool."""
    global _SCAN_JOB

    from augpipe.progress import counter

    n = len(todo)
    bar = counter(n, "decoding images", enabled=progress, unit="image") if n and progress is not False else None
    workers = workers or _cores()
    try:
        blocks = [(lo, min(n, lo + SCAN_BLOCK)) for lo in range(0, n, SCAN_BLOCK)]
        paths = getattr(store.source, "paths", None) is not None
        import multiprocessing

        # A daemonic process (a pool's worker) may not start processes of its own.
        if paths and workers > 1 and n >= PROCESS_SCAN_MIN and not multiprocessing.current_process().daemon:
            ctx = multiprocessing.get_context("fork")
            _SCAN_JOB = (store, todo, budget)
            from augpipe.training.signals import children_start_deaf, scan_worker_signals

            with _one_cv2_thread():
                with children_start_deaf():
                    pool = ctx.Pool(min(workers, len(blocks)), initializer=scan_worker_signals)
                with pool:
                    for bounds, results in zip(blocks, pool.imap(_scan_block, blocks)):
                        if bar is not None:
                            bar.update(len(results))
                        yield bounds, results
        elif getattr(store.source, "blobs", None) is not None and workers > 1:
            _SCAN_JOB = (store, todo, budget)
            with ThreadPoolExecutor(max_workers=min(8, workers * 2)) as pool:
                # A bounded window of blocks in flight: finished ones would wait in memory.
                for lo in range(0, len(blocks), workers * 4):
                    window = blocks[lo : lo + workers * 4]
                    for bounds, results in zip(window, pool.map(_scan_block, window)):
                        if bar is not None:
                            bar.update(len(results))
                        yield bounds, results
        else:
            for bounds in blocks:
                results = [_scan_one(store, int(i), budget) for i in todo[bounds[0] : bounds[1]]]
                if bar is not None:
                    bar.update(len(results))
                yield bounds, results
    finally:
        _SCAN_JOB = None
        if bar is not None:
            bar.close()


class ImageStore:
    """Random access to the decoded images of a source, from memory as far as they fit.

    Array sources keep their array. File sources have a ``SharedCache`` in memory that forked
    loader workers share: an image decoded by one of them is in memory for all, and nothing is
    copied per process. The shape of every readable image is known (from the image index or the
    scan) without decoding it.
    """

    def __init__(
        self,
        source,
        images=None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache: SharedCache | None = None,
        slots: np.ndarray | None = None,
        shapes: np.ndarray | None = None,
    ):
        self.source = source
        self.max_pixels = max_pixels
        self._images = images  # an ndarray of every image (array sources), or None
        self._cache = cache
        self._slots = slots if slots is not None or cache is None else np.arange(len(source), dtype=np.int64)
        self._shapes = shapes  # (n, 2) int32 per item, 0 where unreadable; None: not known

    def __getstate__(self):
        # Shared memory does not travel through a pickle (a spawned worker): it decodes instead.
        state = self.__dict__.copy()
        state["_cache"], state["_slots"] = None, None
        return state

    def _placed(self) -> np.ndarray:
        readable = self._shapes[:, 0] > 0 if self._shapes is not None else np.ones(len(self), bool)
        return self._cache.chunk[self._slots][readable] >= 0 if self._cache is not None else np.zeros(0, bool)

    @property
    def cached(self) -> bool:
        """Every readable item has its place in memory: once read, it is never decoded again."""
        if self._images is not None:
            return True
        return self._cache is not None and self._shapes is not None and bool(self._placed().all())

    @property
    def cached_count(self) -> int:
        """Readable items with a place in memory."""
        if self._images is not None:
            return len(self._images)
        return int(self._placed().sum()) if self._cache is not None else 0

    @property
    def shapes_equal(self) -> bool:
        """Every readable item's shape is known, and they are all one."""
        if self._images is not None:
            return True
        if self._shapes is None:
            return False
        known = self._shapes[self._shapes[:, 0] > 0]
        return len(known) > 0 and bool((known == known[0]).all())

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._images is not None:
            return self._images[i]
        if self._cache is not None:
            img = self._cache.get(self._slots[i])
            if img is not None:
                return img
        img, problem = self.read(i)
        if img is None:
            if problem == MISSING:
                raise DataError(f"{self.source.describe(i)}: no such file (removed since the data set was opened)")
            why = f" (larger than --max-pixels, {self.max_pixels:,} pixels)" if problem == TOO_LARGE else ""
            raise DataError(f"can not decode image {self.source.describe(i)}{why}")
        if self._cache is not None:
            img = self._cache.put(self._slots[i], img)
        return img

    def read(self, i: int) -> tuple[np.ndarray | None, str | None]:
        """Decode item ``i`` from the source: (image, None) or (None, UNREADABLE / TOO_LARGE)."""
        return self.inspect(i)[:2]

    def inspect(self, i: int):
        """``inspect_bytes`` of item ``i``: (image, problem, pixels, lasting)."""
        # ImageSource.load decodes with the default limit; files are decoded here with ours.
        paths = getattr(self.source, "paths", None)
        if paths is not None:
            return inspect_file(paths.text(i) if hasattr(paths, "text") else paths[i], self.max_pixels)
        blobs = getattr(self.source, "blobs", None)
        if blobs is not None:
            try:
                data = blobs.read(i)
            except (OSError, ValueError, MemoryError):
                return None, UNREADABLE, 0, False
            return inspect_bytes(data, self.max_pixels)
        img = self.source.load(i)
        return (img, None, 0, True) if img is not None else (None, UNREADABLE, 0, False)

    @classmethod
    def build(
        cls,
        source,
        *,
        cache_mb: float = DEFAULT_CACHE_MB,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        use_index: bool = True,
        progress: bool | None = None,
    ):
        """Find every image's readability, shape and pixel digest: from the image index where it
        knows the file (same path, size and mtime), else by decoding it (in one process per core,
        with a progress bar on a terminal), which adds it to the index.

        Returns the store and a DecodeReport. Images have a place in memory while their total
        size stays under ``cache_mb``; one that would pass it is decoded again whenever it is
        read, and the images after it still have a place when they fit. Images decoded here go
        straight into their place; the others are put there when first read.
        """
        from augpipe.data.index import BATCH, OK, UNKNOWN, Facts, ImageIndex, file_keys
        from augpipe.data.index import TOO_LARGE as BIG

        report = DecodeReport()
        if source.arrays is not None:
            arrays = source.arrays
            report.digests = Digests.of([pixel_digest(a) for a in arrays])
            report.cached, report.n_cached = True, len(arrays)
            return cls(source, arrays, max_pixels=max_pixels), report

        n = len(source)
        limit = int(cache_mb * 2**20)
        paths = getattr(source, "paths", None)
        blobs = getattr(source, "blobs", None)
        index = None
        if use_index and n and (paths is not None or hasattr(blobs, "index_keys")):
            # Tar shards are indexed by member (shard path and offset): every rank of a
            # distributed run after the first reads what the first one learnt.
            keys, sizes, mtimes = file_keys(paths) if paths is not None else blobs.index_keys()
            index = ImageIndex.open()
            facts = index.lookup(keys, sizes, mtimes)
        else:
            facts = Facts.unknown(n)
        verdict = facts.verdict(max_pixels)
        todo = np.flatnonzero(verdict == UNKNOWN)
        cache = SharedCache(n) if limit > 0 else None
        reader = cls(source, None, max_pixels=max_pixels)

        left = limit
        if not len(todo):
            # The index knew every file: nothing is decoded, the cache fills as images are read.
            left = _place_in_order(cache, verdict, facts, 0, n, left, {})
        else:
            budget = None
            if cache is not None:
                import multiprocessing

                budget = multiprocessing.get_context("fork").RawValue("q", limit)
            record = index is not None and index.ok
            done = 0  # items before this have their facts and their places
            pending = []
            for (lo, hi), results in _scan(reader, todo, workers, budget, progress if len(todo) > 1 else False):
                items = todo[lo:hi]
                cols = np.array([r[:4] for r in results], dtype=np.int64)
                verdict[items] = cols[:, 0]
                facts.height[items], facts.width[items], facts.pixels[items] = cols[:, 1], cols[:, 2], cols[:, 3]
                got = [k for k, r in enumerate(results) if r[4] is not None]
                if got:
                    facts.digest[items[got]] = np.frombuffer(b"".join(results[k][4] for k in got), np.uint8).reshape(
                        -1, 16
                    )
                if record:
                    keep = [k for k, r in enumerate(results) if r[6] and sizes[items[k]] >= 0]
                    pending += zip(
                        keys[items[keep]].tolist(),
                        sizes[items[keep]].tolist(),
                        mtimes[items[keep]].tolist(),
                        *cols[keep].T.tolist(),
                        [results[k][4] for k in keep],
                    )
                    if len(pending) >= BATCH:
                        index.record(pending)
                        pending = []
                images = {int(items[k]): r[5] for k, r in enumerate(results) if r[5] is not None}
                end = int(items[-1]) + 1
                left = _place_in_order(cache, verdict, facts, done, end, left, images)
                done = end
                if budget is not None:
                    budget.value = left
            left = _place_in_order(cache, verdict, facts, done, n, left, {})
            if record:
                index.record(pending)
            report.decoded = len(todo)
            release_freed_memory()
        if index is not None:
            index.close()
        if cache is not None:
            cache._settle()

        readable = verdict == OK
        report.bad = np.flatnonzero(~readable).tolist()
        report.too_large = np.flatnonzero(verdict == BIG).tolist()
        report.digests = Digests(facts.digest, readable)
        shapes = np.stack([facts.height, facts.width], axis=1)
        shapes[~readable] = 0
        store = cls(source, None, max_pixels=max_pixels, cache=cache, shapes=shapes)
        report.n_cached = store.cached_count
        report.cached = cache is not None and store.cached
        n_readable = int(readable.sum())
        if report.n_cached and not report.cached:
            log.info(
                "%d of %d images fit in the %g MB cache; the other %d are decoded each time they are read",
                report.n_cached,
                n_readable,
                cache_mb,
                n_readable - report.n_cached,
            )
        else:
            log.debug(
                "%d of %d images have a place in memory; %d decoded now, the index knew the others",
                report.n_cached,
                n_readable,
                report.decoded,
            )
        return store, report

    def native_size(self) -> tuple[int, int]:
        """(height, width) of the images: the common shape, or the most frequent one among the
        first 64 when they differ."""
        if self._images is not None:
            return tuple(self._images.shape[1:3])
        from collections import Counter

        shapes = Counter()
        if self._shapes is not None:
            if self.shapes_equal:
                known = self._shapes[self._shapes[:, 0] > 0]
                return int(known[0, 0]), int(known[0, 1])
            shapes.update((int(h), int(w)) for h, w in self._shapes[:64] if h > 0)
        else:
            for i in range(min(64, len(self))):
                img, _ = self.read(i)
                if img is not None:
                    shapes[img.shape[:2]] += 1
        if not shapes:
            raise DataError("no readable images")
        return shapes.most_common(1)[0][0]

    def subset(self, keep_indices) -> ImageStore:
        """The store of ``source.subset(keep_indices)``, sharing this one's memory."""
        idx = np.asarray(keep_indices, dtype=np.int64)
        source = self.source.subset(idx)
        if self._images is not None:
            return ImageStore(source, self._images[idx], max_pixels=self.max_pixels)
        return ImageStore(
            source,
            None,
            max_pixels=self.max_pixels,
            cache=self._cache,
            slots=None if self._slots is None else self._slots[idx],
            shapes=None if self._shapes is None else self._shapes[idx],
        )


def _place_in_order(cache, verdict, facts, start: int, end: int, left: int, images: dict) -> int:
    """Places in ``cache`` for the readable items start..end-1, in order, while each still fits
    in ``left`` bytes; the decoded ``images`` (item -> array) go straight into theirs. Returns
    the bytes left."""
    from augpipe.data.index import OK

    if cache is None or end <= start:
        return left
    ok = start + np.flatnonzero(verdict[start:end] == OK)
    sizes = facts.height[ok].astype(np.int64) * facts.width[ok] * 3
    if sizes.sum() > left:
        fit = _greedy_fit(sizes, left)
        ok, sizes = ok[fit], sizes[fit]
    cache.place(ok, facts.height[ok], facts.width[ok], left)
    if images:
        cache.put_many(np.fromiter(images, np.int64, len(images)), list(images.values()))
    return left - int(sizes.sum())


def _greedy_fit(sizes: np.ndarray, limit: int) -> np.ndarray:
    """Positions of ``sizes`` kept when each is taken, in order, while it still fits."""
    keep, left = [], limit
    for k, size in enumerate(sizes.tolist()):
        if size <= left:
            keep.append(k)
            left -= size
    return np.asarray(keep, dtype=np.int64)
