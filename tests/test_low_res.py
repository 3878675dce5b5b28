"""Progressive resizing (--low-res-size, --low-res-epochs): the first epochs train on downscaled
batches and the rest at full size, validation always at full size, an interrupted low-resolution
epoch resumes exactly, and every misuse is one line."""

from __future__ import annotations

import pytest
import torch
from conftest import error_line

from augpipe.errors import ConfigError
from augpipe.training.pipeline import LowResolution
from augpipe.training.run import train as run_train

SEEN: list[list[tuple[str, int]]] = []  # per .train(): (mode, side) of each batch the model saw


class SizeProbe(torch.nn.Module):
    """A conv net with global pooling (it takes any size) that records the side of every batch."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, num_classes)

    def train(self, mode=True):
        if mode:
            SEEN.append([])
        return super().train(mode)

    def forward(self, x):
        if SEEN:
            SEEN[-1].append(("train" if self.training else "eval", x.shape[-1]))
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture
def size_probe(fresh_plugins):
    from augpipe.hookspecs import Trainer, hookimpl

    class Plugin:
        @hookimpl
        def augpipe_register_trainers(self, register):
            register(
                Trainer(
                    name="sizes",
                    build_model=lambda *, model, num_classes, image_size, activation, dropout: SizeProbe(num_classes),
                    models=["probe"],
                    default_model="probe",
                    defaults={"optimizer": "sgd", "lr": 0.05, "scheduler": "none"},
                    description="records the image sizes it sees",
                )
            )

    fresh_plugins().register(Plugin(), name="sizes")
    SEEN.clear()
    yield SEEN
    SEEN.clear()


def _train(tmp_path, data, name, **flags):
    settings = dict(
        data=str(data),
        plugin="sizes",
        epochs=3,
        batch_size=4,
        workers=0,
        threads=1,
        progress=False,
        out=str(tmp_path / "runs"),
        name=name,
        seed=3,
        device="cpu",
        aug={"size": 16, "hflip": {"p": 0.5}},
        low_res_size=8,
        low_res_epochs=2,
    )
    settings.update(flags)
    return run_train(**settings)


def test_the_first_epochs_train_at_the_low_size_and_the_rest_at_full_size(tmp_path, tiny_data, size_probe):
    result = _train(tmp_path, tiny_data, "run")
    assert result.history.stop_reason in (None, "completed") and len(result.history.epochs) == 3
    # every .train() that saw training batches is one epoch
    epochs = [{side for mode, side in seen if mode == "train"} for seen in size_probe]
    epochs = [sides for sides in epochs if sides]
    assert epochs == [{8}, {8}, {16}]
    # validation and test are scored at full size whatever the epoch (before the first training
    # batch, the model's size checks pass blank images of both sizes)
    records = [r for seen in size_probe for r in seen]
    first_step = records.index(("train", 8))
    scored = [side for mode, side in records[first_step:] if mode == "eval"]
    assert scored and set(scored) == {16}


def test_without_it_every_epoch_trains_at_full_size(tmp_path, tiny_data, size_probe):
    _train(tmp_path, tiny_data, "plain", low_res_size=None, low_res_epochs=0)
    sides = {side for seen in size_probe for _, side in seen}
    assert sides == {16}


def test_a_low_resolution_batch_is_the_full_batch_downscaled():
    class Loader:
        epoch = 1

    loader = Loader()
    full = torch.rand(5, 3, 16, 16)
    low = LowResolution(lambda images: images * 2, loader, 8, 2, channels_last=True)
    x = low(full)
    expected = torch.nn.functional.interpolate(full * 2, size=(8, 8), mode="bilinear", antialias=True)
    assert x.shape == (5, 3, 8, 8) and torch.allclose(x, expected)
    assert x.is_contiguous(memory_format=torch.channels_last)
    # a flat image stays flat: the downscale averages, it adds nothing
    assert torch.allclose(low(torch.full((1, 3, 16, 16), 0.25)), torch.full((1, 3, 8, 8), 0.5))
    loader.epoch = 3  # past the low-resolution epochs: the batch as prepared
    assert torch.equal(low(full), full * 2)


def test_an_interrupted_low_resolution_epoch_resumes_exactly(tmp_path, tiny_data, size_probe, stop_after_step):
    whole = _train(tmp_path, tiny_data, "whole")
    with stop_after_step(2):  # a stop after step 2 of epoch 1
        stopped = _train(tmp_path, tiny_data, "part")
    assert stopped.history.stop_reason == "interrupted"
    resumed = run_train(resume=str(tmp_path / "runs/part"), progress=False)
    assert resumed.history.iteration_losses == whole.history.iteration_losses
    assert resumed.summary["test_acc"] == whole.summary["test_acc"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--low-res-size", "8"], "--low-res-size and --low-res-epochs go together"),
        (["--low-res-epochs", "1"], "--low-res-size and --low-res-epochs go together"),
        (["--low-res-size", "4", "--low-res-epochs", "1"], "--low-res-size must be a whole number of at least 8"),
        (["--low-res-size", "8", "--low-res-epochs", "2"], "--low-res-epochs must be fewer than --epochs (2)"),
        (["--low-res-size", "16", "--low-res-epochs", "1"], "--low-res-size must be smaller than the training size"),
        (
            ["--plugin", "mlp", "--low-res-size", "8", "--low-res-epochs", "1"],
            "progressive resizing (--low-res-size) needs a model that takes images of any size",
        ),
    ],
)
def test_misuse_is_one_line(cli, tiny_data, flags, message):
    args = ["train", "--data", str(tiny_data), "--plugin", "cnn", "--epochs", "2", "--workers", "0"]
    args += ["--image-size", "16", *flags]
    line = error_line(cli(*args))
    assert message in line


def test_the_settings_are_checked_before_any_data_is_read():
    from augpipe.config import TrainConfig

    with pytest.raises(ConfigError, match="go together"):
        TrainConfig(low_res_size=16).validate()
    with pytest.raises(ConfigError, match="fewer than --epochs"):
        TrainConfig(low_res_size=16, low_res_epochs=10, epochs=10).validate()
    TrainConfig(low_res_size=16, low_res_epochs=9, epochs=10).validate()
