"""The bad-input table of the README, as tests: each input a hostile or careless user can give
ends in one ``Error:`` line (exit 1, or 2 for a malformed command line), with no traceback, no
run directory and no side effect; and the contracts that used to break quietly hold."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from conftest import _make_folder, error_line
from test_config_properties import BOMB
from test_train_cli import FAST

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = ["--plugin", "mlp", "--model", "mlp_small", "--epochs", "1", *FAST]


def config_file(tmp_path, text: str | bytes, name="bad.yaml"):
    path = tmp_path / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("strict: 'false'\n", "--strict must be true or false, got 'false'"),
        ("channels_last: 'false'\n", "--channels-last must be true or false"),
        ("batch_size: true\n", "--batch-size must be a whole number, got True"),
        ("plugin: 5\n", "--plugin must be text, got 5"),
        ("name: [a, b]\n", "--name must be text or null"),
        ("out: 7\n", "--out must be text, got 7"),
        ("seed: 1e20\n", "--seed must be a whole number in [0, 2**32)"),
        ("seed: banana\n", "--seed must be a whole number, got 'banana'"),
        ("weight_decay: .nan\n", "--weight-decay must be a finite number"),
        ("lr: .inf\n", "--lr must be a finite number"),
        ("epochs: 2.5\n", "--epochs must be a whole number"),
        ("milestones: [a]\n", "--milestones must be a number"),
        ("device: tpu\n", "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        ("callbacks: oops\n", "--callbacks must be a list"),
        ("aug: 5\n", "--aug must be text or a mapping or null"),
        ("- a list\n", "must be a mapping of settings"),
        (b"plugin: cnn\nname: \xff\xfe\n", "not a UTF-8 text file"),
        (BOMB, "alias expansion"),
        ("a: &a [*a]\n", "refers to the value that contains it"),
        ("plugin: cnn\n" + "#" * (1 << 20), "too large for a config file"),
        ("plugin: [\n", "not valid YAML"),
    ],
    ids=lambda v: None,
)
def test_a_bad_config_file_is_one_line_and_leaves_nothing(tmp_path, cli, tiny_data, text, message):
    path = config_file(tmp_path, text)
    line = error_line(cli("train", "--config", path, "--data", tiny_data, *FAST))
    assert message in line  # an alias bomb is refused before it is expanded (expanded, it would take GBs)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "flags, message, code",
    [
        (["--threads", "-1"], "--threads must be at least 1", 1),
        (["--seed", "1e20"], "'1e20' is not a valid integer", 2),
        (["--seed", str(2**40)], "--seed must be a whole number in [0, 2**32)", 1),
        (["--weight-decay", "nan"], "--weight-decay must be a finite number", 1),
        (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N", 1),
        (["--name", "../escape"], "--name must be a folder name without slashes", 1),
        (["--max-pixels", "0"], "--max-pixels must be at least 1", 1),
        (["--val", "0", "--patience", "3"], "there is no validation split", 1),
    ],
    ids=lambda v: None,
)
def test_a_bad_flag_is_one_line_and_leaves_nothing(tmp_path, cli, tiny_data, flags, message, code):
    result = cli("train", "--data", tiny_data, *TRAIN, *flags)
    assert result.exit_code == code
    assert message in error_line(result)
    assert not (tmp_path / "runs").exists()


def test_a_data_set_of_one_class_is_refused(tmp_path, cli):
    data = _make_folder(tmp_path / "one", {"only": 12})
    assert "at least 2" in error_line(cli("train", "--data", data, *TRAIN))
    assert not (tmp_path / "runs").exists()


def test_an_image_size_the_model_can_not_take_is_one_line(tmp_path, cli):
    data = _make_folder(tmp_path / "tiny", {"a": 8, "b": 8}, size=4)
    line = error_line(
        cli(
            "train",
            "--data",
            data,
            "--plugin",
            "timm",
            "--model",
            "test_vit",
            "--image-size",
            "8",
            "--aug",
            "none",
            *FAST,
        )
    )
    assert "can not take 8x8 images" in line and "divisible by patch size" in line and "--image-size" in line
    assert not (tmp_path / "runs").exists()


def test_an_extra_crop_larger_than_the_images_is_one_line(tmp_path, cli, tiny_data):
    spec = config_file(tmp_path, "extra: [{name: RandomCrop, height: 64, width: 64}]\n", "spec.yaml")
    line = error_line(cli("train", "--data", tiny_data, *TRAIN, "--aug", spec))
    assert "the augmentation fails on" in line
    resize = config_file(tmp_path, "extra: [{name: Resize, height: 20, width: 20}]\n", "resize.yaml")
    assert "changes the size" in error_line(cli("train", "--data", tiny_data, *TRAIN, "--aug", resize))
    assert not (tmp_path / "runs").exists()


def test_a_yaml_bomb_as_augmentation_spec_is_refused(tmp_path, cli, tiny_data):
    spec = config_file(tmp_path, BOMB, "spec.yaml")
    assert "alias expansion" in error_line(cli("train", "--data", tiny_data, *TRAIN, "--aug", spec))


class RunsCode:
    """Unpickling this calls os.system: what a crafted file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def trained(tmp_path, cli, tiny_data):
    result = cli("train", "--data", tiny_data, *TRAIN, "--epochs", "2", "--name", "r")
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / "r"


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, cli, trained):
    marker = tmp_path / "pwned"
    torch.save({"config": {}, "payload": RunsCode(marker)}, trained / "best.pt")
    line = error_line(cli("evaluate", trained))
    assert "refused to load" in line and "os.system" in line or "posix.system" in line
    assert not marker.exists()
    # the same through pickle itself, and a file that is not a checkpoint at all
    (trained / "best.pt").write_bytes(pickle.dumps(RunsCode(marker)))
    assert "best.pt" in error_line(cli("evaluate", trained))
    (trained / "best.pt").write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in error_line(cli("evaluate", trained))
    assert not marker.exists()


def test_a_crafted_checkpoint_can_not_run_code_through_resume(tmp_path, cli, trained):
    marker = tmp_path / "pwned"
    torch.save({"payload": RunsCode(marker)}, trained / "last.pt")
    (trained / "summary.json").unlink()
    assert "refused to load" in error_line(cli("train", "--resume", trained))
    assert not marker.exists()


def test_evaluate_with_a_checkpoint_of_another_model_is_one_line(tmp_path, cli, trained):
    state = torch.load(trained / "best.pt", weights_only=True)
    state["config"]["model"] = "mlp"  # a larger net than the weights were trained for
    torch.save(state, trained / "best.pt")
    assert "do not fit model mlp/mlp" in error_line(cli("evaluate", trained))
    assert "--device must be" in error_line(cli("evaluate", trained, "--device", "tpu"))


def test_evaluate_prints_exactly_the_runs_test_accuracy_for_a_bf16_run(tmp_path, cli, tiny_data):
    result = cli(
        "train",
        "--data",
        tiny_data,
        "--plugin",
        "cnn",
        "--model",
        "cnn_small",
        "--epochs",
        "2",
        "--precision",
        "bf16",
        "--name",
        "b",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    import augpipe

    summary = json.loads((tmp_path / "runs/b/summary.json").read_text())
    scored = augpipe.evaluate(tmp_path / "runs/b", device="cpu")
    assert scored["acc"] == summary["test_acc"] and scored["loss"] == summary["test_loss"]


def test_evaluate_scores_last_pt_for_a_run_that_kept_its_last_weights(tmp_path, cli, tiny_data):
    result = cli("train", "--data", tiny_data, *TRAIN, "--epochs", "3", "--no-restore-best", "--name", "n")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs/n/summary.json").read_text())
    out = cli("evaluate", tmp_path / "runs/n", "--device", "cpu")
    assert f"test accuracy: {summary['test_acc']:.4f}" in out.output and "(last.pt, epoch 3)" in out.output


def test_runs_started_in_the_same_second_get_distinct_directories(tmp_path, tiny_data):
    from augpipe.config import TrainConfig
    from augpipe.training.run import make_run_dir

    cfg = TrainConfig(out=str(tmp_path / "runs"))
    made = {make_run_dir(cfg) for _ in range(3)}
    assert len(made) == 3 and all(p.is_dir() for p in made)


def test_a_train_config_instance_trains_as_the_same_keywords_do(tiny_data):
    from augpipe.config import TrainConfig
    from augpipe.training.run import build_config

    assert build_config(TrainConfig(plugin="cnn")) == build_config(plugin="cnn")
    from augpipe.plugin_manager import get_plugins

    cnn_epochs = get_plugins().trainer("cnn").defaults["epochs"]
    assert cnn_epochs != TrainConfig().epochs
    assert build_config(TrainConfig(plugin="cnn")).epochs == cnn_epochs  # the plugin's default, not the dataclass's
    cfg = TrainConfig(plugin="cnn")
    cfg.epochs = 4
    assert build_config(cfg).epochs == 4


def test_config_yaml_keeps_absolute_data_paths_so_a_run_evaluates_from_anywhere(tmp_path, cli, trained, monkeypatch):
    import yaml

    saved = yaml.safe_load((trained / "config.yaml").read_text())
    assert saved["data"].startswith("/")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    import augpipe

    summary = json.loads((trained / "summary.json").read_text())
    assert augpipe.evaluate(trained, device="cpu")["acc"] == summary["test_acc"]


def test_a_nan_weight_decay_can_not_end_in_a_nan_score_and_exit_0(tmp_path, tiny_data):
    """With the flag refused, the loop's own guard is what remains: a non-finite validation loss
    after an update whose own loss was finite fails the run."""
    from augpipe.training.run import train

    class NaNDecay(torch.optim.SGD):
        def step(self, closure=None):
            super().step(closure)
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.mul_(float("nan"))

    from augpipe.hookspecs import hookimpl
    from augpipe.plugin_manager import Plugins

    class Plugin:
        @hookimpl
        def augpipe_register_optimizers(self, register):
            register("nandecay", lambda model, lr, weight_decay, momentum: NaNDecay(model.parameters(), lr=lr))

    plugins = Plugins()
    plugins.register(Plugin(), name="nandecay")
    result = train(
        data=str(tiny_data),
        plugin="mlp",
        model="mlp_small",
        optimizer="nandecay",
        lr=0.1,
        epochs=2,
        batch_size=64,
        workers=0,
        threads=1,
        out=str(tmp_path / "runs"),
        name="n",
        plugins=plugins,
    )
    assert result.failed and "the validation loss became nan" in result.summary["stop_reason"]


def test_a_scheduler_plugin_may_return_a_plain_torch_scheduler(tmp_path, tiny_data):
    from augpipe.hookspecs import hookimpl
    from augpipe.plugin_manager import Plugins
    from augpipe.training.run import train

    seen = {}

    class Plugin:
        @hookimpl
        def augpipe_register_schedulers(self, register):
            def factory(optimizer, *, config, steps_per_epoch, epochs, total_steps):
                seen["total_steps"] = total_steps
                return torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=total_steps)

            register("straight-line", factory)

            def plateau(optimizer, **kw):
                return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)

            register("myplateau", plateau)

    plugins = Plugins()
    plugins.register(Plugin(), name="sched")
    result = train(
        data=str(tiny_data),
        plugin="mlp",
        model="mlp_small",
        scheduler="straight-line",
        epochs=2,
        batch_size=8,
        workers=0,
        threads=1,
        out=str(tmp_path / "runs"),
        name="l",
        plugins=plugins,
    )
    assert not result.failed and seen["total_steps"] == 2 * 4
    lrs = [e["lr"] for e in result.history.epochs]
    assert lrs[1] < lrs[0]
    result = train(
        data=str(tiny_data),
        plugin="mlp",
        model="mlp_small",
        scheduler="myplateau",
        epochs=2,
        batch_size=8,
        workers=0,
        threads=1,
        out=str(tmp_path / "runs"),
        name="p",
        plugins=plugins,
    )
    assert not result.failed


def test_an_exception_in_a_plugin_callback_names_the_plugin(tmp_path, cli, tiny_data, fresh_plugins):
    from augpipe.hookspecs import hookimpl
    from augpipe.training.callbacks import Callback

    class Broken(Callback):
        def on_epoch_end(self, epoch, metrics, model=None):
            raise ValueError("disk quota")

    class Plugin:
        @hookimpl
        def augpipe_register_callbacks(self, register):
            register("broken", lambda run_dir, config: Broken())

    fresh_plugins().register(Plugin(), name="brokenplug")
    line = error_line(cli("train", "--data", tiny_data, *TRAIN, "--callbacks", "broken"))
    assert "callback 'broken' of plugin 'brokenplug' failed in on_epoch_end: ValueError: disk quota" in line
