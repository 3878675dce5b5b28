"""A whole training run through the Python API: the run directory, the checkpoints, the metrics,
re-scoring, determinism, and runs that go wrong."""

from __future__ import annotations

import csv
import importlib
import json
import os
import re

import numpy as np
import pytest
import torch
import yaml
from conftest import _make_folder

from augpipe.config import TrainConfig
from augpipe.plugin_manager import get_plugins
from augpipe.training.callbacks import read_metrics
from augpipe.training.run import evaluate as run_evaluate
from augpipe.training.run import train as run_train

ARTIFACTS = {
    "config.yaml",
    "split.csv",
    "augment.yaml",
    "metrics.csv",
    "curves.png",
    "confusion.png",
    "summary.json",
    "best.pt",
    "last.pt",
}
TIMING = ("seconds", "images_per_s")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fast(**settings):
    """Settings for a run that takes a second or two on a CPU. One thread: tiny models gain
    nothing from more, and lose much when other processes share the cores."""
    return {"workers": 0, "threads": 1, "batch_size": 8, "progress": False, **settings}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """cnn_small, 3 epochs on 3 classes x 12 images of 16 px, the standard augmentation."""
    root = tmp_path_factory.mktemp("train")
    data = _make_folder(root / "data", {"a": 12, "b": 12, "c": 12}, size=16)
    threads = torch.get_num_threads()  # the run sets it for the process
    result = run_train(
        **fast(data=str(data), plugin="cnn", model="cnn_small", epochs=3, out=str(root / "runs"), name="r")
    )
    torch.set_num_threads(threads)
    return result


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)  # plain data: nothing in it can run


def read_split(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(line for line in fh if not line.startswith("#")))
    return rows[0], rows[1:]


def test_the_run_directory_has_every_artifact(run):
    assert ARTIFACTS <= {p.name for p in run.run_dir.iterdir()}
    assert not run.failed and run.summary["stop_reason"] == "completed"
    import cv2

    for name in ("curves.png", "confusion.png"):
        img = cv2.imread(str(run.run_dir / name))
        assert img is not None and min(img.shape[:2]) > 100


def test_config_yaml_holds_the_resolved_settings(run):
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    cfg = TrainConfig.from_dict(saved)
    cfg.validate()
    # flags, the cnn plugin's defaults (nesterov, its lr, onecycle) and the spec of the preset
    assert (cfg.plugin, cfg.model, cfg.epochs, cfg.batch_size, cfg.workers) == ("cnn", "cnn_small", 3, 8, 0)
    cnn_lr = get_plugins().trainer("cnn").defaults["lr"]
    assert (cfg.optimizer, cfg.resolved_lr, cfg.scheduler) == ("nesterov", cnn_lr, "onecycle")
    assert isinstance(cfg.aug, dict) and cfg.aug["hflip"] == {"p": 0.5}


def test_augment_yaml_loads_with_albumentations(run):
    import albumentations as A

    pipeline = A.load(str(run.run_dir / "augment.yaml"), data_format="yaml")
    names = [type(t).__name__ for t in pipeline.transforms]
    assert "HorizontalFlip" in names and "RandomResizedCrop" in names
    out = pipeline(image=np.zeros((16, 16, 3), np.uint8))["image"]
    assert out.shape == (32, 32, 3)  # the size cnn_small is built for


def test_metrics_agree_with_the_summary_and_the_history(run):
    rows = read_metrics(run.run_dir / "metrics.csv")
    s = run.summary
    assert len(rows) == s["epochs_run"] == len(run.history.epochs) == 3
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    val = [r["val_loss"] for r in rows]
    assert s["best_epoch"] == int(np.argmin(val)) + 1 and s["monitor"] == "val_loss"
    assert s["best_value"] == pytest.approx(min(val), rel=1e-5)
    for row, epoch in zip(rows, run.history.epochs):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert row[key] == pytest.approx(epoch[key], rel=1e-5), key
    assert json.loads((run.run_dir / "summary.json").read_text()) == json.loads(json.dumps(s, default=str))


def test_checkpoints_hold_what_a_resume_needs(run):
    last, best = load(run.run_dir / "last.pt"), load(run.run_dir / "best.pt")
    for state in (last, best):
        assert {"model", "optimizer", "scheduler", "epoch", "config", "class_names", "split", "rng"} <= set(state)
        # 16 px images, resized to the 32 px cnn_small is built for
        assert state["class_names"] == ["a", "b", "c"] and state["image_size"] == 32
        assert {"torch", "numpy", "python", "loaders", "device_augment"} <= set(state["rng"])
        assert isinstance(state["rng"]["torch"], torch.Tensor)
        assert all(isinstance(state["rng"]["loaders"][k], torch.Tensor) for k in ("train", "val", "test"))
        assert {"early_stopping", "history", "in_epoch", "train_seconds"} <= set(state)
    assert last["epoch"] == 3 and best["epoch"] == run.summary["best_epoch"]
    assert len(last["history"]["epochs"]) == 3 and last["in_epoch"] is None

    # the state loads back into the model, optimizer and schedule a run builds from the config
    plugins = get_plugins()
    cfg = TrainConfig.from_dict(last["config"])
    model = plugins.trainer(cfg.plugin).build_model(
        model=cfg.model, num_classes=3, image_size=16, activation=cfg.activation, dropout=cfg.dropout
    )
    model.load_state_dict(last["model"])
    opt = plugins.optimizers.get(cfg.optimizer)(
        model, lr=cfg.resolved_lr, weight_decay=cfg.weight_decay, momentum=cfg.resolved_momentum
    )
    opt.load_state_dict(last["optimizer"])
    schedule = plugins.schedulers.get(cfg.scheduler)(opt, config=cfg, steps_per_epoch=4, epochs=3)
    schedule.load_state_dict(last["scheduler"])
    assert schedule.iterations == 3 * 4  # 30 training images in batches of 8

    # the split in the checkpoint is the one in split.csv
    header, rows = read_split(run.run_dir / "split.csv")
    split = last["split"]
    assert header == [split["key_column"], "label", "split"]
    assert [r[0] for r in rows] == list(split["keys"]) and [r[2] for r in rows] == list(split["splits"])
    assert [r[1] for r in rows] == [last["class_names"][i] for i in split["labels"]]
    assert [r[2] for r in rows].count("test") == run.summary["test_images"] == 3


def test_evaluate_reproduces_the_test_score(run):
    result = run_evaluate(run.run_dir, device="cpu")
    s = run.summary
    assert result["acc"] == s["test_acc"] and result["n"] == s["test_images"]
    assert result["loss"] == pytest.approx(s["test_loss"], rel=1e-5)
    assert result["confusion"].tolist() == s["confusion"] and result["epoch"] == s["best_epoch"]


def test_class_count_image_size_and_lr_schedule_come_through(tmp_path):
    data = _make_folder(tmp_path / "data", {"w": 6, "x": 6, "y": 6, "z": 6}, size=24)
    result = run_train(
        **fast(
            data=str(data),
            plugin="mlp",
            model="mlp_small",
            epochs=2,
            aug="none",
            image_size=20,
            optimizer="sgd",
            lr=0.2,
            scheduler="exponential",
            gamma=0.5,
            out=str(tmp_path / "runs"),
            name="m",
        )
    )
    state = load(result.run_dir / "last.pt")
    weights = [v for k, v in state["model"].items() if k.endswith("weight")]
    assert weights[0].shape == (256, 3 * 20 * 20) and weights[-1].shape == (4, 256)
    assert result.summary["image_size"] == 20 and state["class_names"] == ["w", "x", "y", "z"]
    assert [r["lr"] for r in read_metrics(result.run_dir / "metrics.csv")] == pytest.approx([0.2, 0.1])


def test_the_loader_reshuffles_each_epoch_and_repeats_with_the_seed(tmp_path, tiny_data, probe_plugins):
    plugins, probe = probe_plugins
    orders = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        probe.SEEN.clear()
        run_train(
            **fast(
                data=str(tiny_data),
                plugin="probe",
                epochs=2,
                aug="none",
                seed=seed,
                out=str(tmp_path / "runs"),
                name=name,
            ),
            plugins=plugins,
        )
        orders[name] = [list(e) for e in probe.SEEN if e]  # the size check before training sees none
    first, second = orders["a"]
    assert len(first) == len(second) == 30 and sorted(first) == sorted(second)
    assert first != second  # reshuffled
    assert orders["b"] == orders["a"]  # the same seed, the same order
    assert orders["c"][0] != orders["a"][0]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_best_checkpoint(tmp_path, tiny_data, probe_plugins):
    plugins, _ = probe_plugins
    result = run_train(
        **fast(
            data=str(tiny_data),
            plugin="probe",
            model="nan_after_4",
            epochs=3,
            aug="none",
            out=str(tmp_path / "runs"),
            name="n",
        ),
        plugins=plugins,
    )
    s = json.loads((result.run_dir / "summary.json").read_text())
    assert s["failed"] is True and result.failed
    assert s["stop_reason"] == "stopped at epoch 2: the training loss became nan at iteration 1"
    assert s["epochs_run"] == 1 and s["best_epoch"] == 1 and s["restored_best"] is True
    assert load(result.run_dir / "best.pt")["epoch"] == 1 and load(result.run_dir / "last.pt")["epoch"] == 1
    assert len(read_metrics(result.run_dir / "metrics.csv")) == 1
    # the test score is that of the best (finite) weights, and evaluate agrees
    assert run_evaluate(result.run_dir, device="cpu", plugins=plugins)["acc"] == s["test_acc"]


def test_a_loss_that_is_non_finite_from_the_start_fails_without_a_checkpoint(tmp_path, tiny_data, probe_plugins):
    plugins, _ = probe_plugins
    result = run_train(
        **fast(
            data=str(tiny_data),
            plugin="probe",
            model="nan_after_0",
            epochs=2,
            aug="none",
            out=str(tmp_path / "runs"),
            name="n0",
        ),
        plugins=plugins,
    )
    assert result.failed and result.summary["epochs_run"] == 0 and result.summary["best_epoch"] is None
    assert "epoch 1" in result.summary["stop_reason"]
    assert not (result.run_dir / "best.pt").exists()
    assert json.loads((result.run_dir / "summary.json").read_text())["failed"] is True


def test_an_absurd_learning_rate_fails_the_run_cleanly(tmp_path, tiny_data):
    result = run_train(
        **fast(
            data=str(tiny_data),
            plugin="mlp",
            model="mlp_small",
            optimizer="sgd",
            lr=1e6,
            scheduler="none",
            epochs=3,
            aug="none",
            out=str(tmp_path / "runs"),
            name="x",
        )
    )
    assert result.failed
    # the weights may turn NaN on a step whose own loss was finite: validation shows it first
    assert re.fullmatch(
        r"stopped at epoch \d: the (training|validation) loss became (nan|inf)( at iteration \d+)?",
        result.summary["stop_reason"],
    )
    assert json.loads((result.run_dir / "summary.json").read_text())["failed"] is True


def test_without_a_validation_split_best_pt_still_exists(tmp_path, tiny_data, probe_plugins):
    plugins, _ = probe_plugins
    result = run_train(
        **fast(
            data=str(tiny_data), plugin="probe", epochs=2, val=0.0, aug="none", out=str(tmp_path / "runs"), name="v"
        ),
        plugins=plugins,
    )
    assert "val_loss" not in result.history.epochs[0]
    assert load(result.run_dir / "best.pt")["epoch"] == 2
    assert run_evaluate(result.run_dir, device="cpu", plugins=plugins)["acc"] == result.summary["test_acc"]


def test_augpipe_train_stays_callable():
    import augpipe

    importlib.import_module("augpipe.training.optim")  # as anything that trains does
    assert callable(augpipe.train)


def test_a_last_training_batch_of_one_image_does_not_crash(tmp_path, tiny_data):
    # 30 training images in batches of 29: the last batch holds one image; resnet10t leaves a
    # 16 px image 1x1 before its last batch norm
    result = run_train(
        **fast(
            data=str(tiny_data),
            plugin="timm",
            model="resnet10t",
            epochs=1,
            batch_size=29,
            aug="none",
            out=str(tmp_path / "runs"),
            name="b1",
        )
    )
    assert not result.failed


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_default_threads_use_every_core(tmp_path, tiny_data, probe_plugins):
    plugins, _ = probe_plugins
    run_train(
        data=str(tiny_data),
        plugin="probe",
        epochs=1,
        aug="none",
        workers=1,
        batch_size=8,
        progress=False,
        out=str(tmp_path / "runs"),
        name="t",
        plugins=plugins,
    )
    assert torch.get_num_threads() == len(os.sched_getaffinity(0))
