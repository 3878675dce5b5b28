"""Decoding image files to RGB uint8 HWC arrays, and the in-memory cache of decoded images."""
from __future__ import annotations

import hashlib
import logging
import os
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


def decode_file(path: Path) -> np.ndarray | None:
    """The image at ``path`` as RGB uint8, or None when it is empty, truncated or not an image."""
    import cv2

    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if buf.size == 0:
        return None
    # libjpeg returns a grey-padded picture for a truncated JPEG instead of failing;
    # a complete one ends with the EOI marker (0xFF can not occur unstuffed before it).
    if buf[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in buf[-4096:].tobytes():
        return None
    # ANYCOLOR|ANYDEPTH keeps 16-bit and palette data and still applies EXIF orientation.
    img = cv2.imdecode(buf, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if img is None or img.size == 0:
        return None
    return to_rgb8(img)


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

    bad: list[int] = field(default_factory=list)  # indices that failed to decode
    digests: list[bytes | None] = field(default_factory=list)
    cached: bool = False


class ImageStore:
    """Random access to the decoded images of a source, from memory when they fit.

    Images of one shape are stacked into a single array so that forked loader workers share
    it copy-on-write without touching per-object reference counts.
    """

    def __init__(self, source, images=None):
        self.source = source
        self._images = images  # stacked ndarray, list of arrays, or None (decode on demand)

    @property
    def cached(self) -> bool:
        return self._images is not None

    @property
    def shapes_equal(self) -> bool:
        return isinstance(self._images, np.ndarray)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._images is not None:
            return self._images[i]
        img = self.source.load(i)
        if img is None:
            raise DataError(f"can not decode image {self.source.describe(i)}")
        return img

    @classmethod
    def build(cls, source, *, cache_mb: float = DEFAULT_CACHE_MB, workers: int | None = None):
        """Decode every image once (finding corrupt files and pixel digests on the way).

        Returns the store and a DecodeReport. The pixels are kept when their total size is
        under ``cache_mb``.
        """
        report = DecodeReport()
        if source.arrays is not None:
            arrays = source.arrays
            report.digests = [pixel_digest(a) for a in arrays]
            report.cached = True
            return cls(source, arrays), report

        limit = cache_mb * 2**20
        n = len(source)
        bad: set[int] = set()
        # Images are decoded straight into one preallocated array while they share a shape: a
        # list stacked afterwards would need twice the memory, and the freed small arrays would
        # stay in the heap.
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
                    yield from pool.map(source.load, range(lo, min(n, lo + step)))

        for i, img in enumerate(decoded()):
            if img is None:
                bad.add(i)
                report.bad.append(i)
                report.digests.append(None)
                if listed is not None:
                    listed.append(None)
                continue
            report.digests.append(pixel_digest(img))
            if not caching:
                continue
            if slab is None and listed is None:
                if n * img.nbytes > limit:
                    caching = False
                    continue
                slab = np.empty((n,) + img.shape, dtype=np.uint8)
            if slab is not None and img.shape == slab.shape[1:]:
                slab[i] = img
                continue
            if slab is not None:  # shapes differ: keep a list instead
                listed = [None if j in bad else slab[j].copy() for j in range(i)]
                total = sum(a.nbytes for a in listed if a is not None)
                slab = None
            total += img.nbytes
            if total > limit:
                caching, listed = False, None
            else:
                listed.append(img)
        release_freed_memory()
        if not caching:
            return cls(source, None), report
        report.cached = True
        return cls(source, slab if slab is not None else listed), report

    def native_size(self) -> tuple[int, int]:
        """(height, width) of the images: the common shape, or the most frequent one among the
        first 64 when they differ."""
        if isinstance(self._images, np.ndarray):
            return tuple(self._images.shape[1:3])
        from collections import Counter

        shapes = Counter()
        for i in range(min(64, len(self))):
            img = self._images[i] if self._images is not None else self.source.load(i)
            if img is not None:
                shapes[img.shape[:2]] += 1
        if not shapes:
            raise DataError("no readable images")
        return shapes.most_common(1)[0][0]

    def subset(self, keep_indices) -> "ImageStore":
        """The store of ``source.subset(keep_indices)``, stacked when shapes agree."""
        source = self.source.subset(keep_indices)
        if self._images is None:
            return ImageStore(source, None)
        if isinstance(self._images, np.ndarray):
            return ImageStore(source, self._images[np.asarray(keep_indices, dtype=np.int64)])
        imgs = [self._images[i] for i in keep_indices]
        if imgs and all(im.shape == imgs[0].shape for im in imgs):
            return ImageStore(source, np.stack(imgs))
        return ImageStore(source, imgs)
