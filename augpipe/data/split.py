"""Train / validation / test splits: stratified, seeded, hash-ordered, and kept in a manifest.

Pure: items (keys, labels, given splits) in, one split name per item out. No torch here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from augpipe.data.sources import shown
from augpipe.errors import ConfigError, DataError

log = logging.getLogger("augpipe")

SPLITS = ("train", "val", "test")
MANIFEST_VERSION = "augpipe split manifest v1"


def check_ratios(val: float, test: float) -> None:
    for name, r in (("val", val), ("test", test)):
        if not (isinstance(r, (int, float)) and math.isfinite(r) and 0 <= r < 1):
            raise ConfigError(f"--{name} must be a fraction in [0, 1), got {r}")
    if val + test >= 1:
        raise ConfigError(f"--val + --test must be below 1 so that something is left to train on, got {val + test:g}")


def item_rank(seed: int, key: str) -> int:
    """A seeded pseudo-random position for an item that depends on nothing but its identity."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest(), "big")


def _count(n: int, ratio: float) -> int:
    # At least one item per carved split, so that every class is seen in every split.
    return max(1, math.floor(n * ratio + 0.5)) if ratio > 0 else 0


def split_dataset(
    keys,
    labels,
    given,
    *,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    previous: dict[str, str] | None = None,
    class_names=None,
) -> np.ndarray:
    """Assign each item to 'train', 'val' or 'test'.

    - Splits given by the source (``given[i]`` not None) are kept; only splits the source lacks
      are carved, out of the items given as train or not given at all, with ``val`` and ``test``
      as fractions of that pool.
    - Per class, the pool is ordered by ``item_rank(seed, key)`` and the first
      ``round(n * ratio)`` (at least 1) go to test, the next to val: stratified to within one
      image, independent of file order.
    - Items named in ``previous`` (an earlier manifest) keep their split; new items fill each
      class's remaining quota. This is what keeps a grown data set's test images out of training.
    """
    check_ratios(val, test)
    if hasattr(keys, "texts"):  # a compact column: one decoding pass, not one per lookup
        keys = list(keys.texts())
    labels = np.asarray(labels)
    names = class_names or [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
    previous = previous or {}
    out = np.array(list(given), dtype=object)
    present = {g for g in given if g}
    ratios = {"test": test, "val": val}
    carve = [s for s in ("test", "val") if s not in present and ratios[s] > 0]
    for s in ("test", "val"):
        if s in present and ratios[s] > 0 and not previous:
            log.info("the source already has a %s split; --%s is not used", s, s)

    pool_by_class: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(given):
        if g in (None, "train"):
            pool_by_class[int(labels[i])].append(i)

    for c in sorted(pool_by_class):
        members = pool_by_class[c]
        targets = {s: _count(len(members), ratios[s]) for s in carve}
        if carve and len(members) - sum(targets.values()) < 1:
            wanted = " and ".join(["train"] + carve)
            raise DataError(f"class {names[c]!r} has {len(members)} image(s): too few to reach {wanted}")
        kept = Counter()
        fresh = []
        for i in members:
            p = previous.get(keys[i])
            if p:
                out[i] = p
                kept[p] += 1
            else:
                fresh.append(i)
        fresh.sort(key=lambda i: item_rank(seed, keys[i]))
        pos = 0
        for s in carve:
            take = max(0, targets[s] - kept[s])
            out[fresh[pos : pos + take]] = s
            pos += take
        out[fresh[pos:]] = "train"
    return out


def split_table(class_names, labels, assignment) -> str:
    """A per-class table of counts per split, as text."""
    width = max([len("class"), len("total")] + [len(n) for n in class_names])
    lines = [f"{'class':<{width}}  {'train':>7} {'val':>7} {'test':>7} {'total':>7}"]
    totals = Counter()
    for c, name in enumerate(class_names):
        mask = np.asarray(labels) == c
        counts = Counter(assignment[mask].tolist())
        totals.update(counts)
        lines.append(
            f"{name:<{width}}  {counts['train']:>7} {counts['val']:>7} {counts['test']:>7} {int(mask.sum()):>7}"
        )
    lines.append(
        f"{'total':<{width}}  {totals['train']:>7} {totals['val']:>7} {totals['test']:>7} {sum(totals.values()):>7}"
    )
    return "\n".join(lines)


def describe_duplicates(dups: dict) -> str:
    """One line for the exact duplicates that ``prepare.skip_duplicates`` left out."""
    if not dups.get("skipped"):
        return "duplicates: none (no two images have the same pixels)"
    text = (
        f"duplicates: {dups['skipped']} exact copies skipped (the first image of each of "
        f"{dups['groups']} group(s) kept)"
    )
    if dups.get("label_conflict_groups"):
        text += f"; {dups['label_conflict_groups']} label conflict(s): the same pixels under different classes"
    return text


def write_manifest(path, source, assignment, *, seed: int, val: float, test: float) -> Path:
    """Write the split as CSV (key, label, split) with a header comment; atomic, so a failure
    never leaves a half-written file."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"{path}: the directory {path.parent} does not exist")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file name")
    buf = io.StringIO()
    buf.write(f"# {MANIFEST_VERSION}\n# source: {source.root}\n# kind: {source.kind}\n")
    buf.write(f"# fingerprint: {source.fingerprint()}\n# seed: {seed}\n# val: {val}\n# test: {test}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([source.key_column, "label", "split"])
    for key, label, split in zip(source.keys, source.labels.tolist(), assignment):
        w.writerow([key, source.class_names[label], split])
    from augpipe.files import write_atomic

    return write_atomic(path, buf.getvalue())


def _header_fields(path: Path, header: dict[str, str]) -> dict:
    """The header with seed, val and test checked and converted (int, float, float): a
    hand-edited "# seed: banana" must stop here with the file's name, not as a traceback later."""
    out: dict = dict(header)
    if "seed" in header:
        text = header["seed"]
        # Digits only: int() would also take "+7", " 7", "1_000" and hand back another seed.
        if not (text.isascii() and text.isdigit()) or int(text) >= 2**32:
            raise DataError(f"{path}: the header field seed must be an integer from 0 to {2**32 - 1}, got {text!r}")
        out["seed"] = int(text)
    for field in ("val", "test"):
        if field in header:
            try:
                value = float(header[field])
            except ValueError:
                value = None
            if value is None or not (math.isfinite(value) and 0 <= value < 1):
                raise DataError(f"{path}: the header field {field} must be a fraction in [0, 1), got {header[field]!r}")
            out[field] = value
    try:
        check_ratios(out.get("val", 0.0), out.get("test", 0.0))
    except ConfigError:
        raise DataError(
            f"{path}: the header fields val and test add up to {out['val'] + out['test']:g}; they must be below 1"
        ) from None
    return out


def read_manifest(path, source) -> tuple[dict[str, str], dict]:
    """The split of each key in the manifest at ``path``, checked against ``source``, and the
    header fields (fingerprint, source ...; seed as an int, val and test as floats, each
    checked as ``split_dataset`` would)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such split manifest")
    header: dict[str, str] = {}
    numbered = []  # (line number in the file, line): errors name the line
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, start=1):
                # Comments only before the column row: a key may itself start with '#'.
                if not numbered and line.startswith("#"):
                    k, _, v = line[1:].partition(":")
                    header[k.strip()] = v.strip()
                else:
                    numbered.append((n, line))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: can not be read ({err.strerror or err})") from None
    header = _header_fields(path, header)
    reader = csv.reader(line for _, line in numbered)
    rows = []
    while True:
        try:
            r = next(reader)
        except StopIteration:
            break
        except csv.Error as err:  # a field over csv's size limit, say
            raise DataError(f"{path}: line {numbered[reader.line_num - 1][0]}: not valid CSV ({err})") from None
        if r:
            rows.append((numbered[reader.line_num - 1][0], r))
    if not rows or len(rows[0][1]) < 3 or rows[0][1][1:3] != ["label", "split"]:
        raise DataError(f"{path}: not a split manifest (expected columns {source.key_column},label,split)")
    index = {k: i for i, k in enumerate(source.keys)}
    known = set(source.class_names)
    previous, missing, unknown = {}, [], []
    line_of: dict[str, int] = {}
    for n, row in rows[1:]:
        if len(row) < 3:
            raise DataError(f"{path}: line {n}: expected {source.key_column},label,split, found {len(row)} field(s)")
        key, label, split = row[0], row[1], row[2].strip()
        if split not in SPLITS:
            raise DataError(f"{path}: unknown split {split!r} for {shown(key)} (use train, val or test)")
        # Listed twice, the later line would silently decide the item's split.
        if line_of.setdefault(key, n) != n:
            raise DataError(f"{path}: {shown(key)} is listed twice, lines {line_of[key]} and {n}")
        if label not in known:
            unknown.append(label)
            continue
        i = index.get(key)
        if i is None:
            missing.append(key)
            continue
        if source.class_names[source.labels[i]] != label:
            raise DataError(
                f"{path}: {shown(key)} is labelled {label!r} but the data set says "
                f"{source.class_names[source.labels[i]]!r}"
            )
        previous[key] = split
    if unknown:
        raise DataError(f"{path}: the manifest names {len(unknown)} item(s) with unknown labels, first: {unknown[0]!r}")
    if missing:
        raise DataError(
            f"{path}: the manifest names {len(missing)} item(s) missing from the data set, first: {shown(missing[0])}"
        )
    return previous, header
