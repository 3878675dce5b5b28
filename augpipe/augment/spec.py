"""The augmentation spec: one description of the training augmentation, its presets, and its
Albumentations pipelines (the CPU backend). ``augment/device.py`` runs the same spec on tensors.

Parameters mean what they mean in Albumentations, so a spec reads the same on both backends:

    size: 32                  # output side in pixels; null = the data's own size
    crop:  {scale: [0.35, 1.0], ratio: [0.75, 1.3333], p: 1.0}    # RandomResizedCrop
    translate: {pad: 2, mode: reflect, fill: 0, p: 1.0}             # pad, crop back at a random offset
    hflip: {p: 0.5, alternate: false}                               # HorizontalFlip
    color_jitter: {brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.05, p: 0.8}
    erase: {scale: [0.02, 0.2], ratio: [0.3, 3.3], fill: 0, p: 0.25}  # Erasing (random erasing)
    normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
    trivial_augment: {num_magnitude_bins: 31, p: 1.0}               # TrivialAugmentWide
    rand_augment: {n: 2, m: 9, num_magnitude_bins: 31, p: 1.0}       # RandAugment
    auto_augment: {policy: cifar10, p: 1.0}                         # AutoAugment: cifar10 | imagenet | svhn
    extra: [{name: GaussianBlur, p: 0.1, blur_limit: [3, 5]}]      # any registered transform
    mixup: {alpha: 0.2, p: 1.0}                                     # MixUp, on the batch
    cutmix: {alpha: 1.0, p: 1.0}                                    # CutMix, on the batch

The per-image ops run in that order: crop, translate, flip, jitter, the policies, extra, erase,
then normalisation; MixUp or CutMix then mixes the normalised batch on the training device.
``true`` stands for an op's defaults (``trivial_augment: true``), and ``auto_augment: cifar10``
for ``{policy: cifar10}``. The policies (``augment/policies.py``) are built from Albumentations
operations and run in loader workers only.

``mixup`` and ``cutmix`` draw lambda from Beta(alpha, alpha) once per batch; ``p`` is the chance
that a batch is mixed. Given both, a batch gets MixUp with probability ``mixup.p``, CutMix with
``cutmix.p``, and neither with what is left: the two p must then sum to at most 1. Given both
with ``p`` left out of each, every batch is mixed and the two switch 0.5 / 0.5, as timm's
``Mixup`` does with its defaults (``prob=1.0, switch_prob=0.5``).

``translate`` pads the image (after the crop, at the output size) by ``pad`` pixels on every
side, mirrored without repeating the edge (``reflect``: cv2's BORDER_REFLECT_101, torch's
"reflect") or with ``fill``, and cuts a window of the original size back at an offset drawn
uniformly from the (2 pad + 1)^2 integer offsets: the CIFAR shift of airbench94 (pad 2, reflect).

``hflip: {alternate: true}`` flips deterministically: item i is flipped in epoch e when
e + h(i) is odd, h(i) a bit hashed from the run's seed and the item's index in the data set
(``alternate_flips``), so half of the images are flipped each epoch and every image is seen both
ways in any two epochs running (airbench94's derandomised flip). ``p`` must then be 0.5.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from augpipe.errors import ConfigError, reject_unknown

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Crop:
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p: float = 1.0


@dataclass
class Translate:
    pad: int = 2
    mode: str = "reflect"  # or "constant", with fill
    fill: float | tuple[float, float, float] = 0
    p: float = 1.0


TRANSLATE_MODES = ("reflect", "constant")


@dataclass
class Flip:
    p: float = 0.5
    alternate: bool = False


@dataclass
class ColorJitter:
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05
    p: float = 0.8


@dataclass
class Erase:
    scale: tuple[float, float] = (0.02, 0.2)
    ratio: tuple[float, float] = (0.3, 3.3)
    fill: float | str = 0  # a pixel value, or "random"
    p: float = 0.25


@dataclass
class Normalize:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class TrivialAugment:
    num_magnitude_bins: int = 31
    p: float = 1.0


@dataclass
class RandAugment:
    n: int = 2  # operations per image
    m: int = 9  # magnitude bin, 0 .. num_magnitude_bins - 1
    num_magnitude_bins: int = 31
    p: float = 1.0


@dataclass
class AutoAugment:
    policy: str = "imagenet"
    p: float = 1.0


AUTO_AUGMENT_POLICIES = ("cifar10", "imagenet", "svhn")


@dataclass
class MixUp:
    alpha: float = 0.2
    p: float = 1.0


@dataclass
class CutMix:
    alpha: float = 1.0
    p: float = 1.0


POLICIES = {"trivial_augment": TrivialAugment, "rand_augment": RandAugment, "auto_augment": AutoAugment}
BATCH_OPS = {"mixup": MixUp, "cutmix": CutMix}
# timm's Mixup(switch_prob=0.5): the p of each where a spec gives both without a p.
SWITCH_PROB = 0.5
# The per-image ops, in the order they run; then the batch ops.
OPS = {"crop": Crop, "translate": Translate, "hflip": Flip, "color_jitter": ColorJitter, **POLICIES, "erase": Erase}
ALL_OPS = {**OPS, **BATCH_OPS}


@dataclass
class AugmentSpec:
    size: int | None = None
    crop: Crop | None = None
    translate: Translate | None = None
    hflip: Flip | None = None
    color_jitter: ColorJitter | None = None
    erase: Erase | None = None
    normalize: Normalize = field(default_factory=Normalize)
    extra: list[dict[str, Any]] = field(default_factory=list)
    trivial_augment: TrivialAugment | None = None
    rand_augment: RandAugment | None = None
    auto_augment: AutoAugment | None = None
    mixup: MixUp | None = None
    cutmix: CutMix | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> AugmentSpec:
        if name not in PRESETS:
            raise ConfigError(
                f"unknown augmentation preset {name!r}{closest(name, PRESETS)} (choose from {', '.join(PRESETS)})"
            )
        return cls.from_dict(PRESETS[name])

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentSpec:
        d = dict(d or {})
        reject_unknown(d, [f.name for f in fields(cls)], "augmentation spec", list_valid=True)
        extra = d.get("extra") or []
        if not isinstance(extra, list):
            raise ConfigError(
                f"extra must be a list of transforms, e.g. [{{name: GaussianBlur, p: 0.1}}], got {extra!r}"
            )
        spec = cls(size=d.get("size"), extra=list(extra))
        if isinstance(d.get("auto_augment"), str):
            d["auto_augment"] = {"policy": d["auto_augment"]}
        for name, op_cls in ALL_OPS.items():
            if d.get(name) is not None and d[name] is not False:
                setattr(spec, name, _build_op(op_cls, d[name], name))
        if (
            spec.mixup is not None
            and spec.cutmix is not None
            and not any(isinstance(d[name], dict) and "p" in d[name] for name in BATCH_OPS)
        ):
            # Each p defaults to 1, alone; together that would ask for both on every batch.
            spec.mixup.p = spec.cutmix.p = SWITCH_PROB
        if d.get("normalize") is not None:
            spec.normalize = _build_op(Normalize, d["normalize"], "normalize")
        spec.validate()
        return spec

    @classmethod
    def load(cls, value: str | Path | dict | AugmentSpec | None) -> AugmentSpec:
        """A preset name, a YAML file, a dict or a spec."""
        if isinstance(value, AugmentSpec):
            return copy.deepcopy(value)
        if value is None:
            return cls.preset("standard")
        if isinstance(value, dict):
            return cls.from_dict(value)
        text = str(value)
        if text in PRESETS:
            return cls.preset(text)
        path = Path(text)
        if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
            from augpipe.files import read_yaml

            data = read_yaml(path, "augmentation spec file")
            if data is not None and not isinstance(data, dict):
                raise ConfigError(f"{path}: an augmentation spec must be a mapping")
            return cls.from_dict(data)
        raise ConfigError(
            f"unknown augmentation {text!r}{closest(text, PRESETS)}: give a preset "
            f"({', '.join(PRESETS)}) or a .yaml spec"
        )

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"size": self.size}
        for name in ("crop", "translate", "hflip", "color_jitter", "erase"):
            op = getattr(self, name)
            out[name] = None if op is None else _plain(asdict(op))
        if self.hflip is not None and not self.hflip.alternate:
            # the random flip is saved as it was before the option existed
            del out["hflip"]["alternate"]
        out["normalize"] = _plain(asdict(self.normalize))
        out["extra"] = copy.deepcopy(self.extra)
        # The newer entries only where used: a spec saved without them reads as before.
        for name in (*POLICIES, *BATCH_OPS):
            op = getattr(self, name)
            if op is not None:
                out[name] = _plain(asdict(op))
        return out

    def save(self, path) -> None:
        from augpipe.files import dump_yaml, write_atomic

        write_atomic(path, dump_yaml(self.to_dict()))

    def validate(self) -> None:
        if self.size is not None and (not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1):
            raise ConfigError(f"augmentation size must be a positive integer, got {self.size!r}")
        for name in ALL_OPS:
            op = getattr(self, name)
            if op is not None and not (_is_number(op.p) and 0 <= op.p <= 1):
                raise ConfigError(f"{name}.p must be in [0, 1], got {_shown(op.p)}")
        self._validate_policies()
        self._validate_mixing()
        if self.crop:
            _check_range("crop.scale", self.crop.scale, 0, 1, low_open=True)
            _check_range("crop.ratio", self.crop.ratio, 0, math.inf, low_open=True)
        if self.translate:
            tr = self.translate
            if not isinstance(tr.pad, int) or isinstance(tr.pad, bool) or tr.pad < 0:
                raise ConfigError(f"translate.pad must be a whole number of pixels >= 0, got {tr.pad!r}")
            if tr.mode not in TRANSLATE_MODES:
                raise ConfigError(f"translate.mode must be {' or '.join(TRANSLATE_MODES)}, got {tr.mode!r}")
            if not (_is_number(tr.fill) or _numbers(tr.fill, 3)):
                raise ConfigError(f"translate.fill must be a number or [r, g, b], got {_shown(tr.fill)}")
        if self.hflip:
            if not isinstance(self.hflip.alternate, bool):
                raise ConfigError(f"hflip.alternate must be true or false, got {self.hflip.alternate!r}")
            if self.hflip.alternate and self.hflip.p != 0.5:
                raise ConfigError(
                    f"hflip.p must be 0.5 with alternate: true (half of the images are flipped "
                    f"each epoch), got {self.hflip.p}"
                )
        if self.erase:
            _check_range("erase.scale", self.erase.scale, 0, 1, low_open=True)
            _check_range("erase.ratio", self.erase.ratio, 0, math.inf, low_open=True)
            fill = self.erase.fill
            if fill != "random" and not (_is_number(fill) or _numbers(fill, 3)):
                raise ConfigError(f"erase.fill must be a number, [r, g, b] or 'random', got {fill!r}")
        if self.color_jitter:
            cj = self.color_jitter
            for k in ("brightness", "contrast", "saturation"):
                if not (_is_number(getattr(cj, k)) and 0 <= getattr(cj, k) < 1):
                    raise ConfigError(f"color_jitter.{k} must be in [0, 1), got {getattr(cj, k)}")
            if not (_is_number(cj.hue) and 0 <= cj.hue <= 0.5):
                raise ConfigError(f"color_jitter.hue must be in [0, 0.5], got {cj.hue}")
        mean, std = self.normalize.mean, self.normalize.std
        if not (_numbers(mean, 3) and _numbers(std, 3) and min(std) > 0):
            raise ConfigError("normalize needs three means and three positive standard deviations")
        if not isinstance(self.extra, list):
            raise ConfigError(f"extra must be a list of transforms, got {self.extra!r}")
        for e in self.extra:
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"]:
                raise ConfigError("each entry of extra needs a name, e.g. {name: GaussianBlur, p: 0.1}")
            if not all(isinstance(k, str) for k in e):
                raise ConfigError(f"extra {e['name']}: parameter names must be text")

    def _validate_policies(self) -> None:
        for name in POLICIES:
            op = getattr(self, name)
            if op is None:
                continue
            if hasattr(op, "num_magnitude_bins") and not (
                _is_int(op.num_magnitude_bins) and op.num_magnitude_bins >= 2
            ):
                raise ConfigError(
                    f"{name}.num_magnitude_bins must be a whole number >= 2, got {_shown(op.num_magnitude_bins)}"
                )
        ra = self.rand_augment
        if ra is not None:
            if not (_is_int(ra.n) and ra.n >= 1):
                raise ConfigError(
                    f"rand_augment.n (operations per image) must be a whole number >= 1, got {_shown(ra.n)}"
                )
            if not (_is_int(ra.m) and 0 <= ra.m < ra.num_magnitude_bins):
                raise ConfigError(
                    f"rand_augment.m must be a whole number in 0..{ra.num_magnitude_bins - 1} "
                    f"(the magnitude bin), got {_shown(ra.m)}"
                )
        aa = self.auto_augment
        if aa is not None and aa.policy not in AUTO_AUGMENT_POLICIES:
            choices = ", ".join(AUTO_AUGMENT_POLICIES)
            if not isinstance(aa.policy, str):
                raise ConfigError(f"auto_augment.policy must be one of {choices}, got {_shown(aa.policy)}")
            hint = closest(aa.policy, AUTO_AUGMENT_POLICIES).strip()[1:-1]
            raise ConfigError(
                f"unknown auto_augment policy {aa.policy!r} ({hint + ' ' if hint else ''}choose from {choices})"
            )

    def _validate_mixing(self) -> None:
        for name in BATCH_OPS:
            op = getattr(self, name)
            if op is not None and not (_is_number(op.alpha) and op.alpha > 0):
                raise ConfigError(
                    f"{name}.alpha must be a number > 0 (lambda is drawn from Beta(alpha, alpha)), "
                    f"got {_shown(op.alpha)}"
                )
        if self.mixup is not None and self.cutmix is not None and self.mixup.p + self.cutmix.p > 1 + 1e-9:
            raise ConfigError(
                f"mixup.p + cutmix.p must be at most 1, got {self.mixup.p} + {self.cutmix.p}: a batch "
                f"gets one of them (leave p out of both to switch 0.5 / 0.5, as timm does)"
            )

    def active_ops(self) -> list[str]:
        """The spec's ops that are on, per-image ones first, in the order they run."""
        return [n for n in ALL_OPS if getattr(self, n) is not None]

    def policy_ops(self) -> list[str]:
        return [n for n in POLICIES if getattr(self, n) is not None]

    def batch_ops(self) -> list[str]:
        return [n for n in BATCH_OPS if getattr(self, n) is not None]

    def check_size(self, size: int) -> None:
        """What only the image side can decide: a reflection needs more pixels than it mirrors."""
        tr = self.translate
        if tr is not None and tr.mode == "reflect" and tr.pad >= size:
            raise ConfigError(
                f"translate.pad {tr.pad} is too large for {size}x{size} images in reflect mode "
                f"(at most {size - 1}); use a smaller pad or mode: constant"
            )


_MASK64 = (1 << 64) - 1
_GOLDEN, _MIX = 0x9E3779B97F4A7C15, 0x632BE59BD9B4E019
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def alternate_flips(items, epoch: int, seed: int) -> np.ndarray:
    """Which of ``items`` (indices into the data set) ``hflip: {alternate: true}`` flips in
    ``epoch``: those with epoch + h(item) odd, h the lowest bit of the splitmix64 hash of
    (seed, item). A hash rather than a stored permutation: any process, worker or backend gets
    the same bit from the index alone, and nothing needs saving to resume."""
    z = np.asarray(items, dtype=np.int64).astype(np.uint64).reshape(-1)
    z = z + np.uint64((int(seed) * _GOLDEN + _MIX) & _MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    z = z ^ (z >> np.uint64(31))
    return ((z & np.uint64(1)).astype(np.int64) + int(epoch)) % 2 == 1


def alternate_flip(item: int, epoch: int, seed: int) -> bool:
    """``alternate_flips`` of one item, in Python integers: called per image in the loader
    workers, where the NumPy form's overhead (28 us a call against 0.8 us) would be most of the
    flip's cost."""
    z = (int(item) + int(seed) * _GOLDEN + _MIX) & _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    z ^= z >> 31
    return (z + int(epoch)) % 2 == 1


def _shown(value):
    return list(value) if isinstance(value, tuple) else repr(value)


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _build_op(op_cls, value, name):
    if value is True:
        return op_cls()
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping of its parameters, got {value!r}")
    reject_unknown(value, [f.name for f in fields(op_cls)], name, list_valid=True)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return op_cls(**kwargs)


def _is_number(v) -> bool:
    # YAML gives strings and booleans as readily as numbers: they must fail validation with a
    # message, not as a TypeError in a comparison.
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def closest(name: str, choices) -> str:
    """' (did you mean X?)' for the choice nearest to a misspelt ``name``, or ''."""
    import difflib

    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]}?)" if match else ""


def _numbers(seq, n: int) -> bool:
    return isinstance(seq, (list, tuple)) and len(seq) == n and all(_is_number(v) for v in seq)


def _check_range(name, rng, lo, hi, low_open=False):
    if not _numbers(rng, 2) or rng[0] > rng[1] or rng[0] < lo or rng[1] > hi or (low_open and rng[0] <= lo):
        shown = list(rng) if isinstance(rng, (list, tuple)) else rng
        raise ConfigError(
            f"{name} must be [low, high] with {lo} {'<' if low_open else '<='} low <= high <= {hi}, got {shown}"
        )


PRESETS: dict[str, dict] = {
    "none": {},
    "light": {"crop": {"scale": [0.8, 1.0]}, "hflip": {"p": 0.5}},
    "standard": {
        "crop": {"scale": [0.35, 1.0]},
        "hflip": {"p": 0.5},
        "color_jitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05, "p": 0.8},
        "erase": {"scale": [0.02, 0.2], "p": 0.25},
    },
    "strong": {
        "crop": {"scale": [0.08, 1.0]},
        "hflip": {"p": 0.5},
        "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
        "erase": {"scale": [0.02, 0.33], "p": 0.5, "fill": "random"},
    },
    # airbench94's CIFAR-10 augmentation: a 2-pixel reflected shift and alternating flips.
    "cifar-translate": {"translate": {"pad": 2, "mode": "reflect"}, "hflip": {"p": 0.5, "alternate": True}},
    # After timm's ResNet-strikes-back A1 recipe, for ImageNet-style photos: RandAugment at
    # magnitude 7, MixUp 0.2 and CutMix 1.0 switched per batch, random erasing.
    "timm-a1": {
        "crop": {"scale": [0.08, 1.0]},
        "hflip": {"p": 0.5},
        "rand_augment": {"n": 2, "m": 7},
        "erase": {"scale": [0.02, 0.33], "p": 0.25},
        "mixup": {"alpha": 0.2, "p": 0.5},
        "cutmix": {"alpha": 1.0, "p": 0.5},
    },
    # The common modern CIFAR recipe: the 4-pixel reflected shift, flips, TrivialAugment, and
    # cutout-sized erasing (add mixup: {alpha: 0.2} for long schedules).
    "cifar-modern": {
        "translate": {"pad": 4, "mode": "reflect"},
        "hflip": {"p": 0.5},
        "trivial_augment": {},
        "erase": {"scale": [0.02, 0.25], "ratio": [0.5, 2.0], "p": 0.5},
    },
}
