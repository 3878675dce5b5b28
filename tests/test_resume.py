"""Kill a training process at chosen points, resume it, and compare with a run that was never
interrupted: on a CPU with the same seed the weights and metrics must be equal bit for bit.

Each run is a real ``augpipe train`` process started by ``DRIVER``, which kills itself at a
precise point named in the environment (a signal from a step callback, or SIGKILL around a
checkpoint write), so the kill points are exact and the test repeats."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import _make_folder

pytestmark = pytest.mark.slow

DRIVER = textwrap.dedent("""
    import os, signal, sys

    MODE = os.environ.get("KILL", "")
    # "save:N" kills after last.pt of epoch N is complete; "tmp:N" between writing its temporary
    # file and renaming it (the file a SIGKILL leaves behind); "SIGNAL:E:S" sends SIGNAL to
    # itself after step S of epoch E (S = 0: in an epoch-end callback, before the checkpoint).
    if MODE.startswith(("save:", "tmp:")):
        where, epoch = MODE.split(":")
        import torch
        original = torch.save

        def save(state, f, *a, **k):
            original(state, f, *a, **k)
            last = os.path.basename(str(f)).startswith(".last.pt")
            if last and where == "tmp" and state["epoch"] == int(epoch) and state["in_epoch"] is None:
                os.kill(os.getpid(), signal.SIGKILL)
        torch.save = save
        real_replace = os.replace

        def replace(src, dst):
            real_replace(src, dst)
            if where == "save" and os.path.basename(str(dst)) == "last.pt":
                state = torch.load(dst, weights_only=True)
                if state["epoch"] == int(epoch) and state["in_epoch"] is None:
                    os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace

    from augpipe.hookspecs import hookimpl
    from augpipe.training.callbacks import Callback

    class Killer(Callback):
        def __init__(self):
            self.sig = None
            if MODE and not MODE.startswith(("save:", "tmp:")):
                name, e, s = MODE.split(":")
                self.sig, self.epoch, self.step = getattr(signal, name), int(e), int(s)

        def on_train_batch_end(self, epoch, step, loss):
            if self.sig and (epoch, step) == (self.epoch, self.step):
                os.kill(os.getpid(), self.sig)

        def on_epoch_end(self, epoch, metrics, model=None):
            if self.sig and (epoch, 0) == (self.epoch, self.step):
                os.kill(os.getpid(), self.sig)
            return False

    class KillerPlugin:
        @hookimpl
        def augpipe_register_callbacks(self, register):
            register("killer", lambda run_dir, config: Killer())

    from augpipe.cli.main import main
    from augpipe.plugin_manager import get_plugins

    get_plugins().register(KillerPlugin(), name="killer")
    main(sys.argv[1:])
""")

SETTINGS = [
    "--plugin",
    "cnn",
    "--model",
    "cnn_small",
    "--dropout",
    "0.3",
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
    "0",
    "--optimizer",
    "momentum",
    "--scheduler",
    "cosine",
    "--aug",
    "standard",
    "--seed",
    "3",
    "--callbacks",
    "killer",
]
EXACT_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


def augpipe(tmp_path, *args, kill=""):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "KILL": kill, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run(
        [sys.executable, str(driver), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return [{k: row[k] for k in EXACT_COLUMNS} for row in csv.DictReader(fh)]


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def assert_same_run(run: Path, reference: Path):
    assert rows(run) == rows(reference)
    for name in ("last.pt", "best.pt"):
        got, want = weights(run / name), weights(reference / name)
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), f"{name}: {key} differs"
    got, want = json.loads((run / "summary.json").read_text()), json.loads((reference / "summary.json").read_text())
    for key in ("test_acc", "test_loss", "best_epoch", "epochs_run", "stop_reason", "confusion"):
        assert got[key] == want[key], key
    assert not got["interrupted"] and not got["failed"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _make_folder(tmp_path_factory.mktemp("resume") / "data", {"a": 16, "b": 16, "c": 16}, size=16)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("reference")
    done = augpipe(tmp, "train", "--data", str(data), "--out", str(tmp / "runs"), "--name", "ref", *SETTINGS)
    assert done.returncode == 0, done.stderr
    return tmp / "runs" / "ref"


def test_a_run_killed_again_and_again_resumes_to_the_same_weights_and_metrics(tmp_path, data, reference):
    """One run, SIGKILLed at four points (each resumed run is killed again at the next), then
    resumed to its end."""
    run = tmp_path / "runs" / "r"
    kills = [
        ("save:1", "right after epoch 1's checkpoint: nothing is redone"),
        ("SIGKILL:2:2", "mid-epoch: epoch 2 is redone from its start"),
        ("SIGKILL:2:0", "after epoch 2's metrics row, before its checkpoint: epoch 2 is redone, its row replaced"),
        ("tmp:2", "inside the write of epoch 2's last.pt: an orphan temporary file, the old last.pt intact"),
    ]
    args = ["train", "--data", str(data), "--out", str(tmp_path / "runs"), "--name", "r", *SETTINGS]
    for kill, what in kills:
        killed = augpipe(tmp_path, *args, kill=kill)
        assert killed.returncode == -9, f"{what}: {killed.stderr}"
        assert (run / "last.pt").is_file() and not (run / "summary.json").exists(), what
        assert bool(list(run.glob(".*.tmp*"))) == kill.startswith("tmp:"), what
        args = ["train", "--resume", str(run)]
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["in_epoch"] is None  # the tmp:2 kill kept epoch 1's
    assert len(rows(run)) == 2  # epoch 2's row was written before the kill; resuming drops it
    resumed = augpipe(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run.glob(".*.tmp*"))
    assert_same_run(run, reference)


def test_signals_finish_the_step_save_and_the_run_resumes_exactly(tmp_path, data, reference):
    """SIGINT in epoch 1 (no epoch finished yet), then SIGTERM in the resumed run's epoch 2."""
    run = tmp_path / "runs" / "r"
    args = ["train", "--data", str(data), "--out", str(tmp_path / "runs"), "--name", "r", *SETTINGS]
    for signal_name, at, code in (("SIGINT", "1:1", 130), ("SIGTERM", "2:1", 143)):
        stopped = augpipe(tmp_path, *args, kill=f"{signal_name}:{at}")
        assert stopped.returncode == code, stopped.stderr
        assert f"augpipe train --resume {run}" in stopped.stderr
        assert "Traceback" not in stopped.stderr
        summary = json.loads((run / "summary.json").read_text())
        assert summary["interrupted"] == signal_name and summary["resumable"] and not summary["failed"]
        epoch, step = map(int, at.split(":"))
        state = torch.load(run / "last.pt", weights_only=True)
        assert state["epoch"] == epoch - 1 and state["in_epoch"]["step"] == step
        assert (run / "curves.png").is_file() == (epoch > 1)
        assert len(rows(run)) == epoch - 1
        args = ["train", "--resume", str(run)]
    resumed = augpipe(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run, reference)


def test_device_augmentation_and_a_loader_worker_resume_exactly_too(tmp_path, data):
    settings = [*SETTINGS, "--aug-device", "gpu", "--workers", "1"]
    ref = augpipe(tmp_path, "train", "--data", str(data), "--out", str(tmp_path / "runs"), "--name", "ref", *settings)
    assert ref.returncode == 0, ref.stderr
    stopped = augpipe(
        tmp_path,
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "r",
        *settings,
        kill="SIGTERM:2:2",
    )
    assert stopped.returncode == 143, stopped.stderr
    resumed = augpipe(tmp_path, "train", "--resume", str(tmp_path / "runs" / "r"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "runs" / "r", tmp_path / "runs" / "ref")


def test_resume_refuses_what_it_can_not_continue(tmp_path, cli, reference):
    from conftest import error_line

    assert "nothing to resume" in error_line(cli("train", "--resume", reference))
    assert "--lr can not be changed" in error_line(cli("train", "--resume", reference, "--lr", "0.5"))
    assert "no such run directory" in error_line(cli("train", "--resume", tmp_path / "nope"))
    started = tmp_path / "started"
    started.mkdir()
    assert "no last.pt to resume from" in error_line(cli("train", "--resume", started))
