"""Reading and writing files so that a crash never leaves half a file and no file can run code:
one atomic-write helper, one bounded YAML reader, one allow-listed unpickler, weights-only
checkpoints. Every failure here is an augpipe error naming the file."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from augpipe.errors import ConfigError, DataError, WriteError

# Settings and augmentation specs are a few hundred bytes; anything near these limits is not one.
MAX_YAML_BYTES = 1 << 20
# Nodes after alias expansion: a 336-byte "billion laughs" document expands to 10**9.
MAX_YAML_NODES = 100_000

_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")


def temporary_name(path: Path) -> Path:
    """The sibling a write goes to before it is renamed over ``path`` (the pid tells whose)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


# The reasons a write fails that the user can do something about, in the words of the message.
WRITE_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "the folder is not writable: permission denied",
    errno.EPERM: "the folder is not writable: operation not permitted",
    errno.EFBIG: "file too large",
}
# What a probe writes: a file system with less room than this is full for any checkpoint.
PROBE_BYTES = 1 << 16


def write_reason(err: OSError) -> str:
    return WRITE_REASONS.get(err.errno) or (err.strerror or str(err)).lower()


def why_not_writable(folder) -> str | None:
    """Why nothing can be written in ``folder`` (full, over quota, read-only, forbidden), found by
    asking the file system and by writing a small file there; None when a write works. For the
    writers that hide the errno: torch.save on a full disk says "[enforce fail at
    inline_container.cc] unexpected pos", the ONNX exporter that the model "is not supported"."""
    folder = Path(folder)
    try:
        st = os.statvfs(folder)
        if st.f_flag & getattr(os, "ST_RDONLY", 1):
            return WRITE_REASONS[errno.EROFS]
        if st.f_bavail * st.f_frsize < PROBE_BYTES:
            return WRITE_REASONS[errno.ENOSPC]
    except OSError:
        pass
    probe = folder / f".augpipe-probe.tmp{os.getpid()}"  # a temporary name: a kill leaves no litter
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            left = memoryview(bytes(PROBE_BYTES))
            while left:
                left = left[os.write(fd, left) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        return write_reason(err)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def check_writable(folder, what: str = "") -> None:
    """Refuse, before any work, a folder that can not take a file (``what``: how the user named it)."""
    problem = why_not_writable(folder)
    if problem is not None:
        raise WriteError(f"{what or folder}: can not write in {folder} ({problem})")


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds the file is synced and
    renamed over ``path`` in one step, so a reader (or a crash) sees the old file or the new one,
    never half of one. On failure the temporary file is removed and ``path`` is untouched.

    Every file augpipe writes goes through here, and so does every way a write fails: an OSError
    (full disk, quota, read-only or forbidden folder) and a writer's own error that hides one
    (torch.save, the ONNX exporter) become one ``WriteError`` naming ``path`` and the reason."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()  # first: on a full disk, the room it took may be what the summary needs
        raise WriteError(f"{path}: can not be written ({write_reason(err)})") from None
    except Exception:
        with contextlib.suppress(OSError):
            tmp.unlink()
        problem = why_not_writable(path.parent)
        if problem is None:
            raise  # not the disk: the writer's own error
        raise WriteError(f"{path}: can not be written ({problem})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_atomic(path, data: str | bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the temporary files that a killed process left in ``folder`` (a SIGKILL between
    writing and renaming); files of processes still running are left alone."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMPORARY.match(entry.name)
        if not m or not entry.is_file():
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _alive(pid):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exclusive_lock(folder, what: str):
    """An exclusive lock on ``folder/.lock``, held until the returned file is closed: two
    processes writing one run (or sweep) would overwrite each other's checkpoints and tables."""
    import fcntl

    try:
        fh = open(Path(folder) / ".lock", "a")
    except OSError as err:
        raise WriteError(f"{Path(folder) / '.lock'}: can not be written ({write_reason(err)})") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise DataError(f"{folder}: another process is {what}") from None
    return fh


# -- YAML -------------------------------------------------------------------------------------
def read_yaml(path, what: str = "file") -> Any:
    """``yaml.safe_load`` of a file of at most MAX_YAML_BYTES, UTF-8, whose aliases expand to at
    most MAX_YAML_NODES nodes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    return parse_yaml(read_bounded_text(path, MAX_YAML_BYTES, what), str(path))


def read_bounded_text(path, limit: int, what: str, error=ConfigError) -> str:
    """The UTF-8 text of a file of at most ``limit`` bytes (a file from anywhere may be huge, or
    not text), or ``error`` saying which it is."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise error(f"{path}: {size:,} bytes is too large for a {what} (at most {limit:,})")
        raw = path.read_bytes()
    except OSError as err:
        raise error(f"{path}: can not be read ({err.strerror or err})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None


def _unique_key_loader():
    """yaml.SafeLoader (the same tags and types) that refuses a mapping with a key twice: plain
    safe_load keeps the last value silently, so ``epochs: 5`` ten lines above ``epochs: 50``
    would train for 50 without a word. Keys merged in with ``<<`` may still be overridden."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: SafeLoader's own error says so
                        continue
                    if first is not None:
                        raise yaml.constructor.ConstructorError(
                            None,
                            None,
                            f"the key {key!r} is given twice, on lines {first} and {line}",
                            key_node.start_mark,
                        )
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def parse_yaml(text: str, where: str = "YAML") -> Any:
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: too large (at most {MAX_YAML_BYTES:,} characters)")
    loader = None
    try:
        loader = _unique_key_loader()(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    except ValueError as err:  # an integer of more than 4,300 digits (Python's own limit)
        raise ConfigError(f"{where}: a value YAML can not read ({str(err).split(':')[0]})") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_expanded_size(root, where: str) -> None:
    """Count the nodes the document has once every alias is expanded, without expanding it: a
    node's size is computed once and reused wherever an alias points to it."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > MAX_YAML_NODES:
                raise ConfigError(f"{where}: expands to more than {MAX_YAML_NODES:,} values (alias expansion)")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigError(f"{where}: an alias refers to the value that contains it")
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) not in sizes:
                if id(child) in on_path:
                    raise ConfigError(f"{where}: an alias refers to the value that contains it")
                stack.append((child, False))


def _children(node) -> list:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def dump_yaml(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


# -- pickles ----------------------------------------------------------------------------------
# What a numpy array needs to unpickle, in the module names numpy 1 and numpy 2 write; and
# _codecs.encode, with which Python 3 writes bytes at protocol 2. Nothing here runs other code.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        if module.startswith("numpy.core."):  # numpy 2 renamed it; the old name only warns
            with contextlib.suppress(ImportError):
                return getattr(importlib.import_module("numpy._core." + module[len("numpy.core.") :]), name)
        return getattr(importlib.import_module(module), name)


def load_pickle(path, what: str = "pickle file") -> Any:
    """Unpickle ``path`` accepting only dicts, lists, tuples, strings, bytes, numbers and numpy
    arrays: a crafted file that names any other callable is refused before anything runs."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _AllowListUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: not a readable {what} ({err})") from None
    except (
        OSError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        RecursionError,
    ) as err:
        raise DataError(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from None


# -- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(state: dict, path) -> Path:
    """torch.save through ``atomic_path``. ``state`` must hold only tensors and plain Python
    values, so that ``load_checkpoint`` can read it with ``weights_only=True``."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path) -> dict:
    """A checkpoint read with ``torch.load(weights_only=True)``: tensors and plain values only;
    a file that would run code when unpickled is refused, and nothing of it runs."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # not a pickle at all: "Unsupported operand"
            raise DataError(f"{path}: not a readable checkpoint (UnpicklingError)") from None
        # torch's message advises weights_only=False, which is exactly what must not happen.
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"it names {found.group(1)}" if found else "it holds more than tensors and plain values"
        raise DataError(f"{path}: refused to load: {what}, and loading it could run code") from None
    except Exception as err:  # a truncated zip, a random file: never a traceback
        raise DataError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: not an augpipe checkpoint")
    return state
