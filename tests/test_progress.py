"""Progress output: a bar on a terminal, a line at most every 30 s elsewhere (nohup, CI, Slurm),
nothing under --quiet."""

from __future__ import annotations

import io
import logging

import pytest

from augpipe import progress


class FakeClock:
    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step
        return self.now


def test_log_lines_come_at_most_every_30_seconds_with_rate_and_time_left(caplog):
    # Each item takes 7 s: after 30 s of the 100 items a line, then every 5th item (35 s) ...
    lines = progress.LogLines(range(100), 100, "epoch 1/3", unit="step", clock=FakeClock(7.0), per_item=(32, "images"))
    with caplog.at_level(logging.INFO, logger="augpipe"):
        assert list(lines) == list(range(100))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 20  # after items 5, 10, ... 100
    first = messages[0]
    # 5 steps in 35 s: 1/7 step/s = 4.6 images/s; 95 steps left = 665 s
    assert first.startswith("epoch 1/3: step 5/100 (5 %), 5 images/s, about 11.1 min left"), first


def test_a_short_loop_logs_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="augpipe"):
        list(progress.LogLines(range(10), 10, "x", clock=FakeClock(1.0)))
    assert not caplog.records


def test_mode_follows_the_terminal_and_quiet(monkeypatch):
    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr("sys.stderr", Stream(True))
    assert progress.mode() == "bar"
    monkeypatch.setattr("sys.stderr", Stream(False))
    assert progress.mode() == "log" and progress.mode(True) == "bar" and progress.mode(False) == "off"
    progress.set_quiet(True)
    try:
        assert progress.mode() == progress.mode(True) == "off"
    finally:
        progress.set_quiet(False)


@pytest.mark.parametrize("quiet", [False, True])
def test_train_under_a_non_terminal_logs_progress_unless_quiet(cli, tiny_data, monkeypatch, quiet):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # every step: the run is short
    args = [
        "train",
        "--data",
        tiny_data,
        "--plugin",
        "mlp",
        "--model",
        "mlp_small",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--threads",
        "1",
        "--aug",
        "none",
    ]
    result = cli(*(args + ["--quiet"] if quiet else args))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("epoch 1/1: step ")]
    if quiet:
        assert not lines
    else:
        assert lines and "images/s" in lines[0] and "left" in lines[0], result.output
    progress.set_quiet(False)


def test_a_counter_off_a_terminal_logs_what_it_was_told(caplog, monkeypatch):
    clock = FakeClock(10.0)
    monkeypatch.setattr(progress.time, "monotonic", clock)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    done = progress.counter(1000, "decoding images", unit="image")
    with caplog.at_level(logging.INFO, logger="augpipe"):
        for _ in range(8):
            done.update(100)  # 10 s each: a line after the 3rd (30 s), the 6th (60 s)
        done.close()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "decoding images: image 300/1,000 (30 %), 10 image/s, about 70 s left",
        "decoding images: image 600/1,000 (60 %), 10 image/s, about 40 s left",
    ]
    assert isinstance(progress.counter(10, "x", enabled=False), progress._NoCounter)
