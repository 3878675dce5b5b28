"""Property-based tests of the entry points every setting passes through: whatever mapping a
config file, a flag or a spec file holds, augpipe either accepts it or answers with its own
error (AugpipeError, one line), never another exception."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augpipe.config import TrainConfig
from augpipe.errors import AugpipeError, ConfigError
from augpipe.files import parse_yaml

FIELDS = TrainConfig.field_names()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["relu", "cnn", "sgd", "cosine", "cpu", "auto", "1e-3", "false", "true", "standard", "0.1", "5"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
configs = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), values, max_size=6)


@pytest.fixture(scope="module")
def plugins():
    from augpipe.plugin_manager import Plugins

    return Plugins()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(configs)
def test_any_config_mapping_is_accepted_or_an_augpipe_error(plugins, mapping):
    from augpipe.training.run import build_config

    try:
        cfg = build_config(mapping, plugins=plugins)
    except AugpipeError as err:
        assert str(err) and "\n" not in str(err)
        return
    # What was accepted is what validation promises: typed and finite.
    cfg.validate()
    assert isinstance(cfg.epochs, int) and not isinstance(cfg.epochs, bool)
    assert isinstance(cfg.strict, bool) and isinstance(cfg.channels_last, bool)
    assert cfg.lr is None or math.isfinite(cfg.lr)


@settings(max_examples=200, deadline=None)
@given(configs)
def test_a_run_config_read_back_is_accepted_or_an_augpipe_error(mapping):
    try:
        TrainConfig.from_dict(mapping)
    except AugpipeError:
        pass


spec_ops = st.dictionaries(
    st.sampled_from(
        ["scale", "ratio", "p", "fill", "brightness", "contrast", "saturation", "hue", "mean", "std", "bogus"]
    ),
    values,
    max_size=4,
)
specs = st.dictionaries(
    st.sampled_from(["size", "crop", "hflip", "color_jitter", "erase", "normalize", "extra", "x"]),
    st.one_of(
        values, spec_ops, st.lists(st.dictionaries(st.sampled_from(["name", "p"]), values, max_size=2), max_size=2)
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(specs)
def test_any_augmentation_spec_is_accepted_or_an_augpipe_error(mapping):
    import numpy as np

    from augpipe.augment.cpu import build_train_transform
    from augpipe.augment.spec import AugmentSpec

    try:
        spec = AugmentSpec.from_dict(mapping)
        transform = build_train_transform(spec, 16, native=(16, 16), seed=0)
    except AugpipeError:
        return
    out = transform(image=np.zeros((16, 16, 3), dtype=np.uint8))["image"]
    assert out.dtype == np.uint8


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_yaml_text_parses_or_is_an_augpipe_error(text):
    try:
        parse_yaml(text, "test.yaml")
    except AugpipeError:
        pass


BOMB = """a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_a_yaml_alias_bomb_is_refused_at_once_and_plain_aliases_still_work():
    with pytest.raises(ConfigError, match="alias expansion"):
        parse_yaml(BOMB, "bomb.yaml")
    assert parse_yaml("base: &b {p: 0.5}\nhflip: *b\n") == {"base": {"p": 0.5}, "hflip": {"p": 0.5}}
    with pytest.raises(ConfigError, match="contains it"):
        parse_yaml("a: &a [*a]\n")
