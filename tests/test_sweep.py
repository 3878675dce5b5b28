"""``augpipe sweep``: the grid (comma lists, seeds, names), bad values refused before any run,
the tables and picture, resuming a sweep run by run, a signal mid-sweep, and one decode of the
data for the runs that share it."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
import yaml
from conftest import SWEEP_FAST
from conftest import error_line as shared_error_line

from augpipe.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = SWEEP_FAST


def error_line(result) -> str:
    return shared_error_line(result, codes=(1,))


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def count_decodes(monkeypatch):
    """How often a data set is opened and decoded (augpipe.data.prepare.decode_data), and with
    which seeds it is split (split_decoded)."""
    import augpipe.data.prepare as prepare

    calls = {"decoded": 0, "split": []}
    real_decode, real_split = prepare.decode_data, prepare.split_decoded

    def decode(*args, **kwargs):
        calls["decoded"] += 1
        return real_decode(*args, **kwargs)

    def split(*args, **kwargs):
        calls["split"].append(kwargs.get("seed"))
        return real_split(*args, **kwargs)

    monkeypatch.setattr(prepare, "decode_data", decode)
    monkeypatch.setattr(prepare, "split_decoded", split)
    return calls


# -- the grid -------------------------------------------------------------------------------------
def test_comma_lists_are_read_with_each_fields_type():
    from augpipe.sweeps import parse_values

    assert parse_values("lr", "0.01, 1e-1") == [0.01, 0.1]
    epochs = parse_values("epochs", "1,3")
    assert epochs == [1, 3] and all(type(e) is int for e in epochs)
    assert parse_values("activation", "relu,leaky_relu") == ["relu", "leaky_relu"]
    assert parse_values("aug", "none") == ["none"]
    for name, text, message in (
        ("lr", "0.1,,0.2", "empty item"),
        ("lr", "", "empty item"),
        ("lr", "0.1,", "empty item"),
        ("lr", "abc", "--lr must be a number"),
        ("epochs", "1,1.5", "--epochs must be a whole number"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_values(name, text)


def test_the_grid_runs_every_setting_per_seed_in_a_stable_order(tmp_path, tiny_data):
    from augpipe.sweeps import plan_sweep

    spec = tmp_path / "my spec.yaml"
    spec.write_text("size: 16\n")
    runs = plan_sweep(
        plugin="mlp", data=str(tiny_data), activation=["relu", "tanh"], aug=["none", str(spec)], lr=0.1, seed=5, seeds=2
    )
    assert [r.name for r in runs] == [
        f"activation={a},aug={g},seed={s}" for s in (5, 6) for a in ("relu", "tanh") for g in ("none", "my_spec")
    ]
    assert [r.seed for r in runs] == [5] * 4 + [6] * 4
    assert runs[1].values == {"activation": "relu", "aug": str(spec)} and runs[1].flags["lr"] == 0.1
    assert all(r.settings["lr"] == 0.1 for r in runs)
    # The base seed of --seeds comes from --config as in train; a list of seeds is an axis too.
    (tmp_path / "c.yaml").write_text("seed: 7\n")
    assert [r.seed for r in plan_sweep(plugin="mlp", config_file=tmp_path / "c.yaml", seeds=3)] == [7, 8, 9]
    assert [r.name for r in plan_sweep(plugin="mlp", seed=[0, 10], seeds=2)] == [
        "seed=0",
        "seed=1",
        "seed=10",
        "seed=11",
    ]
    with pytest.raises(ConfigError, match="gives seed 1 twice"):
        plan_sweep(plugin="mlp", seed=[0, 1], seeds=2)


def test_the_table_and_picture_keep_a_diverged_run_readable(tmp_path):
    """A run whose loss exploded is shown (1e+33, not 34 digits) but never named the best."""
    from augpipe.report import plot_sweep
    from augpipe.sweeps import markdown_table

    def row(acc, loss, failed=False, reason="completed"):
        return {
            "best_val_acc": acc,
            "best_val_loss": loss,
            "test_acc": acc,
            "epochs_run": 2,
            "failed": failed,
            "stop_reason": reason,
            "train_seconds": 1.0,
        }

    groups = [
        {"setting": {"lr": 0.1}, "label": "0.1", "planned": 2, "rows": [row(0.5, 1.2), row(0.6, 1.1)]},
        {
            "setting": {"lr": 1e4},
            "label": "10000.0",
            "planned": 2,
            "rows": [row(0.9, 4.5e33, True, "stopped at epoch 2: the training loss became nan"), row(0.8, 3e33)],
        },
    ]
    table = markdown_table("s", ["lr"], groups, finished=4, planned=4)
    assert "| 0.1 | 2 | 0.550 ± 0.071 | 1.150 ± 0.071 | 0.550 ± 0.071 | 2 | completed ×2 | 1.0 ± 0.0 |" in table
    assert "| 10000.0 | 2 | 0.850 ± 0.071 | 3.75e+33 ± 1.06e+33 |" in table and "failed ×1, completed ×1" in table
    assert "Best by mean validation accuracy: 0.1 (0.550), of the settings whose runs did not fail." in table

    curves = [
        [[{"epoch": 1, "val_loss": 1.2, "val_acc": 0.5}, {"epoch": 2, "val_loss": 1.1, "val_acc": 0.6}]],
        [[{"epoch": 1, "val_loss": 4.5e33, "val_acc": 0.9}, {"epoch": 2, "val_loss": None, "val_acc": None}]],
    ]
    path = plot_sweep(["0.1", "10000.0"], curves, [[0.5], [None]], tmp_path / "sweep.png")
    assert path.read_bytes().startswith(b"\x89PNG")


BAD = {
    "empty item": (["--lr", "0.1,,0.2"], "--lr '0.1,,0.2': an empty item in the comma list"),
    "not a number": (["--lr", "abc"], "--lr must be a number, got 'abc'"),
    "not a whole number": (["--epochs", "1,2.5"], "--epochs must be a whole number, got '2.5'"),
    "unknown activation": (["--activation", "relu,bogus"], "unknown activation 'bogus'"),
    "unknown model": (["--model", "mlp_small,mlp_nope"], "mlp_nope"),
    "unknown augmentation": (["--aug", "none,bogus"], "unknown augmentation 'bogus'"),
    "a value twice": (["--activation", "relu,tanh,relu"], "--activation: 'relu' is given twice"),
    "two names for one run": (["--scheduler", "onecycle,one-cycle"], "have the same settings"),
    "no seeds": (["--seeds", "0"], "--seeds must be a whole number of at least 1"),
    "missing data": (["--data", "nowhere"], "nowhere: no such file or directory"),
    "a run of the grid out of range": (["--seed", "4294967295", "--seeds", "2"], "--seed must be"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_value_is_one_error_line_before_any_run(tmp_path, cli, tiny_data, case):
    args, message = BAD[case]
    if "--data" not in args:
        args = ["--data", tiny_data, *args]
    line = error_line(cli("sweep", *FAST, *args))
    assert message in line
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "runs").exists()


def test_more_than_50_runs_ask_for_yes(tmp_path, cli, tiny_data):
    line = error_line(cli("sweep", "--data", tiny_data, *FAST, "--activation", "relu,tanh", "--seeds", "26"))
    assert "the sweep has 52 runs (more than 50): pass --yes" in line
    # With --yes the size is accepted: the next check (a bad value) is the one that answers.
    line = error_line(
        cli(
            "sweep",
            "--data",
            tiny_data,
            *FAST,
            "--activation",
            "relu,tanh",
            "--seeds",
            "26",
            "--aug",
            "none,bogus",
            "--yes",
        )
    )
    assert "unknown augmentation 'bogus'" in line
    assert not (tmp_path / "sweeps").exists()


# -- running, tables, resuming ------------------------------------------------------------------------
def test_a_sweep_writes_its_tables_decodes_once_and_resumes_run_by_run(tmp_path, cli, tiny_data, count_decodes):
    args = ["sweep", "--data", tiny_data, *FAST, "--activation", "relu,tanh", "--seeds", "2"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    assert sweep_dir.name.startswith("activation-")
    assert f"sweep: {sweep_dir.relative_to(tmp_path)}" in result.output
    names = ["activation=relu,seed=0", "activation=tanh,seed=0", "activation=relu,seed=1", "activation=tanh,seed=1"]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(names)
    # One decode for the sweep; each run splits it with its own seed.
    assert count_decodes["decoded"] == 1 and sorted(count_decodes["split"]) == [0, 0, 1, 1]

    rows = csv_rows(sweep_dir / "sweep.csv")
    assert [(r["activation"], r["seed"]) for r in rows] == [("relu", "0"), ("tanh", "0"), ("relu", "1"), ("tanh", "1")]
    for row, name in zip(rows, names):
        summary = json.loads((sweep_dir / name / "summary.json").read_text())
        assert float(row["test_acc"]) == pytest.approx(summary["test_acc"])
        assert row["epochs_run"] == "1" and row["stop_reason"] == "completed"
        assert row["run_dir"] == str(sweep_dir.relative_to(tmp_path) / name)
        assert 0 <= float(row["best_val_acc"]) <= 1 and float(row["best_val_loss"]) > 0
    table = (sweep_dir / "sweep.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| activation | seeds | best val acc |")
    assert [line.split(" | ")[0] for line in lines[1:]] == ["| relu", "| tanh"]
    assert all(line.count("±") == 4 and "completed ×2" in line for line in lines[1:])
    assert table in result.output
    png = (sweep_dir / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert [r["name"] for r in yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["runs"]] == names

    # The same command again: nothing runs, nothing is decoded, the tables are the same.
    stamps = {n: (sweep_dir / n / "summary.json").stat().st_mtime_ns for n in names}
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert again.output.count("finished before, skipped") == 4 and count_decodes["decoded"] == 1
    assert {n: (sweep_dir / n / "summary.json").stat().st_mtime_ns for n in names} == stamps
    assert csv_rows(sweep_dir / "sweep.csv") == rows

    # A run without its summary but with last.pt is resumed; one with neither is started anew.
    (sweep_dir / names[1] / "summary.json").unlink()
    for file in ("summary.json", "last.pt"):
        (sweep_dir / names[2] / file).unlink()
    (sweep_dir / names[2] / "marker").write_text("from the stopped run")
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert f"run 2/4 {names[1]}: resuming from last.pt" in again.output
    assert f"resuming {sweep_dir.relative_to(tmp_path) / names[1]}" in again.output
    assert f"run 3/4 {names[2]}\n" in again.output
    assert again.output.count("finished before, skipped") == 2
    assert not (sweep_dir / names[2] / "marker").exists() and (sweep_dir / names[2] / "summary.json").is_file()
    assert len(csv_rows(sweep_dir / "sweep.csv")) == 4

    # Another grid under the same name is refused.
    line = error_line(
        cli("sweep", "--data", tiny_data, *FAST, "--activation", "relu,elu", "--seeds", "2", "--name", sweep_dir.name)
    )
    assert f"{sweep_dir.relative_to(tmp_path)} holds another sweep" in line and "activation=elu,seed=0" in line


KILLER_ARMED = []


class _Killer:
    """Sends SIGTERM to this process after the first step of a tanh run, while armed."""

    def __init__(self, config):
        self.armed = bool(KILLER_ARMED) and config.activation == "tanh"

    def on_train_batch_end(self, epoch, step, loss):
        if self.armed and (epoch, step) == (1, 1):
            os.kill(os.getpid(), signal.SIGTERM)

    def on_epoch_end(self, epoch, metrics, model=None):
        return False


def test_a_signal_ends_the_run_and_the_sweep_which_the_same_command_continues(tmp_path, cli, tiny_data, fresh_plugins):
    from augpipe.hookspecs import hookimpl

    class KillerPlugin:
        @hookimpl
        def augpipe_register_callbacks(self, register):
            register("killer", lambda run_dir, config: _Killer(config))

    fresh_plugins().register(KillerPlugin(), name="killer")
    args = [
        "sweep",
        "--data",
        tiny_data,
        *FAST,
        "--activation",
        "relu,tanh,elu",
        "--callbacks",
        "killer",
        "--name",
        "s",
    ]
    KILLER_ARMED.append(True)
    try:
        stopped = cli(*args)
    finally:
        KILLER_ARMED.clear()
    assert stopped.exit_code == 143, stopped.output
    assert "interrupted by SIGTERM: 1 of 3 runs finished" in stopped.output
    sweep_dir = tmp_path / "sweeps" / "s"
    assert [r["activation"] for r in csv_rows(sweep_dir / "sweep.csv")] == ["relu"]
    assert "1 of 3 runs finished; the same command runs the rest" in (sweep_dir / "sweep.md").read_text()
    tanh = sweep_dir / "activation=tanh,seed=0"
    assert json.loads((tanh / "summary.json").read_text())["resumable"] and (tanh / "last.pt").is_file()
    assert not (sweep_dir / "activation=elu,seed=0").exists()

    resumed = cli(*args)
    assert resumed.exit_code == 0, resumed.output
    assert "run 2/3 activation=tanh,seed=0: resuming from last.pt" in resumed.output
    assert "resuming" in resumed.output and "at step 1 of epoch 1" in resumed.output
    assert [r["activation"] for r in csv_rows(sweep_dir / "sweep.csv")] == ["relu", "tanh", "elu"]
    assert not json.loads((tanh / "summary.json").read_text())["resumable"]


def test_sweep_is_part_of_the_python_api():
    import augpipe
    from augpipe.sweeps import sweep

    assert augpipe.sweep is sweep and "sweep" in augpipe.__all__
