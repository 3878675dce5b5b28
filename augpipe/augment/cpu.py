"""The augmentation spec as Albumentations pipelines: the CPU backend, run in loader workers.

A pipeline is called as ``transform(image=img, item=k, epoch=e)``: ``item`` (the image's index
in the data set) and ``epoch`` are what ``hflip: {alternate: true}`` decides by
(``AlternateHorizontalFlip``); every other transform ignores them.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np

import augpipe  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before the import below)
from augpipe.augment.policies import policy_transform  # also registers the policies' transforms for A.load
from augpipe.augment.spec import POLICIES, AugmentSpec, alternate_flip
from augpipe.errors import ConfigError

ITEM_KEY, EPOCH_KEY = "item", "epoch"


class AlternateHorizontalFlip(A.HorizontalFlip):
    """HorizontalFlip on alternate epochs: called with ``item`` and ``epoch``, it flips when
    ``augpipe.augment.spec.alternate_flip(item, epoch, flip_seed)`` says so, drawing no random
    number. Called without them (a one-off call: ``augpipe preview``, a check of the pipeline)
    it flips with probability ``p``, as HorizontalFlip does."""

    def __init__(self, flip_seed: int = 0, p: float = 0.5):
        super().__init__(p=p)
        self.flip_seed = int(flip_seed)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("flip_seed",)

    def should_apply(self, force_apply: bool = False) -> bool:
        # Decided in get_params_dependent_on_data, where the item and epoch are known.
        return True

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        if data.get(ITEM_KEY) is not None and data.get(EPOCH_KEY) is not None:
            flip = alternate_flip(data[ITEM_KEY], data[EPOCH_KEY], self.flip_seed)
        else:
            flip = self.py_random.random() < self.p
        return {"flip": flip}

    def apply(self, img: np.ndarray, flip: bool = False, **params: Any) -> np.ndarray:
        return super().apply(img, **params) if flip else img

    def apply_to_mask(self, mask: np.ndarray, flip: bool = False, **params: Any) -> np.ndarray:
        return super().apply_to_mask(mask, **params) if flip else mask

    def apply_to_bboxes(self, bboxes: np.ndarray, flip: bool = False, **params: Any) -> np.ndarray:
        return super().apply_to_bboxes(bboxes, **params) if flip else bboxes

    def apply_to_keypoints(self, keypoints: np.ndarray, flip: bool = False, **params: Any) -> np.ndarray:
        return super().apply_to_keypoints(keypoints, **params) if flip else keypoints


def _resize_to(size: int, native: tuple[int, int] | None) -> list:
    if native == (size, size):
        return []
    return [A.SmallestMaxSize(max_size=size), A.CenterCrop(height=size, width=size)]


def op_transforms(spec: AugmentSpec, name: str, size: int, native=None, force: bool = False, seed: int = 0) -> list:
    """The Albumentations transforms for one op of the spec (``force``: probability 1, and
    ``hflip`` as a plain flip). ``seed``: the run's seed, for the alternate flip's bits."""
    op = getattr(spec, name)
    if op is None:
        return []
    p = 1.0 if force else op.p
    if name == "crop":
        if p >= 1.0:
            return [A.RandomResizedCrop(size=(size, size), scale=tuple(op.scale), ratio=tuple(op.ratio), p=1.0)]
        # Without the crop the image must still come out at ``size``.
        rest = _resize_to(size, native)
        if not rest:
            return [A.RandomResizedCrop(size=(size, size), scale=tuple(op.scale), ratio=tuple(op.ratio), p=p)]
        if p <= 0:
            return rest
        # OneOf picks a child by the children's p, normalised once in its constructor (setting
        # p afterwards changes nothing): the crop gets p, the plain resize 1 - p.
        crop = A.RandomResizedCrop(size=(size, size), scale=tuple(op.scale), ratio=tuple(op.ratio), p=p)
        return [A.OneOf([crop, A.Sequential(rest, p=1.0 - p)], p=1.0)]
    if name == "translate":
        spec.check_size(size)
        # RandomCrop's corner is int((size + 2 pad - size + 1) * U[0, 1)) on each axis: each of the
        # 2 pad + 1 offsets equally likely. (Pad, not PadIfNeeded: the latter saves a "padding"
        # that its own loader warns about.)
        border = cv2.BORDER_REFLECT_101 if op.mode == "reflect" else cv2.BORDER_CONSTANT
        fill = tuple(float(v) for v in op.fill) if isinstance(op.fill, (list, tuple)) else float(op.fill)
        shift = [
            A.Pad(padding=op.pad, border_mode=border, fill=fill, p=1.0),
            A.RandomCrop(height=size, width=size, p=1.0),
        ]
        return shift if p >= 1.0 else [A.Sequential(shift, p=p)]
    if name == "hflip":
        if op.alternate and not force:
            return [AlternateHorizontalFlip(flip_seed=seed, p=op.p)]
        return [A.HorizontalFlip(p=p)]
    if name == "color_jitter":
        return [
            A.ColorJitter(brightness=op.brightness, contrast=op.contrast, saturation=op.saturation, hue=op.hue, p=p)
        ]
    if name in POLICIES:
        return [policy_transform(name, dataclasses.replace(op, p=p))]
    if name == "erase":
        return [A.Erasing(scale=tuple(op.scale), ratio=tuple(op.ratio), fill=op.fill, p=p)]
    raise ConfigError(f"unknown augmentation op {name!r}")


def extra_transforms(spec: AugmentSpec, lookup: Callable[[str], type] | None) -> list:
    out = []
    for entry in spec.extra:
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k != "name"}
        cls = lookup(entry["name"]) if lookup else getattr(A, entry["name"], None)
        if cls is None:
            raise ConfigError(f"unknown augmentation {entry['name']!r} in extra")
        try:
            # A misspelled argument only warns here: report it now, as a config error naming
            # the transform (the pipelines are not strict, see _compose).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                t = cls(**params)
        except Exception as err:  # pydantic's ValidationError, TypeError ...: the user's parameters
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"augmentation {entry['name']!r}: {first}") from None
        if getattr(t, "invalid_args", None):
            raise ConfigError(f"augmentation {entry['name']!r}: unknown argument(s) {', '.join(t.invalid_args)}")
        out.append(t)
    return out


def _compose(transforms: list) -> A.Compose:
    # Not strict: strict=True re-validates the keys and arrays of every call (1.5 us an image,
    # about 1.5% of the whole pipeline on 32x32 images; bench/augment_throughput.py), while
    # the arguments it checks at construction are ours, or checked in extra_transforms.
    return A.Compose(transforms)


def seed_transform(transform: A.BaseCompose, seed: int) -> None:
    """One generator shared by every transform of the pipeline: ``Compose(seed=...)`` would seed
    each transform with the same number, correlating their draws."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def build_train_transform(
    spec: AugmentSpec, size: int, *, native=None, seed: int | None = None, normalize: bool = False, lookup=None
) -> A.Compose:
    """The training pipeline. ``normalize=False`` (the loader's choice) leaves uint8 images, so
    that the float conversion and normalisation happen once per batch on the training device.
    ``seed`` seeds the random streams and the alternate flip's per-image bits."""
    seed = 0 if seed is None else seed
    transforms = op_transforms(spec, "crop", size, native) if spec.crop else _resize_to(size, native)
    transforms += op_transforms(spec, "translate", size)
    transforms += op_transforms(spec, "hflip", size, seed=seed) + op_transforms(spec, "color_jitter", size)
    for name in spec.policy_ops():
        transforms += op_transforms(spec, name, size)
    transforms += extra_transforms(spec, lookup)
    transforms += op_transforms(spec, "erase", size)
    if normalize:
        transforms.append(A.Normalize(mean=spec.normalize.mean, std=spec.normalize.std))
    compose = _compose(transforms)
    seed_transform(compose, seed)
    return compose


def build_eval_transform(spec: AugmentSpec, size: int, *, native=None, normalize: bool = False) -> A.Compose:
    """Resize and centre-crop (when needed), then normalise: no randomness."""
    transforms = _resize_to(size, native)
    if normalize:
        transforms.append(A.Normalize(mean=spec.normalize.mean, std=spec.normalize.std))
    return _compose(transforms)


def save_pipeline(transform: A.BaseCompose, path) -> None:
    from augpipe.files import atomic_path

    with atomic_path(path) as tmp:
        A.save(transform, str(tmp), data_format="yaml")


def load_pipeline(path) -> A.BaseCompose:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such pipeline file")
    return A.load(str(path), data_format="yaml")
