"""Early stopping, checkpoints and the metrics file, alone and inside the training loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from augpipe.config import TrainConfig
from augpipe.training.callbacks import METRIC_COLUMNS, Checkpoints, EarlyStopping, MetricsFile, read_metrics
from augpipe.training.loop import fit
from augpipe.training.optim import SCHEDULERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def drive(stopper, values, monitor="val_loss"):
    """Feed one scripted value per epoch; the model's weight is the epoch number, so the restored
    weight tells which epoch's weights came back. Returns (epoch it stopped at or None, model)."""
    model = nn.Linear(1, 1, bias=False)
    for epoch, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        if stopper.on_epoch_end(epoch, {monitor: value}, model):
            return epoch, model
    return None, model


@pytest.mark.parametrize(
    "settings,values,stop,best",
    [
        # patience 2: best at 2, epochs 3 and 4 do not improve
        (dict(patience=2), [1.0, 0.8, 0.9, 0.85, 0.7], 4, 2),
        # patience 0 stops at the first epoch without improvement
        (dict(patience=0), [1.0, 0.8, 0.9, 0.7], 3, 2),
        # an equal value is no improvement
        (dict(patience=1), [1.0, 1.0, 0.5], 2, 1),
        # min_delta: 0.95 and 0.92 are not better than 1.0 by more than 0.1
        (dict(patience=2, min_delta=0.1), [1.0, 0.95, 0.92, 0.5], 3, 1),
        (dict(patience=2, min_delta=0.1), [1.0, 0.85, 0.80, 0.76], 4, 2),  # 0.8, 0.76: not by 0.1
        # start_from_epoch 2: epochs 1 and 2 are not looked at, however good
        (dict(patience=2, start_from_epoch=2), [0.1, 0.2, 1.0, 1.1, 1.2], 5, 3),
        # without patience it never stops, yet tracks the best
        (dict(patience=None), [1.0, 0.5, 0.9, 0.9, 0.9, 0.9], None, 2),
    ],
)
def test_early_stopping_on_a_scripted_loss(settings, values, stop, best):
    stopper = EarlyStopping(monitor="val_loss", mode="min", **settings)
    stopped, model = drive(stopper, values)
    assert stopped == stop and stopper.stopped_epoch == stop
    assert stopper.best_epoch == best and stopper.best == values[best - 1]
    assert stopper.restore(model)
    assert model.weight.item() == best
    if stop is None:
        assert stopper.reason is None
    else:
        assert "val_loss" in stopper.reason and f"epoch {best}" in stopper.reason
        assert f"for {stop - best} epoch(s)" in stopper.reason


def test_early_stopping_maximises_accuracy():
    stopper = EarlyStopping(monitor="val_acc", mode="max", patience=2)
    stopped, model = drive(stopper, [0.5, 0.6, 0.6, 0.55, 0.9], monitor="val_acc")
    assert (stopped, stopper.best_epoch, stopper.best) == (4, 2, 0.6)
    stopper.restore(model)
    assert model.weight.item() == 2
    assert TrainConfig(monitor="val_acc").monitor_mode == "max"
    assert TrainConfig(monitor="train_loss").monitor_mode == "min"


def test_non_finite_and_missing_values_are_not_counted():
    stopper = EarlyStopping(patience=1)
    stopped, _ = drive(stopper, [1.0, math.nan, math.inf, 0.9, 1.0])
    assert stopped == 5 and stopper.best_epoch == 4
    stopper = EarlyStopping(patience=1)
    assert not stopper.on_epoch_end(1, {"train_loss": 1.0}, nn.Linear(1, 1))
    assert stopper.best_epoch is None and not stopper.restore(nn.Linear(1, 1))


def test_restore_best_off_leaves_the_last_weights():
    stopper = EarlyStopping(patience=1, restore_best=False)
    stopped, model = drive(stopper, [0.5, 0.9])
    assert stopped == 2 and stopper.best_epoch == 1
    assert not stopper.restore(model)
    assert model.weight.item() == 2


def test_best_weights_are_a_copy_not_a_view():
    stopper = EarlyStopping(patience=5)
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    stopper.on_epoch_end(1, {"val_loss": 0.1}, model)
    with torch.no_grad():
        model.weight.fill_(7.0)  # training goes on in place
    stopper.restore(model)
    assert model.weight.item() == 1.0


def test_best_weights_of_a_compiled_model_restore_into_the_plain_one():
    """--compile: the loop hands the callbacks torch.compile's wrapper, whose state_dict keys
    carry an '_orig_mod.' prefix; the best weights are restored into the plain model."""
    model = nn.Linear(2, 2)
    compiled = torch.compile(model)
    stopper = EarlyStopping(patience=1)
    stopper.on_epoch_end(1, {"val_loss": 0.5}, compiled)
    best = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert stopper.restore(model)
    assert torch.equal(model.weight, best)


# -- checkpoints and the metrics file -------------------------------------------------------------


def test_checkpoints_keep_last_every_epoch_and_best_on_improvement(tmp_path):
    tracker = EarlyStopping(patience=None)
    ckpt = Checkpoints(tmp_path, lambda epoch: {"epoch": epoch}, tracker)
    saved = []
    for epoch, loss in enumerate([1.0, 0.5, 0.7, 0.6], start=1):
        tracker.on_epoch_end(epoch, {"val_loss": loss})
        ckpt.on_epoch_end(epoch, {"val_loss": loss})
        saved.append((torch.load(tmp_path / "last.pt")["epoch"], torch.load(tmp_path / "best.pt")["epoch"]))
    assert saved == [(1, 1), (2, 2), (3, 2), (4, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary files left


def test_without_a_scored_epoch_best_follows_the_latest(tmp_path):
    """No validation split (or epochs before start_from_epoch): nothing is scored, and best.pt
    must still exist, holding the latest weights, for evaluate and for a failed run."""
    tracker = EarlyStopping(patience=None, start_from_epoch=2)
    ckpt = Checkpoints(tmp_path, lambda epoch: {"epoch": epoch}, tracker)
    bests = []
    for epoch, loss in enumerate([0.1, 0.2, 0.9, 1.0], start=1):
        tracker.on_epoch_end(epoch, {"val_loss": loss})
        ckpt.on_epoch_end(epoch, {"val_loss": loss})
        bests.append(torch.load(tmp_path / "best.pt")["epoch"])
    assert bests == [1, 2, 3, 3]


def test_metrics_file_writes_a_row_per_epoch(tmp_path):
    path = tmp_path / "metrics.csv"
    mf = MetricsFile(path)
    assert read_metrics(path) == []
    mf.on_epoch_end(1, {"epoch": 1, "train_loss": 1.25, "lr": 0.1, "seconds": 2.0})
    mf.on_epoch_end(2, {"epoch": 2, "train_loss": 0.75, "val_loss": 0.5, "val_acc": 0.8, "lr": 0.05})
    assert path.read_text().splitlines()[0] == ",".join(METRIC_COLUMNS)
    rows = read_metrics(path)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["val_loss"] is None and rows[1]["val_loss"] == 0.5 and rows[1]["lr"] == 0.05


# -- inside the loop ---------------------------------------------------------------------------------


class ScriptedValLoss(nn.Module):
    """Trains as a linear model; evaluated, its loss on class 0 is the scripted value of the
    current epoch (an epoch begins at each .train()). ``nan_epoch``: its training output turns
    NaN in that epoch."""

    def __init__(self, losses, nan_epoch=None):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.losses, self.nan_epoch, self.epoch = losses, nan_epoch, 0

    def train(self, mode=True):
        self.epoch += bool(mode)
        return super().train(mode)

    def forward(self, x):
        y = self.lin(x)
        if self.training:
            return y * math.nan if self.epoch == self.nan_epoch else y
        # cross-entropy of logits (0, z) on class 0 is log(1 + e^z) = L for z = log(e^L - 1)
        z = math.log(math.expm1(self.losses[self.epoch - 1]))
        return torch.tensor([0.0, z]).expand(len(x), 2)


def run_fit(model, epochs, callbacks, tracker=None):
    torch.manual_seed(0)
    train = DataLoader(TensorDataset(torch.randn(12, 4), torch.randint(0, 2, (12,))), batch_size=4)
    val = DataLoader(TensorDataset(torch.randn(4, 4), torch.zeros(4, dtype=torch.long)), batch_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = SCHEDULERS["none"](opt, config=TrainConfig(), steps_per_epoch=len(train), epochs=epochs)
    return fit(
        model,
        train,
        val,
        prepare_train=lambda x: x,
        prepare_eval=lambda x: x,
        optimizer=opt,
        schedule=schedule,
        loss_fn=nn.CrossEntropyLoss(),
        epochs=epochs,
        device=torch.device("cpu"),
        num_classes=2,
        callbacks=callbacks,
        tracker=tracker,
    )


class Snapshots:
    """Keeps a copy of the weights at the end of every epoch."""

    def __init__(self):
        self.states = {}

    def on_epoch_end(self, epoch, metrics, model):
        self.states[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return False


def test_the_loop_stops_early_records_why_and_restores_the_best(tmp_path):
    losses = [1.0, 0.5, 0.6, 0.7, 0.4, 0.3]
    model = ScriptedValLoss(losses)
    tracker = EarlyStopping(patience=2)
    snaps = Snapshots()
    history = run_fit(model, epochs=6, callbacks=[tracker, snaps, MetricsFile(tmp_path / "m.csv")], tracker=tracker)
    assert len(history.epochs) == 4 and not history.failed
    assert [e["val_loss"] for e in history.epochs] == pytest.approx(losses[:4])
    assert history.stop_reason == tracker.reason and history.stop_reason.startswith("early stopping")
    assert len(read_metrics(tmp_path / "m.csv")) == 4
    assert not torch.equal(model.lin.weight, snaps.states[2]["lin.weight"])  # it trained on after epoch 2
    tracker.restore(model)
    assert torch.equal(model.lin.weight, snaps.states[2]["lin.weight"])


def test_the_loop_stops_at_a_non_finite_loss_and_keeps_the_epochs_done(tmp_path):
    model = ScriptedValLoss([1.0, 0.9, 0.8, 0.7], nan_epoch=3)
    tracker = EarlyStopping(patience=None)
    ckpt = Checkpoints(tmp_path, lambda epoch: {"epoch": epoch, "model": model.state_dict()}, tracker)
    history = run_fit(model, epochs=4, callbacks=[tracker, ckpt], tracker=tracker)
    assert history.failed and len(history.epochs) == 2
    assert history.stop_reason == "stopped at epoch 3: the training loss became nan at iteration 1"
    state = torch.load(tmp_path / "best.pt")
    assert state["epoch"] == 2 and torch.isfinite(state["model"]["lin.weight"]).all()
    assert not torch.isfinite(model.lin.weight).all()  # the NaN step was taken ...
    tracker.restore(model)
    assert torch.isfinite(model.lin.weight).all()  # ... and the best weights come back
