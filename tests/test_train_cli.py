"""``augpipe train`` and ``augpipe evaluate`` on the command line: a run, a re-run from its
config.yaml, and bad input that must fail in one line without leaving a run directory."""

from __future__ import annotations

import csv
import json
import types

import pytest
from conftest import error_line

from augpipe.hookspecs import hookimpl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--workers", "0", "--threads", "1", "--batch-size", "8"]


def metrics_without_timing(path):
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in csv.DictReader(fh)]


def test_train_then_evaluate_prints_the_same_test_accuracy(tmp_path, cli, tiny_data):
    result = cli(
        "train", "--data", tiny_data, "--plugin", "mlp", "--model", "mlp_small", "--epochs", "2", "--name", "r", *FAST
    )
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "r"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"run: {run_dir.relative_to(tmp_path)}" in result.output
    assert f"epochs: 2 (completed); best epoch {summary['best_epoch']}" in result.output
    line = f"test accuracy: {summary['test_acc']:.4f} on 3 images"
    assert line in result.output

    result = cli("evaluate", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(line + f" (best.pt, epoch {summary['best_epoch']})")
    assert f"test loss: {summary['test_loss']:.4f}" in result.output


def test_a_run_repeats_exactly_from_its_config_yaml(tmp_path, cli, tiny_data):
    """CPU training is deterministic for a seed: config.yaml, re-run under a new name, gives the
    same metrics (the timing columns aside)."""
    first = cli(
        "train",
        "--data",
        tiny_data,
        "--plugin",
        "cnn",
        "--model",
        "cnn_small",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--name",
        "a",
        "--device",
        "cpu",
        *FAST,
    )
    assert first.exit_code == 0, first.output
    again = cli("train", "--config", tmp_path / "runs/a/config.yaml", "--name", "b")
    assert again.exit_code == 0, again.output
    a, b = (metrics_without_timing(tmp_path / f"runs/{n}/metrics.csv") for n in "ab")
    assert len(a) == 2 and a == b
    sa, sb = (json.loads((tmp_path / f"runs/{n}/summary.json").read_text()) for n in "ab")
    assert sa["test_acc"] == sb["test_acc"] and sa["confusion"] == sb["confusion"]
    assert (tmp_path / "runs/a/split.csv").read_text() == (tmp_path / "runs/b/split.csv").read_text()


def test_flags_override_the_config_file(tmp_path, cli, tiny_data):
    (tmp_path / "settings.yaml").write_text(
        f"data: {tiny_data}\nplugin: mlp\nmodel: mlp_small\nepochs: 3\nworkers: 0\nthreads: 1\naug: none\n"
    )
    result = cli("train", "--config", "settings.yaml", "--epochs", "1", "--activation", "tanh", "--name", "o")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs/o/summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["activation"] == "tanh" and summary["model"] == "mlp_small"


# -- bad input ------------------------------------------------------------------------------------

BASE = ["--plugin", "mlp", "--model", "mlp_small", "--epochs", "1", *FAST]

BAD = {
    "unknown plugin": (
        ["--plugin", "resnett"],
        ["unknown plugin 'resnett'", "Did you mean 'resnet'", "cnn, fastcifar, mlp, resnet, squeezenet, timm"],
    ),
    "unknown model": (
        ["--plugin", "cnn", "--model", "cnn_tiny"],
        ["'cnn_tiny'", "plugin 'cnn'", "cnn, cnn_small, cnn_wide"],
    ),
    "unknown model of resnet": (["--plugin", "resnet", "--model", "resnet19"], ["'resnet19'", "resnet20"]),
    "unknown activation": (
        BASE + ["--activation", "swish"],
        ["unknown activation 'swish'", "relu, leaky_relu, prelu, elu, selu, gelu, silu, sigmoid, tanh"],
    ),
    "unknown optimizer": (
        BASE + ["--optimizer", "adamx"],
        ["unknown optimizer 'adamx'", "adagrad, adam, adamw, momentum, muon, nesterov, rmsprop, sgd"],
    ),
    "unknown scheduler": (
        BASE + ["--scheduler", "cosin"],
        [
            "unknown scheduler 'cosin'",
            "Did you mean 'cosine'",
            "cosine, exponential, linear, multistep, none, onecycle, plateau, step",
        ],
    ),
    "unknown monitor": (BASE + ["--monitor", "val_accuracy"], ["unknown monitor 'val_accuracy'", "val_acc"]),
    "lr zero": (BASE + ["--lr", "0"], ["--lr must be above 0"]),
    "lr negative": (BASE + ["--lr", "-0.1"], ["--lr must be above 0"]),
    "lr not a number": (BASE + ["--lr", "fast"], ["'fast' is not a valid float"]),
    "dropout one": (BASE + ["--dropout", "1"], ["--dropout must be in [0, 1)"]),
    "dropout negative": (BASE + ["--dropout", "-0.2"], ["--dropout must be in [0, 1)"]),
    "negative patience": (BASE + ["--patience", "-1"], ["--patience must be a whole number of at least 0"]),
    "batch size zero": (
        ["--plugin", "mlp", "--batch-size", "0"],
        ["--batch-size must be a whole number of at least 1"],
    ),
    "zero epochs": (["--plugin", "mlp", "--epochs", "0"], ["--epochs must be a whole number of at least 1"]),
    "nesterov without momentum": (BASE + ["--optimizer", "nesterov", "--momentum", "0"], ["nesterov", "--momentum"]),
    "config with a misspelt key": (
        BASE + ["--config", "bad.yaml"],
        ["unknown key 'epoch' in bad.yaml", "did you mean 'epochs'"],
    ),
    "config with an unknown key": (
        BASE + ["--config", "typo.yaml"],
        ["unknown key 'optimiser'", "did you mean 'optimizer'"],
    ),
    "config not found": (BASE + ["--config", "nowhere.yaml"], ["nowhere.yaml: no such config file"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_fails_in_one_line_without_a_run_directory(tmp_path, cli, tiny_data, case):
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    (tmp_path / "typo.yaml").write_text("plugin: mlp\noptimiser: adam\n")
    args, expected = BAD[case]
    result = cli("train", "--data", tiny_data, *args)
    line = error_line(result)
    for text in expected:
        assert text in line, line
    assert not (tmp_path / "runs").exists()


def test_an_existing_run_directory_is_refused_and_left_untouched(tmp_path, cli, tiny_data):
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("keep me")
    result = cli("train", "--data", tiny_data, *BASE, "--name", "r1")
    line = error_line(result)
    assert "runs/r1 already exists" in line and "--name" in line
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"] and (run_dir / "notes.txt").read_text() == "keep me"


def test_evaluate_of_a_missing_run_fails_in_one_line(tmp_path, cli):
    line = error_line(cli("evaluate", tmp_path / "runs/none"))
    assert "runs/none: no such run directory" in line
    (tmp_path / "runs/empty").mkdir(parents=True)
    assert "best.pt: no such checkpoint" in error_line(cli("evaluate", tmp_path / "runs/empty"))


# -- plugins that go wrong ----------------------------------------------------------------------------


def plugin(**hooks):
    return types.SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


def test_a_plugin_whose_hook_raises_is_named(tmp_path, cli, tiny_data, fresh_plugins):
    def augpipe_register_trainers(register):
        raise RuntimeError("missing weights file")

    fresh_plugins().register(plugin(augpipe_register_trainers=augpipe_register_trainers), name="shaky")
    # the broken plugin is named and skipped; the others still train
    result = cli("train", "--data", tiny_data, *BASE)
    assert result.exit_code == 0, result.output
    assert (
        "warning: plugin 'shaky' failed in augpipe_register_trainers: RuntimeError: missing weights file"
        in result.output
    )
    listing = cli("plugins")
    assert listing.exit_code == 0 and "missing weights file" in listing.output


def test_a_plugin_whose_model_builder_raises_is_named(tmp_path, cli, tiny_data, fresh_plugins):
    from augpipe.hookspecs import Trainer

    def build(**kw):
        raise RuntimeError("no such layer")

    def augpipe_register_trainers(register):
        register(Trainer(name="broken", build_model=build, models=["m"], default_model="m"))

    fresh_plugins().register(plugin(augpipe_register_trainers=augpipe_register_trainers), name="brokenplug")
    line = error_line(cli("train", "--data", tiny_data, "--plugin", "broken", *FAST))
    assert "plugin 'brokenplug' failed to build model 'm'" in line and "no such layer" in line
    assert not (tmp_path / "runs").exists()


def test_a_plugin_whose_optimizer_raises_is_named(tmp_path, cli, tiny_data, fresh_plugins):
    def augpipe_register_optimizers(register):
        def factory(model, **kw):
            raise RuntimeError("unsupported parameter")

        register("shakyopt", factory)

    fresh_plugins().register(plugin(augpipe_register_optimizers=augpipe_register_optimizers), name="optplug")
    line = error_line(cli("train", "--data", tiny_data, *BASE, "--optimizer", "shakyopt"))
    assert "optplug" in line and "unsupported parameter" in line
    assert not (tmp_path / "runs").exists()


def test_a_plugin_whose_callback_raises_is_named_and_leaves_no_run(tmp_path, cli, tiny_data, fresh_plugins):
    def augpipe_register_callbacks(register):
        def factory(run_dir, config):
            raise RuntimeError("no tensorboard")

        register("shakycb", factory)

    fresh_plugins().register(plugin(augpipe_register_callbacks=augpipe_register_callbacks), name="cbplug")
    line = error_line(cli("train", "--data", tiny_data, *BASE, "--callbacks", "shakycb"))
    assert "cbplug" in line and "no tensorboard" in line
    assert not (tmp_path / "runs").exists()


def test_a_plugin_failing_at_epoch_end_is_named(tmp_path, cli, tiny_data, fresh_plugins):
    def augpipe_epoch_end(run, epoch, metrics):
        raise ValueError("disk full")

    fresh_plugins().register(plugin(augpipe_epoch_end=augpipe_epoch_end), name="logger")
    line = error_line(cli("train", "--data", tiny_data, *BASE, "--aug", "none"))
    assert line == "Error: plugin 'logger' failed in augpipe_epoch_end: ValueError: disk full"


# -- a run that fails -------------------------------------------------------------------------------------


def test_a_non_finite_loss_exits_1_in_one_line_and_keeps_the_best_checkpoint(tmp_path, cli, tiny_data, probe_plugins):
    result = cli(
        "train",
        "--data",
        tiny_data,
        "--plugin",
        "probe",
        "--model",
        "nan_after_4",
        "--epochs",
        "3",
        "--aug",
        "none",
        "--name",
        "n",
        *FAST,
    )
    line = error_line(result)
    assert result.exit_code == 1
    assert line == (
        "Error: stopped at epoch 2: the training loss became nan at iteration 1 (best checkpoint kept in runs/n)"
    )
    assert (tmp_path / "runs/n/best.pt").is_file()
    assert json.loads((tmp_path / "runs/n/summary.json").read_text())["failed"] is True


def test_a_run_failing_in_its_first_epoch_promises_no_checkpoint(tmp_path, cli, tiny_data, probe_plugins):
    result = cli(
        "train",
        "--data",
        tiny_data,
        "--plugin",
        "probe",
        "--model",
        "nan_after_0",
        "--aug",
        "none",
        "--name",
        "n0",
        *FAST,
    )
    line = error_line(result)
    assert "stopped at epoch 1" in line and "no epoch completed, no checkpoint" in line
    assert not (tmp_path / "runs/n0/best.pt").exists()


def test_numbers_written_without_a_dot_in_yaml_are_numbers(tmp_path, cli, tiny_data):
    # YAML 1.1 reads 5e-4 as the string '5e-4'
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nweight_decay: 5e-4\nepochs: 1\n")
    result = cli(
        "train",
        "--data",
        tiny_data,
        "--config",
        "c.yaml",
        "--plugin",
        "mlp",
        "--model",
        "mlp_small",
        "--name",
        "y",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    saved = (tmp_path / "runs" / "y" / "config.yaml").read_text()
    assert "lr: 0.001" in saved and "weight_decay: 0.0005" in saved


def test_a_config_value_that_is_not_a_number_is_named(tmp_path, cli, tiny_data):
    (tmp_path / "c.yaml").write_text("seed: abc\n")
    line = error_line(cli("train", "--data", tiny_data, "--config", "c.yaml", *BASE))
    assert "seed must be a whole number, got 'abc'" in line
    assert not (tmp_path / "runs").exists()


def test_out_that_is_a_file_is_one_clear_line(tmp_path, cli, tiny_data):
    (tmp_path / "afile").write_text("x")
    line = error_line(cli("train", "--data", tiny_data, *BASE, "--out", "afile"))
    assert "--out afile: not a directory" in line


def test_evaluate_refuses_a_checkpoint_that_is_not_augpipe_s(tmp_path, cli):
    import torch

    (tmp_path / "run").mkdir()
    torch.save({"weight": torch.zeros(2)}, tmp_path / "run" / "best.pt")
    line = error_line(cli("evaluate", "run"))
    assert "best.pt: not an augpipe checkpoint" in line


# Settings whose flag says all: every other TrainConfig field carries a comment, its --help text.
SELF_EXPLANATORY = {
    "weight_decay",
    "label_smoothing",
    "epochs",
    "batch_size",
    "patience",
    "monitor",
    "min_delta",
    "out",
}


def test_every_setting_has_its_help_even_where_the_formatter_wrapped_it():
    from click.testing import CliRunner

    from augpipe.config import TrainConfig
    from cli.main import main
    from cli.train_commands import _field_comments

    comments = _field_comments()
    assert set(TrainConfig.field_names()) - set(comments) <= SELF_EXPLANATORY
    # fields whose default the formatter put on a line of its own, the comment beside it
    assert comments["ema"].startswith("decay of a moving average of the weights")
    assert comments["milestones"].startswith("multistep: epochs")
    assert comments["low_res_size"].startswith("progressive resizing")
    # a heading comment between fields is not a field's help
    assert not any(text in ("data", "optimisation", "machine", "output") for text in comments.values())
    shown = " ".join(CliRunner().invoke(main, ["train", "--help"], terminal_width=400).output.split())
    for name in ("ema", "threads", "decay_bias_and_norm", "low_res_size"):
        assert " ".join(comments[name].split()[:5]) in shown, name
