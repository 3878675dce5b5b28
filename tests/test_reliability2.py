"""Issue 23, reliability second round: signals to a whole process group, a full disk, the bounds
of every number, and the data checks. Signals are sent by real processes to real process
groups; a full disk is an injected OSError (the tests run as root, whom chmod does not stop)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import _make_folder, error_line

# Started in a session of its own, so that its process group holds it and its children only.
# KILL="step:SIGNAL:E:S": after step S of epoch E the main process signals its whole group (its
# loader workers get the signal at the same moment, as under `timeout` or Slurm);
# KILL="scan:SIGNAL": the first image a scan process decodes signals the group.
DRIVER = textwrap.dedent("""
    import os, signal, sys

    MODE = os.environ.get("KILL", "").split(":")
    if MODE[0] == "scan":
        import augpipe.data.images as images
        original = images._scan_one
        sent = []

        def scan_one(store, i, budget):
            if not sent:
                sent.append(1)
                os.killpg(0, getattr(signal, MODE[1]))
            return original(store, i, budget)
        images._scan_one = scan_one

    from augpipe.hookspecs import hookimpl
    from augpipe.training.callbacks import Callback

    class GroupKiller(Callback):
        def on_train_batch_end(self, epoch, step, loss):
            if MODE[0] == "step" and (epoch, step) == (int(MODE[2]), int(MODE[3])):
                os.killpg(0, getattr(signal, MODE[1]))

    class Plugin:
        @hookimpl
        def augpipe_register_callbacks(self, register):
            register("group-killer", lambda run_dir, config: GroupKiller())

    from augpipe.cli.main import main
    from augpipe.plugin_manager import get_plugins

    get_plugins().register(Plugin(), name="group-killer")
    main(sys.argv[1:])
""")

SETTINGS = [
    "--plugin",
    "cnn",
    "--model",
    "cnn_small",
    "--epochs",
    "3",
    "--batch-size",
    "8",
    "--val",
    "0.25",
    "--test",
    "0.25",
    "--threads",
    "1",
    "--workers",
    "1",
    "--optimizer",
    "momentum",
    "--scheduler",
    "cosine",
    "--aug",
    "standard",
    "--seed",
    "5",
    "--callbacks",
    "group-killer",
]


def driven(tmp_path, *args, kill=""):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "KILL": kill, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run(
        [sys.executable, str(driver), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        start_new_session=True,
    )


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


# -- 1. signals to the process group ------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(data, the run directory of the run never interrupted)."""
    tmp = tmp_path_factory.mktemp("group")
    data = _make_folder(tmp / "data", {"a": 16, "b": 16, "c": 16}, size=16)
    ref = driven(tmp, "train", "--data", str(data), "--out", str(tmp / "runs"), "--name", "ref", *SETTINGS)
    assert ref.returncode == 0, ref.stderr
    return data, tmp / "runs" / "ref"


@pytest.mark.slow
@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_to_the_group_ends_like_one_to_the_main_process_and_resumes_exactly(
    tmp_path, uninterrupted, name, code
):
    data, reference = uninterrupted
    runs = tmp_path / "runs"
    args = ["train", "--data", str(data), "--out", str(runs), "--name", "r", *SETTINGS]
    stopped = driven(tmp_path, *args, kill=f"step:{name}:2:1")
    assert stopped.returncode == code, stopped.stderr
    assert "Traceback" not in stopped.stderr and "killed by signal" not in stopped.stderr
    s = summary(runs / "r")
    assert s["interrupted"] == name and s["resumable"] is True and not s["failed"]
    resumed = driven(tmp_path, "train", "--resume", str(runs / "r"))
    assert resumed.returncode == 0, resumed.stderr
    got, want = summary(runs / "r"), summary(reference)
    for key in (
        "test_acc",
        "test_loss",
        "best_epoch",
        "best_value",
        "epochs_run",
        "stop_reason",
        "confusion",
        "per_class_acc",
    ):
        assert got[key] == want[key], key
    assert not got["interrupted"] and not got["resumable"]


@pytest.mark.slow
@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_to_the_group_during_a_first_scan_prints_one_line(tmp_path, name, code):
    import augpipe.data.images as images

    data = _make_folder(
        tmp_path / "data", {"a": images.PROCESS_SCAN_MIN // 2 + 4, "b": images.PROCESS_SCAN_MIN // 2}, size=8
    )
    stopped = driven(
        tmp_path, "train", "--data", str(data), "--out", str(tmp_path / "runs"), *SETTINGS, kill=f"scan:{name}"
    )
    assert stopped.returncode == code, stopped.stderr
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr, stopped.stderr
    assert f"interrupted by {name}" in stopped.stderr


GROUP_STOP = """
import os, signal
from augpipe.hookspecs import hookimpl
from augpipe.training.callbacks import Callback

class GroupStop(Callback):  # plugins' callbacks run on rank 0
    def on_train_batch_end(self, epoch, step, loss):
        if os.environ.get("KILL") and (epoch, step) == (2, 1):
            os.killpg(0, signal.SIGTERM)

@hookimpl
def augpipe_register_callbacks(register):
    register("group_stop", lambda run_dir, config: GroupStop())
"""


@pytest.mark.slow
def test_a_signal_to_the_group_of_a_distributed_run_ends_it_resumably_and_it_resumes_exactly(tmp_path, plugin_package):
    """--devices 2: the launcher, both ranks and their loader workers get SIGTERM at once; the
    launcher passes it on to the ranks, which count the second copy as the same request."""
    from conftest import colour_classes

    site = plugin_package(
        "groupstop", entry_points={"groupstop": "groupstop_mod"}, modules={"groupstop_mod": GROUP_STOP}
    )
    data = colour_classes(tmp_path / "data", per_class=12)
    runs = tmp_path / "runs"
    settings = [
        "--plugin",
        "mlp",
        "--model",
        "mlp_small",
        "--aug",
        "none",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--scheduler",
        "cosine",
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--workers",
        "1",
        "--threads",
        "1",
        "--seed",
        "3",
        "--val",
        "0.25",
        "--test",
        "0.25",
        "--device",
        "cpu",
        "--devices",
        "2",
        "--callbacks",
        "group_stop",
    ]

    def augpipe(*args, kill=False):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).parent)]),
            "KILL": "1" if kill else "",
        }
        return subprocess.run(
            [sys.executable, "-m", "augpipe", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=600,
            start_new_session=True,
        )

    ref = augpipe("train", "--data", str(data), "--out", str(runs), "--name", "ref", *settings)
    assert ref.returncode == 0, ref.stderr[-3000:]
    stopped = augpipe("train", "--data", str(data), "--out", str(runs), "--name", "r", *settings, kill=True)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "death signal" not in stopped.stderr, stopped.stderr[-3000:]
    s = summary(runs / "r")
    assert s["interrupted"] == "SIGTERM" and s["resumable"] and not s["failed"]
    resumed = augpipe("train", "--resume", str(runs / "r"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, want = summary(runs / "r"), summary(runs / "ref")
    for key in ("test_acc", "test_loss", "best_epoch", "epochs_run", "stop_reason", "confusion"):
        assert got[key] == want[key], key


def _dispositions(*_):
    return [(signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))]


def test_scan_processes_ignore_ctrl_c_and_do_not_inherit_trainings_handler(tmp_path, monkeypatch):
    """The race of the issue (a pool's shutdown SIGTERMs a scan process that runs training's
    handler) can not be timed in a test; what decides it can be read: each scan process's
    handlers, while training's StopSignals is active in the parent."""
    import augpipe.data.images as images
    from augpipe.data.datasets import open_dataset
    from augpipe.training.signals import StopSignals

    data = _make_folder(tmp_path / "data", {"a": 6, "b": 6}, size=8)
    monkeypatch.setattr(images, "PROCESS_SCAN_MIN", 4)
    monkeypatch.setattr(images, "SCAN_BLOCK", 3)
    monkeypatch.setattr(images, "_scan_one", lambda store, i, budget: _dispositions())
    store = images.ImageStore(open_dataset(str(data)))
    with StopSignals():
        seen = [r for _, results in images._scan(store, np.arange(12), 2, None, False) for r in results]
    assert seen and all(r == [(signal.SIG_IGN, signal.SIG_DFL)] for r in seen), seen


def test_loader_workers_ignore_the_stop_signals(tmp_path):
    """Loader workers leave SIGINT and SIGTERM to the main process (which stops at a step boundary)."""
    import torch

    from augpipe.data.loader import EpochLoader
    from augpipe.training.signals import StopSignals

    class Probe(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitems__(self, positions):
            sigint, sigterm = _dispositions()[0]
            return [
                (np.zeros((2, 2, 3), np.uint8), int(sigint == signal.SIG_IGN) + 2 * int(sigterm == signal.SIG_IGN), 0)
                for _ in positions
            ]

        def reseed(self, seed):
            pass

    with StopSignals() as signals, signals.deferred():
        batches = list(EpochLoader(Probe(), batch_size=2, shuffle=False, num_workers=1, seed=0))
    assert batches[0][1].tolist() == [3, 3]


# -- 2. a full disk ------------------------------------------------------------------------------
ENFORCE_FAIL = "[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4238"


@pytest.fixture
def broken_folder(monkeypatch):
    """``break_(folder, errno)``: the file system of ``folder`` reports itself full (ENOSPC),
    read-only (EROFS), or refuses new files (any other errno), as the kernel would; root's
    permissions make the real ones hard to produce in a test."""
    real_statvfs, real_open = os.statvfs, os.open
    broken: dict[Path, int] = {}

    def which(path) -> int | None:
        path = Path(path).resolve()
        return next((code for folder, code in broken.items() if path == folder or folder in path.parents), None)

    def statvfs(path):
        st, code = real_statvfs(path), which(path)
        if code not in (errno.ENOSPC, errno.EROFS):
            return st
        values = list(st)
        if code == errno.ENOSPC:
            values[3] = values[4] = 0  # f_bfree, f_bavail
        else:
            values[8] |= os.ST_RDONLY  # f_flag
        return os.statvfs_result(values)

    def open_(path, flags, *args, **kwargs):
        code = which(path)
        if code is not None and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    def break_(folder, code=errno.ENOSPC):
        broken[Path(folder).resolve()] = code

    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.setattr(os, "open", open_)
    return break_


@pytest.mark.parametrize(
    "code, reason",
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "not writable"),
    ],
)
def test_every_write_error_is_one_line_naming_the_file_and_the_reason(tmp_path, monkeypatch, code, reason):
    from augpipe.errors import WriteError
    from augpipe.files import write_atomic

    (tmp_path / "kept.json").write_text("old")

    def fail(self, *a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "write_text", fail)
    with pytest.raises(WriteError) as caught:
        write_atomic(tmp_path / "kept.json", "new")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'kept.json'}: can not be written (") and reason in message
    assert "\n" not in message
    monkeypatch.undo()
    assert (tmp_path / "kept.json").read_text() == "old" and not list(tmp_path.glob(".*tmp*"))


def test_torch_saves_hidden_disk_full_error_is_found_and_named(tmp_path, monkeypatch, broken_folder):
    import torch

    from augpipe.errors import WriteError
    from augpipe.files import save_checkpoint

    def save(*a, **k):
        raise RuntimeError(ENFORCE_FAIL)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(RuntimeError, match="enforce fail"):  # room on the disk: not called a full disk
        save_checkpoint({"x": 1}, tmp_path / "last.pt")
    broken_folder(tmp_path, errno.ENOSPC)
    with pytest.raises(WriteError, match=r"last\.pt: can not be written \(no space left on device\)"):
        save_checkpoint({"x": 1}, tmp_path / "last.pt")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_full_disk_during_training_is_one_line_keeps_the_checkpoint_and_resumes(
    tmp_path, cli, monkeypatch, broken_folder
):
    import torch

    data = _make_folder(tmp_path / "data", {"a": 10, "b": 10}, size=16)
    real_save = torch.save
    run = tmp_path / "runs" / "r"

    def save(state, f, *a, **k):
        if state["epoch"] == 2:  # the disk fills during epoch 2's checkpoint
            broken_folder(run, errno.ENOSPC)
            raise RuntimeError(ENFORCE_FAIL)
        return real_save(state, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    args = [
        "--plugin",
        "cnn",
        "--model",
        "cnn_small",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--val",
        "0.2",
        "--test",
        "0.2",
        "--threads",
        "1",
        "--workers",
        "0",
        "--seed",
        "1",
    ]
    line = error_line(cli("train", "--data", data, "--out", tmp_path / "runs", "--name", "r", *args))
    assert f"{run / 'last.pt'}" in line and "no space left on device" in line and "--resume" in line
    s = summary(run)
    assert s["failed"] and s["resumable"] and s["epochs_run"] == 2
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.undo()
    resumed = cli("train", "--resume", run)
    assert resumed.exit_code == 0, resumed.output
    assert summary(run)["epochs_run"] == 3 and not summary(run)["failed"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    import augpipe

    root = tmp_path_factory.mktemp("finished")
    data = _make_folder(root / "data", {"a": 8, "b": 8}, size=32)
    return augpipe.train(
        data=str(data),
        out=str(root / "runs"),
        name="run",
        epochs=1,
        val=0.25,
        test=0.25,
        threads=1,
        workers=0,
        aug="light",
        batch_size=8,
        plugin="cnn",
        model="cnn_small",
    ).run_dir


@pytest.mark.parametrize(
    "code, reason",
    [(errno.EROFS, "read-only file system"), (errno.EACCES, "not writable"), (errno.ENOSPC, "no space left on device")],
)
def test_export_to_a_folder_that_takes_no_file_says_so(finished_run, cli, tmp_path, broken_folder, code, reason):
    out = tmp_path / "ro"
    out.mkdir()
    broken_folder(out, code)
    for fmt in ("onnx", "torchscript"):
        line = error_line(cli("export", finished_run, "--format", fmt, "--out", out / "m.x"))
        assert reason in line and str(out) in line and "not supported" not in line
    assert not list(out.iterdir())


def test_a_writer_error_in_a_folder_that_went_read_only_is_not_called_unsupported(tmp_path, broken_folder):
    from augpipe.errors import ConfigError, WriteError
    from augpipe.files import atomic_path

    broken_folder(tmp_path, errno.EROFS)
    with pytest.raises(WriteError, match="read-only file system"):
        with atomic_path(tmp_path / "model.onnx"):
            raise ConfigError("the model of run can not be exported to ONNX: 'x' is not supported")


def test_a_full_disk_while_shards_are_written_is_one_line_and_leaves_no_shard(tmp_path, cli, monkeypatch):
    import augpipe.data.shards as shards

    data = _make_folder(tmp_path / "data", {"a": 4, "b": 4}, size=8)
    real_open = open

    class FillsUp:
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def write(self, b):
            self.written += len(b)
            if self.written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(b)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(
        shards, "open", lambda name, mode="r", *a, **k: FillsUp(real_open(name, mode, *a, **k)), raising=False
    )
    line = error_line(cli("shard", data, "--out", tmp_path / "shards"))
    assert "the shards can not be written (no space left on device)" in line
    assert not [p for p in (tmp_path / "shards").iterdir() if p.name != ".lock"]


# -- 3. bounds -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--workers", "1000000", "--workers must be at most"),
        ("--threads", "1000000", "--threads must be at most"),
        ("--epochs", "1" * 400, "--epochs must be at most 1,000,000, got a 400-digit number"),
        ("--epochs", "1000001", "--epochs must be at most 1,000,000"),
        ("--batch-size", str(2**63), "--batch-size must be at most 1,048,576"),
        ("--batch-size", str(2**64 + 1), "--batch-size must be at most 1,048,576"),
        ("--image-size", "100000", "--image-size must be at most 8,192"),
        ("--max-minutes", "1e30", "--max-minutes must be at most"),
        ("--lr", "1e400", "--lr must be a finite number"),
    ],
)
def test_every_number_from_a_flag_has_a_range(cli, tmp_path, flag, value, expected):
    line = error_line(cli("train", "--data", tmp_path, flag, value))
    assert expected in line and len(line) < 200


@pytest.mark.parametrize(
    "args, expected",
    [
        (["preview", "--variants", "9" * 30], "--variants at most 50"),
        (["preview", "--n", "100000"], "--n must be at most 200"),
        (["lr-find", "--iterations", "9" * 30], "--iterations must be at most 1,000,000, got a 30-digit number"),
    ],
)
def test_the_numbers_of_the_other_commands_have_a_range_too(cli, tmp_path, args, expected):
    line = error_line(cli(*args, "--out", tmp_path / "x.png" if args[0] == "preview" else tmp_path / "lr"))
    assert expected in line


def test_the_worker_limit_names_the_cores(cli, tmp_path):
    from augpipe.config import WORKERS_PER_CORE, cores, worker_limit

    line = error_line(cli("train", "--data", tmp_path, "--workers", str(worker_limit() + 1)))
    assert f"at most {worker_limit()} on this machine ({WORKERS_PER_CORE} per CPU core, {cores()} cores)" in line


@pytest.mark.parametrize(
    "text, expected",
    [
        ("epochs: " + "9" * 400 + "\n", "--epochs must be at most 1,000,000, got a 400-digit number"),
        ("epochs: " + "9" * 5000 + "\n", "a value YAML can not read"),
        ("workers: 1000000\n", "--workers must be at most"),
        ("lr: " + "9" * 400 + "\n", "--lr must be a finite number"),
        ("milestones: [0.5, 1e9]\n", "--milestones must be at most 1,000,000"),
        ("epochs: 5\nlr: 0.1\nepochs: 50\n", "the key 'epochs' is given twice, on lines 1 and 3"),
        ("aug: {hflip: 0.5, hflip: 0.1}\n", "the key 'hflip' is given twice"),
    ],
)
def test_every_number_from_a_config_file_has_a_range_and_no_key_is_given_twice(cli, tmp_path, text, expected):
    (tmp_path / "c.yaml").write_text(text)
    line = error_line(cli("train", "--data", tmp_path, "--config", tmp_path / "c.yaml"))
    assert expected in line and len(line) < 300


def test_yaml_keeps_safe_loads_meaning_and_merge_keys_may_still_be_overridden():
    import yaml

    from augpipe.files import parse_yaml

    text = "base: &b {lr: 0.1, epochs: 3}\nrun:\n  <<: *b\n  epochs: 5\nflags: [1, 1]\nwhen: 2024-01-01\n"
    assert parse_yaml(text) == yaml.safe_load(text)
    assert parse_yaml(text)["run"] == {"lr": 0.1, "epochs": 5}
    from augpipe.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_yaml("!!python/object/apply:os.system ['true']")


def test_a_batch_larger_than_the_data_is_said(tmp_path, caplog):
    import logging

    import augpipe

    caplog.set_level(logging.WARNING, logger="augpipe")
    data = _make_folder(tmp_path / "data", {"a": 6, "b": 6}, size=16)
    result = augpipe.train(
        data=str(data),
        out=str(tmp_path / "runs"),
        epochs=1,
        batch_size=1000,
        val=0.2,
        test=0.2,
        threads=1,
        workers=0,
        plugin="cnn",
        model="cnn_small",
        aug="light",
    )
    assert not result.failed
    assert any("--batch-size 1000 is more than the" in r.getMessage() for r in caplog.records)


# -- 4. the data checks --------------------------------------------------------------------------
def test_exact_duplicates_are_skipped_keeping_the_first_with_a_warning_and_a_count(tmp_path, caplog):
    import logging
    import shutil

    from augpipe.data.prepare import prepare_data
    from augpipe.data.split import describe_duplicates

    caplog.set_level(logging.WARNING, logger="augpipe")
    root = _make_folder(tmp_path / "data", {"a": 6, "b": 6}, size=8)
    shutil.copy(root / "a/0001.png", root / "a/0009.png")
    shutil.copy(root / "a/0001.png", root / "a/0010.png")
    shutil.copy(root / "b/0002.png", root / "b/0011.png")
    data = prepare_data(root, val=0.2, test=0.2, seed=0)
    kept = [str(p) for p in data.source.paths]
    assert len(data.source) == 12
    assert str(root / "a/0001.png") in kept and str(root / "b/0002.png") in kept
    assert not any(k.endswith(("0009.png", "0010.png", "0011.png")) for k in kept)
    assert data.duplicates["skipped"] == 3 and data.duplicates["groups"] == 2
    assert data.duplicates["label_conflict_groups"] == 0
    assert "3 exact copies skipped" in describe_duplicates(data.duplicates)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 3 exact duplicate image(s)" in warned and "label conflict" not in warned


def test_strict_makes_a_duplicate_an_error_as_an_unreadable_image(tmp_path, cli):
    import shutil

    root = _make_folder(tmp_path / "data", {"a": 4, "b": 4}, size=8)
    shutil.copy(root / "a/0001.png", root / "b/copy.png")
    line = error_line(cli("split", root, "--strict", "--out", tmp_path / "m.csv"))
    assert "b/copy.png has the same pixels as" in line and "a/0001.png but another label ('b', not 'a')" in line
    assert not (tmp_path / "m.csv").exists()


def test_a_label_conflict_names_the_files_and_says_the_labels_differ(tmp_path, caplog, cli):
    import logging
    import shutil

    from augpipe.data.prepare import prepare_data

    caplog.set_level(logging.WARNING, logger="augpipe")
    root = _make_folder(tmp_path / "data", {"a": 6, "b": 6}, size=8)
    shutil.copy(root / "a/0003.png", root / "b/copy.png")
    data = prepare_data(root, val=0.2, test=0.2, seed=0)
    conflict = data.duplicates["label_conflicts"][0]
    assert conflict == {"files": [str(root / "a/0003.png"), str(root / "b/copy.png")], "classes": ["a", "b"]}
    assert str(root / "b/copy.png") not in [str(p) for p in data.source.paths]
    warning = next(r.getMessage() for r in caplog.records if "label conflict" in r.getMessage())
    assert "a/0003.png" in warning and "b/copy.png" in warning and "labels differ" in warning
    out = cli("split", root, "--out", tmp_path / "m.csv")
    assert out.exit_code == 0 and "1 label conflict(s)" in out.output


@pytest.mark.slow
def test_resume_refuses_data_whose_pixels_changed_in_place(tmp_path, cli):
    from conftest import random_image, write_image

    data = _make_folder(tmp_path / "data", {"a": 12, "b": 12}, size=16)
    runs = tmp_path / "runs"
    stopped = driven(
        tmp_path, "train", "--data", str(data), "--out", str(runs), "--name", "r", *SETTINGS, kill="step:SIGTERM:1:1"
    )
    assert stopped.returncode == 143, stopped.stderr
    write_image(data / "a" / "0004.png", random_image(np.random.default_rng(99), 16))  # same name, new pixels
    line = error_line(cli("train", "--resume", runs / "r"))
    assert "the pixels of images the run started with have changed" in line


def test_a_missing_file_says_no_such_file(tmp_path, finished_run):
    import augpipe
    from augpipe.data.datasets import open_dataset
    from augpipe.data.images import ImageStore
    from augpipe.errors import DataError

    root = _make_folder(tmp_path / "data", {"a": 2, "b": 2}, size=8)
    store = ImageStore(open_dataset(root))
    (root / "a" / "0001.png").unlink()  # after the data set was listed, as during a long run
    with pytest.raises(DataError, match=r"a/0001\.png: no such file"):
        store[1]
    with pytest.raises(DataError, match=r"0001\.png: no such file$"):
        augpipe.load(finished_run).logits([str(root / "a" / "0001.png")])


def test_a_tiff_with_alpha_keeps_its_colours_as_png_does(tmp_path):
    from PIL import Image

    from augpipe.data.images import read_image

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 50, 120, 128
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.tif")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "g.tif")
    tif, png = read_image(tmp_path / "x.tif")[0], read_image(tmp_path / "x.png")[0]
    assert tif[1, 1].tolist() == [200, 50, 120]
    assert np.array_equal(tif, png)
    assert read_image(tmp_path / "g.tif")[0][1, 1].tolist() == [200, 200, 200]


def test_a_csv_manifest_may_name_files_outside_its_folder_and_says_so(tmp_path, caplog):
    """The decision (docs/reliability.md): allowed, relative to the manifest or absolute, and
    said in one line; the files are read, nothing else is done with them."""
    import logging

    from augpipe.data.datasets import open_dataset

    caplog.set_level(logging.INFO, logger="augpipe")
    images = _make_folder(tmp_path / "images", {"a": 2, "b": 2}, size=8)
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text(
        f"path,label\n../images/a/0000.png,a\n{images / 'a/0001.png'},a\n"
        f"../images/b/0000.png,b\n../images/b/0001.png,b\n"
    )
    src = open_dataset(manifest)
    assert len(src) == 4 and src.load(1).shape == (8, 8, 3)
    assert any(
        "names 4 file(s) outside its folder, first: ../images/a/0000.png" in r.getMessage() for r in caplog.records
    )


@pytest.mark.slow
def test_a_summary_of_many_classes_keeps_the_confusion_matrix_in_a_file_of_its_own(tmp_path):
    import csv

    import augpipe
    from augpipe.training.run import CONFUSION_FILE, INLINE_CONFUSION_CLASSES

    n = INLINE_CONFUSION_CLASSES + 2
    data = _make_folder(tmp_path / "data", {f"c{k:03d}": 3 for k in range(n)}, size=8)
    result = augpipe.train(
        data=str(data),
        out=str(tmp_path / "runs"),
        epochs=1,
        val=0,
        test=0.34,
        threads=1,
        workers=0,
        plugin="cnn",
        model="cnn_small",
        aug="light",
        batch_size=32,
        image_size=32,
    )
    s = summary(result.run_dir)
    assert s["confusion"] is None and s["confusion_file"] == CONFUSION_FILE and len(s["per_class_acc"]) == n
    with open(result.run_dir / CONFUSION_FILE, newline="") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == n + 1 and all(len(r) == n + 1 for r in rows)
    assert sum(int(v) for r in rows[1:] for v in r[1:]) == s["test_images"]
