"""From a path to split, decoded, checked data: the first stage every command shares."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from augpipe.data.datasets import open_dataset
from augpipe.data.images import DEFAULT_CACHE_MB, DEFAULT_MAX_PIXELS, Digests, ImageStore
from augpipe.data.sources import ImageSource
from augpipe.data.split import read_manifest, split_dataset
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
    skipped: list[str]  # images left out: unreadable, or above max_pixels
    duplicates: dict  # exact copies skipped and label conflicts (``skip_duplicates``)
    too_large: list[str] = field(default_factory=list)  # those of ``skipped`` above max_pixels
    max_pixels: int = DEFAULT_MAX_PIXELS
    pixels: str = ""  # fingerprint of every image's pixels: a resumed run refuses data changed in place

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.assignment == split)

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names


def describe_skipped(skipped: list[str], too_large: list[str], max_pixels: int) -> str:
    """'3 image(s): 2 unreadable, 1 larger than --max-pixels (...)', or '3 unreadable image(s)'
    when none was too large."""
    if not too_large:
        return f"{len(skipped)} unreadable image(s)"
    unreadable = len(skipped) - len(too_large)
    parts = ([f"{unreadable} unreadable"] if unreadable else []) + [
        f"{len(too_large)} larger than --max-pixels ({max_pixels:,} pixels)"
    ]
    return f"{len(skipped)} image(s): {', '.join(parts)}"


@dataclass
class DecodedData:
    """A data set opened, decoded once and checked, before it is split: what runs that differ only
    in their split (the seeds of a sweep) share."""

    opened: ImageSource  # every item, the unreadable ones included (a manifest may name them)
    source: ImageSource  # the readable items
    store: ImageStore
    skipped: list[str]
    too_large: list[str]
    digests: Digests  # pixel digest per readable item
    max_pixels: int
    manifests: dict = field(default_factory=dict)  # split file -> read_manifest's result, read once
    duplicates: dict = field(default_factory=lambda: no_duplicates())
    pixels: str = ""  # pixel_fingerprint of ``source``: computed once, also for a sweep's many splits


def prepare_data(
    path,
    *,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    split_file=None,
    strict: bool = False,
    cache_mb: float = DEFAULT_CACHE_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_classes: int = 1,
) -> PreparedData:
    """Open ``path``, learn whether each image is readable (from the image index, else by decoding
    it), drop unreadable ones and those with more than ``max_pixels`` pixels (or fail under
    ``strict``), and split. With ``split_file`` the manifest's assignment, seed and ratios are
    reused. Every class must keep at least one image,
    and there must be at least ``min_classes`` classes."""
    decoded = decode_data(
        path, strict=strict, cache_mb=cache_mb, max_pixels=max_pixels, min_classes=min_classes, split_file=split_file
    )
    return split_decoded(decoded, val=val, test=test, seed=seed, split_file=split_file)


def decode_data(
    path,
    *,
    strict: bool = False,
    cache_mb: float = DEFAULT_CACHE_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_classes: int = 1,
    split_file=None,
) -> DecodedData:
    """The first half of ``prepare_data``: open, check the classes, find what can not be read
    (from the image index where it knows the files, else by decoding them), drop it.
    ``split_file`` is only checked here, so that a bad manifest fails before the decoding."""
    source = open_dataset(path)
    names = source.class_names
    if len(names) < min_classes:
        listed = ", ".join(repr(c) for c in names[:5])
        raise DataError(
            f"{path}: the data set has {len(names)} class{'' if len(names) == 1 else 'es'} "
            f"({listed}): a classifier needs at least {min_classes}"
        )
    counts = source.class_counts()
    empty = [names[c] for c in np.flatnonzero(counts == 0)]
    if empty:  # an .npz or CIFAR meta file can name classes that no label uses
        more = f" (nor do {len(empty) - 1} other class(es))" if len(empty) > 1 else ""
        raise DataError(f"{path}: class {empty[0]!r} has no images{more}")
    manifests = {}
    if split_file is not None:  # read before the decoding, so that a bad manifest fails at once
        manifests[str(split_file)] = read_manifest(split_file, source)
    opened = source
    store, report = ImageStore.build(source, cache_mb=cache_mb, max_pixels=max_pixels)
    skipped = [source.describe(i) for i in report.bad]
    too_large = [source.describe(i) for i in report.too_large]
    if skipped:
        what = describe_skipped(skipped, too_large, max_pixels)
        if strict:
            raise DataError(f"{what}, first: {skipped[0]}")
        log.warning("skipped %s, first: %s (use --strict to stop instead)", what, skipped[0])
        bad = set(report.bad)
        keep = [i for i in range(len(source)) if i not in bad]
        if not keep:
            raise DataError(f"{path}: no readable images")
        left = np.bincount(source.labels[keep], minlength=len(names))
        gone = np.flatnonzero(left == 0)
        if len(gone):
            c = int(gone[0])
            raise DataError(f"class {names[c]!r} has no readable images (all {counts[c]} were skipped)")
        store = store.subset(keep)
        source = store.source
        digests = report.digests.take(keep)
    else:
        digests = report.digests
    source, store, digests, duplicates = skip_duplicates(path, source, store, digests, strict=strict)
    return DecodedData(
        opened,
        source,
        store,
        skipped,
        too_large,
        digests,
        max_pixels,
        manifests,
        duplicates,
        pixel_fingerprint(source, digests),
    )


def no_duplicates() -> dict:
    return {"skipped": 0, "groups": 0, "label_conflict_groups": 0, "label_conflicts": []}


# Label conflicts named in the log (the rest are counted) and kept in summary.json.
SHOWN_CONFLICTS, KEPT_CONFLICTS = 5, 100


def skip_duplicates(path, source, store, digests, strict: bool = False):
    """Exact duplicates (the same decoded pixels) are skipped: the first in the data set's order
    is kept, every later copy left out, so that no image is trained on twice or tested on after
    being trained on. Copies under different classes are a label conflict: each is named with its
    classes in a warning, and the first is kept like any other duplicate. ``strict`` (--strict):
    the first duplicate is an error instead, as an unreadable image is."""
    groups: dict[bytes, list[int]] = {}
    for i, d in enumerate(digests.repeated() if isinstance(digests, Digests) else digests):
        if d is not None:
            groups.setdefault(d, []).append(i)
    groups = {d: g for d, g in groups.items() if len(g) > 1}
    if not groups:
        return source, store, digests, no_duplicates()
    names, labels = source.class_names, source.labels
    drop = {i for g in groups.values() for i in g[1:]}
    conflicts = [g for g in groups.values() if len({int(labels[i]) for i in g}) > 1]
    first = min(groups.values(), key=lambda g: g[1])
    if strict:
        a, b = first[0], first[1]
        differ = labels[a] != labels[b]
        raise DataError(
            f"{source.describe(b)} has the same pixels as {source.describe(a)}"
            + (f" but another label ({names[int(labels[b])]!r}, not {names[int(labels[a])]!r})" if differ else "")
            + f"; {len(drop)} exact duplicate(s) in all (without --strict "
            f"they are skipped)"
        )
    log.warning(
        "skipped %d exact duplicate image(s) in %d group(s) (the same pixels as an earlier image, which is "
        "kept), first: %s (the same as %s)",
        len(drop),
        len(groups),
        source.describe(first[1]),
        source.describe(first[0]),
    )
    described = []
    for g in conflicts:
        files = [source.describe(i) for i in g]
        classes = [names[int(labels[i])] for i in g]
        described.append({"files": files, "classes": classes})
        if len(described) <= SHOWN_CONFLICTS:
            log.warning(
                "label conflict: %s have the same pixels but their labels differ (%s); kept %s as %r",
                " and ".join(files),
                ", ".join(f"{f}: {c!r}" for f, c in zip(files, classes)),
                files[0],
                classes[0],
            )
    if len(conflicts) > SHOWN_CONFLICTS:
        log.warning("... and %d more label conflict(s)", len(conflicts) - SHOWN_CONFLICTS)
    keep = [i for i in range(len(source)) if i not in drop]
    left = np.bincount(labels[keep], minlength=len(names))
    gone = np.flatnonzero((left == 0) & (source.class_counts() > 0))
    if len(gone):
        raise DataError(
            f"{path}: every image of class {names[int(gone[0])]!r} has the same pixels as an image "
            f"of another class (a label conflict): the class is left with none"
        )
    store = store.subset(keep)
    kept = digests.take(keep) if isinstance(digests, Digests) else [digests[i] for i in keep]
    return (
        store.source,
        store,
        kept,
        {
            "skipped": len(drop),
            "groups": len(groups),
            "label_conflict_groups": len(conflicts),
            "label_conflicts": described[:KEPT_CONFLICTS],
        },
    )


def pixel_fingerprint(source, digests) -> str:
    """Changes when the pixels of any image change, also in place under the same name."""
    import hashlib

    h = hashlib.sha256()
    for key, digest in sorted(zip(source.keys, digests), key=lambda kd: kd[0]):
        h.update(f"{key}\t".encode() + (digest or b"-") + b"\n")
    return h.hexdigest()[:16]


def split_decoded(
    decoded: DecodedData, *, val: float = 0.1, test: float = 0.1, seed: int = 0, split_file=None
) -> PreparedData:
    """The second half of ``prepare_data``: the split (duplicates were skipped before it)."""
    previous = None
    if split_file is not None:
        manifest = decoded.manifests.get(str(split_file))
        previous, header = manifest if manifest is not None else read_manifest(split_file, decoded.opened)
        # read_manifest has checked and typed these
        seed, val, test = header.get("seed", seed), header.get("val", val), header.get("test", test)
        new = len(decoded.opened) - len(previous)
        if new:
            log.info("%d item(s) are not in %s: they fill the remaining quota of each split", new, split_file)
    source = decoded.source
    assignment = split_dataset(
        source.keys,
        source.labels,
        source.given,
        val=val,
        test=test,
        seed=seed,
        previous=previous,
        class_names=source.class_names,
    )
    return PreparedData(
        source,
        decoded.store,
        assignment,
        seed,
        val,
        test,
        decoded.skipped,
        decoded.duplicates,
        decoded.too_large,
        decoded.max_pixels,
        decoded.pixels,
    )
