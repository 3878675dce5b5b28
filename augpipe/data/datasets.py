"""``open_dataset``: the one entry to every kind of data set, which it tells from what is at the
path. It sits above the sources and the shard reader, so that neither imports the other."""

from __future__ import annotations

from pathlib import Path

from augpipe.data.shards import open_shards
from augpipe.data.sources import ImageSource, _open_cifar, _open_csv, _open_folder, _open_npz
from augpipe.errors import DataError


def open_dataset(path) -> ImageSource:
    """Open the data set at ``path``, detecting its kind from what is there (a folder with a
    ``shards.json`` is a set of WebDataset tar shards)."""
    root = Path(path).expanduser()
    try:
        exists, is_file = root.exists(), root.is_file()
    except (OSError, ValueError) as err:  # a name too long, a NUL byte
        raise DataError(f"{root}: not a usable path ({err})") from None
    if not exists:
        raise DataError(f"{root}: no such file or directory")
    if is_file:
        suffix = root.suffix.lower()
        if suffix == ".csv":
            return _open_csv(root)
        if suffix == ".npz":
            return _open_npz(root)
        raise DataError(f"{root}: not a data set (expected a folder, a .csv manifest or an .npz file)")
    if (root / "shards.json").is_file():  # what ``augpipe shard`` writes
        return open_shards(root)
    if (root / "data_batch_1").is_file() or ((root / "meta").is_file() and (root / "train").is_file()):
        return _open_cifar(root)
    return _open_folder(root)
