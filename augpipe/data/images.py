"""Decoding image files to RGB uint8 HWC arrays, and the in-memory cache of decoded images."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
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
    import cv2

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except (OSError, ValueError, MemoryError):
        return None, UNREADABLE
    if not data:
        return None, UNREADABLE
    if data[:2] == b"\xff\xd8":
        # libjpeg returns a grey-padded picture for a truncated JPEG instead of failing.
        complete, size = jpeg_structure(data)
        if not complete:
            return None, UNREADABLE
        pixels = size[0] * size[1] if size else None
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        pixels = w * h
    else:
        pixels = _pillow_pixels(data)
    # The size is known before decoding, so a decompression bomb never allocates anything.
    if pixels is not None and pixels > max_pixels:
        return None, TOO_LARGE
    try:
        # ANYCOLOR|ANYDEPTH keeps 16-bit and palette data and still applies EXIF orientation.
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
        if img is None or img.size == 0:
            return None, UNREADABLE
        # Formats whose header could not be read are checked after the fact.
        if img.shape[0] * img.shape[1] > max_pixels:
            return None, TOO_LARGE
        return to_rgb8(img), None
    except (cv2.error, MemoryError, ValueError, OverflowError, SystemError):
        # OpenCV raises instead of returning None above 2**30 pixels and for some corrupt files.
        return None, UNREADABLE


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


def release_freed_memory() -> None:
    """Hand the heap freed by the decoding threads back to the OS (glibc keeps it per thread
    arena otherwise, and a run's resident memory stays that much higher to its end)."""
    import ctypes
    import sys

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


@dataclass
class DecodeReport:
    """What one pass over every image found."""

    bad: list[int] = field(default_factory=list)  # indices that gave no image, for any reason
    too_large: list[int] = field(default_factory=list)  # those of ``bad`` above max_pixels
    digests: list[bytes | None] = field(default_factory=list)
    cached: bool = False  # every readable image is in memory
    n_cached: int = 0  # readable images in memory; the others are decoded when read


class ImageStore:
    """Random access to the decoded images of a source, from memory as far as they fit.

    Images of one shape are stacked into a single array so that forked loader workers share
    it copy-on-write without touching per-object reference counts. Otherwise a list holds them,
    None standing for an image that did not fit in the budget and is decoded each time.
    """

    def __init__(self, source, images=None, *, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.source = source
        self.max_pixels = max_pixels
        self._images = images  # stacked ndarray, list of arrays and None, or None (all on demand)
        if images is None:
            self._n_cached = 0
        elif isinstance(images, np.ndarray):
            self._n_cached = len(images)
        else:
            self._n_cached = sum(a is not None for a in images)

    @property
    def cached(self) -> bool:
        """Every item is in memory: reading one never decodes a file."""
        return self._images is not None and self._n_cached == len(self)

    @property
    def cached_count(self) -> int:
        return self._n_cached

    @property
    def shapes_equal(self) -> bool:
        """Every item is in memory, stacked in one array of one shape."""
        return isinstance(self._images, np.ndarray)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._images is not None:
            img = self._images[i]
            if img is not None:
                return img
        img, problem = self.read(i)
        if img is None:
            why = f" (larger than --max-pixels, {self.max_pixels:,} pixels)" if problem == TOO_LARGE else ""
            raise DataError(f"can not decode image {self.source.describe(i)}{why}")
        return img

    def read(self, i: int) -> tuple[np.ndarray | None, str | None]:
        """Decode item ``i`` from the source: (image, None) or (None, UNREADABLE / TOO_LARGE)."""
        # ImageSource.load decodes with the default limit; files are decoded here with ours.
        paths = getattr(self.source, "paths", None)
        if paths is not None:
            return read_image(paths[i], max_pixels=self.max_pixels)
        img = self.source.load(i)
        return (img, None) if img is not None else (None, UNREADABLE)

    @classmethod
    def build(cls, source, *, cache_mb: float = DEFAULT_CACHE_MB, workers: int | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS):
        """Decode every image once (finding corrupt files and pixel digests on the way).

        Returns the store and a DecodeReport. Images are kept in memory while their total size
        stays under ``cache_mb``; one that would pass it is decoded again whenever it is read,
        and the images after it are still kept when they fit.
        """
        report = DecodeReport()
        if source.arrays is not None:
            arrays = source.arrays
            report.digests = [pixel_digest(a) for a in arrays]
            report.cached, report.n_cached = True, len(arrays)
            return cls(source, arrays, max_pixels=max_pixels), report

        reader = cls(source, None, max_pixels=max_pixels)
        limit = cache_mb * 2**20
        n = len(source)
        # Images are decoded straight into one preallocated array while they share a shape and
        # all of them fit: a list stacked afterwards would need twice the memory, and the freed
        # small arrays would stay in the heap.
        slab: np.ndarray | None = None
        listed: list | None = None
        caching, total = limit > 0, 0
        workers = workers or min(8, (os.cpu_count() or 1) * 2)

        def decoded():
            # cv2.imdecode and file reads release the GIL, so threads decode in parallel.
            # A bounded window of decodes in flight: all of them at once would hold every image
            # that finishes ahead of the consumer, exactly when the set is too big to cache.
            step = workers * 64
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for lo in range(0, n, step):
                    yield from pool.map(reader.read, range(lo, min(n, lo + step)))

        for i, (img, problem) in enumerate(decoded()):
            if img is None:
                report.bad.append(i)
                if problem == TOO_LARGE:
                    report.too_large.append(i)
                report.digests.append(None)
                if listed is not None:
                    listed.append(None)
                continue
            report.digests.append(pixel_digest(img))
            if not caching:
                continue
            if slab is None and listed is None:
                if n * img.nbytes <= limit:
                    slab = np.empty((n,) + img.shape, dtype=np.uint8)
                else:
                    listed = [None] * i  # the images before this one were all unreadable
            if slab is not None:
                if img.shape == slab.shape[1:]:
                    slab[i] = img
                    continue
                bad = set(report.bad)  # shapes differ: keep a list instead
                listed = [None if j in bad else slab[j].copy() for j in range(i)]
                total = sum(a.nbytes for a in listed if a is not None)
                slab = None
            if total + img.nbytes <= limit:
                listed.append(img)
                total += img.nbytes
            else:
                listed.append(None)
        release_freed_memory()

        readable = n - len(report.bad)
        if slab is not None:
            images, report.n_cached = slab, readable
        elif listed is not None and any(a is not None for a in listed):
            images, report.n_cached = listed, sum(a is not None for a in listed)
        else:
            images = None
        report.cached = images is not None and report.n_cached == readable
        if images is not None and not report.cached:
            log.info("%d of %d images fit in the %g MB cache; the other %d are decoded each time they are read",
                     report.n_cached, readable, cache_mb, readable - report.n_cached)
        else:
            log.debug("%d of %d images cached in memory", report.n_cached, readable)
        return cls(source, images, max_pixels=max_pixels), report

    def native_size(self) -> tuple[int, int]:
        """(height, width) of the images: the common shape, or the most frequent one among the
        first 64 when they differ."""
        if isinstance(self._images, np.ndarray):
            return tuple(self._images.shape[1:3])
        from collections import Counter

        shapes = Counter()
        for i in range(min(64, len(self))):
            img = self._images[i] if self._images is not None else None
            if img is None:
                img, _ = self.read(i)
            if img is not None:
                shapes[img.shape[:2]] += 1
        if not shapes:
            raise DataError("no readable images")
        return shapes.most_common(1)[0][0]

    def subset(self, keep_indices) -> "ImageStore":
        """The store of ``source.subset(keep_indices)``, stacked when every image is in memory
        and the shapes agree."""
        source = self.source.subset(keep_indices)
        images = self._images
        if images is None:
            return ImageStore(source, None, max_pixels=self.max_pixels)
        if isinstance(images, np.ndarray):
            return ImageStore(source, images[np.asarray(keep_indices, dtype=np.int64)], max_pixels=self.max_pixels)
        imgs = [images[i] for i in keep_indices]
        present = [im for im in imgs if im is not None]
        if not present:
            return ImageStore(source, None, max_pixels=self.max_pixels)
        if len(present) == len(imgs) and all(im.shape == imgs[0].shape for im in imgs):
            return ImageStore(source, np.stack(imgs), max_pixels=self.max_pixels)
        return ImageStore(source, imgs, max_pixels=self.max_pixels)
