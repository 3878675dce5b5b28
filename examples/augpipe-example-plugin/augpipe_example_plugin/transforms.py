"""``RandomDesaturate``: blends the image with its own grey version by a random amount, a
colour augmentation that keeps brightness (unlike ``ToGray``, it is not all or nothing)."""

from __future__ import annotations

from typing import Annotated, Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import AfterValidator


def _fraction_range(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"amount must be (low, high) with 0 <= low <= high <= 1, got {value}")
    return value


class RandomDesaturate(A.ImageOnlyTransform):
    """Blend an RGB uint8 image with its grey version: ``amount`` 0 keeps the colours, 1 makes
    it grey; each image draws its amount uniformly from the ``amount`` range.

    In an augpipe augmentation spec::

        extra: [{name: RandomDesaturate, amount: [0.2, 0.8], p: 0.5}]
    """

    # Albumentations validates the arguments with this schema when the transform is built, so
    # a bad spec fails when augpipe reads it, not in the middle of an epoch.
    class InitSchema(BaseTransformInitSchema):
        amount: Annotated[tuple[float, float], AfterValidator(_fraction_range)]

    def __init__(self, amount: tuple[float, float] = (0.2, 0.8), p: float = 0.5):
        super().__init__(p=p)
        self.amount = amount

    def get_params(self) -> dict[str, Any]:
        # self.py_random is the generator augpipe seeds per run and worker: never the global
        # random or numpy state, or a run would not repeat.
        return {"amount": self.py_random.uniform(*self.amount)}

    def apply(self, img: np.ndarray, amount: float = 0.0, **params: Any) -> np.ndarray:
        if img.ndim != 3 or img.shape[2] != 3 or amount == 0.0:
            return img
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
        blended = img.astype(np.float32) * (1.0 - amount) + grey.astype(np.float32) * amount
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        # the arguments Albumentations saves (augment.yaml in every run directory)
        return ("amount",)
