"""The fastcifar trainer: airbench94's network and its patch-whitening first layer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from augpipe.errors import PluginError
from augpipe.plugins import fastcifar
from augpipe.plugins.fastcifar import build_fastcifar, patch_whitening_weights

ROOT = Path(__file__).resolve().parents[1]


def build(num_classes=10, activation="gelu", dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return build_fastcifar(
        model="airbench", num_classes=num_classes, image_size=32, activation=activation, dropout=dropout
    )


@pytest.fixture
def plugins():
    """A plugin manager holding this module and the built-in optimizers and schedulers: the
    tests do not depend on the installed entry points being up to date."""
    from augpipe.plugin_manager import Plugins
    from augpipe.plugins import builtins

    manager = Plugins(load_entry_points=False)
    manager.register(fastcifar, name="fastcifar")
    manager.register(builtins, name="builtins")
    return manager


def smooth_images(n=64, size=12, seed=0) -> torch.Tensor:
    """Float NCHW images whose neighbouring pixels and channels are strongly correlated (noise,
    blurred, plus a shared grey level): whitening them is far from the identity map."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(n, 3, size + 2, size + 2, generator=g), 3, stride=1)
    return 0.7 * x + 0.5 * x.mean(1, keepdim=True) + 0.05 * torch.randn(n, 3, size, size, generator=g)


def second_moment(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The second-moment matrix of the outputs of a convolution with ``weight`` (no bias) over ``x``."""
    out = F.conv2d(x.double(), weight.double()).permute(0, 2, 3, 1).reshape(-1, weight.shape[0])
    return out.T @ out / out.shape[0]


# -- the network ---------------------------------------------------------------------------------


def test_parameter_count_matches_airbench94():
    net = build(10)
    # airbench94: 1.97 M. The frozen whitening filters (288) and batch-norm scales (1,152) count too.
    assert sum(p.numel() for p in net.parameters()) == 1_972_792
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 1_972_792 - 288 - 1_152


def test_forward_backward_trains_all_but_the_frozen_weights():
    net = build(10).train()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in net.named_parameters():
        frozen = name == "whiten.weight" or (name.endswith("weight") and ".norm" in name)
        assert (p.grad is None) == frozen, name
        if not frozen:
            assert torch.isfinite(p.grad).all(), name
    assert net.whiten.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("num_classes", [2, 100])
def test_output_shape_follows_the_class_count(num_classes):
    net = build(num_classes).eval()
    with torch.no_grad():
        assert net(torch.randn(3, 3, 32, 32)).shape == (3, num_classes)
    assert net.get_classifier().out_features == num_classes


def test_batch_norm_and_output_scale_as_in_airbench():
    net = build(10)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6
    assert all(
        m.momentum == pytest.approx(0.4) and m.eps == 1e-12 and not m.weight.requires_grad and m.bias.requires_grad
        for m in norms
    )
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = net.pool(net.groups(net.whiten_act(net.whiten(x)))).flatten(1)
        torch.testing.assert_close(net(x), net.classifier(features) / 9)


def test_conformance_kit_passes(plugins):
    from augpipe.testing import check_trainer

    assert check_trainer("fastcifar", plugins=plugins) == ["airbench"]


def test_unknown_model_is_a_plugin_error():
    with pytest.raises(PluginError, match="unknown model 'airbench96'"):
        build_fastcifar(model="airbench96", num_classes=10, image_size=32, activation="gelu", dropout=0.0)


def test_gelu_by_default_and_the_flag_still_wins(plugins):
    from augpipe.training.run import build_config

    cfg = build_config(plugin="fastcifar", plugins=plugins)
    assert (cfg.model, cfg.activation, cfg.momentum) == ("airbench", "gelu", 0.85)
    assert build_config(plugin="fastcifar", activation="relu", plugins=plugins).activation == "relu"


def test_registered_as_a_built_in_entry_point():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["augpipe"]["fastcifar"] == "augpipe.plugins.fastcifar"


# -- patch whitening -----------------------------------------------------------------------------


def test_whitened_patches_have_identity_covariance():
    x = smooth_images()
    raw = second_moment(x, torch.eye(12).view(12, 3, 2, 2))
    assert (raw - torch.eye(12, dtype=torch.float64)).abs().max() > 0.3  # far from white to start with
    w = patch_whitening_weights(x, eps=1e-9)
    assert w.shape == (24, 3, 2, 2) and w.dtype == torch.float32
    eye = torch.eye(12, dtype=torch.float64)
    # The filters and their negatives: [[I, -I], [-I, I]].
    torch.testing.assert_close(
        second_moment(x, w), torch.cat([torch.cat([eye, -eye], 1), torch.cat([-eye, eye], 1)]), atol=1e-4, rtol=0
    )


def test_eps_shrinks_each_direction_by_its_eigenvalue():
    x = smooth_images()
    w = patch_whitening_weights(x, eps=5e-4)
    half = second_moment(x, w[:12])
    eigenvalues = torch.linalg.eigvalsh(second_moment(x, torch.eye(12).view(12, 3, 2, 2))).flip(0)
    torch.testing.assert_close(half, torch.diag(eigenvalues / (eigenvalues + 5e-4)), atol=1e-4, rtol=0)
    assert half.diagonal()[-1] < 0.99  # the weakest direction of these images is comparable to eps


def test_shapes_for_other_patches_and_channels():
    g = torch.Generator().manual_seed(1)
    assert patch_whitening_weights(torch.randn(4, 1, 9, 9, generator=g), patch=3).shape == (18, 1, 3, 3)
    assert patch_whitening_weights(torch.randn(4, 3, 8, 8, generator=g), patch=1).shape == (6, 3, 1, 1)
    with pytest.raises(ValueError, match="float NCHW"):
        patch_whitening_weights(torch.zeros(4, 3, 8, 8, dtype=torch.uint8))


def test_whitening_is_deterministic_and_ignores_image_order():
    x = smooth_images(seed=3)
    w = patch_whitening_weights(x)
    assert torch.equal(w, patch_whitening_weights(x.clone()))
    # Another order sums the same patches in another order: the same filters, signs included.
    torch.testing.assert_close(patch_whitening_weights(x.flip(0)), w, atol=1e-5, rtol=1e-5)
    # Largest eigenvalue first, each eigenvector's largest component positive.
    flat = w[:12].reshape(12, -1)
    assert (flat.gather(1, flat.abs().argmax(1, keepdim=True)) > 0).all()
    assert (flat.norm(dim=1)[:-1] <= flat.norm(dim=1)[1:]).all()


def test_init_from_data_whitens_the_normalised_training_images():
    g = torch.Generator().manual_seed(0)
    base = F.avg_pool2d(torch.rand(32, 1, 34, 34, generator=g), 3, stride=1)
    images = (base * 180 + torch.rand(32, 3, 32, 32, generator=g) * 60).to(torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    net = build(10).to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.init_from_data(images, mean, std)
    after = net.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == ["whiten.weight"]
    assert net.whiten.weight.is_contiguous(memory_format=torch.channels_last)
    assert not net.whiten.weight.requires_grad
    # As augpipe's loader normalises a batch.
    from augpipe.data.loader import BatchNormalizer

    x = BatchNormalizer(mean, std)(images)
    torch.testing.assert_close(
        net.whiten.weight, patch_whitening_weights(x).contiguous(memory_format=torch.channels_last)
    )
    eigenvalues = torch.linalg.eigvalsh(second_moment(x, torch.eye(12).view(12, 3, 2, 2))).flip(0)
    torch.testing.assert_close(
        second_moment(x, net.whiten.weight[:12]), torch.diag(eigenvalues / (eigenvalues + 5e-4)), atol=1e-4, rtol=0
    )
    with pytest.raises(ValueError, match="uint8"):
        net.init_from_data(x, mean, std)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_training_run_fits_the_first_layer_to_its_training_images(tmp_path):
    import numpy as np
    from conftest import colour_classes

    from augpipe.data.prepare import prepare_data
    from augpipe.training.run import train

    data = colour_classes(tmp_path / "data", per_class=10, size=32)
    result = train(
        data=str(data),
        plugin="fastcifar",
        epochs=1,
        batch_size=8,
        workers=0,
        threads=1,
        progress=False,
        out=str(tmp_path / "runs"),
        name="w",
        aug="none",
        val=0.2,
        test=0.2,
    )
    state = torch.load(result.run_dir / "last.pt", map_location="cpu", weights_only=True)
    # The filters of the training images the run used (its own split), normalised as it normalised them.
    prepared = prepare_data(data, split_file=result.run_dir / "split.csv")
    images = np.stack([prepared.store[int(i)] for i in prepared.indices("train")])
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1) * 255
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1) * 255
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - mean) / std
    torch.testing.assert_close(
        state["model"]["whiten.weight"].float(), patch_whitening_weights(x), rtol=1e-4, atol=1e-4
    )


def test_whitening_bias_trains_for_three_epochs_then_stays():
    model = build()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    biases = []
    for epoch in range(1, 6):
        model.set_epoch(epoch)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        biases.append(model.whiten.bias.detach().clone())
    assert model.whiten.bias.grad is None
    assert not torch.equal(biases[1], biases[2])  # epoch 3 still moves it
    assert torch.equal(biases[2], biases[3]) and torch.equal(biases[3], biases[4])  # 4 and 5 do not, momentum neither
    assert not torch.equal(model.groups[0].conv1.weight, build().groups[0].conv1.weight)  # the rest trains on


@pytest.mark.parametrize("name", ["cifar10-94", "cifar10-94-gpu", "cifar10-fast", "cifar10-gpu"])
def test_the_cifar_recipes_resolve(name):
    from augpipe.augment.spec import AugmentSpec
    from augpipe.training.run import build_config

    cfg = build_config(recipe=name)
    AugmentSpec.load(cfg.aug)
    if name.startswith("cifar10-94"):
        # airbench94's arithmetic: lr 11.5 per 1024 images on a summed loss over 1 + 1 / (1 - 0.85)
        assert cfg.lr == pytest.approx(11.5 * cfg.batch_size / 1024 / (1 + 1 / (1 - cfg.momentum)), rel=1e-3)
        assert cfg.min_lr == pytest.approx(0.07 * cfg.lr, rel=1e-3)
        assert (cfg.plugin, cfg.norm_lr_scale, cfg.scheduler, cfg.tta) == ("fastcifar", 64, "linear", "flip-translate")


@pytest.mark.usefixtures("one_torch_thread")
def test_the_cifar10_94_recipe_trains_with_fast_norm_shifts(tmp_path):
    from conftest import colour_classes

    from augpipe.training.run import train

    data = colour_classes(tmp_path / "data", per_class=10, size=32)
    result = train(
        recipe="cifar10-94",
        data=str(data),
        epochs=1,
        batch_size=8,
        workers=0,
        threads=1,
        precision="fp32",
        progress=False,
        out=str(tmp_path / "runs"),
        name="r",
        val=0.2,
        test=0.2,
    )
    state = torch.load(result.run_dir / "last.pt", map_location="cpu", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    peaks = sorted({g["initial_lr"] for g in groups})
    assert peaks == pytest.approx([0.375, 0.375 * 64])
    assert result.summary["test_images"] > 0
