"""bench/time_split.py: its parts add up to its total, and the split is of augpipe's own step (a
run through the bench on tiny data, in a subprocess as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_parts_add_up_to_the_total_and_cover_the_step(tmp_path, tiny_data):
    out = tmp_path / "split.json"
    cmd = [sys.executable, str(ROOT / "bench" / "time_split.py"), "--recipe", "none", "--plugin", "cnn"]
    cmd += ["--model", "cnn_small", "--data", str(tiny_data), "--batch-size", "8", "--steps", "3"]
    cmd += ["--warmup", "1", "--threads", "1", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    parts = figures["parts"]
    for part in ("data (loader wait)", "forward (+ loss)", "backward", "optimizer step (+ lr schedule)", "validation"):
        assert parts[part]["seconds"] > 0, part
    assert sum(p["seconds"] for p in parts.values()) == pytest.approx(figures["total_seconds"], rel=1e-6)
    assert sum(p["share"] for p in parts.values()) == pytest.approx(1.0, rel=1e-6)
    assert figures["steps"] == 3 and figures["images"] == 3 * 8
    assert figures["timed_over_plain"] > 0 and figures["plain_train_seconds"] > 0
    assert "backward" in done.stdout and "images/s overall" in done.stdout
