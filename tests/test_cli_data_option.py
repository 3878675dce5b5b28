"""One way to say the same thing: the data set as SOURCE or as --data, and MixUp with CutMix
switching 0.5 / 0.5 where a spec gives both without p."""

import csv

import pytest
from conftest import error_line

from augpipe.augment.describe import describe_spec
from augpipe.augment.spec import AugmentSpec
from augpipe.errors import ConfigError


def _manifest(path):
    with open(path, newline="") as f:
        return sorted(tuple(row) for row in csv.reader(f))


def test_split_reads_the_data_set_from_data_as_from_source(cli, tiny_data, tmp_path):
    by_argument = cli("split", tiny_data, "--out", tmp_path / "a.csv")
    by_option = cli("split", "--data", tiny_data, "--out", tmp_path / "b.csv")
    assert by_argument.exit_code == 0, by_argument.output
    assert by_option.exit_code == 0, by_option.output
    assert _manifest(tmp_path / "a.csv") == _manifest(tmp_path / "b.csv")
    assert len(_manifest(tmp_path / "b.csv")) > 36  # the 36 images and a header


def test_preview_takes_data(cli, tiny_data, tmp_path):
    result = cli(
        "preview", "--data", tiny_data, "--n", 2, "--variants", 1, "--aug", "light", "--out", tmp_path / "p.png"
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_shard_takes_data(cli, tiny_data, tmp_path):
    result = cli("shard", "--data", tiny_data, "--out", tmp_path / "shards")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "shards" / "shards.json").is_file()


@pytest.mark.parametrize("command", ["split", "preview", "shard"])
def test_two_different_data_sets_are_refused(cli, tiny_data, tmp_path, command):
    other = tmp_path / "other"
    other.mkdir()
    args = ["--out", tmp_path / "out"] if command == "shard" else []
    line = error_line(cli(command, tiny_data, "--data", other, *args), codes=(2,))
    assert "two data sets given" in line and "give one" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "split.csv").exists()


def test_the_same_data_set_given_both_ways_is_accepted(cli, tiny_data, tmp_path):
    result = cli("split", tiny_data, "--data", tiny_data / ".." / tiny_data.name, "--out", tmp_path / "m.csv")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["split", "shard"])
def test_no_data_set_is_one_clear_line(cli, tmp_path, command):
    args = ["--out", tmp_path / "out"] if command == "shard" else []
    line = error_line(cli(command, *args), codes=(2,))
    assert "no data set: give it as SOURCE or --data PATH" in line


def test_mixup_and_cutmix_without_p_switch_half_and_half():
    spec = AugmentSpec.from_dict({"mixup": {"alpha": 0.2}, "cutmix": True})
    assert (spec.mixup.p, spec.cutmix.p) == (0.5, 0.5)
    assert (spec.mixup.alpha, spec.cutmix.alpha) == (0.2, 1.0)
    # Saved with its p, it reads back the same.
    assert AugmentSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()


def test_a_p_given_keeps_the_rule_that_the_two_sum_to_at_most_one():
    spec = AugmentSpec.from_dict({"mixup": {"p": 0.3}, "cutmix": {"p": 0.2}})
    assert (spec.mixup.p, spec.cutmix.p) == (0.3, 0.2)
    with pytest.raises(ConfigError, match="leave p out of both to switch 0.5 / 0.5"):
        AugmentSpec.from_dict({"mixup": {"p": 0.7}, "cutmix": {}})
    alone = AugmentSpec.from_dict({"mixup": {"alpha": 0.2}})
    assert alone.mixup.p == 1.0 and alone.cutmix is None


def test_describe_says_the_two_switch(cli):
    spec = AugmentSpec.from_dict({"mixup": True, "cutmix": True})
    text = describe_spec(spec)
    assert "switching between MixUp and CutMix 0.5 / 0.5 as timm does" in text
    uneven = describe_spec(AugmentSpec.from_dict({"mixup": {"p": 0.4}, "cutmix": {"p": 0.6}}))
    assert "MixUp with probability 0.4, CutMix with 0.6" in uneven and "as timm does" not in uneven


def test_preview_describe_prints_the_switch(cli, tmp_path):
    (tmp_path / "mix.yaml").write_text("mixup: {alpha: 0.2}\ncutmix: {alpha: 1.0}\n")
    result = cli("preview", "--describe", "--aug", tmp_path / "mix.yaml")
    assert result.exit_code == 0, result.output
    assert "as timm does" in result.output
