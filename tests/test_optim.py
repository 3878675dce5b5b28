"""Optimizers and learning-rate schedules by name, as the training loop builds and steps them."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from augpipe.config import DEFAULT_LR, TrainConfig
from augpipe.errors import ConfigError
from augpipe.plugin_manager import get_plugins
from augpipe.training.optim import current_lr

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# name -> (class, settings the optimizer must carry with the config's defaults)
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"momentum": 0.0, "nesterov": False}),
    "momentum": (torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "rmsprop": (torch.optim.RMSprop, {"momentum": 0.0}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
    "adagrad": (torch.optim.Adagrad, {}),
}
SCHEDULERS = ["none", "step", "multistep", "exponential", "cosine", "onecycle", "linear", "plateau"]


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def make_optimizer(model, cfg: TrainConfig):
    factory = get_plugins().optimizers.get(cfg.optimizer)
    return factory(model, lr=cfg.resolved_lr, weight_decay=cfg.weight_decay, momentum=cfg.resolved_momentum)


def test_the_builtin_names_are_registered():
    assert get_plugins().optimizers.names() == sorted([*OPTIMIZERS, "muon"])  # muon: tests/test_muon.py
    assert get_plugins().schedulers.names() == sorted(SCHEDULERS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_class_and_settings(name):
    cls, settings = OPTIMIZERS[name]
    model = tiny_model()
    cfg = TrainConfig(optimizer=name)
    opt = make_optimizer(model, cfg)
    assert type(opt) is cls
    for key, value in settings.items():
        assert opt.defaults[key] == value, key
    assert all(g["lr"] == DEFAULT_LR[name] for g in opt.param_groups)
    # every parameter once; weight decay on the weight matrices, none on biases and norm layers
    params = [p for g in opt.param_groups for p in g["params"]]
    assert sorted(map(id, params)) == sorted(map(id, model.parameters()))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model[0].weight)] == decay[id(model[3].weight)] == cfg.weight_decay
    assert decay[id(model[0].bias)] == decay[id(model[1].weight)] == 0.0


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_step_changes_the_weights_and_training_lowers_the_loss(name):
    model = tiny_model()
    opt = make_optimizer(model, TrainConfig(optimizer=name, lr=0.05))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # three classes a linear model can learn
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if len(losses) == 1:  # (the bias before batch norm has no gradient to follow)
            changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
            assert changed == [True, False, True, True, True, True] or (
                name not in ("sgd", "momentum", "nesterov") and all(changed)
            )
    assert losses[-1] < 0.9 * losses[0]


def test_momentum_can_be_set_and_nesterov_needs_some():
    opt = make_optimizer(tiny_model(), TrainConfig(optimizer="momentum", momentum=0.5))
    assert opt.defaults["momentum"] == 0.5
    opt = make_optimizer(tiny_model(), TrainConfig(optimizer="sgd", momentum=0.8))
    assert opt.defaults["momentum"] == 0.8 and opt.defaults["nesterov"] is False
    with pytest.raises(ConfigError, match="nesterov.*--momentum"):
        TrainConfig(optimizer="nesterov", momentum=0.0).validate()


def test_the_plugin_lr_applies_to_its_optimizer_only():
    """cnn's default lr suits its nesterov SGD; choosing adam without an lr gets adam's."""
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.run import build_config

    defaults = get_plugins().trainer("cnn").defaults
    cfg = build_config(plugin="cnn")
    assert (cfg.optimizer, cfg.resolved_lr) == ("nesterov", defaults["lr"]) and defaults["lr"] != DEFAULT_LR["adam"]
    cfg = build_config(plugin="cnn", optimizer="adam")
    assert cfg.resolved_lr == DEFAULT_LR["adam"]
    cfg = build_config(plugin="cnn", optimizer="adam", lr=0.02)
    assert cfg.resolved_lr == 0.02


# -- schedules -----------------------------------------------------------------------------------

BASE = 0.1


def trace(name, *, epochs=4, steps=5, metrics=None, **settings):
    """Step a schedule as the loop does; returns (lr of each iteration, lr at each epoch's
    start, lr after the last step, schedule, optimizer)."""
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=BASE, momentum=0.9)
    cfg = TrainConfig(scheduler=name, **settings)
    schedule = get_plugins().schedulers.get(name)(opt, config=cfg, steps_per_epoch=steps, epochs=epochs)
    per_iteration, per_epoch = [], []
    for epoch in range(epochs):
        per_epoch.append(current_lr(opt))
        for _ in range(steps):
            per_iteration.append(current_lr(opt))
            opt.step()
            schedule.step_iteration()
        schedule.step_epoch(metrics[epoch] if metrics else 1.0)
    return per_iteration, per_epoch, current_lr(opt), schedule, opt


@pytest.mark.parametrize("warmup", [0.0, 1.0])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_schedule_builds_and_steps_cleanly(name, warmup):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "lr_scheduler.step() before optimizer.step()"
        lrs, _, _, _, _ = trace(name, warmup_epochs=warmup, epochs=4, steps=5)
    assert len(lrs) == 20
    assert all(math.isfinite(lr) and 0 < lr <= BASE * (1 + 1e-9) for lr in lrs)
    if warmup and name == "linear":
        # airbench's warm-up: from BASE/5, at the peak one step after the warm-up epoch
        assert lrs[:6] == pytest.approx([BASE * (0.2 + 0.8 * k / 5) for k in range(6)])
    if warmup and name not in ("onecycle", "linear"):
        # linear warm-up over the first epoch's 5 iterations, from BASE/5 to BASE
        assert lrs[:5] == pytest.approx([BASE * k / 5 for k in range(1, 6)])
    if warmup and name == "onecycle":
        # one-cycle's own warm-up: rising over the warm-up epoch, at its peak at its end
        assert all(a < b for a, b in zip(lrs[:5], lrs[1:5]))
        assert max(lrs) == pytest.approx(BASE) and lrs.index(max(lrs)) == 4


def test_none_is_constant():
    lrs, _, _, _, _ = trace("none")
    assert lrs == [BASE] * 20


def test_step_decays_by_gamma_every_step_size_epochs():
    lrs, starts, _, _, _ = trace("step", epochs=5, step_size=2, gamma=0.5)
    assert starts == pytest.approx([BASE, BASE, BASE / 2, BASE / 2, BASE / 4])
    assert lrs[10:15] == [lrs[10]] * 5  # constant within an epoch


@pytest.mark.parametrize(
    "milestones,expected",
    [
        ([0.5, 0.75], [1, 1, 0.1, 0.01]),  # fractions of 4 epochs: 2, 3
        ([1, 3], [1, 0.1, 0.1, 0.01]),
    ],
)  # epochs
def test_multistep_decays_at_the_milestones(milestones, expected):
    _, starts, _, _, _ = trace("multistep", epochs=4, milestones=milestones, gamma=0.1)
    assert starts == pytest.approx([BASE * e for e in expected])


def test_exponential_decays_by_gamma_each_epoch():
    _, starts, _, _, _ = trace("exponential", epochs=4, gamma=0.5)
    assert starts == pytest.approx([BASE, BASE / 2, BASE / 4, BASE / 8])


@pytest.mark.parametrize("warmup", [0.0, 1.0])
def test_cosine_falls_to_min_lr(warmup):
    lrs, _, final, _, _ = trace("cosine", epochs=4, steps=5, min_lr=0.01, warmup_epochs=warmup)
    after = lrs[5:] if warmup else lrs
    assert after[0] == pytest.approx(BASE)
    assert all(a >= b for a, b in zip(after, after[1:]))  # never rises after the warm-up
    assert final == pytest.approx(0.01)
    assert lrs[-1] == pytest.approx(0.01, abs=0.05 * (BASE - 0.01))
    if not warmup:
        assert lrs[10] == pytest.approx((BASE + 0.01) / 2)  # half-way


def test_onecycle_starts_low_peaks_at_30_percent_and_ends_near_zero():
    lrs, _, _, _, opt = trace("onecycle", epochs=4, steps=5)
    assert lrs[0] == pytest.approx(BASE / 25)
    assert lrs.index(max(lrs)) == round(0.3 * 20) - 1 and max(lrs) == pytest.approx(BASE)
    assert lrs[-1] < BASE / 1000


def test_linear_rises_from_a_fifth_over_23_percent_then_falls_to_min_lr():
    lrs, _, final, _, _ = trace("linear", epochs=4, steps=25, min_lr=0.07 * BASE)  # 100 steps, 23 of warm-up
    assert lrs[0] == pytest.approx(0.2 * BASE)
    assert lrs[23] == pytest.approx(BASE) and max(lrs) == pytest.approx(BASE)
    rise, fall = lrs[:24], lrs[23:]
    assert all(b > a for a, b in zip(rise, rise[1:])) and all(b < a for a, b in zip(fall, fall[1:]))
    # straight lines: equal steps on each side
    assert lrs[12] - lrs[11] == pytest.approx(lrs[2] - lrs[1])
    assert lrs[60] - lrs[61] == pytest.approx(lrs[30] - lrs[31])
    assert final == pytest.approx(0.07 * BASE)


def test_linear_keeps_the_ratio_of_scaled_groups():
    from augpipe.training.optim import linear

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    opt = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 64 * BASE}], lr=BASE
    )
    schedule = linear(opt, config=TrainConfig(scheduler="linear", min_lr=0.0), steps_per_epoch=10, epochs=2)
    for _ in range(7):
        opt.step()
        schedule.step_iteration()
    assert opt.param_groups[1]["lr"] == pytest.approx(64 * opt.param_groups[0]["lr"])


def test_norm_lr_scale_speeds_up_norm_layers_and_keeps_their_decay_per_step():
    from augpipe.training.optim import OPTIMIZERS, scale_norm_lr

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.GroupNorm(1, 2))
    opt = OPTIMIZERS["nesterov"](model, lr=0.1, weight_decay=0.01, momentum=0.9)
    scale_norm_lr(opt, model, 64)
    norm_ids = {id(p) for m in (model[1], model[3]) for p in m.parameters()}
    seen = set()
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        seen |= ids
        if ids & norm_ids:
            assert ids <= norm_ids and group["lr"] == pytest.approx(6.4)
            assert group["lr"] * group["weight_decay"] == pytest.approx(0.0)  # 1-D: no decay, as before
        else:
            assert group["lr"] == pytest.approx(0.1)
    assert seen == {id(p) for p in model.parameters()}
    assert current_lr(opt) == pytest.approx(0.1)  # the first group is --lr's
    # a 2-D norm parameter (none in torch's layers) would keep lr x decay: check the arithmetic
    extra = nn.Parameter(torch.ones(2, 2))
    opt2 = torch.optim.SGD([{"params": [extra], "weight_decay": 0.01}], lr=0.1)
    holder = nn.Module()
    holder.norm = nn.LayerNorm(2)
    holder.norm.weight = extra
    scale_norm_lr(opt2, holder, 8)
    assert opt2.param_groups[0]["lr"] * opt2.param_groups[0]["weight_decay"] == pytest.approx(0.1 * 0.01)


def test_norm_lr_scale_must_be_positive():
    with pytest.raises(ConfigError, match="--norm-lr-scale"):
        TrainConfig(norm_lr_scale=0).validate()


def test_plateau_reduces_after_epochs_without_improvement():
    # patience 2: the best value, then three epochs without improvement, then the cut
    _, starts, final, _, _ = trace("plateau", epochs=4, metrics=[1.0, 1.0, 1.0, 1.0], gamma=0.5)
    assert starts == [BASE] * 4 and final == pytest.approx(BASE / 2)
    _, _, final, _, _ = trace("plateau", epochs=4, metrics=[1.0, 0.9, 0.8, 0.7], gamma=0.5)
    assert final == BASE


def test_plateau_follows_the_monitor_direction():
    # val_acc is maximised: a rising accuracy is improvement, a falling one is not
    _, _, final, _, _ = trace("plateau", epochs=4, metrics=[0.5, 0.6, 0.7, 0.8], gamma=0.5, monitor="val_acc")
    assert final == BASE
    _, _, final, _, _ = trace("plateau", epochs=4, metrics=[0.8, 0.7, 0.6, 0.5], gamma=0.5, monitor="val_acc")
    assert final == pytest.approx(BASE / 2)


def test_plateau_after_warmup_keeps_its_cuts():
    lrs, _, final, _, _ = trace("plateau", epochs=5, steps=5, metrics=[1.0] * 5, gamma=0.5, warmup_epochs=1)
    assert lrs[:5] == pytest.approx([BASE * k / 5 for k in range(1, 6)])
    assert lrs[5:20] == pytest.approx([BASE] * 15)
    assert lrs[20:] == pytest.approx([BASE / 2] * 5)  # the warm-up part no longer resets the lr
    assert final == pytest.approx(BASE / 2)


@pytest.mark.parametrize("name", ["cosine", "onecycle", "plateau"])
def test_a_schedule_resumes_from_its_state(name):
    """The checkpoint's scheduler state continues the same curve."""
    settings = dict(warmup_epochs=1.0, gamma=0.5)
    full, _, _, _, _ = trace(name, epochs=4, steps=5, metrics=[1.0] * 4, **settings)
    # run two epochs, save, rebuild, load, run the remaining iterations
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=BASE, momentum=0.9)
    cfg = TrainConfig(scheduler=name, **settings)
    factory = get_plugins().schedulers.get(name)
    schedule = factory(opt, config=cfg, steps_per_epoch=5, epochs=4)
    for _ in range(2):
        for _ in range(5):
            opt.step()
            schedule.step_iteration()
        schedule.step_epoch(1.0)
    state, opt_state = schedule.state_dict(), opt.state_dict()
    opt2 = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=BASE, momentum=0.9)
    schedule2 = factory(opt2, config=cfg, steps_per_epoch=5, epochs=4)
    opt2.load_state_dict(opt_state)
    schedule2.load_state_dict(state)
    rest = []
    for _ in range(2):
        for _ in range(5):
            rest.append(current_lr(opt2))
            opt2.step()
            schedule2.step_iteration()
        schedule2.step_epoch(1.0)
    assert rest == pytest.approx(full[10:])
