"""``describe_spec`` and ``augpipe preview --describe``: every op in running order with every
parameter, the policy tables where augpipe.augment.policies has them, the YAML that reproduces
the spec, and no picture drawn."""

from __future__ import annotations

import sys
import textwrap
import types

import pytest
import yaml
from conftest import error_line
from hypothesis import given, settings
from hypothesis import strategies as st

from augpipe.augment.describe import describe_spec
from augpipe.augment.spec import PRESETS, AugmentSpec

# Values no default has, so that each one found in the text was read from this spec.
EVERY_OP = {
    "size": 24,
    "crop": {"scale": [0.31, 0.97], "ratio": [0.7, 1.4], "p": 0.9},
    "translate": {"pad": 3, "mode": "constant", "fill": 7, "p": 0.65},
    "hflip": {"p": 0.4},
    "color_jitter": {"brightness": 0.11, "contrast": 0.12, "saturation": 0.13, "hue": 0.04, "p": 0.7},
    "rand_augment": {"n": 3, "m": 5, "num_magnitude_bins": 11, "p": 0.6},
    "extra": [{"name": "GaussianBlur", "p": 0.15, "blur_limit": [3, 7]}],
    "erase": {"scale": [0.03, 0.21], "ratio": [0.4, 2.5], "fill": "random", "p": 0.35},
    "mixup": {"alpha": 0.3, "p": 0.45},
    "cutmix": {"alpha": 0.8, "p": 0.55},
    "normalize": {"mean": [0.51, 0.41, 0.31], "std": [0.21, 0.26, 0.29]},
}
RUNNING_ORDER = [
    "crop",
    "translate",
    "hflip",
    "color_jitter",
    "rand_augment",
    "GaussianBlur",
    "erase",
    "mixup",
    "cutmix",
]


def shown(v) -> str:
    return "[" + ", ".join(map(str, v)) + "]" if isinstance(v, list) else str(v)


def split_text(text: str) -> tuple[str, dict]:
    """The description, and the YAML after it read back."""
    words, _, yaml_part = text.partition("YAML that reproduces it")
    return words, yaml.safe_load(textwrap.dedent(yaml_part.split("\n", 1)[1]))


@pytest.fixture
def no_policies(monkeypatch):
    """augpipe.augment.policies as if it were not there (an import of it raises ImportError)."""
    monkeypatch.setitem(sys.modules, "augpipe.augment.policies", None)


def test_every_op_and_every_parameter_is_described_in_running_order(no_policies):
    spec = AugmentSpec.from_dict(EVERY_OP)
    words, reproduced = split_text(describe_spec(spec, name="mine"))
    assert words.startswith("Augmentation mine: 7 per-image op(s), 2 batch op(s)")
    positions = [words.index(f"{label} (") for label in RUNNING_ORDER]
    assert positions == sorted(positions)
    assert [f"{k}. " in words for k in range(1, 8)] == [True] * 7 and "8. " not in words
    for op, params in EVERY_OP.items():
        if op in ("size", "extra", "normalize"):
            continue
        for key, value in params.items():
            assert f"{key}={shown(value)}" in words, (op, key)
    assert "blur_limit=[3, 7]" in words and "p=0.15" in words
    assert "sigma_limit=[0.5, 3.0]" in words  # the extra's defaults filled in
    assert "MixUp with probability 0.45, CutMix with 0.55, neither with 0" in words
    assert "mean [0.51, 0.41, 0.31]" in words and "std [0.21, 0.26, 0.29]" in words
    assert "24x24 px" in words and "filled with 7" in words
    assert "op table not available" in words  # no policies module: the parameters only
    assert AugmentSpec.from_dict(reproduced).to_dict() == spec.to_dict()


def test_defaults_are_filled_in():
    words, _ = split_text(
        describe_spec(AugmentSpec.from_dict({"trivial_augment": True, "auto_augment": "svhn", "erase": {"p": 0.5}}))
    )
    assert "num_magnitude_bins=31" in words and "policy=svhn" in words
    assert "scale=[0.02, 0.2], ratio=[0.3, 3.3], fill=0, p=0.5" in words
    assert "none: every image trains with its own label" in words


def test_a_policy_shows_the_op_table_of_the_policies_module(monkeypatch):
    calls = []

    def policy_table(name, op=None):
        calls.append((name, op.n))
        return [
            {"op": "Rotate", "albumentations": "A.Rotate", "magnitude": "±30°", "signed": True},
            {"op": "Posterize", "albumentations": "posterize", "magnitude": "4..8 bits", "signed": False},
        ]

    monkeypatch.setitem(sys.modules, "augpipe.augment.policies", types.SimpleNamespace(policy_table=policy_table))
    words, _ = split_text(describe_spec(AugmentSpec.from_dict({"rand_augment": {"n": 3, "m": 5}})))
    assert calls == [("rand_augment", 3)]
    lines = words.splitlines()
    header = next(line for line in lines if "albumentations" in line and "magnitude" in line)
    assert header.split() == ["op", "albumentations", "magnitude", "signed"]
    assert any(line.split()[:3] == ["Rotate", "A.Rotate", "±30°"] for line in lines)
    assert any(line.split()[:2] == ["Posterize", "posterize"] for line in lines)

    def broken(name, op=None):
        raise AttributeError("half-written module")

    monkeypatch.setitem(sys.modules, "augpipe.augment.policies", types.SimpleNamespace(policy_table=broken))
    words, _ = split_text(describe_spec(AugmentSpec.from_dict({"rand_augment": {"n": 3, "m": 5}})))
    assert "n=3, m=5, num_magnitude_bins=31, p=1.0" in words and "op table not available" in words


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_describes_itself(preset):
    spec = AugmentSpec.preset(preset)
    words, reproduced = split_text(describe_spec(spec, name=preset))
    assert words.startswith(f"Augmentation {preset}: ")
    for op in spec.active_ops():
        assert f"{op} (" in words
    assert AugmentSpec.from_dict(reproduced).to_dict() == spec.to_dict()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.sampled_from(["crop", "translate", "hflip", "color_jitter", "trivial_augment", "erase", "mixup", "cutmix"]),
        unique=True,
    )
)
def test_any_combination_of_ops_is_described(ops):
    aug = {op: True for op in ops}
    if "mixup" in ops and "cutmix" in ops:
        aug["mixup"], aug["cutmix"] = {"p": 0.5}, {"p": 0.5}
    spec = AugmentSpec.from_dict(aug)
    words, reproduced = split_text(describe_spec(spec))
    positions = [words.index(f"{op} (") for op in spec.active_ops()]
    assert positions == sorted(positions)
    assert AugmentSpec.from_dict(reproduced).to_dict() == spec.to_dict()


# -- the command -----------------------------------------------------------------------------------
def test_preview_describe_prints_and_draws_nothing(tmp_path, cli):
    result = cli("preview", "--aug", "standard", "--describe")
    assert result.exit_code == 0, result.output
    assert result.output == describe_spec(AugmentSpec.preset("standard"), name="standard")
    assert list(tmp_path.rglob("*.png")) == []

    spec_file = tmp_path / "my.yaml"
    spec_file.write_text("hflip: {p: 0.3}\n")
    result = cli("preview", "--aug", spec_file, "--describe", "--out", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    assert "hflip (HorizontalFlip), with probability 0.3" in result.output
    assert list(tmp_path.rglob("*.png")) == []


@pytest.mark.parametrize("describe", [["--describe"], []])
def test_an_unknown_preset_suggests_the_closest(tmp_path, cli, describe):
    line = error_line(cli("preview", "--aug", "standrad", *describe))
    assert "unknown augmentation 'standrad' (did you mean standard?)" in line
    assert list(tmp_path.rglob("*.png")) == []
