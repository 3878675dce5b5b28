"""Test-time augmentation (--tta) and the moving average of the weights (--ema)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augpipe.training.averaging import WeightAverage
from augpipe.training.loop import evaluate
from augpipe.training.run import evaluate as run_evaluate
from augpipe.training.run import train as run_train
from augpipe.training.tta import tta_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder(torch.nn.Module):
    """A fixed linear map of the image, remembering every view it was shown."""

    def __init__(self, size=6, classes=4):
        super().__init__()
        self.lin = torch.nn.Linear(3 * size * size, classes)
        self.views = []

    def forward(self, x):
        self.views.append(x.clone())
        return self.lin(x.flatten(1))


def test_tta_averages_the_logits_of_the_views_airbench94_weighs():
    torch.manual_seed(0)
    model = Recorder()
    x = torch.randn(2, 3, 6, 6)
    f = model.lin
    assert torch.equal(tta_logits(model, x, "none"), f(x.flatten(1)))

    def mirror(v):  # the mirror image made by numpy, not by the code under test
        flipped = torch.from_numpy(np.flip(v.numpy(), -1).copy())
        return 0.5 * (f(v.flatten(1)) + f(flipped.flatten(1)))

    torch.testing.assert_close(tta_logits(model, x, "flip"), mirror(x))
    # The translated views, by hand: reflect-pad by one pixel, windows at (0, 0) and (2, 2).
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect"))
    up_left, down_right = padded[..., :6, :6], padded[..., 2:, 2:]
    expected = 0.5 * mirror(x) + 0.5 * 0.5 * (mirror(up_left) + mirror(down_right))
    model.views.clear()
    torch.testing.assert_close(tta_logits(model, x, "flip-translate"), expected)
    assert len(model.views) == 6  # x, its mirror, and two shifted views with theirs


class LeftOrRight(torch.nn.Module):
    """Class 0 when the left half of the image is brighter, else class 1: a mirror image swaps
    the classes, so the flip views' logits cancel out."""

    def forward(self, x):
        w = x.shape[-1]
        left, right = x[..., : w // 2].sum((1, 2, 3)), x[..., w // 2 :].sum((1, 2, 3))
        return torch.stack([left - right, right - left], 1)


def test_tta_reaches_the_scores():
    images = torch.zeros(8, 3, 4, 4, dtype=torch.uint8)
    images[:4, :, :, :2] = 200
    images[4:, :, :, 2:] = 200
    labels = torch.tensor([0] * 4 + [1] * 4)
    loader = [(images, labels)]
    prepare = lambda u: u.float() / 255  # noqa: E731
    plain = evaluate(LeftOrRight(), loader, prepare, torch.nn.CrossEntropyLoss(), 2, "cpu")
    flipped = evaluate(LeftOrRight(), loader, prepare, torch.nn.CrossEntropyLoss(), 2, "cpu", tta="flip")
    assert plain["acc"] == 1.0
    assert flipped["acc"] == 0.5 and flipped["loss"] == pytest.approx(np.log(2))  # every logit pair ties


def test_the_weight_average_copies_until_it_starts_then_decays():
    model = torch.nn.Linear(1, 1, bias=False)
    average = WeightAverage(model, decay=0.5, steps_per_epoch=2, start_epochs=1.0)  # starts after step 2
    expected, seen = None, []
    for step, w in enumerate([1.0, 3.0, 5.0, 9.0, 17.0], 1):
        with torch.no_grad():
            model.weight.fill_(w)
        average.on_train_batch_end((step - 1) // 2 + 1, (step - 1) % 2 + 1, None)
        # update_after_step = 2: steps 1-3 copy (timm counts the first averaged step as 0)
        expected = w if step <= 3 else 0.5 * expected + 0.5 * w
        seen.append(float(average.module.weight.detach()))
        assert seen[-1] == pytest.approx(expected)
    assert seen == [1.0, 3.0, 5.0, 7.0, 12.0]
    copy = WeightAverage(torch.nn.Linear(1, 1, bias=False), 0.5, 2)
    copy.load_state_dict(average.state_dict())
    assert float(copy.module.weight.detach()) == 12.0


def test_lookahead_with_a_growing_decay_copies_the_average_back_every_n_steps():
    model = torch.nn.Linear(1, 1, bias=False)
    # 4 steps an epoch, 8 in all; starts after step 2; updates at steps 4, 6, 8; decay 0.8 * (s / 8) ** 2
    average = WeightAverage(
        model, decay=0.8, steps_per_epoch=4, start_epochs=0.5, every=2, power=2.0, total_steps=8, lookahead=True
    )
    ema, trained = None, []
    for s in range(1, 9):
        with torch.no_grad():
            model.weight.add_(10.0)  # a step of training: +10
        w = float(model.weight.detach())
        average.on_train_batch_end((s - 1) // 4 + 1, (s - 1) % 4 + 1, None)
        if s <= 3:
            ema = w  # copies
        elif s % 2 == 0:
            d = 0.8 * (s / 8) ** 2
            ema = d * ema + (1 - d) * w
        assert float(average.module.weight.detach()) == pytest.approx(ema)
        trained.append(float(model.weight.detach()))
        if s >= 4 and s % 2 == 0:
            assert trained[-1] == pytest.approx(ema)  # lookahead: the weights are the average again
    assert trained[4] == pytest.approx(trained[3] + 10)  # step 5 updates nothing: the weights keep their step
    assert average.decay_at(8) == pytest.approx(0.8) and average.decay_at(2) == 0.0


def test_lookahead_puts_the_average_back_at_the_end_of_each_epoch():
    model = torch.nn.Linear(1, 1, bias=False)
    average = WeightAverage(model, decay=0.5, steps_per_epoch=3, every=2, total_steps=6, lookahead=True)
    for s in range(1, 4):
        with torch.no_grad():
            model.weight.fill_(float(s))
        average.on_train_batch_end(1, s, None)
    assert float(model.weight.detach()) == float(average.module.weight.detach())  # step 3: no update, a copy back


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"ema_every": 0}, "--ema-every"),
        ({"ema_power": -1.0}, "--ema-power"),
        ({"ema_mode": "swa"}, "--ema-mode must be average or lookahead"),
    ],
)
def test_bad_averaging_settings(flags, message):
    from augpipe.config import TrainConfig
    from augpipe.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        TrainConfig(**flags).validate()


def test_a_run_with_ema_scores_and_keeps_the_average(tmp_path, tiny_data):
    result = run_train(
        data=str(tiny_data),
        plugin="cnn",
        model="cnn_small",
        epochs=2,
        batch_size=8,
        workers=0,
        threads=1,
        progress=False,
        out=str(tmp_path / "runs"),
        name="e",
        ema=0.9,
        tta="flip",
    )
    run = tmp_path / "runs/e"
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert last["train_model"] is not None  # the weights being trained, for --resume
    differs = [
        k
        for k in last["model"]
        if last["model"][k].dtype.is_floating_point and not torch.equal(last["model"][k], last["train_model"][k])
    ]
    assert differs  # "model" is the average, not the trained weights
    # evaluate, with the run's own TTA, reproduces the run's score from the average's weights
    assert run_evaluate(run, device="cpu")["acc"] == result.summary["test_acc"]
    none = run_evaluate(run, device="cpu", tta="none")
    assert none["n"] == result.summary["test_images"]


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"ema": 1.0}, "--ema must be a decay in (0, 1)"),
        ({"tta": "mirror"}, "--tta must be none, flip, flip-translate"),
        ({"ema_start": -1}, "--ema-start must not be negative"),
    ],
)
def test_bad_ema_and_tta_are_one_line(cli, tiny_data, flags, message):
    from conftest import error_line

    args = [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", v)]
    assert message in error_line(cli("train", "--data", tiny_data, *args))
