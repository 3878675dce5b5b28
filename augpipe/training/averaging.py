"""``--ema DECAY``: an exponential moving average of the weights (timm's ModelEmaV3), updated after
every optimizer step once ``--ema-start`` epochs have passed (before that it copies the weights).
When it is on, the average is the model the run scores: validation, the best checkpoint, the
test score and ``evaluate``/``predict``/``export`` all use it."""
from __future__ import annotations

from augpipe.training.callbacks import Callback


class WeightAverage(Callback):
    """After step s (counted over the run from 1): ema = w while s <= start_step + 1, then
    ema = decay * ema + (1 - decay) * w, for every parameter and buffer."""

    def __init__(self, model, decay: float, steps_per_epoch: int, start_epochs: float = 0.0):
        from timm.utils.model_ema import ModelEmaV3

        self.model = model
        self.steps_per_epoch = steps_per_epoch
        self.start_step = round(start_epochs * steps_per_epoch)
        # fp32 weights (training is fp32 or autocast): no stochastic rounding is involved.
        self.ema = ModelEmaV3(model, decay=decay, update_after_step=self.start_step, stochastic_rounding=False)

    @property
    def module(self):
        """The averaged model, in eval mode."""
        return self.ema.module

    def on_train_batch_end(self, epoch: int, step: int, loss) -> None:
        self.ema.update(self.model, step=(epoch - 1) * self.steps_per_epoch + step)

    def state_dict(self) -> dict:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.module.load_state_dict(state)
