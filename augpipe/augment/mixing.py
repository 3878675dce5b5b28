"""MixUp and CutMix on the batch: the spec's ``mixup`` and ``cutmix`` entries.

The pure functions (``mixup``, ``cutmix``, ``cutmix_box``) mix a float NCHW batch and its one-hot
labels the way timm's ``Mixup`` does; ``BatchMixer`` draws, per batch, which of them to apply,
lambda and the CutMix box, from (seed, rank, epoch, step) alone: a resumed run and any number of
loader workers see the same mixing and nothing has to be saved.

Each image is paired with the batch flipped (image i with image N-1-i, timm's ``x.flip(0)``)
rather than with a random permutation: it costs no draw, and the pairing is fixed by the batch.
With an odd batch the middle image is paired with itself and stays as it is.

The targets are class probabilities, ``lam * onehot(y) + (1 - lam) * onehot(y[partner])``: what
``torch.nn.CrossEntropyLoss`` takes as a soft target, label smoothing included (it smooths them
to ``t * (1 - ls) + ls / C``, the same as timm's ``mixup_target`` with ``smoothing``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

MODES = ("mixup", "cutmix", "none")
_MASK64 = (1 << 64) - 1


class Box(NamedTuple):
    """The pasted rectangle of a CutMix, in pixels."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class MixInfo:
    mode: str  # "mixup" | "cutmix" | "none"
    lam: float  # the weight of each image's own label (1.0 when not mixed)


# -- the batch functions --------------------------------------------------------------------
def _partner(t: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    # Both forms copy, which is what makes the in-place mixing below safe.
    return t.flip(0) if perm is None else t[perm.to(t.device)]


def mixed_targets(y_onehot: torch.Tensor, lam: float, perm: torch.Tensor | None = None) -> torch.Tensor:
    return y_onehot * lam + _partner(y_onehot, perm) * (1.0 - lam)


def mixup(
    x: torch.Tensor, y_onehot: torch.Tensor, lam: float, perm: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam * x + (1 - lam) * x[perm]`` and the labels mixed alike. ``perm``: the partner of
    each image, None for the batch flipped. ``x`` is overwritten (the training batch is a
    fresh tensor; pass a clone to keep it), unless it requires grad."""
    partner = _partner(x, perm).mul_(1.0 - lam)
    if x.requires_grad:
        return x * lam + partner, mixed_targets(y_onehot, lam, perm)
    return x.mul_(lam).add_(partner), mixed_targets(y_onehot, lam, perm)


def cutmix(
    x: torch.Tensor, y_onehot: torch.Tensor, lam: float, perm: torch.Tensor | None, box: Box | tuple[int, int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``box`` of each image replaced by the same box of its partner (``perm``, None for the
    batch flipped); ``lam`` is the share of the image left, as ``cutmix_box`` returns it. ``x``
    is overwritten as in ``mixup``."""
    top, left, bh, bw = (int(v) for v in box)
    if x.requires_grad:
        x = x.clone()
    if bh > 0 and bw > 0:
        rows, cols = slice(top, top + bh), slice(left, left + bw)
        # Only the patch is copied from the partners, not the whole batch.
        patch = x[:, :, rows, cols].flip(0) if perm is None else x[perm.to(x.device), :, rows, cols]
        x[:, :, rows, cols] = patch
    return x, mixed_targets(y_onehot, lam, perm)


def cutmix_box(h: int, w: int, lam: float, rng_values) -> tuple[Box, float]:
    """timm's ``rand_bbox`` and ``correct_lam=True``: a box of sides ``sqrt(1 - lam)`` of the
    image's, its centre uniform over the pixels (``rng_values``: two numbers in [0, 1), for the
    row and the column), clipped at the border; and lambda corrected to the area actually
    pasted, ``1 - box_area / (h * w)``. Returns the box and the corrected lambda."""
    ratio = math.sqrt(max(0.0, 1.0 - float(lam)))
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy = min(int(float(rng_values[0]) * h), h - 1)
    cx = min(int(float(rng_values[1]) * w), w - 1)
    top, bottom = max(0, cy - cut_h // 2), min(h, cy + cut_h // 2)
    left, right = max(0, cx - cut_w // 2), min(w, cx + cut_w // 2)
    box = Box(top, left, bottom - top, right - left)
    return box, 1.0 - box.height * box.width / float(h * w)


def mixed_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The target weight of each image's predicted class, summed over the batch (a float
    scalar): this is how training accuracy stays meaningful under mixing. For one-hot targets
    it is the number of correct predictions; for a mixed batch, the accuracy expected against
    the mixed labels (a prediction of the first image's class in a 0.7 / 0.3 MixUp counts 0.7,
    of the partner's 0.3, of any other class 0), so that it equals the plain count whenever
    nothing is mixed."""
    return targets.gather(1, logits.argmax(1, keepdim=True)).sum()


# -- the per-batch draws --------------------------------------------------------------------
class BatchMixer:
    """Mixes training batches as the spec's ``mixup`` and ``cutmix`` say: a batch gets MixUp with
    probability ``mixup.p``, CutMix with ``cutmix.p``, neither otherwise.

    Every draw comes from a generator seeded with (seed, rank, epoch, step) on each call, so the
    mixing of a step never depends on what ran before it."""

    def __init__(self, mixup, cutmix, num_classes: int, seed: int, rank: int = 0):
        self.mixup, self.cutmix = mixup, cutmix
        self.num_classes = int(num_classes)
        self.seed, self.rank = int(seed), int(rank)

    @classmethod
    def from_spec(cls, spec, num_classes: int, seed: int, rank: int = 0) -> BatchMixer | None:
        """The spec's mixer, or None when it mixes nothing."""
        if spec.mixup is None and spec.cutmix is None:
            return None
        return cls(spec.mixup, spec.cutmix, num_classes, seed, rank)

    def generator(self, epoch: int, step: int) -> np.random.Generator:
        # SeedSequence hashes the four words together: neighbouring steps get unrelated streams.
        words = [v & _MASK64 for v in (self.seed, self.rank, int(epoch), int(step))]
        return np.random.default_rng(words)

    def draw_mode(self, u: float) -> str:
        p_mixup = self.mixup.p if self.mixup is not None else 0.0
        p_cutmix = self.cutmix.p if self.cutmix is not None else 0.0
        if u < p_mixup:
            return "mixup"
        if u < p_mixup + p_cutmix:
            return "cutmix"
        return "none"

    def one_hot(self, y: torch.Tensor, device) -> torch.Tensor:
        return torch.nn.functional.one_hot(y.to(device).long(), self.num_classes).float()

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, *, epoch: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, MixInfo]:
        """The batch mixed (in place where safe), its (N, num_classes) float targets, each row
        summing to 1, and what was done. A batch of one can not be mixed and comes back as it
        is, with one-hot targets."""
        y_onehot = self.one_hot(y, x.device)
        if x.shape[0] < 2:
            return x, y_onehot, MixInfo("none", 1.0)
        rng = self.generator(epoch, step)
        return self.apply(x, y_onehot, self.draw_mode(rng.random()), rng)

    def apply(
        self, x: torch.Tensor, y_onehot: torch.Tensor, mode: str, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, MixInfo]:
        """``mode`` applied, lambda (and the box) drawn from ``rng``."""
        if mode == "mixup":
            lam = _beta(rng, self.mixup.alpha)
            x, targets = mixup(x, y_onehot, lam)
        elif mode == "cutmix":
            box, lam = cutmix_box(x.shape[-2], x.shape[-1], _beta(rng, self.cutmix.alpha), rng.random(2))
            x, targets = cutmix(x, y_onehot, lam, None, box)
        elif mode == "none":
            return x, y_onehot, MixInfo("none", 1.0)
        else:
            raise ValueError(f"unknown mixing mode {mode!r} (one of {', '.join(MODES)})")
        return x, targets, MixInfo(mode, float(lam))


def _beta(rng: np.random.Generator, alpha: float) -> float:
    lam = float(rng.beta(alpha, alpha))
    # A tiny alpha puts nearly all the mass at 0 and 1, where rounding may step just outside.
    return min(1.0, max(0.0, lam)) if math.isfinite(lam) else 1.0


# -- the preview ----------------------------------------------------------------------------
def preview_modes(spec, n: int) -> list[str]:
    """``n`` mixing modes for a preview, each as often as its p says among the mixed batches
    (MixUp and CutMix alternate at p 0.5 each); none when neither can happen."""
    weights = {
        m: getattr(spec, m).p for m in ("mixup", "cutmix") if getattr(spec, m) is not None and getattr(spec, m).p > 0
    }
    total = sum(weights.values())
    modes: list[str] = []
    counts = dict.fromkeys(weights, 0)
    for k in range(n if total else 0):
        # The mode furthest behind its share so far: an even interleaving, not runs of one.
        mode = max(weights, key=lambda m: (k + 1) * weights[m] / total - counts[m])
        counts[mode] += 1
        modes.append(mode)
    return modes


def mix_label(lam: float, first: str, second: str) -> str:
    """'0.62 circle + 0.38 star': the two weights as shown always sum to 1.00."""
    own = round(float(lam), 2)
    if first == second or own >= 1.0:
        return f"1.00 {first}"
    if own <= 0.0:
        return f"1.00 {second}"
    return f"{own:.2f} {first} + {1.0 - own:.2f} {second}"


def _partner_index(labels, k: int) -> int:
    # The next image of another class, so that the preview shows two labels mixed.
    n = len(labels)
    for step in range(1, n):
        j = (k + step) % n
        if labels[j] != labels[k]:
            return j
    return (k + 1) % n


def preview_mixed(
    images_uint8_nhwc: np.ndarray, labels, class_names, spec, seed: int, n: int, *, mode: str | None = None
) -> list[tuple[np.ndarray, str]]:
    """``n`` examples of the spec's mixing, each an (H, W, C) uint8 image and its mixed label.
    Example k mixes image k (cycling through the given ones) with the next image of another
    class, drawn as training draws batch k of epoch 0 with ``seed``; the modes follow the
    spec's p (``preview_modes``), or are all ``mode``.

    The images are mixed as they are shown, unnormalised: mixing is linear with weights summing
    to 1 and normalisation is a per-channel affine map, so the two commute and this is exactly
    what training does to the normalised batch."""
    images = np.asarray(images_uint8_nhwc)
    labels = np.asarray(labels).reshape(-1)
    if images.ndim != 4 or len(images) < 1 or len(labels) != len(images):
        raise ValueError("preview_mixed needs a batch of (N, H, W, C) images and N labels")
    mixer = BatchMixer(spec.mixup, spec.cutmix, len(class_names), seed)
    modes = [mode] * n if mode is not None else preview_modes(spec, n)
    out = []
    for k, m in enumerate(modes):
        a = k % len(images)
        b = _partner_index(labels, a)
        # A batch of two flipped pairs the image with its partner; the first one is the example.
        pair = torch.from_numpy(np.ascontiguousarray(images[[a, b]])).permute(0, 3, 1, 2).float()
        y = torch.as_tensor(labels[[a, b]], dtype=torch.int64)
        mixed, _, info = mixer.apply(pair, mixer.one_hot(y, pair.device), m, mixer.generator(0, k))
        img = mixed[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
        out.append((img, mix_label(info.lam, class_names[labels[a]], class_names[labels[b]])))
    return out
