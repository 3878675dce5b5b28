"""The augmentation spec as Albumentations pipelines: the CPU backend, run in loader workers."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import numpy as np

from augpipe.augment.spec import AugmentSpec
from augpipe.errors import ConfigError

import augpipe  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before the import below)
import albumentations as A


def _resize_to(size: int, native: tuple[int, int] | None) -> list:
    if native == (size, size):
        return []
    return [A.SmallestMaxSize(max_size=size), A.CenterCrop(height=size, width=size)]


def op_transforms(spec: AugmentSpec, name: str, size: int, native=None, force: bool = False) -> list:
    """The Albumentations transforms for one op of the spec (``force``: probability 1)."""
    op = getattr(spec, name)
    if op is None:
        return []
    p = 1.0 if force else op.p
    if name == "crop":
        crop = A.RandomResizedCrop(size=(size, size), scale=tuple(op.scale), ratio=tuple(op.ratio), p=1.0)
        if p >= 1.0:
            return [crop]
        # Without the crop the image must still come out at ``size``.
        rest = _resize_to(size, native)
        if not rest:
            return [A.RandomResizedCrop(size=(size, size), scale=tuple(op.scale), ratio=tuple(op.ratio), p=p)]
        return [A.OneOf([crop, A.Sequential(rest, p=1.0)], p=1.0)] if p > 0 else rest
    if name == "hflip":
        return [A.HorizontalFlip(p=p)]
    if name == "color_jitter":
        return [A.ColorJitter(brightness=op.brightness, contrast=op.contrast, saturation=op.saturation,
                              hue=op.hue, p=p)]
    if name == "erase":
        return [A.Erasing(scale=tuple(op.scale), ratio=tuple(op.ratio), fill=op.fill, p=p)]
    raise ConfigError(f"unknown augmentation op {name!r}")


def _fix_oneof_weights(transforms: list, spec: AugmentSpec) -> None:
    # OneOf picks by the children's p: the crop gets p, the plain resize 1 - p.
    for t in transforms:
        if isinstance(t, A.OneOf):
            t.transforms[0].p = spec.crop.p
            t.transforms[1].p = 1.0 - spec.crop.p


def extra_transforms(spec: AugmentSpec, lookup: Callable[[str], type] | None) -> list:
    out = []
    for entry in spec.extra:
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k != "name"}
        cls = lookup(entry["name"]) if lookup else getattr(A, entry["name"], None)
        if cls is None:
            raise ConfigError(f"unknown augmentation {entry['name']!r} in extra")
        try:
            out.append(cls(**params))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"augmentation {entry['name']!r}: {err}") from None
    return out


def seed_transform(transform: A.BaseCompose, seed: int) -> None:
    """One generator shared by every transform of the pipeline: ``Compose(seed=...)`` would seed
    each transform with the same number, correlating their draws."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def build_train_transform(spec: AugmentSpec, size: int, *, native=None, seed: int | None = None,
                          normalize: bool = False, lookup=None) -> A.Compose:
    """The training pipeline. ``normalize=False`` (the loader's choice) leaves uint8 images, so
    that the float conversion and normalisation happen once per batch on the training device."""
    transforms = op_transforms(spec, "crop", size, native) if spec.crop else _resize_to(size, native)
    _fix_oneof_weights(transforms, spec)
    transforms += op_transforms(spec, "hflip", size) + op_transforms(spec, "color_jitter", size)
    transforms += extra_transforms(spec, lookup)
    transforms += op_transforms(spec, "erase", size)
    if normalize:
        transforms.append(A.Normalize(mean=spec.normalize.mean, std=spec.normalize.std))
    compose = A.Compose(transforms, strict=True)
    seed_transform(compose, 0 if seed is None else seed)
    return compose


def build_eval_transform(spec: AugmentSpec, size: int, *, native=None, normalize: bool = False) -> A.Compose:
    """Resize and centre-crop (when needed), then normalise: no randomness."""
    transforms = _resize_to(size, native)
    if normalize:
        transforms.append(A.Normalize(mean=spec.normalize.mean, std=spec.normalize.std))
    return A.Compose(transforms, strict=True)


def save_pipeline(transform: A.BaseCompose, path) -> None:
    A.save(transform, str(path), data_format="yaml")


def load_pipeline(path) -> A.BaseCompose:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such pipeline file")
    return A.load(str(path), data_format="yaml")
