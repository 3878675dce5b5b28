"""Test-time augmentation: the logits of a batch averaged over views of it (``--tta``), as
airbench94 scores CIFAR-10. Pure batch functions of (model, normalised NCHW batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from augpipe.errors import ConfigError

# none: the batch as it is. flip: the mean of it and its mirror image. flip-translate: half that,
# and half the mean of the same for the batch shifted by one pixel up-left and down-right
# (reflected at the border): airbench94's weights.
TTA_MODES = ("none", "flip", "flip-translate")


def check_tta(mode) -> str:
    if mode not in TTA_MODES:
        raise ConfigError(f"--tta must be {', '.join(TTA_MODES)}, got {mode!r}")
    return mode


def _mirror(model, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x).float() + model(x.flip(-1)).float())


def tta_logits(model, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """The logits of ``x`` under ``mode`` (TTA_MODES), in float32."""
    if mode == "none":
        return model(x).float()
    logits = _mirror(model, x)
    if mode == "flip":
        return logits
    if mode != "flip-translate":
        check_tta(mode)
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :h, :w], padded[..., 2 : h + 2, 2 : w + 2]]
    return 0.5 * logits + 0.5 * torch.stack([_mirror(model, v) for v in shifted]).mean(0)
