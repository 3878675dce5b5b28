"""Automatic augmentation policies from Albumentations operations: TrivialAugment (the "wide"
variant), RandAugment and AutoAugment (Cubuk et al.'s cifar10, imagenet and svhn sub-policies),
sampled per image as ``torchvision.transforms`` samples them:

    trivial_augment: {num_magnitude_bins: 31, p: 1.0}   # one op uniformly, a magnitude bin uniformly
    rand_augment: {n: 2, m: 9, num_magnitude_bins: 31}  # n ops uniformly (with replacement), bin m
    auto_augment: {policy: cifar10}                     # one sub-policy uniformly, each op with its p

The op lists, magnitude bins and signs are torchvision's ``_augmentation_space`` (0.29): TrivialAugment
with its wider ranges (translate up to 32 pixels whatever the image size), RandAugment and
AutoAugment with translate up to 150/331 of the image side; AutoAugment in 10 bins. A signed op
gets a random sign. Geometric ops use nearest-neighbour sampling and fill with 0, as torchvision
does by default (``fill`` on the transforms changes it).

Every draw comes from the transform's ``py_random``, the pipeline's shared stream after
``seed_transform``, so a seeded pipeline repeats itself. ``sample(rng, shape)`` draws one image's
plan (what ``apply`` then runs); ``policy_table`` says which Albumentations function runs each op.
Images are uint8 (the per-pixel ops are lookup tables).
"""

from __future__ import annotations

import abc
import math
import random
from collections.abc import Callable
from dataclasses import fields
from typing import Any, NamedTuple

# (augpipe/__init__.py, run before any module of the package, sets NO_ALBUMENTATIONS_UPDATE.)
import albumentations as A
import albumentations.augmentations.geometric.functional as fgeometric
import albumentations.augmentations.pixel.functional as fpixel
import cv2
import numpy as np
from albucore import sz_lut

# The spec entries live in augment/spec.py (read without importing Albumentations); re-exported.
from augpipe.augment.spec import (  # noqa: F401
    AUTO_AUGMENT_POLICIES,
    POLICIES,
    AugmentSpec,
    AutoAugment,
    RandAugment,
    TrivialAugment,
    closest,
)
from augpipe.errors import ConfigError

AUTO_AUGMENT_BINS = 10  # torchvision's AutoAugment: its sub-policies name bins 0..9


# -- magnitude spaces (torchvision's _augmentation_space) --------------------------------------
class OpRange(NamedTuple):
    """How an op's bins map to magnitudes: ``linear`` 0 .. top, ``posterize`` 8 down to 8 - top
    bits, ``solarize`` a threshold from 255 down to 0, ``none`` no magnitude. ``side``: top is a
    fraction of the image width ("x") or height ("y") instead of a number of pixels."""

    kind: str
    top: float = 0.0
    signed: bool = False
    side: str | None = None


_NONE = OpRange("none")
_TRANSLATE_FRACTION = 150.0 / 331.0

# RandAugment's space; AutoAugment's is the same without Identity and with Invert.
_STANDARD_SPACE = {
    "Identity": _NONE,
    "ShearX": OpRange("linear", 0.3, True),
    "ShearY": OpRange("linear", 0.3, True),
    "TranslateX": OpRange("linear", _TRANSLATE_FRACTION, True, "x"),
    "TranslateY": OpRange("linear", _TRANSLATE_FRACTION, True, "y"),
    "Rotate": OpRange("linear", 30.0, True),
    "Brightness": OpRange("linear", 0.9, True),
    "Color": OpRange("linear", 0.9, True),
    "Contrast": OpRange("linear", 0.9, True),
    "Sharpness": OpRange("linear", 0.9, True),
    "Posterize": OpRange("posterize", 4),
    "Solarize": OpRange("solarize"),
    "AutoContrast": _NONE,
    "Equalize": _NONE,
}
_WIDE_SPACE = {
    "Identity": _NONE,
    "ShearX": OpRange("linear", 0.99, True),
    "ShearY": OpRange("linear", 0.99, True),
    "TranslateX": OpRange("linear", 32.0, True),
    "TranslateY": OpRange("linear", 32.0, True),
    "Rotate": OpRange("linear", 135.0, True),
    "Brightness": OpRange("linear", 0.99, True),
    "Color": OpRange("linear", 0.99, True),
    "Contrast": OpRange("linear", 0.99, True),
    "Sharpness": OpRange("linear", 0.99, True),
    "Posterize": OpRange("posterize", 6),
    "Solarize": OpRange("solarize"),
    "AutoContrast": _NONE,
    "Equalize": _NONE,
}
_AUTO_SPACE = {**{k: v for k, v in _STANDARD_SPACE.items() if k != "Identity"}, "Invert": _NONE}

SubPolicy = tuple[tuple[str, float, "int | None"], tuple[str, float, "int | None"]]

# (op, probability, magnitude bin) pairs, as torchvision.transforms.AutoAugment lists them.
AUTO_AUGMENT_SUBPOLICIES: dict[str, tuple[SubPolicy, ...]] = {
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
    "svhn": (
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ),
}


def _magnitudes(r: OpRange, bins: int) -> tuple[float, ...]:
    """The op's magnitude at each bin (before the sign and the image side), as torchvision's
    linspace / posterize formula gives them; () for an op without a magnitude."""
    if r.kind == "linear":
        return tuple(float(v) for v in np.linspace(0.0, r.top, bins))
    if r.kind == "posterize":
        return tuple(float(8 - v) for v in np.round(np.arange(bins) / ((bins - 1) / r.top)))
    if r.kind == "solarize":
        return tuple(float(v) for v in np.linspace(255.0, 0.0, bins))
    return ()


# -- the ops -------------------------------------------------------------------------------------
class Step(NamedTuple):
    op: str
    magnitude: float  # signed; translate in pixels, rotate and shear-angle inputs as torchvision's


class Plan(NamedTuple):
    """What one call runs: the steps in order; ``choice``, what was drawn, for tests and previews:
    the op indices (TrivialAugment, RandAugment), or the sub-policy index followed by the
    positions (0, 1) of its ops that ran (AutoAugment)."""

    steps: tuple[Step, ...]
    choice: tuple[int, ...]


_IDENTITY_3 = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
_LAPLACIAN_3 = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float32)
_CORNER = (-0.5, -0.5)  # the top-left corner of the image, in pixel-centre coordinates
_CACHE_LIMIT = 4096  # matrices and lookup tables: bounded when images come in many sizes


class _Ops:
    """The op functions ``(img, magnitude) -> img``, built once per transform; the affine
    matrices and per-pixel lookup tables they need are cached by magnitude (and image size),
    since a policy only ever asks for a few dozen distinct ones."""

    def __init__(self, fill: float | tuple[float, ...] = 0):
        # Albumentations extends only a float to every channel: an int fill would reach cv2
        # as a scalar and fill the first channel alone.
        self.fill = float(fill) if isinstance(fill, (int, float)) else tuple(float(v) for v in fill)
        self._matrices: dict[tuple, np.ndarray] = {}
        self._luts: dict[tuple, np.ndarray] = {}
        self.functions: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
            "Identity": lambda img, m: img,
            "ShearX": self.shear_x,
            "ShearY": self.shear_y,
            "TranslateX": self.translate_x,
            "TranslateY": self.translate_y,
            "Rotate": self.rotate,
            "Brightness": self.brightness,
            "Color": self.color,
            "Contrast": self.contrast,
            "Sharpness": self.sharpness,
            "Posterize": self.posterize,
            "Solarize": self.solarize,
            "AutoContrast": lambda img, m: fpixel.auto_contrast(img, 0, None, "pil"),
            # "pil": within about 2 grey levels of PIL's (and torchvision's) equalize; it maps
            # each level by the count up to and including it where PIL stops before it. The
            # faster "cv" mode (OpenCV's) is tens of levels off on images with few levels.
            "Equalize": lambda img, m: fpixel.equalize(img, mode="pil", by_channels=True),
            "Invert": lambda img, m: fpixel.invert(img),
        }

    # Geometric: torchvision's F.affine / F.rotate as Albumentations' affine matrix, warped by
    # the function Albumentations' warp_affine calls (its identity test alone costs more than
    # the 32x32 warp; magnitude 0, the identity, returns before it).
    def _warp(self, img: np.ndarray, key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
        matrix = self._matrices.get(key)
        if matrix is None:
            if len(self._matrices) >= _CACHE_LIMIT:
                self._matrices.clear()
            matrix = self._matrices[key] = make()[:2]
        out = fgeometric.warp_affine_with_value_extension(
            img, matrix, (img.shape[1], img.shape[0]), cv2.INTER_NEAREST, cv2.BORDER_CONSTANT, self.fill
        )
        return out if out.ndim == img.ndim else out[..., None]

    @staticmethod
    def _affine(translate=(0.0, 0.0), shear=(0.0, 0.0), rotate=0.0, shift=(0.0, 0.0)) -> np.ndarray:
        return fgeometric.create_affine_transformation_matrix(
            translate={"x": translate[0], "y": translate[1]},
            shear={"x": shear[0], "y": shear[1]},
            scale={"x": 1.0, "y": 1.0},
            rotate=rotate,
            shift=shift,
        )

    def shear_x(self, img, m):
        # torchvision shears about the image's top-left corner (center=[0, 0]), the pixel grid's
        # (-0.5, -0.5), with x' = x - m y; Albumentations' shear matrix adds tan(angle) y.
        if m == 0:
            return img
        return self._warp(
            img,
            ("ShearX", m, img.shape[:2]),
            lambda: self._affine(shear=(-math.degrees(math.atan(m)), 0.0), shift=_CORNER),
        )

    def shear_y(self, img, m):
        if m == 0:
            return img
        return self._warp(
            img,
            ("ShearY", m, img.shape[:2]),
            lambda: self._affine(shear=(0.0, -math.degrees(math.atan(m))), shift=_CORNER),
        )

    def translate_x(self, img, m):
        px = int(m)  # torchvision truncates to whole pixels
        if px == 0:
            return img
        return self._warp(img, ("TranslateX", px, img.shape[:2]), lambda: self._affine(translate=(px, 0.0)))

    def translate_y(self, img, m):
        px = int(m)
        if px == 0:
            return img
        return self._warp(img, ("TranslateY", px, img.shape[:2]), lambda: self._affine(translate=(0.0, px)))

    def rotate(self, img, m):
        # Counter-clockwise for m > 0 about the centre of the pixel grid, as torchvision.
        if m == 0:
            return img
        return self._warp(
            img, ("Rotate", m, img.shape[:2]), lambda: self._affine(rotate=m, shift=fgeometric.center(img.shape[:2]))
        )

    # Per-pixel ops: the Albumentations function run once on the 256 levels gives the lookup
    # table (exactly what it would do to each pixel); the table is then applied as
    # Albumentations applies its own (solarize builds its table in Python on every call).
    def _lut(self, img: np.ndarray, key: tuple, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        lut = self._luts.get(key)
        if lut is None:
            if len(self._luts) >= _CACHE_LIMIT:
                self._luts.clear()
            levels = np.arange(256, dtype=np.uint8).reshape(1, 256)
            lut = self._luts[key] = np.ascontiguousarray(function(levels).reshape(256), dtype=np.uint8)
        return sz_lut(img, lut, inplace=False)

    def brightness(self, img, m):
        if m == 0:
            return img
        return self._lut(img, ("Brightness", m), lambda x: fpixel.adjust_brightness_torchvision(x, 1.0 + m))

    def posterize(self, img, m):
        bits = int(m)
        if bits >= 8:
            return img
        return self._lut(img, ("Posterize", bits), lambda x: fpixel.posterize(x, bits))

    def solarize(self, img, m):
        # torchvision inverts the pixels >= threshold; Albumentations takes the threshold / 255.
        return self._lut(img, ("Solarize", m), lambda x: fpixel.solarize(x, m / 255.0))

    def color(self, img, m):
        return img if m == 0 else fpixel.adjust_saturation_torchvision(img, 1.0 + m)

    def contrast(self, img, m):
        return img if m == 0 else fpixel.adjust_contrast_torchvision(img, 1.0 + m)

    def sharpness(self, img, m):
        # PIL's ImageEnhance.Sharpness (torchvision's adjust_sharpness): factor f = 1 + m blends
        # the image with its smoothing [[1,1,1],[1,5,1],[1,1,1]] / 13, f I + (1 - f) S, which is
        # Albumentations Sharpen's kernel I + alpha (Laplacian) with lightness 1 and alpha = m / 13
        # (negative alpha blurs: Sharpen itself only sharpens). The 1-pixel border stays as it
        # was, as PIL and torchvision leave it.
        if m == 0:
            return img
        out = fpixel.convolve(img, _IDENTITY_3 + (m / 13.0) * _LAPLACIAN_3)
        if out.ndim < img.ndim:
            out = out[..., None]
        if img.shape[0] > 2 and img.shape[1] > 2:
            out[0], out[-1], out[:, 0], out[:, -1] = img[0], img[-1], img[:, 0], img[:, -1]
        else:
            out = img.copy()
        return out


# -- the transforms ------------------------------------------------------------------------------
class _PolicyTransform(A.ImageOnlyTransform):
    """A policy as an Albumentations transform: ``get_params_dependent_on_data`` draws the
    image's plan (it needs the image size) from ``self.py_random``, ``apply`` runs it."""

    def __init__(self, fill: float | tuple[float, ...] = 0, p: float = 1.0):
        super().__init__(p=p)
        self.fill = fill
        self._ops = _Ops(fill)

    @abc.abstractmethod
    def sample(self, rng: random.Random, shape: tuple[int, ...] = (32, 32)) -> Plan:
        """The ops, magnitudes and signs for one image of ``shape`` (H, W, ...), drawn from ``rng``."""

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"plan": self.sample(self.py_random, params["shape"])}

    def apply(self, img: np.ndarray, plan: Plan | None = None, **params: Any) -> np.ndarray:
        functions = self._ops.functions
        for step in plan.steps if plan is not None else ():
            img = functions[step.op](img, step.magnitude)
        return img

    @staticmethod
    def _step(op: str, magnitude: float, r: OpRange, rng: random.Random, shape) -> Step:
        if r.side is not None:
            magnitude *= shape[1] if r.side == "x" else shape[0]
        if r.signed and rng.random() < 0.5:
            magnitude = -magnitude
        return Step(op, magnitude)


class TrivialAugmentWideTransform(_PolicyTransform):
    """TrivialAugmentWide: one op uniformly from 14, its magnitude bin uniformly."""

    def __init__(self, num_magnitude_bins: int = 31, fill: float | tuple[float, ...] = 0, p: float = 1.0):
        super().__init__(fill=fill, p=p)
        self.num_magnitude_bins = num_magnitude_bins
        self._space = tuple((op, r, _magnitudes(r, num_magnitude_bins)) for op, r in _WIDE_SPACE.items())

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("num_magnitude_bins", "fill")

    def sample(self, rng: random.Random, shape: tuple[int, ...] = (32, 32)) -> Plan:
        i = rng.randrange(len(self._space))
        op, r, magnitudes = self._space[i]
        magnitude = magnitudes[rng.randrange(len(magnitudes))] if magnitudes else 0.0
        return Plan((self._step(op, magnitude, r, rng, shape),), (i,))


class RandAugmentTransform(_PolicyTransform):
    """RandAugment: ``n`` ops uniformly from 14 with replacement, all at magnitude bin ``m``."""

    def __init__(
        self, n: int = 2, m: int = 9, num_magnitude_bins: int = 31, fill: float | tuple[float, ...] = 0, p: float = 1.0
    ):
        super().__init__(fill=fill, p=p)
        self.n, self.m, self.num_magnitude_bins = n, m, num_magnitude_bins
        self._space = tuple(
            (op, r, (_magnitudes(r, num_magnitude_bins) or (0.0,) * num_magnitude_bins)[m])
            for op, r in _STANDARD_SPACE.items()
        )

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("n", "m", "num_magnitude_bins", "fill")

    def sample(self, rng: random.Random, shape: tuple[int, ...] = (32, 32)) -> Plan:
        choice = tuple(rng.randrange(len(self._space)) for _ in range(self.n))
        steps = tuple(self._step(op, magnitude, r, rng, shape) for op, r, magnitude in (self._space[i] for i in choice))
        return Plan(steps, choice)


class AutoAugmentTransform(_PolicyTransform):
    """AutoAugment: one of the policy's 25 sub-policies uniformly; each of its two ops runs with
    its own probability at its own magnitude bin (of 10)."""

    def __init__(self, policy: str = "imagenet", fill: float | tuple[float, ...] = 0, p: float = 1.0):
        super().__init__(fill=fill, p=p)
        if policy not in AUTO_AUGMENT_SUBPOLICIES:
            raise ValueError(f"unknown AutoAugment policy {policy!r}")
        self.policy = policy
        tables = {op: (r, _magnitudes(r, AUTO_AUGMENT_BINS)) for op, r in _AUTO_SPACE.items()}
        self._subpolicies = tuple(
            tuple(
                (op, prob, tables[op][0], tables[op][1][level] if level is not None else 0.0) for op, prob, level in sub
            )
            for sub in AUTO_AUGMENT_SUBPOLICIES[policy]
        )

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("policy", "fill")

    def sample(self, rng: random.Random, shape: tuple[int, ...] = (32, 32)) -> Plan:
        i = rng.randrange(len(self._subpolicies))
        ran = tuple(k for k, (_, prob, _, _) in enumerate(self._subpolicies[i]) if rng.random() < prob)
        steps = tuple(
            self._step(op, magnitude, r, rng, shape) for op, _, r, magnitude in (self._subpolicies[i][k] for k in ran)
        )
        return Plan(steps, (i, *ran))


# -- the entry points ----------------------------------------------------------------------------
def _check_name(name: str) -> None:
    if name not in POLICIES:
        hint = closest(name, POLICIES).strip()[1:-1]
        raise ConfigError(
            f"unknown augmentation policy {name!r} ({hint + ' ' if hint else ''}choose from {', '.join(POLICIES)})"
        )


def validate_policy(name: str, op) -> None:
    """ConfigError for a policy entry that cannot run: the spec's own checks, one wording.
    ``op``: any object with the fields of ``POLICIES[name]``."""
    _check_name(name)
    missing = [f.name for f in fields(POLICIES[name]) if not hasattr(op, f.name)]
    if missing:
        raise TypeError(f"{name}: {type(op).__name__} has no {', '.join(missing)}")
    if not isinstance(op, POLICIES[name]):
        op = POLICIES[name](**{f.name: getattr(op, f.name) for f in fields(POLICIES[name])})
    AugmentSpec(**{name: op}).validate()


def policy_transform(name: str, op=None, *, fill: float | tuple[float, ...] = 0) -> A.BasicTransform:
    """The Albumentations transform of a policy entry (validated; ``op=None``: the defaults)."""
    _check_name(name)
    op = POLICIES[name]() if op is None else op
    validate_policy(name, op)
    if name == "trivial_augment":
        return TrivialAugmentWideTransform(num_magnitude_bins=op.num_magnitude_bins, fill=fill, p=op.p)
    if name == "rand_augment":
        return RandAugmentTransform(n=op.n, m=op.m, num_magnitude_bins=op.num_magnitude_bins, fill=fill, p=op.p)
    return AutoAugmentTransform(policy=op.policy, fill=fill, p=op.p)


# geometric.functional.create_affine_transformation_matrix, then warp_affine_with_value_extension
_GEOMETRIC = "geometric.functional affine matrix + warp"
ALBUMENTATIONS_OPS = {
    "Identity": "(none)",
    "ShearX": f"{_GEOMETRIC} (shear x, top-left corner)",
    "ShearY": f"{_GEOMETRIC} (shear y, top-left corner)",
    "TranslateX": f"{_GEOMETRIC} (translate x)",
    "TranslateY": f"{_GEOMETRIC} (translate y)",
    "Rotate": f"{_GEOMETRIC} (rotate, centre)",
    "Brightness": "pixel.functional.adjust_brightness_torchvision (as a lookup table)",
    "Color": "pixel.functional.adjust_saturation_torchvision",
    "Contrast": "pixel.functional.adjust_contrast_torchvision",
    "Sharpness": "own: PIL's smoothing kernel as Sharpen's (alpha m/13) via pixel.functional.convolve",
    "Posterize": "pixel.functional.posterize (as a lookup table)",
    "Solarize": "pixel.functional.solarize (as a lookup table)",
    "AutoContrast": "pixel.functional.auto_contrast (method 'pil')",
    "Equalize": "pixel.functional.equalize (mode 'pil')",
    "Invert": "pixel.functional.invert",
}


def _range_text(r: OpRange, bins: int) -> str:
    magnitudes = _magnitudes(r, bins)
    if not magnitudes:
        return "-"
    top = magnitudes[-1]
    if r.kind == "posterize":
        return f"{magnitudes[0]:g} .. {top:g} bits kept"
    if r.kind == "solarize":
        return f"threshold {magnitudes[0]:g} .. {top:g}"
    if r.side is not None:
        return f"0 .. {top:.3g} of the {'width' if r.side == 'x' else 'height'} (150/331)"
    return f"0 .. {top:g}"


def _describe(op_name: str, r: OpRange, text: str) -> str:
    if op_name.startswith("Translate") and r.side is None:
        return text + " px"
    if op_name == "Rotate":
        return text + " degrees"
    if op_name.startswith("Shear"):
        return text + " (shear factor)"
    if op_name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return text + " (factor 1 + m)"
    return text


def policy_table(name: str, op=None) -> list[dict]:
    """One row per op of the policy: {op, albumentations, magnitude, signed}, the magnitude range
    at the largest bin (for RandAugment with ``op`` given, also the magnitude at bin m)."""
    _check_name(name)
    op = POLICIES[name]() if op is None else op
    validate_policy(name, op)
    if name == "auto_augment":
        used = {step[0] for sub in AUTO_AUGMENT_SUBPOLICIES[op.policy] for step in sub}
        space = {k: v for k, v in _AUTO_SPACE.items() if k in used}
        bins = AUTO_AUGMENT_BINS
    else:
        space = _WIDE_SPACE if name == "trivial_augment" else _STANDARD_SPACE
        bins = op.num_magnitude_bins
    rows = []
    for op_name, r in space.items():
        text = _describe(op_name, r, _range_text(r, bins))
        if name == "rand_augment" and r.kind != "none":
            at_m = _magnitudes(r, bins)[op.m]
            text += f"; at m={op.m}: {at_m:.3g}"
        rows.append(
            {"op": op_name, "albumentations": ALBUMENTATIONS_OPS[op_name], "magnitude": text, "signed": r.signed}
        )
    return rows
