"""The augmentation spec as Albumentations pipelines: the CPU backend, run in loader workers."""
from __future__ import annotations

import random
import warnings
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
    if name == "hflip":
        return [A.HorizontalFlip(p=p)]
    if name == "color_jitter":
        return [A.ColorJitter(brightness=op.brightness, contrast=op.contrast, saturation=op.saturation,
                              hue=op.hue, p=p)]
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


def build_train_transform(spec: AugmentSpec, size: int, *, native=None, seed: int | None = None,
                          normalize: bool = False, lookup=None) -> A.Compose:
    """The training pipeline. ``normalize=False`` (the loader's choice) leaves uint8 images, so
    that the float conversion and normalisation happen once per batch on the training device."""
    transforms = op_transforms(spec, "crop", size, native) if spec.crop else _resize_to(size, native)
    transforms += op_transforms(spec, "hflip", size) + op_transforms(spec, "color_jitter", size)
    transforms += extra_transforms(spec, lookup)
    transforms += op_transforms(spec, "erase", size)
    if normalize:
        transforms.append(A.Normalize(mean=spec.normalize.mean, std=spec.normalize.std))
    compose = _compose(transforms)
    seed_transform(compose, 0 if seed is None else seed)
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
