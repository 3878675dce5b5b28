"""Shared fixtures: tiny data sets written into tmp_path, and a CLI runner.

Every image written here has its own seeded random pixels, so exact-duplicate detection only
fires where a test copies a file on purpose.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

CIFAR_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10"

# Formats that store pixels exactly, so a decoded image can be compared with what was written.
LOSSLESS = (".png", ".bmp", ".tif", ".tiff")


# The quickest runs a sweep test can make: one epoch of the small MLP, in this process.
SWEEP_FAST = ["--plugin", "mlp", "--model", "mlp_small", "--epochs", "1", "--workers", "0", "--threads", "1",
              "--batch-size", "8"]  # fmt: skip


def error_line(result, codes=(1, 2)) -> str:
    """The one ``Error: ...`` line of a failed command, after checking that it failed cleanly:
    an expected exit code, no uncaught exception, no traceback."""
    assert result.exit_code in codes, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def random_image(rng: np.random.Generator, size=16, channels=3, low=0, high=256) -> np.ndarray:
    h, w = (size, size) if isinstance(size, int) else size
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(low, high, shape, dtype=np.uint8)


def write_image(path: Path, img: np.ndarray) -> Path:
    """Write ``img`` (BGR, as OpenCV expects) to ``path``; the suffix, in any case, picks the
    format (OpenCV itself only recognises lower-case suffixes)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if path.suffix.lower() == ".webp" else []  # 101 = lossless
    ok, buf = cv2.imencode(path.suffix.lower(), img, params)
    assert ok, f"could not encode {path}"
    buf.tofile(str(path))
    return path


def _make_folder(root, classes=None, size=16, ext=".png", seed=0, prefix="") -> Path:
    """``root/<class>/<prefix>NNNN<ext>`` for each class, ``classes[class]`` images each.
    ``ext`` may be one suffix or a list that is cycled through."""
    root = Path(root)
    classes = {"a": 6, "b": 6} if classes is None else classes
    exts = [ext] if isinstance(ext, str) else list(ext)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_image(root / name / f"{prefix}{i:04d}{exts[i % len(exts)]}", random_image(rng, size))
    return root


def _make_split_folder(root, splits=None, size=16, ext=".png", seed=0) -> Path:
    """``root/<split>/<class>/...`` from ``{"train": {"a": 8}, "test": {"a": 2}}``."""
    root = Path(root)
    splits = splits or {"train": {"a": 8, "b": 8}, "test": {"a": 2, "b": 2}}
    for k, (split, classes) in enumerate(splits.items()):
        _make_folder(root / split, classes, size=size, ext=ext, seed=seed * 100 + k)
    return root


def colour_classes(root: Path, per_class: int = 24, size: int = 16, seed: int = 0) -> Path:
    """Three classes a small model learns in a few steps: mostly red, green or blue noise."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("red", "green", "blue")):
        for i in range(per_class):
            img = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            img[:, :, 2 - c] += 120  # BGR on disk
            write_image(root / name / f"{i:03d}.png", img)
    return root


def cifar_rows(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _make_cifar10(root, per_batch=4, n_test=6, n_classes=10, seed=0) -> Path:
    """The CIFAR-10 python layout: data_batch_1..5, test_batch, batches.meta."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [("train", f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test", "test_batch", n_test)]
    for _, fname, n in names:
        _dump(
            root / fname,
            {
                b"batch_label": fname.encode(),
                b"data": cifar_rows(rng, n),
                b"labels": [int(v) for v in rng.integers(0, n_classes, n)],
                b"filenames": [f"{fname}_{i}.png".encode() for i in range(n)],
            },
        )
    _dump(
        root / "batches.meta",
        {
            b"label_names": [f"class{c}".encode() for c in range(n_classes)],
            b"num_cases_per_batch": per_batch,
            b"num_vis": 3072,
        },
    )
    return root


def _make_cifar100(root, n_train=12, n_test=5, n_fine=7, seed=0) -> Path:
    """The CIFAR-100 python layout: train, test, meta (fine and coarse labels)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for fname, n in (("train", n_train), ("test", n_test)):
        _dump(
            root / fname,
            {
                b"data": cifar_rows(rng, n),
                b"fine_labels": [int(v) for v in rng.integers(0, n_fine, n)],
                # a second label list, so that picking the wrong one shows
                b"coarse_labels": [0] * n,
            },
        )
    _dump(
        root / "meta",
        {b"fine_label_names": [f"fine{c}".encode() for c in range(n_fine)], b"coarse_label_names": [b"coarse0"]},
    )
    return root


@pytest.fixture
def make_folder():
    return _make_folder


@pytest.fixture
def make_split_folder():
    return _make_split_folder


@pytest.fixture
def make_cifar10():
    return _make_cifar10


@pytest.fixture
def make_cifar100():
    return _make_cifar100


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run ``augpipe ARGS...`` in tmp_path; returns click's Result."""
    from click.testing import CliRunner

    from augpipe.cli.main import main

    monkeypatch.chdir(tmp_path)

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    return run


def pytest_collection_modifyitems(config, items):
    """``cifar`` tests skip where ../shared's CIFAR-10 is absent, ``cuda`` tests where torch sees
    no CUDA device; each with its reason."""
    import torch

    skips = {}
    if not CIFAR_DIR.is_dir():
        skips["cifar"] = pytest.mark.skip(reason=f"{CIFAR_DIR} is absent")
    if not torch.cuda.is_available():
        skips["cuda"] = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


# -- trainer plugins and training (test_plugins, test_models, test_optim, test_callbacks,
#    test_train, test_train_cli) ---------------------------------------------------------------

# A trainer plugin written as a third party would write it, used by the training tests: a linear
# model that can turn its logits to NaN after a number of training steps (model "nan_after_N"),
# and that records the images it trains on, one list per epoch (a new list at each .train()).
PROBE_PLUGIN = """
import torch
from augpipe.hookspecs import Trainer, hookimpl

SEEN = []  # per epoch: a fingerprint of each training image, in the order the loop saw them


class Probe(torch.nn.Module):
    def __init__(self, num_classes, image_size, nan_after=None):
        super().__init__()
        self.lin = torch.nn.Linear(3 * image_size * image_size, num_classes)
        self.nan_after = nan_after
        self.steps = 0

    def train(self, mode=True):
        if mode:
            SEEN.append([])
        return super().train(mode)

    def forward(self, x):
        y = self.lin(x.flatten(1))
        if self.training:
            SEEN[-1].extend(round(v, 3) for v in x.flatten(1).sum(1).tolist())
            self.steps += 1
            if self.nan_after is not None and self.steps > self.nan_after:
                y = y * float("nan")
        return y


def build(*, model, num_classes, image_size, activation, dropout):
    nan_after = int(model.rsplit("_", 1)[1]) if model.startswith("nan_after_") else None
    return Probe(num_classes, image_size, nan_after)


@hookimpl
def augpipe_register_trainers(register):
    register(Trainer(name="probe", build_model=build, models=["linear", "nan_after_0", "nan_after_4"],
                     default_model="linear", defaults={"optimizer": "sgd", "lr": 0.01, "scheduler": "none"},
                     description="a linear probe for tests"))
"""


@pytest.fixture
def tiny_data(tmp_path):
    """3 classes x 12 images of 16 px (10 / 1 / 1 per class in train / val / test)."""
    return _make_folder(tmp_path / "data", {"a": 12, "b": 12, "c": 12}, size=16)


@pytest.fixture
def fresh_plugins():
    """The plugin manager loaded anew for the test and forgotten after it, so that whatever a
    test installs or registers never reaches the next test. Yields ``get_plugins``."""
    from augpipe.plugin_manager import get_plugins, reset_plugins

    reset_plugins()
    yield get_plugins
    reset_plugins()


@pytest.fixture
def plugin_package(tmp_path, monkeypatch, fresh_plugins):
    """Install a plugin package as pip leaves one: ``install(name, version, entry_points=
    {plugin: module}, modules={module: source})`` writes ``site/<name>-<version>.dist-info``
    (METADATA, entry_points.txt) and the modules, puts ``site`` on sys.path and resets the
    plugins. The modules are dropped from sys.modules afterwards."""
    import importlib
    import sys
    import textwrap

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    written = []

    def install(name, version="1.0", entry_points=None, modules=None):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = ["[augpipe]"] + [f"{k} = {v}" for k, v in (entry_points or {}).items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in (modules or {}).items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            written.append(module)
        importlib.invalidate_caches()
        from augpipe.plugin_manager import reset_plugins

        reset_plugins()
        return site

    yield install
    for module in written:
        sys.modules.pop(module, None)


@pytest.fixture
def probe_plugins(fresh_plugins):
    """A Plugins manager holding the built-ins and the probe trainer (PROBE_PLUGIN), also
    installed as the process-wide one (for the CLI); yields (plugins, probe module)."""
    import types

    module = types.ModuleType("augpipe_probe_plugin")
    exec(compile(PROBE_PLUGIN, "augpipe_probe_plugin", "exec"), module.__dict__)
    plugins = fresh_plugins()
    plugins.register(module, name="probe", package="augpipe-tests", version="0")
    yield plugins, module


@pytest.fixture
def stop_after_step(monkeypatch):
    """``with stop_after_step(n):`` a training run started inside is stopped as by a SIGTERM
    after its n-th step (the loop asks for a stop after every step), and saves its unfinished
    epoch for a resume: the interrupted-run tests' signal."""
    import contextlib

    from augpipe.training.signals import StopSignals

    @contextlib.contextmanager
    def stopped(step: int = 2):
        calls = {"n": 0}

        def requested(self):
            calls["n"] += 1
            if calls["n"] == step:
                self.received = "SIGTERM"
            return self.received is not None

        with monkeypatch.context() as m:
            m.setattr(StopSignals, "requested", requested)
            yield

    return stopped


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, the count put back afterwards (a training run sets it for
    the whole process). Tiny models gain nothing from more threads, and lose much when other
    processes share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the image index (test_index) -----------------------------------------------------------------
@pytest.fixture(autouse=True)
def private_image_index(tmp_path_factory, monkeypatch):
    """Every test gets an image index of its own (AUGPIPE_CACHE_DIR), never the user's: one test's
    scan must not decide what another one decodes. Yields the folder."""
    folder = tmp_path_factory.mktemp("augpipe-cache")
    monkeypatch.setenv("AUGPIPE_CACHE_DIR", str(folder))
    yield folder
