"""A sweep begun before augpipe gained a setting is the same sweep after it, as long as the new
setting is at its default; at another value it is another sweep, refused as before."""

from __future__ import annotations

import pytest
import yaml
from conftest import SWEEP_FAST, error_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = [*SWEEP_FAST, "--name", "s"]


def forget(sweep_yaml, key) -> None:
    """sweep.yaml as an augpipe without the setting ``key`` wrote it."""
    grid = yaml.safe_load(sweep_yaml.read_text())
    del grid["common"][key]
    sweep_yaml.write_text(yaml.safe_dump(grid))


def test_a_setting_added_since_at_its_default_is_the_same_sweep(tmp_path, cli, tiny_data):
    first = cli("sweep", "--data", tiny_data, *FAST)
    assert first.exit_code == 0, first.output
    sweep_yaml = tmp_path / "sweeps" / "s" / "sweep.yaml"
    forget(sweep_yaml, "monitor")  # at its default, val_loss
    again = cli("sweep", "--data", tiny_data, *FAST)
    assert again.exit_code == 0, again.output
    assert "finished before, skipped" in again.output
    assert yaml.safe_load(sweep_yaml.read_text())["common"]["monitor"] == "val_loss"  # named from now on


def test_a_setting_added_since_at_another_value_is_another_sweep(tmp_path, cli, tiny_data):
    assert cli("sweep", "--data", tiny_data, *FAST).exit_code == 0
    sweep_yaml = tmp_path / "sweeps" / "s" / "sweep.yaml"
    forget(sweep_yaml, "epochs")  # 1 here, not the default
    line = error_line(cli("sweep", "--data", tiny_data, *FAST), codes=(1,))
    assert "holds another sweep (epochs: None there, 1 here)" in line
