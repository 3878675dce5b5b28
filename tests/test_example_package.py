"""examples/augpipe-example-plugin as a user gets it: built as a wheel, installed into a folder
of its own, and used by augpipe in fresh processes (entry points are read from installed
metadata, so nothing short of a real install tests the packaging). Beside it, a wheel whose plugin
module fails to import, which must not take augpipe down. No network: the builds use the
setuptools of this environment and install from the wheel files only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "augpipe-example-plugin"

BROKEN_PYPROJECT = """
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "augpipe-broken-plugin"
version = "0.2.0"
dependencies = ["augpipe"]

[project.entry-points.augpipe]
broken = "augpipe_broken_plugin"

[tool.setuptools]
packages = ["augpipe_broken_plugin"]
"""

# the data flags of a one-epoch run on the tiny folder
RUN = ["--epochs", "1", "--workers", "0", "--threads", "1", "--batch-size", "8", "--seed", "0"]


def run(*args, path: Path | None = None, cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    result = subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return result


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Both wheels built (from copies: a build writes build/ and *.egg-info beside the sources)
    and installed into one target folder, as pip leaves them in site-packages; yields it."""
    work = tmp_path_factory.mktemp("wheels")
    example = work / "src" / "example"
    shutil.copytree(
        EXAMPLE, example, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")
    )
    broken = work / "src" / "broken"
    (broken / "augpipe_broken_plugin").mkdir(parents=True)
    (broken / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    (broken / "augpipe_broken_plugin" / "__init__.py").write_text(
        "import augpipe_dependency_that_is_not_installed  # what a missing optional dependency looks like\n"
    )
    wheels = work / "wheels"
    ok(
        run(
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            wheels,
            example,
            broken,
            cwd=work,
        )
    )
    found = sorted(wheels.glob("*.whl"))
    assert [w.name.split("-")[0] for w in found] == ["augpipe_broken_plugin", "augpipe_example_plugin"], found
    site = work / "site"
    ok(run("-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", site, *found, cwd=work))
    yield site


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from conftest import _make_folder

    return _make_folder(tmp_path_factory.mktemp("data") / "tiny", {"a": 12, "b": 12, "c": 12}, size=16)


def test_plugins_lists_the_wheels_plugin_and_reports_the_broken_one(installed, tmp_path):
    site = installed
    where = ok(run("-c", "import augpipe_example_plugin as m; print(m.__file__)", path=site, cwd=tmp_path))
    assert where.strip().startswith(str(site)), where  # the wheel's copy, not the sources

    listing = ok(run("-m", "augpipe", "plugins", path=installed, cwd=tmp_path)).splitlines()
    assert "example  (augpipe-example-plugin 0.1.0)" in listing
    assert any(
        line.startswith(
            "    trainer example: a small VGG-style conv net for any image size; models: "
            "example_tiny, example (default example)"
        )
        for line in listing
    ), listing
    assert "    augmentations: RandomDesaturate" in listing
    # the broken wheel: listed with the reason, and nothing else is missing
    assert "broken  (augpipe-broken-plugin 0.2.0)" in listing
    assert (
        "    failed to load: ModuleNotFoundError: No module named 'augpipe_dependency_that_is_not_installed'"
    ) in listing
    assert sum(line.startswith("    failed to load") for line in listing) == 1, listing
    assert any(line.startswith("cnn  (augpipe ") for line in listing), listing


def test_the_wheels_trainer_and_a_builtin_train_beside_the_broken_plugin(installed, tiny_folder, tmp_path):
    spec = tmp_path / "aug.yaml"
    spec.write_text("hflip: {p: 0.5}\nextra: [{name: RandomDesaturate, amount: [0.3, 0.9], p: 1.0}]\n")
    out = ok(
        run(
            "-m",
            "augpipe",
            "train",
            "--plugin",
            "example",
            "--model",
            "example_tiny",
            "--data",
            tiny_folder,
            "--aug",
            spec,
            "--aug-device",
            "cpu",
            "--out",
            tmp_path / "runs",
            "--name",
            "ex",
            *RUN,
            path=installed,
            cwd=tmp_path,
        )
    )
    run_dir = tmp_path / "runs" / "ex"
    assert str(run_dir) in out and "Traceback" not in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["plugin"], summary["model"], summary["epochs_run"]) == ("example", "example_tiny", 1)
    # the plugin's transform ran in the training pipeline, which the run saved
    assert "augpipe_example_plugin.transforms.RandomDesaturate" in (run_dir / "augment.yaml").read_text()
    assert (run_dir / "best.pt").is_file() and (run_dir / "metrics.csv").is_file()

    out = ok(
        run(
            "-m",
            "augpipe",
            "train",
            "--plugin",
            "cnn",
            "--model",
            "cnn_small",
            "--data",
            tiny_folder,
            "--aug",
            "none",
            "--out",
            tmp_path / "runs",
            "--name",
            "cnn",
            *RUN,
            path=installed,
            cwd=tmp_path,
        )
    )
    assert "Traceback" not in out
    summary = json.loads((tmp_path / "runs" / "cnn" / "summary.json").read_text())
    assert (summary["plugin"], summary["epochs_run"]) == ("cnn", 1)


def test_the_examples_own_tests_pass_against_the_installed_wheel(installed, tmp_path):
    # Run from tmp_path: the example folder is not on sys.path, so the tests import the wheel.
    result = run(
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rs",
        EXAMPLE / "tests",
        path=installed,
        cwd=tmp_path,
        timeout=300,
    )
    out = ok(result)
    assert " passed" in out and "skipped" not in out and "failed" not in out, out
