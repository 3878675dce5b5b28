"""--data-on-device: the splits held as one tensor on the device give exactly the loader's
batches, a run trains the same with and without it, an interrupted epoch resumes exactly, and
what rules it out is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augpipe.data.loader import AugmentedImages, EpochLoader
from augpipe.data.resident import ResidentLoader, decide
from augpipe.errors import ConfigError
from augpipe.training.run import train as run_train


class _Store:
    """Images whose pixels say their index: a batch shows which items it holds."""

    def __init__(self, n):
        self.images = [np.full((4, 4, 3), i % 256, np.uint8) for i in range(n)]
        for i, img in enumerate(self.images):
            img[0, 0, 0] = i // 256

    def __getitem__(self, i):
        return self.images[i]


@pytest.mark.parametrize("rank, world, drop_last", [(0, 1, False), (0, 1, True), (1, 2, False)])
def test_resident_batches_are_the_loaders_batches(rank, world, drop_last):
    store = _Store(300)
    items = np.arange(7, 300, 3)  # a split: some of the store's items
    labels = np.arange(300) % 5
    host = EpochLoader(
        AugmentedImages(store, items, labels),
        batch_size=16,
        shuffle=True,
        num_workers=0,
        seed=11,
        drop_last=drop_last,
        rank=rank,
        world_size=world,
    )
    images = np.stack([store[i] for i in items])
    dev = ResidentLoader(
        images,
        labels[items],
        items,
        "cpu",
        batch_size=16,
        shuffle=True,
        seed=11,
        drop_last=drop_last,
        rank=rank,
        world_size=world,
    )
    assert len(dev) == len(host)
    for epoch in (1, 2, 3):
        host.set_epoch(epoch), dev.set_epoch(epoch)
        seen_host, seen_dev = [], []
        for x, y in host:
            seen_host.append((x.clone(), y.clone(), host.batch_items.clone().numpy()))
        for x, y in dev:
            seen_dev.append((x.clone(), y.clone(), dev.batch_items.copy()))
        assert len(seen_host) == len(seen_dev) == len(host)
        for (xh, yh, ih), (xd, yd, idd) in zip(seen_host, seen_dev):
            assert torch.equal(xh, xd) and torch.equal(yh, yd)
            np.testing.assert_array_equal(ih, idd)
    # a different seed draws another order
    other = ResidentLoader(images, labels[items], items, "cpu", batch_size=16, shuffle=True, seed=12)
    assert not torch.equal(
        next(iter(other))[1],
        next(iter(ResidentLoader(images, labels[items], items, "cpu", batch_size=16, shuffle=True, seed=11)))[1],
    )


def test_an_unshuffled_resident_split_is_in_order():
    store = _Store(10)
    items = np.arange(10)
    dev = ResidentLoader(
        np.stack([store[i] for i in items]), items % 2, items, "cpu", batch_size=4, shuffle=False, seed=0
    )
    got = torch.cat([x[:, 0, 1, 1] for x, _ in dev])
    assert got.tolist() == list(range(10))


def _train(tmp_path, data, name, **flags):
    settings = dict(
        data=str(data),
        plugin="cnn",
        model="cnn_small",
        epochs=2,
        batch_size=8,
        workers=0,
        threads=1,
        progress=False,
        out=str(tmp_path / "runs"),
        name=name,
        seed=5,
        device="cpu",
        aug_device="gpu",
        aug={
            "size": 16,
            "hflip": {"p": 0.5, "alternate": True},
            "crop": {"scale": [0.5, 1.0]},
            "mixup": {"alpha": 0.4, "p": 0.5},
        },
    )
    settings.update(flags)
    return run_train(**settings)


def test_a_run_with_its_data_on_the_device_trains_as_one_without(tmp_path, tiny_data):
    on = _train(tmp_path, tiny_data, "on", data_on_device="on")
    off = _train(tmp_path, tiny_data, "off", data_on_device="off")
    assert on.history.iteration_losses == off.history.iteration_losses
    assert on.summary["test_acc"] == off.summary["test_acc"]
    assert on.summary["data_on_device"] is True and off.summary["data_on_device"] is False


def test_an_interrupted_epoch_with_the_data_on_the_device_resumes_exactly(tmp_path, tiny_data, stop_after_step):
    whole = _train(tmp_path, tiny_data, "whole", data_on_device="on")
    with stop_after_step(2):  # a stop after step 2 of epoch 1
        stopped = _train(tmp_path, tiny_data, "part", data_on_device="on")
    assert stopped.history.stop_reason == "interrupted"
    resumed = run_train(resume=str(tmp_path / "runs/part"), progress=False)
    assert resumed.history.iteration_losses == whole.history.iteration_losses
    assert resumed.summary["test_acc"] == whole.summary["test_acc"]


def test_auto_keeps_the_data_on_the_host_of_a_cpu():
    assert decide("auto", torch.device("cpu"), 10, None) is False
    assert decide("on", torch.device("cpu"), 10, None) is True
    assert decide("off", torch.device("cpu"), 10, None) is False
    assert decide("auto", torch.device("cpu"), 10, "shards") is False
    with pytest.raises(ConfigError, match="--data-on-device on: shards"):
        decide("on", torch.device("cpu"), 10, "shards")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data-on-device", "maybe"], "--data-on-device must be auto, on or off, got 'maybe'"),
        (["--data-on-device", "on", "--aug-device", "cpu"], "--data-on-device on augments on the device"),
    ],
)
def test_bad_data_on_device_settings_are_one_line(cli, tiny_data, args, message):
    from conftest import error_line

    result = cli("train", "--data", tiny_data, "--plugin", "cnn", "--epochs", "1", *args)
    assert message in error_line(result)


def test_a_spec_that_needs_workers_with_the_data_on_the_device_is_one_line(cli, tiny_data, tmp_path):
    from conftest import error_line

    spec = tmp_path / "spec.yaml"
    spec.write_text("size: 16\nrand_augment: {n: 2, m: 9}\n")
    result = cli(
        "train",
        "--data",
        tiny_data,
        "--plugin",
        "cnn",
        "--epochs",
        "1",
        "--aug",
        spec,
        "--device",
        "cpu",
        "--data-on-device",
        "on",
    )
    assert "--data-on-device on: rand_augment runs only in loader workers" in error_line(result)


@pytest.mark.cuda
def test_auto_puts_a_small_split_on_a_cuda_device(tmp_path, tiny_data):
    result = _train(tmp_path, tiny_data, "cuda", device="cuda", aug_device="auto", data_on_device="auto", epochs=1)
    assert result.summary["data_on_device"] is True
    assert result.summary["peak_device_memory_mb"] > 0
