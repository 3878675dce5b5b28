"""The built-in trainers' models: every activation reaches the network, dropout is where it was
asked for, and the class count and image size come from the caller (the data)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from augpipe.config import ACTIVATIONS
from augpipe.errors import PluginError
from augpipe.plugin_manager import get_plugins

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (plugin, model): the CIFAR ResNet and an ImageNet one, the conv net, the MLP, and a small timm
# model that takes act_layer everywhere.
MODELS = [
    ("resnet", "resnet20"),
    ("resnet", "resnet18"),
    ("cnn", "cnn_small"),
    ("mlp", "mlp_small"),
    ("timm", "resnet10t"),
    ("squeezenet", "squeezenet1_1"),
]

# Activations each network has, whatever their kind: stem + 2 per basic block (resnet20: 9 blocks,
# resnet18: 8 blocks), one per conv group of cnn_small, one per hidden layer of mlp_small,
# resnet10t's deep stem (3) + 8 for its four one-block stages, and squeezenet1_1's stem, three per
# Fire module (8) and the classifier's.
EXPECTED_COUNT = {"resnet20": 19, "resnet18": 17, "cnn_small": 7, "mlp_small": 1, "resnet10t": 11, "squeezenet1_1": 26}

# What each activation computes (PReLU starts at slope 0.25, as torch initialises it).
FUNCTIONS = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "prelu": lambda x: F.prelu(x, torch.tensor([0.25])),
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}

# Class names (lower case) of activation modules in torch and timm, gates included.
ACTIVATION_CLASSES = {
    "relu",
    "relu6",
    "leakyrelu",
    "prelu",
    "elu",
    "celu",
    "selu",
    "gelu",
    "gelutanh",
    "quickgelu",
    "silu",
    "swish",
    "sigmoid",
    "hardsigmoid",
    "tanh",
    "hardtanh",
    "hardswish",
    "mish",
}


def build(plugin, model, activation="relu", dropout=0.0, num_classes=3, image_size=16):
    return (
        get_plugins()
        .trainer(plugin)
        .build_model(
            model=model, num_classes=num_classes, image_size=image_size, activation=activation, dropout=dropout
        )
    )


def activation_modules(net):
    return [m for m in net.modules() if type(m).__name__.lower() in ACTIVATION_CLASSES]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("plugin,model", MODELS, ids=[m for _, m in MODELS])
def test_every_activation_of_the_network_is_the_one_asked_for(plugin, model, activation):
    net = build(plugin, model, activation)
    acts = activation_modules(net)
    assert len(acts) == EXPECTED_COUNT[model]
    x = torch.linspace(-3, 3, 25)
    for m in acts:  # each one computes the asked-for function (a clone: some work in place)
        torch.testing.assert_close(m(x.clone()), FUNCTIONS[activation](x), msg=f"{type(m)} is not {activation}")
    if activation != "relu":
        assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    net.eval()
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 3)


@pytest.mark.parametrize("plugin,model", MODELS, ids=[m for _, m in MODELS])
def test_dropout_is_set_at_the_asked_rate_and_acts_in_training_only(plugin, model):
    net = build(plugin, model, dropout=0.3)
    if plugin in ("cnn", "mlp", "squeezenet"):
        rates = [m.p for m in net.modules() if isinstance(m, nn.Dropout)]
        assert rates and all(p == 0.3 for p in rates)
    else:  # timm's nets apply drop_rate before the classifier
        assert net.drop_rate == 0.3
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(0)
    net.train()
    assert not torch.equal(net(x), net(x))  # batch norm in training mode is deterministic; dropout is not
    net.eval()
    assert torch.equal(net(x), net(x))

    plain = build(plugin, model, dropout=0.0).train()
    assert torch.equal(plain(x), plain(x))


@pytest.mark.parametrize("plugin,model", MODELS, ids=[m for _, m in MODELS])
def test_output_has_one_logit_per_class_at_the_given_image_size(plugin, model):
    net = build(plugin, model, num_classes=5, image_size=24).eval()
    assert net(torch.randn(2, 3, 24, 24)).shape == (2, 5)


def test_mlp_input_width_follows_the_image_size():
    net = build("mlp", "mlp_small", image_size=12)
    first = next(m for m in net.modules() if isinstance(m, nn.Linear))
    assert first.in_features == 3 * 12 * 12
    with pytest.raises(RuntimeError):
        net(torch.randn(1, 3, 16, 16))


def test_mlp_has_dropout_after_every_hidden_layer():
    net = build("mlp", "mlp_large", activation="tanh", dropout=0.5)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Flatten"] + ["Linear", "Tanh", "Dropout"] * 3 + ["Linear"]


@pytest.mark.parametrize("model,feature_shape", [("resnet20", (64, 4, 4)), ("resnet18", (512, 2, 2))])
def test_small_images_keep_their_resolution_in_the_resnet_stem(model, feature_shape):
    """CIFAR-sized images get a 3x3 stride-1 stem without max-pool: 16 px stay 16 px into the
    first stage (a 7x7 stride-2 stem and max-pool would leave 4)."""
    net = build("resnet", model, image_size=16).eval()
    assert net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert isinstance(net.maxpool, nn.Identity)
    assert net.forward_features(torch.randn(1, 3, 16, 16)).shape[1:] == feature_shape


@pytest.mark.parametrize(
    "plugin,bad,suggested",
    [
        ("cnn", "cnn_smal", "cnn_small"),
        ("mlp", "mlp_smal", "mlp_small"),
        ("resnet", "resnet21", None),
        ("timm", "resnet10", None),
    ],
)
def test_unknown_model_names_the_plugin_and_the_choices(plugin, bad, suggested):
    with pytest.raises(PluginError) as err:
        build(plugin, bad)
    msg = str(err.value)
    assert f"'{plugin}'" in msg and repr(bad) in msg and "Choose from" in msg
    if suggested:
        assert f"Did you mean {suggested!r}" in msg


def test_a_timm_model_that_keeps_some_relus_is_refused_for_another_activation():
    """mobilenetv3 hard-codes ReLU in some blocks: asking for gelu must not silently mix."""
    with pytest.raises(PluginError, match=r"mobilenetv3_small_050.*--activation gelu.*ReLU"):
        build("timm", "mobilenetv3_small_050", activation="gelu")
    net = build("timm", "mobilenetv3_small_050", activation="relu")
    assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
