"""``--ema DECAY``: a moving average of the weights (timm's ModelEmaV3 holds it), updated every
``--ema-every`` optimizer steps once ``--ema-start`` epochs have passed (before that it copies
the weights). When it is on, the average is the model the run scores: validation, the best
checkpoint, the test score and ``evaluate``/``predict``/``export`` all use it.

``--ema-mode lookahead`` also copies the average back into the weights being trained after each
update and at the end of each epoch (the Lookahead of airbench94), and ``--ema-power P`` lets the
decay grow over the run as DECAY * (step / total steps) ** P: near 0 early, so the average
follows the weights while they move fast, DECAY at the end (airbench94: 0.95 ** 5, every 5 steps,
power 3, from epoch 3)."""

from __future__ import annotations

import torch

from augpipe.config import EMA_MODES  # noqa: F401  (the modes are named where the flag is)
from augpipe.training.callbacks import Callback


def _accepts(cls, name: str) -> bool:
    import inspect

    return name in inspect.signature(cls.__init__).parameters


class WeightAverage(Callback):
    """After step s (counted over the run from 1): ema = w while s <= start_step + 1; then, at
    every ``every``-th step, ema = d * ema + (1 - d) * w with d = decay * (s / total_steps) **
    power, for every parameter and buffer. ``lookahead``: then w = ema, and again after the
    epoch's last step."""

    def __init__(
        self,
        model,
        decay: float,
        steps_per_epoch: int,
        start_epochs: float = 0.0,
        *,
        every: int = 1,
        power: float = 0.0,
        total_steps: int | None = None,
        lookahead: bool = False,
    ):
        from timm.utils.model_ema import ModelEmaV3

        self.model = model
        self.decay, self.every, self.power, self.lookahead = decay, every, power, lookahead
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, total_steps or steps_per_epoch)
        self.start_step = round(start_epochs * steps_per_epoch)
        # fp32 weights (training is fp32 or autocast): no stochastic rounding is involved. timm
        # before 1.0.30 has no such argument and never rounds stochastically, so it is only
        # passed where it exists (pyproject's floor is timm 1.0).
        extra = {"stochastic_rounding": False} if _accepts(ModelEmaV3, "stochastic_rounding") else {}
        self.ema = ModelEmaV3(model, decay=decay, update_after_step=self.start_step, **extra)

    @property
    def module(self):
        """The averaged model, in eval mode."""
        return self.ema.module

    def decay_at(self, step: int) -> float:
        """The decay of the update after ``step``, or 0 (a copy) before the average starts."""
        if step <= self.start_step + 1:
            return 0.0
        return self.decay * (min(step, self.total_steps) / self.total_steps) ** self.power

    @torch.no_grad()
    def on_train_batch_end(self, epoch: int, step: int, loss) -> None:
        s = (epoch - 1) * self.steps_per_epoch + step
        if s <= self.start_step + 1 or s % self.every == 0:
            self.ema.apply_update_(self.model, self.decay_at(s))
            if self.lookahead:
                self._copy_back()
        elif self.lookahead and step == self.steps_per_epoch:
            self._copy_back()

    def _copy_back(self) -> None:
        # one fused copy over all tensors: a Python loop of copies costs a kernel launch each
        pairs = [
            (t, a)
            for a, t in zip(self.ema.module.state_dict().values(), self.model.state_dict().values())
            if t.is_floating_point()
        ]
        if pairs:
            trained, averaged = zip(*pairs)
            torch._foreach_copy_(list(trained), list(averaged))

    def state_dict(self) -> dict:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.module.load_state_dict(state)
