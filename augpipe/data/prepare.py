"""From a path to split, decoded, checked data: the first stage every command shares."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from augpipe.data.images import DEFAULT_CACHE_MB, ImageStore
from augpipe.data.sources import ImageSource, open_dataset
from augpipe.data.split import find_duplicates, read_manifest, split_dataset
from augpipe.errors import DataError

log = logging.getLogger("augpipe")


@dataclass
class PreparedData:
    source: ImageSource  # without the images that failed to decode
    store: ImageStore
    assignment: np.ndarray  # 'train' / 'val' / 'test' per item of source
    seed: int
    val: float
    test: float
    skipped: list[str]  # images that failed to decode
    duplicates: dict

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.assignment == split)

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names


def prepare_data(path, *, val: float = 0.1, test: float = 0.1, seed: int = 0, split_file=None,
                 strict: bool = False, cache_mb: float = DEFAULT_CACHE_MB) -> PreparedData:
    """Open ``path``, decode every image once, drop unreadable ones (or fail under ``strict``),
    and split. With ``split_file`` the manifest's assignment, seed and ratios are reused."""
    source = open_dataset(path)
    previous = None
    if split_file is not None:
        previous, header = read_manifest(split_file, source)
        seed = int(header.get("seed", seed))
        val = float(header.get("val", val))
        test = float(header.get("test", test))
        new = len(source) - len(previous)
        if new:
            log.info("%d item(s) are not in %s: they fill the remaining quota of each split", new, split_file)
    store, report = ImageStore.build(source, cache_mb=cache_mb)
    skipped = [source.describe(i) for i in report.bad]
    if skipped:
        if strict:
            raise DataError(f"{len(skipped)} unreadable image(s), first: {skipped[0]}")
        log.warning("skipped %d unreadable image(s), first: %s (use --strict to stop instead)",
                    len(skipped), skipped[0])
        bad = set(report.bad)
        keep = [i for i in range(len(source)) if i not in bad]
        if not keep:
            raise DataError(f"{path}: no readable images")
        store = store.subset(keep)
        source = store.source
        digests = [report.digests[i] for i in keep]
    else:
        digests = report.digests
    assignment = split_dataset(source.keys, source.labels, source.given, val=val, test=test, seed=seed,
                               previous=previous, class_names=source.class_names)
    return PreparedData(source, store, assignment, seed, val, test, skipped, find_duplicates(digests, assignment))
