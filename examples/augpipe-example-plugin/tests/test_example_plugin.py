"""The example plugin against augpipe's conformance kit, plus what the kit can not know: what
the augmentation is meant to do."""

from importlib.metadata import entry_points

import augpipe_example_plugin.plugin as plugin_module
import numpy as np
import pytest

from augpipe.testing import check_augmentation, check_plugin


def test_the_plugin_keeps_augpipes_contract():
    # every model at every activation, the augmentation, through the hooks the module implements
    checked = check_plugin(plugin_module)
    assert checked["trainers"] == ["example"]
    assert checked["augmentations"] == ["RandomDesaturate"]


def test_the_installed_entry_point_is_this_plugin():
    found = [ep for ep in entry_points(group="augpipe") if ep.name == "example"]
    if not found:
        pytest.skip("the package is not installed (pip install -e . first)")
    assert found[0].value == "augpipe_example_plugin.plugin"
    # through augpipe's own plugin loading, as `augpipe train --plugin example` finds it
    checked = check_plugin("example", models=["example_tiny"], activations=["relu", "tanh"])
    assert checked["trainers"] == ["example"]


def test_the_augmentation_blends_towards_grey_by_the_drawn_amount():
    from augpipe_example_plugin.transforms import RandomDesaturate

    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    grey = RandomDesaturate(amount=(1.0, 1.0), p=1.0)(image=img)["image"]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert not (img[..., 0] == img[..., 1]).all()
    assert np.array_equal(RandomDesaturate(amount=(0.0, 0.0), p=1.0)(image=img)["image"], img)
    half = RandomDesaturate(amount=(0.5, 0.5), p=1.0)(image=img)["image"].astype(int)
    assert np.abs(half - (img.astype(int) + grey.astype(int)) / 2).max() <= 1


def test_a_bad_amount_is_refused_when_the_transform_is_built():
    from augpipe_example_plugin.transforms import RandomDesaturate

    with pytest.raises(ValueError, match="0 <= low <= high <= 1"):
        RandomDesaturate(amount=(0.8, 0.2))
    # the kit's augmentation check takes the arguments a spec would give
    check_augmentation(RandomDesaturate, params={"amount": (0.9, 1.0)})
