"""The plugin author's kit: ``augpipe.plugin`` (the public API) and ``augpipe.testing`` (the
conformance checks), which must pass on every built-in plugin and fail, naming the check, on
plugins that break the contract."""

from __future__ import annotations

import ast
import random
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from augpipe.testing import (
    PluginCheckError,
    check_augmentation,
    check_callback,
    check_optimizer,
    check_plugin,
    check_scheduler,
    check_trainer,
)

ROOT = Path(__file__).resolve().parents[1]


def plugin_module(source: str, name: str) -> types.ModuleType:
    """A plugin module made from source, as a third party would write it."""
    module = types.ModuleType(name)
    exec(compile(textwrap.dedent(source), name, "exec"), module.__dict__)
    return module


# -- the public module ---------------------------------------------------------------------------


def test_the_plugin_module_holds_the_api_and_imports_no_torch():
    code = (
        "import sys, augpipe.plugin as p\n"
        "names = ['Trainer', 'hookimpl', 'PluginError', 'ConfigError', 'DataError', 'AugpipeError', "
        "'activation_layer', 'check_activation', 'unknown_name_message', 'Callback']\n"
        "missing = [n for n in names if not hasattr(p, n)]\n"
        "assert not missing, missing\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'\n"
        "assert p.ACTIVATIONS[0] == 'relu'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_public_names_are_augpipes_own_objects():
    import augpipe.plugin as api
    from augpipe import errors, hookspecs, plugin_manager
    from augpipe.plugins import layers
    from augpipe.training import callbacks, optim

    assert api.Trainer is hookspecs.Trainer and api.hookimpl is hookspecs.hookimpl
    assert api.PluginError is errors.PluginError and api.unknown_name_message is plugin_manager.unknown_name_message
    assert api.activation_layer is layers.activation_layer and api.Callback is callbacks.Callback
    assert api.LRSchedule is optim.LRSchedule
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        api.Nope  # noqa: B018


def test_the_builtin_plugins_import_augpipe_only_through_the_public_module():
    for path in sorted((ROOT / "plugins").glob("*.py")):
        if path.name in ("layers.py", "__init__.py", "builtins.py"):
            continue  # layers is the implementation; builtins registers augpipe's own optimizers
        modules = {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("augpipe")
        }
        assert modules == {"augpipe.plugin"}, (path.name, modules)


# -- every built-in passes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "plugin, models",
    [
        ("cnn", ["cnn_small"]),
        ("mlp", ["mlp_small", "mlp"]),
        ("squeezenet", ["squeezenet1_1"]),
        ("resnet", ["resnet20"]),
    ],
)
def test_the_kit_passes_on_the_builtin_trainers(fresh_plugins, plugin, models):
    checked = check_plugin(plugin, models=models, image_size=16 if plugin == "resnet" else None)
    assert checked["trainers"] == [plugin]


def test_the_kit_passes_on_timm_models(fresh_plugins):
    # a small timm model at a small size: the checks are the same at any size
    assert check_trainer("timm", models=["test_resnet"], image_size=32, activations=["relu", "gelu", "tanh"]) == [
        "test_resnet"
    ]


def test_the_kit_passes_on_the_builtin_optimizers_and_schedulers(fresh_plugins):
    checked = check_plugin("builtins")
    assert checked["optimizers"] == ["adagrad", "adam", "adamw", "momentum", "muon", "nesterov", "rmsprop", "sgd"]
    assert checked["schedulers"] == [
        "cosine",
        "exponential",
        "linear",
        "multistep",
        "none",
        "onecycle",
        "plateau",
        "step",
    ]


def test_the_kit_leaves_the_callers_random_state_and_threads_alone(fresh_plugins):
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_trainer("cnn", models=["cnn_small"], activations=["relu"])
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == threads


def test_a_constant_schedule_must_be_declared(fresh_plugins):
    with pytest.raises(
        PluginCheckError,
        match=r"^lr check failed: scheduler 'none' of plugin 'builtins': "
        r"the learning rate stayed 0.1",
    ):
        check_scheduler("none")
    with pytest.raises(PluginCheckError, match="lr check failed: scheduler 'cosine'.*a constant schedule changed"):
        check_scheduler("cosine", changes_lr=False)


# -- broken trainers -------------------------------------------------------------------------------

TRAINER = """
import torch
from torch import nn
from augpipe.plugin import Trainer, activation_layer, hookimpl

class Net(nn.Module):
    def __init__(self, num_classes, activation, dropout):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = ACT(activation)
        self.drop = DROP(dropout)
        self.fc = nn.Linear(8, CLASSES(num_classes))
        EXTRA(self)

    def forward(self, x):
        FORWARD(self, x)
        x = self.act(self.conv(x)).mean((2, 3))
        return self.fc(self.drop(x))

ACT = lambda name: activation_layer(name)()
DROP = nn.Dropout
CLASSES = lambda n: n
EXTRA = lambda net: None
FORWARD = lambda net, x: None
{patch}

def build(*, model, num_classes, image_size, activation, dropout):
    return Net(num_classes, activation, dropout)

@hookimpl
def augpipe_register_trainers(register):
    register(Trainer(name="small", build_model=build, models=["net"], default_model="net", input_size=8))
"""


def broken_trainer(patch: str, name: str):
    return plugin_module(TRAINER.replace("{patch}", patch), name)


def test_the_kit_passes_the_unbroken_test_trainer():
    assert check_plugin(broken_trainer("", "fine"))["trainers"] == ["small"]


@pytest.mark.parametrize(
    "patch, message",
    [
        (
            "CLASSES = lambda n: 10",
            r"^num_classes check failed: trainer 'small' of plugin 'classes', model 'net', activation 'relu': "
            r"a batch of 2 gave outputs of shape \(2, 10\), expected \(2, 3\)",
        ),
        (
            "ACT = lambda name: nn.ReLU()",
            r"^activation check failed: trainer 'small' of plugin 'relu_always', model 'net', activation 'leaky_relu': "
            r".*keeps activations that --activation leaky_relu does not reach \(1 ReLU\)",
        ),
        (
            "ACT = lambda name: torch.relu",
            r"^activation check failed: trainer 'small' of plugin 'functional', model 'net', activation 'leaky_relu': "
            r"the outputs are exactly those with activation 'relu'",
        ),
        (
            "DROP = lambda p: nn.Identity()",
            r"^dropout check failed: trainer 'small' of plugin 'no_dropout', model 'net', activation 'relu': "
            r"with dropout 0.5 two forward passes in train mode give the same outputs",
        ),
        (
            "DROP = lambda p: nn.Dropout(0.3)",
            r"^dropout check failed: .*plugin 'fixed_dropout'.*built with dropout 0.5, its dropout layers have p=\[0.3\]",
        ),
        (
            "DROP = lambda p: nn.Sequential(nn.Dropout(p), nn.Dropout(0.1))",
            r"^dropout check failed: .*plugin 'extra_dropout'.*with dropout 0 two forward passes in train mode differ",
        ),
        # a random tensor kept as a plain attribute: not in the state dict
        (
            "EXTRA = lambda net: setattr(net, 'scale', torch.rand(1))\n"
            "_forward = Net.forward\nNet.forward = lambda self, x: _forward(self, x) * self.scale",
            r"^state_dict check failed: trainer 'small' of plugin 'unsaved', model 'net', activation 'relu': a fresh "
            r"model loaded with the state dict gives other outputs in eval mode",
        ),
        (
            "Net.state_dict = lambda self, *a, **k: {**nn.Module.state_dict(self, *a, **k), 'extra': object()}",
            r"^state_dict check failed: .*plugin 'pickles'.*does not survive torch.save / torch.load\(weights_only=True\)",
        ),
        (
            "FORWARD = lambda net, x: 1 / 0",
            r"^forward check failed: trainer 'small' of plugin 'raises', model 'net', activation 'relu': forward of a "
            r"\(2, 3, 8, 8\) batch in eval mode raised: ZeroDivisionError: division by zero",
        ),
        (
            "EXTRA = lambda net: {}['width']",
            r"^build check failed: trainer 'small' of plugin 'no_build', model 'net', activation 'relu': build_model "
            r"raised: KeyError: 'width'",
        ),
        (
            "CLASSES = lambda n: 3",  # right for 3 classes by chance
            r"^num_classes check failed: .*plugin 'three'.*expected \(2, 7\) for num_classes=7",
        ),
    ],
)
def test_a_broken_trainer_fails_naming_the_check(patch, message):
    name = message.split("plugin '")[1].split("'")[0]
    with pytest.raises(PluginCheckError, match=message) as err:
        check_plugin(broken_trainer(patch, name))
    assert isinstance(err.value, AssertionError)
    assert err.value.plugin == name and err.value.kind == "trainer" and err.value.model == "net"


def test_the_caller_may_limit_the_activations_a_trainer_is_held_to():
    relu_only = broken_trainer("ACT = lambda name: nn.ReLU()", "relu_only")
    assert check_plugin(relu_only, activations=["relu"])["trainers"] == ["small"]
    with pytest.raises(ValueError, match="activations must be among"):
        check_plugin(relu_only, activations=["swish"])


def test_a_trainer_record_that_contradicts_itself_fails_the_record_check():
    from augpipe.plugin import Trainer

    build = broken_trainer("", "record").build
    with pytest.raises(
        PluginCheckError,
        match=r"^record check failed: trainer 'odd' .*the default model 'big' "
        r"is not among its models",
    ):
        check_trainer(Trainer(name="odd", build_model=build, models=["net"], default_model="big"))
    with pytest.raises(PluginCheckError, match=r"model 'other' is not among its models"):
        check_trainer(Trainer(name="odd", build_model=build, models=["net"]), models=["other"])
    with pytest.raises(PluginCheckError, match="names no models"):
        check_trainer(Trainer(name="odd", build_model=build))


# -- broken optimizers, schedulers, augmentations, callbacks ----------------------------------------

OTHERS = '''
import random
import numpy as np
import torch
import albumentations as A
from augpipe.plugin import Callback, hookimpl

def good_sgd(model, *, lr, weight_decay, momentum):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)

def fixed_lr(model, *, lr, weight_decay, momentum):
    return torch.optim.SGD(model.parameters(), lr=0.01)

def last_layer_only(model, *, lr, weight_decay, momentum):
    return torch.optim.SGD(list(model.parameters())[-2:], lr=lr)

def good_decay(optimizer, *, config, steps_per_epoch, epochs, total_steps):
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)

class Forgetful:
    """Halves the lr each epoch, counting epochs in a state it does not save."""
    per_epoch = True
    def __init__(self, optimizer):
        self.optimizer, self.epochs = optimizer, 0
    def step(self, metric=None):
        self.epochs += 1
        for g in self.optimizer.param_groups:
            g["lr"] = 0.1 * 0.5 ** self.epochs
    def state_dict(self):
        return {}
    def load_state_dict(self, state):
        pass

def forgetful(optimizer, **kw):
    return Forgetful(optimizer)

class Shrink(A.ImageOnlyTransform):
    def apply(self, img, **params):
        return img[1:, 1:]

class Floats(A.ImageOnlyTransform):
    def apply(self, img, **params):
        return img.astype(np.float32) / 255

class GlobalNoise(A.ImageOnlyTransform):
    def apply(self, img, **params):
        return np.clip(img.astype(int) + np.random.randint(-20, 21, img.shape), 0, 255).astype(np.uint8)

class SeededNoise(A.ImageOnlyTransform):
    def get_params(self):
        return {"shift": self.py_random.randint(-20, 20)}
    def apply(self, img, shift=0, **params):
        return np.clip(img.astype(int) + shift, 0, 255).astype(np.uint8)
    def get_transform_init_args_names(self):
        return ()

class Counter(Callback):
    def __init__(self, run_dir, config):
        self.steps = 0
    def on_train_batch_end(self, epoch, step, loss):
        self.steps += 1
    def state_dict(self):
        return {"steps": self.steps}
    def load_state_dict(self, state):
        self.steps = state["steps"]

class Amnesiac(Counter):
    def load_state_dict(self, state):
        pass

class Unpicklable(Counter):
    def state_dict(self):
        return {"steps": self.steps, "when": random.Random()}

class Crashes(Counter):
    def on_epoch_end(self, epoch, metrics, model=None):
        raise RuntimeError("disk full")

@hookimpl
def augpipe_register_optimizers(register):
    for f in (good_sgd, fixed_lr, last_layer_only):
        register(f.__name__, f)

@hookimpl
def augpipe_register_schedulers(register):
    register("good_decay", good_decay)
    register("forgetful", forgetful)

@hookimpl
def augpipe_register_augmentations(register):
    for cls in (Shrink, Floats, GlobalNoise, SeededNoise):
        register(cls.__name__, cls)

@hookimpl
def augpipe_register_callbacks(register):
    for cls in (Counter, Amnesiac, Unpicklable, Crashes):
        register(cls.__name__.lower(), cls)
'''


@pytest.fixture
def others(fresh_plugins):
    from augpipe.plugin_manager import Plugins

    plugins = Plugins(load_entry_points=False)
    plugins.register(plugin_module(OTHERS, "others"), name="others")
    return plugins


def test_the_kit_passes_the_working_optimizer_scheduler_augmentation_and_callback(others):
    check_optimizer("good_sgd", plugins=others)
    rates = check_scheduler("good_decay", plugins=others)
    assert rates[0] == pytest.approx(0.09) and len(rates) == 18
    check_augmentation("SeededNoise", plugins=others)
    check_callback("counter", plugins=others)


@pytest.mark.parametrize(
    "check, name, message",
    [
        (
            check_optimizer,
            "fixed_lr",
            r"^lr check failed: optimizer 'fixed_lr' of plugin 'others': built with lr=0.1, "
            r"its parameter groups have lr \[0.01\]",
        ),
        (
            check_optimizer,
            "last_layer_only",
            r"^build check failed: optimizer 'last_layer_only' .*leaves parameters "
            r"out: 0.weight, 0.bias, 1.weight, 1.bias",
        ),
        (
            check_scheduler,
            "forgetful",
            r"^state_dict check failed: scheduler 'forgetful' of plugin 'others': restored "
            r"at step 9 of 18",
        ),
        (
            check_augmentation,
            "Shrink",
            r"^size check failed: augmentation 'Shrink' of plugin 'others': an image of "
            r"shape \(24, 40, 3\) came back as \(23, 39, 3\)",
        ),
        (check_augmentation, "Floats", r"^dtype check failed: augmentation 'Floats' .*came back as float32"),
        (check_augmentation, "GlobalNoise", r"^seed check failed: augmentation 'GlobalNoise' .*self.py_random"),
        (
            check_callback,
            "amnesiac",
            r"^state_dict check failed: callback 'amnesiac' of plugin 'others': restored from "
            r"its state dict, the callback's state is \{'steps': 0\}, not \{'steps': 6\}",
        ),
        (check_callback, "unpicklable", r"^state_dict check failed: callback 'unpicklable' .*weights_only"),
        (
            check_callback,
            "crashes",
            r"^hooks check failed: callback 'crashes' of plugin 'others': callback 'crashes' of "
            r"plugin 'others' failed in on_epoch_end: RuntimeError: disk full",
        ),
    ],
)
def test_a_broken_optimizer_scheduler_augmentation_or_callback_fails_naming_the_check(others, check, name, message):
    with pytest.raises(PluginCheckError, match=message):
        check(name, plugins=others)


def test_the_augmentation_check_puts_the_global_generators_back(others):
    np.random.seed(5)
    random.seed(5)
    expected = np.random.rand(), random.random()
    np.random.seed(5)
    random.seed(5)
    check_augmentation("SeededNoise", plugins=others)
    assert (np.random.rand(), random.random()) == expected


def test_check_plugin_runs_every_check_of_what_the_plugin_registers(others):
    with pytest.raises(PluginCheckError, match="lr check failed: optimizer 'fixed_lr'"):
        check_plugin(plugin_module(OTHERS, "others"))


# -- plugins that do not load --------------------------------------------------------------------------


def test_a_plugin_that_can_not_be_loaded_fails_the_load_or_hooks_check(fresh_plugins):
    with pytest.raises(
        PluginCheckError,
        match=r"^load check failed: plugin 'no_such_plugin_module': no installed "
        r"plugin .*ModuleNotFoundError",
    ):
        check_plugin("no_such_plugin_module")
    typo = plugin_module(
        "from augpipe.plugin import hookimpl\n@hookimpl\ndef augpipe_register_trainer(register):\n    pass\n", "typo"
    )
    with pytest.raises(PluginCheckError, match=r"^hooks check failed: .*unknown hook 'augpipe_register_trainer'"):
        check_plugin(typo)
    raising = plugin_module(
        "from augpipe.plugin import hookimpl\n"
        "@hookimpl\ndef augpipe_register_trainers(register):\n    raise ImportError('no cuda')\n",
        "raising",
    )
    with pytest.raises(
        PluginCheckError,
        match=r"^register check failed: plugin 'raising': failed in "
        r"augpipe_register_trainers: ImportError: no cuda",
    ):
        check_plugin(raising)
    with pytest.raises(PluginCheckError, match="registers nothing"):
        check_plugin(types.SimpleNamespace(__name__="empty"))
    with pytest.raises(PluginCheckError, match=r"^registered check failed: trainer 'nope'.*unknown trainer 'nope'"):
        check_trainer("nope")
