"""``augpipe sweep --parallel K``: K runs at once in worker processes, with the same tables as a
serial sweep, the torch threads shared out, and bad values refused in one line."""

from __future__ import annotations

import csv

import pytest
from conftest import error_line

from augpipe.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Two settings that train differently, two seeds: a run given another's seed or settings, or a
# row put in another's place, changes the table.
GRID = [
    "--plugin",
    "mlp",
    "--model",
    "mlp_small",
    "--epochs",
    "2",
    "--workers",
    "0",
    "--threads",
    "1",
    "--batch-size",
    "8",
    "--lr",
    "0.3,0.01",
    "--seeds",
    "2",
    "--name",
    "grid",
]
# What may differ between two sweeps of the same grid: how long a run took, and where it is.
TIMING = {"train_seconds", "run_dir", "seconds", "images_per_s"}


def rows_without_timing(path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]


def table_without_timing(path) -> list[str]:
    """sweep.md with its last column (time per run) cut off each table line."""
    return [line.rsplit(" | ", 1)[0] if line.startswith("| ") else line for line in path.read_text().splitlines()]


def test_parallel_2_gives_the_table_of_a_serial_sweep(tmp_path, cli, tiny_data):
    serial = cli("sweep", "--data", tiny_data, *GRID, "--out", "serial")
    assert serial.exit_code == 0, serial.output
    parallel = cli("sweep", "--data", tiny_data, *GRID, "--out", "parallel", "--parallel", "2")
    assert parallel.exit_code == 0, parallel.output
    a, b = tmp_path / "serial" / "grid", tmp_path / "parallel" / "grid"

    rows = rows_without_timing(a / "sweep.csv")
    assert len(rows) == 4 and len({r["test_loss"] for r in rows}) > 1  # the runs differ from each other
    assert rows_without_timing(b / "sweep.csv") == rows
    assert table_without_timing(b / "sweep.md") == table_without_timing(a / "sweep.md")
    for run in sorted(p.name for p in a.iterdir() if p.is_dir()):
        assert rows_without_timing(b / run / "metrics.csv") == rows_without_timing(a / run / "metrics.csv"), run
    assert "4 run(s) to train, 2 at once, 1 torch thread(s) each" in parallel.output

    # The same command again finds every run finished and trains nothing.
    stamps = {p.name: (p / "summary.json").stat().st_mtime_ns for p in b.iterdir() if p.is_dir()}
    again = cli("sweep", "--data", tiny_data, *GRID, "--out", "parallel", "--parallel", "2")
    assert again.exit_code == 0, again.output
    assert "run(s) to train" not in again.output
    assert {p.name: (p / "summary.json").stat().st_mtime_ns for p in b.iterdir() if p.is_dir()} == stamps


def test_a_parallel_sweep_resumes_an_unfinished_run_and_restarts_one_without_a_checkpoint(tmp_path, cli, tiny_data):
    first = cli("sweep", "--data", tiny_data, *GRID, "--parallel", "2")
    assert first.exit_code == 0, first.output
    sweep_dir = tmp_path / "sweeps" / "grid"
    before = rows_without_timing(sweep_dir / "sweep.csv")
    (sweep_dir / "lr=0.3,seed=0" / "summary.json").unlink()  # as if stopped after a checkpoint
    for file in ("summary.json", "last.pt"):  # as if stopped before the first one
        (sweep_dir / "lr=0.01,seed=1" / file).unlink()
    again = cli("sweep", "--data", tiny_data, *GRID, "--parallel", "2")
    assert again.exit_code == 0, again.output
    assert "2 run(s) to train" in again.output
    assert (sweep_dir / "lr=0.3,seed=0" / "summary.json").is_file()
    assert rows_without_timing(sweep_dir / "sweep.csv") == before


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_parallel_is_one_error_line(cli, tiny_data, value):
    line = error_line(cli("sweep", "--data", tiny_data, *GRID, "--parallel", value), codes=(2,))
    assert "--parallel" in line


def test_the_python_api_checks_parallel():
    from augpipe.plugin_manager import get_plugins
    from augpipe.sweeps import check_parallel

    with pytest.raises(ConfigError, match="--parallel must be a whole number"):
        check_parallel(0)
    with pytest.raises(ConfigError, match="installed plugins"):
        check_parallel(2, get_plugins())
    check_parallel(1, get_plugins())  # one at a time runs in this process: any plugin manager will do


def test_parallel_runs_share_out_the_cores(monkeypatch):
    import augpipe.sweeps as sweeps

    monkeypatch.setattr(sweeps, "_cores", lambda: 8)
    assert [sweeps.parallel_threads(k, None) for k in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert sweeps.parallel_threads(4, 3) == 3  # --threads as given
