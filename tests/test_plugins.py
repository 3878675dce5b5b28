"""The plugin system: the built-ins registered through entry points, a third-party package
installed on sys.path, and plugins that are broken, clash or misspell a hook."""

from __future__ import annotations

import json
import sys
import types
from importlib.metadata import version

import pytest

from augpipe.errors import PluginError
from augpipe.hookspecs import Trainer, hookimpl
from augpipe.plugin_manager import Plugins, Registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AUGPIPE = f"(augpipe {version('augpipe')})"

TINYPLUG = """
import torch
from augpipe.hookspecs import Trainer, hookimpl

CALLS = {"optimizer": 0, "callback": [], "epoch_end": []}


def build(*, model, num_classes, image_size, activation, dropout):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * image_size * image_size, num_classes))


def tiny_sgd(model, *, lr, weight_decay, momentum):
    CALLS["optimizer"] += 1
    return torch.optim.SGD(model.parameters(), lr=lr)


class EpochLog:
    def __init__(self, run_dir, config):
        self.path = run_dir / "tiny.log"

    def on_epoch_end(self, epoch, metrics, model):
        CALLS["callback"].append(epoch)
        with open(self.path, "a") as fh:
            fh.write(f"{epoch} {metrics['train_loss']:.4f}\\n")
        return False


@hookimpl
def augpipe_register_trainers(register):
    register(Trainer(name="tiny", build_model=build, models=["linear"], default_model="linear",
                     defaults={"optimizer": "tinysgd", "lr": 0.01, "scheduler": "none"},
                     description="a linear classifier"))


@hookimpl
def augpipe_register_optimizers(register):
    register("tinysgd", tiny_sgd)


@hookimpl
def augpipe_register_callbacks(register):
    register("tinylog", EpochLog)


@hookimpl
def augpipe_epoch_end(epoch, metrics):  # a subset of the spec's arguments, as pluggy allows
    CALLS["epoch_end"].append(epoch)
"""

# the data flags of a one-epoch run
RUN = ["--epochs", "1", "--workers", "0", "--threads", "1", "--batch-size", "8", "--aug", "none"]


# -- the built-ins ---------------------------------------------------------------------------------


def test_plugins_lists_the_builtins_with_package_version_and_models(cli, fresh_plugins):
    result = cli("plugins")
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    for name in ("builtins", "resnet", "cnn", "mlp", "timm"):
        assert f"{name}  {AUGPIPE}" in out
    text = result.output
    assert "trainer cnn: small conv nets for 32x32 images; models: cnn_small, cnn, cnn_wide (default cnn)" in text
    assert "trainer mlp: multi-layer perceptrons with dropout; models: mlp_small, mlp, mlp_large (default mlp)" in text
    assert "trainer resnet:" in text and "models: resnet20, resnet32, resnet44, resnet56, resnet110" in text
    assert "(default resnet20)" in text
    assert "trainer timm: any timm model by name" in text and "(default resnet18)" in text
    assert "    optimizers: adagrad, adam, adamw, momentum, muon, nesterov, rmsprop, sgd" in out
    assert "    schedulers: cosine, exponential, linear, multistep, none, onecycle, plateau, step" in out
    assert "failed to load" not in text


def test_every_builtin_registry_entry_is_owned_by_its_plugin(fresh_plugins):
    plugins = fresh_plugins()
    assert {t: plugins.trainers.owner[t] for t in plugins.trainers.names()} == {
        "cnn": "cnn",
        "fastcifar": "fastcifar",
        "mlp": "mlp",
        "resnet": "resnet",
        "squeezenet": "squeezenet",
        "timm": "timm",
    }
    assert set(plugins.optimizers.owner.values()) == set(plugins.schedulers.owner.values()) == {"builtins"}


# -- the registries -------------------------------------------------------------------------------


def test_a_name_registered_twice_names_both_plugins():
    reg = Registry("optimizer")
    reg.add("lion", object(), "first")
    with pytest.raises(
        PluginError, match="optimizer 'lion' is registered twice: by plugin 'first' and by plugin 'second'"
    ):
        reg.add("lion", object(), "second")
    with pytest.raises(PluginError, match="registered a optimizer without a name|without a name"):
        reg.add("", object(), "third")


def test_an_unknown_name_suggests_and_lists_the_choices():
    reg = Registry("scheduler")
    for name in ("cosine", "step", "none"):
        reg.add(name, object(), "p")
    with pytest.raises(PluginError) as err:
        reg.get("cosin")
    assert str(err.value) == "unknown scheduler 'cosin'. Did you mean 'cosine'? Choose from: cosine, none, step"
    big = Registry("model")
    for i in range(50):
        big.add(f"m{i:02d}", object(), "p")
    with pytest.raises(PluginError, match=r"m39 \.\.\. \(50 in all\)$"):
        big.get("zzz")


def test_a_plugin_registered_in_code_takes_part_and_can_leave():
    plugins = Plugins(load_entry_points=False)
    seen = []

    def augpipe_register_trainers(register):
        register(Trainer(name="mine", build_model=lambda **kw: None))

    def augpipe_epoch_end(metrics):
        seen.append(metrics["epoch"])

    module = types.SimpleNamespace(
        augpipe_register_trainers=hookimpl(augpipe_register_trainers), augpipe_epoch_end=hookimpl(augpipe_epoch_end)
    )
    plugins.register(module, name="mine", package="mypkg", version="2.0")
    assert plugins.trainers.names() == ["mine"] and plugins.trainers.owner["mine"] == "mine"
    plugins.epoch_end("run", 3, {"epoch": 3})
    assert seen == [3]
    plugins.unregister("mine")
    assert plugins.trainers.names() == [] and "mine" not in plugins.info


def test_a_misspelt_hook_registered_in_code_is_refused_by_name():
    plugins = Plugins(load_entry_points=False)
    module = types.SimpleNamespace(augpipe_register_trainer=hookimpl(lambda register: None))
    with pytest.raises(PluginError, match=r"plugin 'typo' is not valid: .*unknown hook 'augpipe_register_trainer'"):
        plugins.register(module, name="typo")
    assert "typo" not in plugins.info and not plugins.pm.has_plugin("typo")


# -- a third-party package ---------------------------------------------------------------------------


def test_a_third_party_package_is_listed_and_trains(tmp_path, cli, tiny_data, plugin_package):
    plugin_package("tinyplug", "0.3.1", entry_points={"tinyplug": "tinyplug_mod"}, modules={"tinyplug_mod": TINYPLUG})

    listing = cli("plugins")
    assert listing.exit_code == 0, listing.output
    out = listing.output.splitlines()
    assert "tinyplug  (tinyplug 0.3.1)" in out
    assert "    trainer tiny: a linear classifier; models: linear (default linear)" in out
    assert "    optimizers: tinysgd" in out and "    callbacks: tinylog" in out
    assert "cnn  " + AUGPIPE in out  # the built-ins are still there

    result = cli(
        "train",
        "--data",
        tiny_data,
        "--plugin",
        "tiny",
        "--callbacks",
        "tinylog",
        "--name",
        "t",
        "--epochs",
        "2",
        *RUN[2:],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs/t/summary.json").read_text())
    assert (summary["plugin"], summary["model"], summary["epochs_run"]) == ("tiny", "linear", 2)
    calls = sys.modules["tinyplug_mod"].CALLS
    assert calls == {"optimizer": 1, "callback": [1, 2], "epoch_end": [1, 2]}
    assert len((tmp_path / "runs/t/tiny.log").read_text().splitlines()) == 2
    config = (tmp_path / "runs/t/config.yaml").read_text()
    assert "optimizer: tinysgd" in config and "- tinylog" in config  # the plugin's defaults, recorded


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_work(tmp_path, cli, tiny_data, plugin_package):
    plugin_package(
        "tinyplug",
        "0.3.1",
        entry_points={"tinyplug": "tinyplug_mod", "fancy": "fancy_mod"},
        modules={"tinyplug_mod": TINYPLUG, "fancy_mod": "import fancy_dependency_not_installed\n"},
    )
    listing = cli("plugins")
    assert listing.exit_code == 0, listing.output
    out = listing.output.splitlines()
    assert "fancy  (tinyplug 0.3.1)" in out
    assert "    failed to load: ModuleNotFoundError: No module named 'fancy_dependency_not_installed'" in out
    assert "tinyplug  (tinyplug 0.3.1)" in out and "cnn  " + AUGPIPE in out
    assert "warning: plugin 'fancy' (package tinyplug) failed to load" in listing.output

    # asking for it names the failure; the other plugins train
    result = cli("train", "--data", tiny_data, "--plugin", "fancy", *RUN)
    assert result.exit_code == 1 and "unknown plugin 'fancy'" in result.output
    assert "(failed to load: fancy)" in result.output
    result = cli("train", "--data", tiny_data, "--plugin", "tiny", "--name", "ok", *RUN)
    assert result.exit_code == 0, result.output


def test_a_duplicate_trainer_name_is_refused_naming_both_plugins(tmp_path, cli, tiny_data, plugin_package):
    clash = """
        from augpipe.hookspecs import Trainer, hookimpl

        @hookimpl
        def augpipe_register_trainers(register):
            register(Trainer(name="cnn", build_model=lambda **kw: None))
    """
    plugin_package("cnnclone", "1.0", entry_points={"clone": "clone_mod"}, modules={"clone_mod": clash})
    result = cli("train", "--data", tiny_data, "--plugin", "cnn", *RUN)
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "trainer 'cnn' is registered twice" in error[0]
    assert "plugin 'cnn'" in error[0] and "plugin 'clone'" in error[0]
    assert not (tmp_path / "runs").exists()


def test_a_plugin_name_taken_by_another_package_is_reported(cli, plugin_package):
    """Two packages declaring the same entry-point name: pluggy holds only one; the other must
    be reported, not dropped in silence (here the built-in 'cnn' would vanish)."""
    plugin_package(
        "othercnn",
        "2.0",
        entry_points={"cnn": "othercnn_mod"},
        modules={"othercnn_mod": "from augpipe.hookspecs import hookimpl\n"},
    )
    listing = cli("plugins")
    assert listing.exit_code == 0, listing.output
    text = listing.output
    assert "(othercnn 2.0)" in text and AUGPIPE in text
    assert "plugin name 'cnn' is already taken by package" in text
    assert "not loaded" in text


def test_a_misspelt_hook_implementation_is_reported(cli, plugin_package):
    typo = """
        from augpipe.hookspecs import Trainer, hookimpl

        @hookimpl
        def augpipe_register_trainer(register):  # the hook is augpipe_register_trainers
            register(Trainer(name="typo", build_model=lambda **kw: None))
    """
    plugin_package("typoplug", "0.1", entry_points={"typoplug": "typo_mod"}, modules={"typo_mod": typo})
    listing = cli("plugins")
    assert listing.exit_code == 0, listing.output
    out = listing.output.splitlines()
    assert "typoplug  (typoplug 0.1)" in out
    failed = [line for line in out if line.startswith("    failed to load:")]
    assert len(failed) == 1 and "unknown hook 'augpipe_register_trainer'" in failed[0]
    assert "cnn  " + AUGPIPE in out


def test_installed_plugins_do_not_outlive_the_test():
    """(after the tests above) the plugin manager is back to the built-ins."""
    from augpipe.plugin_manager import get_plugins

    info = get_plugins().info
    assert {"builtins", "cnn", "mlp", "resnet", "timm"} <= set(info)
    assert not {"tinyplug", "fancy", "clone", "typoplug", "cnn [augpipe]", "cnn [othercnn]"} & set(info)
    assert all(not i.error for i in info.values())
    assert "tinyplug_mod" not in sys.modules


def test_an_activation_the_trainer_does_not_support_is_refused_before_the_data(fresh_plugins):
    from augpipe.errors import ConfigError
    from augpipe.training.run import build_config

    def augpipe_register_trainers(register):
        register(
            Trainer(
                name="relu_only",
                build_model=lambda **kw: None,
                models=["m"],
                default_model="m",
                activations=("relu", "gelu"),
            )
        )

    plugins = fresh_plugins()
    plugins.register(
        types.SimpleNamespace(augpipe_register_trainers=hookimpl(augpipe_register_trainers)), name="relu_only"
    )
    assert build_config(plugin="relu_only", activation="gelu", plugins=plugins).activation == "gelu"
    with pytest.raises(ConfigError, match=r"^trainer 'relu_only' supports --activation relu, gelu, not 'tanh'$"):
        build_config(plugin="relu_only", activation="tanh", data="/nonexistent", plugins=plugins)
