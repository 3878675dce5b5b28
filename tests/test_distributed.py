"""Training in several processes with torch.distributed (gloo on the CPU): launched by
``--devices N`` and by torchrun, one run directory, the same training as one process with the
same global batch, checkpoints that a single process loads, and ranks that die."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import colour_classes, error_line

from augpipe.training.callbacks import read_metrics
from augpipe.training.run import evaluate as run_evaluate
from augpipe.training.run import train as run_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# An MLP without batch norm or dropout, no augmentation: 2 processes of batch 8 average their
# gradients into exactly the gradient of one process with batch 16 over the same 16 images.
# Processes on the CPU (gloo), also where there is a GPU: what is compared is exact there.
EXACT = dict(
    plugin="mlp",
    model="mlp_small",
    aug="none",
    optimizer="sgd",
    lr=0.05,
    scheduler="none",
    weight_decay=0.0,
    epochs=3,
    workers=0,
    threads=1,
    seed=3,
    val=0.25,
    test=0.25,
    device="cpu",
)


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    # 24 a class: 12 train, 6 val, 6 test each. 36 training images: one process takes steps of
    # 16, 16 and 4 images; two take 8 + 8, 8 + 8 and 2 + 2 of the same ones.
    return colour_classes(tmp_path_factory.mktemp("colours"), per_class=24)


@pytest.fixture(scope="module")
def runs(colour_data, tmp_path_factory):
    """The same training in one process (batch 16) and in two (batch 8 each, --devices 2)."""
    out = tmp_path_factory.mktemp("runs")
    one = run_train(data=str(colour_data), out=str(out / "one"), name="r", batch_size=16, progress=False, **EXACT)
    start = time.perf_counter()
    two = run_train(
        data=str(colour_data), out=str(out / "two"), name="r", batch_size=8, devices=2, progress=False, **EXACT
    )
    return one, two, time.perf_counter() - start


def test_two_processes_train_as_one_with_the_same_global_batch(runs):
    one, two, _ = runs
    assert two.summary["world_size"] == 2 and two.summary["global_batch_size"] == 16
    assert "world_size" not in one.summary
    a, b = read_metrics(Path(one.run_dir) / "metrics.csv"), read_metrics(Path(two.run_dir) / "metrics.csv")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        # The same images each step and averaged gradients: the same weights, up to rounding.
        for key in ("train_loss", "val_loss"):
            assert abs(float(ra[key]) - float(rb[key])) < 1e-4, (key, ra, rb)
        assert ra["val_acc"] == rb["val_acc"] and ra["train_acc"] == rb["train_acc"]
    assert one.summary["test_acc"] == two.summary["test_acc"]
    assert two.summary["test_images"] == one.summary["test_images"] == 18  # every test image once
    assert two.summary["test_acc"] > 0.6  # the colours were learnt (chance is 1/3)


def test_only_rank_0_writes_one_run_directory(runs):
    _, two, _ = runs
    out = Path(two.run_dir).parent
    assert [p.name for p in out.iterdir()] == ["r"]
    files = {p.name for p in Path(two.run_dir).iterdir()}
    assert {"config.yaml", "split.csv", "metrics.csv", "summary.json", "best.pt", "last.pt", "curves.png"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    assert json.loads((Path(two.run_dir) / "summary.json").read_text())["world_size"] == 2


def test_a_distributed_checkpoint_loads_in_one_process(runs, tmp_path):
    _, two, _ = runs
    state = torch.load(Path(two.run_dir) / "best.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"])  # the plain model's names
    scored = run_evaluate(two.run_dir, device="cpu")
    assert scored["acc"] == two.summary["test_acc"] and scored["n"] == two.summary["test_images"]


def test_each_rank_sees_its_own_part_of_every_epoch():
    from augpipe.data.loader import RankSampler

    for n, world in ((10, 2), (11, 2), (7, 3), (3, 4)):
        g = torch.Generator().manual_seed(0)
        state = g.get_state()
        parts = []
        for rank in range(world):
            g.set_state(state)  # every rank holds the same generator
            parts.append(list(RankSampler(n, rank, world, True, g)))
        assert len({len(p) for p in parts}) == 1  # the same number of steps on every rank
        assert set().union(*parts) == set(range(n))
        if n % world == 0:
            assert sorted(sum(parts, [])) == list(range(n))  # disjoint when nothing is padded
        evaluated = [list(RankSampler(n, r, world, False, g)) for r in range(world)]
        assert sorted(sum(evaluated, [])) == list(range(n))  # evaluation: each item exactly once


def test_torchrun_launches_the_cli(colour_data, tmp_path):
    """torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR ...) is all augpipe needs."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "runs"
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "augpipe",
        "train",
        "--data",
        str(colour_data),
        "--out",
        str(out),
        "--name",
        "tr",
        "--batch-size",
        "8",
        *[f"--{k.replace('_', '-')}={v}" for k, v in EXACT.items()],
    ]
    # torchrun leaves a folder of logs in the temporary folder: the test's own, not the machine's.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test accuracy:") == 1  # rank 0 alone reports
    summary = json.loads((out / "tr" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["test_images"] == 18
    assert [p.name for p in out.iterdir()] == ["tr"]


def test_more_devices_than_the_machine_has_is_one_error_line(cli, tmp_path, colour_data):
    cores = len(os.sched_getaffinity(0))
    result = cli("train", "--data", colour_data, "--devices", cores + 1, "--epochs", 1, "--device", "cpu")
    assert f"--devices {cores + 1}: this machine has {cores} CPU core(s)" in error_line(result)
    assert not (tmp_path / "runs").exists()
    assert "--devices must be a whole number of at least 1" in error_line(cli("train", "--devices", 0))


# A callback, installed as a third-party package would be, that kills the rank named in the
# environment at the end of its first epoch, as an out-of-memory kill would.
KILLER = """
import os, signal
from augpipe.hookspecs import hookimpl
from augpipe.training.callbacks import Callback

class KillRank(Callback):
    def on_train_batch_end(self, epoch, step, loss):
        if os.environ.get("RANK") == os.environ.get("KILL_RANK") and epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)

@hookimpl
def augpipe_register_callbacks(register):
    register("kill_rank", lambda run_dir, config: KillRank())
"""


def test_a_rank_that_dies_stops_the_others_and_is_named(plugin_package, colour_data, tmp_path, monkeypatch):
    plugin_package("killerplug", entry_points={"killer": "killerplug_mod"}, modules={"killerplug_mod": KILLER})
    # Plugins' callbacks run on rank 0 only, so it is rank 0 that dies here; the others must not
    # wait for it forever.
    monkeypatch.setenv("KILL_RANK", "0")
    from augpipe.distributed import DistributedError

    # The launcher ends the other rank at once; the collective timeout only bounds the test.
    with pytest.raises(DistributedError, match=r"^rank 0 was killed by SIGKILL; the other ranks were stopped"):
        run_train(
            data=str(colour_data),
            out=str(tmp_path / "runs"),
            name="k",
            batch_size=8,
            devices=2,
            callbacks=["kill_rank"],
            progress=False,
            dist_timeout=120,
            **EXACT,
        )
    # What rank 0 saved before it died resumes in one process.
    run_dir = tmp_path / "runs" / "k"
    assert (run_dir / "last.pt").is_file() and not (run_dir / "summary.json").exists()
    resumed = run_train(resume=run_dir, devices=1, progress=False)
    assert resumed.summary["epochs_run"] == 3 and resumed.summary["stop_reason"] == "completed"
    assert len(read_metrics(run_dir / "metrics.csv")) == 3


RANK_SCRIPT = """
import os, sys
from augpipe.training.run import train
from augpipe.errors import AugpipeError
try:
    train(data=sys.argv[1], out=sys.argv[2], name="m", batch_size=8, progress=False, dist_timeout=10,
          epochs=50, **{k: v for k, v in {EXACT}.items() if k != "epochs"})
except AugpipeError as err:
    print("augpipe error:", err, flush=True)
    sys.exit(1)
"""


def test_a_rank_left_alone_gives_up_with_a_clear_message(colour_data, tmp_path):
    """Several nodes: no launcher of ours sees the others, so a dead peer is found by the
    collective timeout (or the closed connection), and named as the cause."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.replace("{EXACT}", repr(EXACT)))
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(colour_data), str(tmp_path / "runs")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    run_dir = tmp_path / "runs" / "m"
    deadline = time.time() + 120
    while not (run_dir / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    out, err = procs[0].communicate(timeout=120)
    procs[1].wait()
    assert procs[0].returncode == 1, err[-2000:]
    assert "augpipe error: rank 0 of 2: lost contact with the other processes" in out
    assert "Traceback" not in out
    assert (run_dir / "summary.json").exists()  # rank 0 closed its run as failed, checkpoints kept
    assert (run_dir / "last.pt").exists()


def test_a_launch_leaves_nothing_in_the_temporary_folder(tmp_path, monkeypatch):
    # Left to itself the launcher leaves a torchelastic_* folder on every launch and an error
    # file for every rank that fails.
    import tempfile

    from augpipe.distributed import DistributedError, launch

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert launch(2, os.path.exists, str(tmp_path)) is True
    with pytest.raises(DistributedError, match=r"^rank \d .*FileNotFoundError"):
        launch(2, os.path.getsize, str(tmp_path / "missing"))
    assert list(scratch.iterdir()) == []
    assert tempfile.tempdir == str(scratch)
