"""Pack an image folder into one file and back, so CIFAR-10 can travel to a GPU machine.

    python bench/cifar_pack.py pack ../shared/data/cifar10 .gpu_data/cifar10.pack.gz
    python bench/cifar_pack.py unpack .gpu_data/cifar10.pack.gz /tmp/cifar10

60,000 small JPEGs exceed what a file transfer takes comfortably; one file of the JPEG bytes back
to back gzip-compressed (19 MB: the JPEG headers repeat) does not. The layout,
inside gzip: 8 bytes little-endian length of a JSON index, the index
(a list of [relative path, offset, length], offsets counted from the end of the index), the bytes.
"""

from __future__ import annotations

import gzip
import json
import struct
import sys
from pathlib import Path


def pack(root: Path, out: Path) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    index, blobs, offset = [], [], 0
    for p in files:
        data = p.read_bytes()
        index.append([p.relative_to(root).as_posix(), offset, len(data)])
        blobs.append(data)
        offset += len(data)
    head = json.dumps(index).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wb", compresslevel=6) as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)
    print(f"{len(files)} files, {out.stat().st_size / 1e6:.1f} MB -> {out}")


def unpack(src: Path, root: Path) -> None:
    buf = gzip.decompress(src.read_bytes())
    (n,) = struct.unpack("<Q", buf[:8])
    index = json.loads(buf[8 : 8 + n])
    base = 8 + n
    made = set()
    for rel, off, length in index:
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise SystemExit(f"refusing path {rel!r}")
        dest = root / rel
        if dest.parent not in made:
            dest.parent.mkdir(parents=True, exist_ok=True)
            made.add(dest.parent)
        dest.write_bytes(buf[base + off : base + off + length])
    print(f"{len(index)} files -> {root}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        raise SystemExit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(Path(sys.argv[2]), Path(sys.argv[3]))
