"""The augmentation spec as batched tensor operations on any torch device ("GPU-aware
augmentation"): uint8 NCHW batches cross to the device as they are and are augmented there,
each image with its own random parameters, then normalised.

    aug = DeviceAugment(spec, 32, device="cuda", generator_seed=0)
    x = aug(images_uint8_nchw)          # float32 NCHW, normalised, 32 x 32
    x = aug(images, items=loader.batch_items, epoch=loader.epoch)   # hflip: {alternate: true}

The parameters mean exactly what they mean in the Albumentations backend (``augment/cpu.py``,
Albumentations 2.0.8), op by op and in the same order (crop, translate, flip, colour jitter,
erase, normalise); see the notes on each ``_op`` method. ``spec.extra`` (arbitrary Albumentations
transforms) cannot run here: use the CPU backend for a spec that has any.

Work is done in float32 on the 0..255 scale after the uint8 -> float conversion; the colour ops
clamp to [0, 255] after each step as the uint8 path does, but nothing is re-quantised to
integers between ops (the uint8 path rounds or truncates after each op).

Random draws: the continuous per-image parameters (crop box, translation, flip, jitter factors,
erase rectangles, random fill) come from a ``torch.Generator`` on the device; the two discrete
choices that decide how the batch is grouped for the colour jitter (whether each image is
jittered, and its order of the four jitter ops) come from a CPU generator seeded alongside,
so the host knows the groups without waiting for the device. Same seed, same device: same
output. The alternate flip (``hflip: {alternate: true}``) draws nothing: it is decided on the
host from the batch's item indices, the epoch and ``flip_seed``
(``augpipe.augment.spec.alternate_flips``), exactly as the CPU backend decides it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from augpipe.augment.spec import AugmentSpec, alternate_flips
from augpipe.errors import ConfigError

__all__ = ["DeviceAugment", "DeviceEval"]

_GRAY = (0.299, 0.587, 0.114)  # cv2.COLOR_RGB2GRAY, which Albumentations' jitter uses
_MAX_CROP_TRIES = 10  # RandomResizedCrop.get_params_dependent_on_data


def _out_size(size, spec: AugmentSpec | None, h: int, w: int) -> tuple[int, int]:
    size = size if size is not None else (spec.size if spec is not None else None)
    return (h, w) if size is None else (int(size), int(size))


def _resize_coords(n_in: int, n_out_full: int, n_out: int, device) -> torch.Tensor:
    """Source coordinates of SmallestMaxSize (resize one side to ``n_out_full``) followed by
    CenterCrop to ``n_out``, along one axis; cv2 INTER_LINEAR half-pixel mapping, clamped."""
    off = (n_out_full - n_out) // 2
    i = torch.arange(n_out, device=device, dtype=torch.float32)
    return ((i + off + 0.5) * (n_in / n_out_full) - 0.5).clamp_(0, n_in - 1)


def _smallest_max_size(h: int, w: int, size_h: int, size_w: int) -> tuple[int, int]:
    """The resized (h, w) of SmallestMaxSize(max_size=size) for a square output."""
    if (h, w) == (size_h, size_w):
        return h, w
    scale = size_h / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _sample(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of every image of ``x`` (N, C, H, W) at the separable grid of source pixel
    coordinates ``xs`` (N, Wo) x ``ys`` (N, Ho): one ``grid_sample`` for the whole batch."""
    n, _, h, w = x.shape
    gx = xs.mul(2.0 / w).add_(1.0 / w - 1.0)  # pixel -> [-1, 1], align_corners=False
    gy = ys.mul(2.0 / h).add_(1.0 / h - 1.0)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` along the batch dimension (a 2-D index_select: much faster on CPU)."""
    return x.reshape(x.shape[0], -1).index_select(0, index).view(index.numel(), *x.shape[1:])


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (r * _GRAY[0]).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2]).unsqueeze(1)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> None:
    """adjust_brightness_torchvision: x * f, clipped. In place."""
    x.mul_(f.view(-1, 1, 1, 1)).clamp_(0, 255)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> None:
    """adjust_contrast_torchvision: blend with the mean of the image's grayscale. In place."""
    mean = _gray(x).mean(dim=(1, 2, 3))
    f = f.view(-1, 1, 1, 1)
    x.mul_(f).add_(mean.view(-1, 1, 1, 1) * (1 - f)).clamp_(0, 255)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> None:
    """adjust_saturation_torchvision: blend with the grayscale image. In place."""
    f = f.view(-1, 1, 1, 1)
    gray = _gray(x).mul_(1 - f)
    x.mul_(f).add_(gray).clamp_(0, 255)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> None:
    """adjust_hue_torchvision: rotate the HSV hue by ``shift`` turns (S and V kept). In place.

    RGB -> (V, chroma C, hue H in sextants, cv2's RGB2HSV) -> H + 6 shift -> RGB by the closed
    form R, G, B = V - C clamp(min(k, 4 - k), 0, 1), k = (n + H) mod 6, n = 5, 3, 1. Branch-free
    and with few temporaries (fresh allocations dominate the cost on a CPU)."""
    r, g, b = x.unbind(1)
    v = x.amax(dim=1)
    c = x.amin(dim=1).neg_().add_(v)  # chroma
    # 1 where a channel is the max (v - ch is exactly 0 there, >= 1e-30 elsewhere), first wins
    is_r = torch.sub(v, r).mul_(1e30).clamp_(0, 1).neg_().add_(1)
    is_g = torch.sub(v, g).mul_(1e30).clamp_(0, 1).neg_().add_(1)
    is_g.addcmul_(is_g, is_r, value=-1)
    # hue * C: r max -> g - b, g max -> b - r + 2C, b max -> r - g + 4C
    h = torch.sub(g, b).mul_(is_r)
    t = torch.sub(b, r).add_(c, alpha=2)
    h.addcmul_(t, is_g)
    torch.sub(r, g, out=t).add_(c, alpha=4)
    is_b = is_r.add_(is_g).neg_().add_(1)
    h.addcmul_(t, is_b)
    h.div_(torch.clamp(c, min=1e-20, out=is_g)).add_(6.0 * shift.view(-1, 1, 1))
    k, tmp = t, is_b
    for ch, n in enumerate((5.0, 3.0, 1.0)):
        torch.add(h, n, out=k)
        k.sub_(torch.mul(k, 1 / 6, out=tmp).floor_(), alpha=6)  # mod 6
        k.sub_(2).abs_().neg_().add_(2).clamp_(0, 1)  # clamp(min(k, 4 - k), 0, 1)
        torch.addcmul(v, c, k, value=-1, out=x[:, ch])


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)
_JITTER_NAMES = ("brightness", "contrast", "saturation", "hue")


class _Base(torch.nn.Module):
    def __init__(self, spec: AugmentSpec, size, *, device, channels_last: bool, dtype):
        super().__init__()
        if not isinstance(spec, AugmentSpec):
            spec = AugmentSpec.load(spec)
        self.spec = spec
        self.size = size if size is not None else spec.size
        self.device = torch.device(device)
        self.dtype = dtype
        self.channels_last = channels_last
        mean = torch.tensor(spec.normalize.mean, dtype=torch.float32, device=self.device)
        std = torch.tensor(spec.normalize.std, dtype=torch.float32, device=self.device)
        # (x - 255 mean) / (255 std) as one multiply-add, like BatchNormalizer
        self._scale = (1.0 / (std * 255)).view(1, 3, 1, 1)
        self._bias = (-mean / std).view(1, 3, 1, 1)

    def _to_float(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(
                f"expected a uint8 NCHW batch of RGB images, got {images.dtype} of shape {tuple(images.shape)}"
            )
        x = images.to(self.device, non_blocking=True)
        # contiguous NCHW float: grid_sample and the channel ops are fastest on it
        return x.to(torch.float32, memory_format=torch.contiguous_format)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mul_(self._scale).add_(self._bias)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.dtype)

    def _resize(self, x: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
        """SmallestMaxSize + CenterCrop as one resample (identity when the size already fits)."""
        n, _, h, w = x.shape
        if (h, w) == (ho, wo):
            return x
        nh, nw = _smallest_max_size(h, w, ho, wo)
        xs = _resize_coords(w, nw, wo, x.device).expand(n, wo)
        ys = _resize_coords(h, nh, ho, x.device).expand(n, ho)
        return _sample(x, xs, ys)


class DeviceEval(_Base):
    """Evaluation on the device: resize the smallest side to ``size`` and centre-crop (only when
    the images are not already ``size`` x ``size``), then normalise. No randomness.

    Matches ``augpipe.augment.cpu.build_eval_transform(spec, size, normalize=True)`` up to the
    uint8 rounding of the resize there."""

    def __init__(
        self,
        spec: AugmentSpec,
        size: int | None = None,
        *,
        device="cpu",
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(spec, size, device=device, channels_last=channels_last, dtype=dtype)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._to_float(images)
        ho, wo = _out_size(self.size, None, x.shape[2], x.shape[3])
        return self._finish(self._resize(x, ho, wo))


class DeviceAugment(_Base):
    """The training augmentation of ``spec`` on ``device``, batched, per-image parameters.

    ``__call__(images)``: uint8 RGB (N, 3, H, W) on any device (the loader's channels-last view
    is fine) -> normalised ``dtype`` (N, 3, size, size) on ``device``; ``size`` None means the
    spec's size, and with none there the images' own size. ``channels_last``: return in the
    channels-last memory format. ``last_params``: the parameters of the last call, per image,
    as tensors (see ``forward``). ``reseed(seed)``: restart the random streams (e.g. per epoch).
    The device is fixed at construction (the generator lives there): build one per device.
    ``flip_seed`` (default: ``generator_seed``): the seed of the alternate flip's per-image bits;
    give every rank of a run the same one (the run's seed), as an item may meet another rank in
    the next epoch. An alternate flip needs ``items`` and ``epoch`` with each batch.
    """

    def __init__(
        self,
        spec: AugmentSpec,
        size: int | None = None,
        *,
        device="cpu",
        generator_seed: int = 0,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        flip_seed: int | None = None,
    ):
        super().__init__(spec, size, device=device, channels_last=channels_last, dtype=dtype)
        self.flip_seed = int(generator_seed if flip_seed is None else flip_seed)
        if self.spec.extra:
            names = ", ".join(str(e.get("name")) for e in self.spec.extra)
            raise ConfigError(
                f"the device augmentation backend cannot run the spec's extra transforms ({names}); "
                "use the CPU (Albumentations) backend for this spec"
            )
        if self.spec.policy_ops():
            raise ConfigError(
                f"the device augmentation backend cannot run {', '.join(self.spec.policy_ops())} "
                f"(built from Albumentations operations): use the CPU backend (--aug-device cpu)"
            )
        self.generator = torch.Generator(device=self.device)
        self.host_generator = torch.Generator()
        self.last_params: dict[str, torch.Tensor] = {}
        self.reseed(generator_seed)

    def reseed(self, seed: int) -> None:
        seed = int(seed) % 2**63
        self.generator.manual_seed(seed)
        self.host_generator.manual_seed((seed * 0x9E3779B97F4A7C15 + 1) % 2**63)

    def extra_repr(self) -> str:
        return f"size={self.size}, ops={self.spec.active_ops()}, device={self.device}"

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A host tensor to the device without stalling the host (pinned: a truly async copy;
        PyTorch caches the pinned blocks)."""
        if self.device.type == "cuda":
            host = host.pin_memory()
        return host.to(self.device, non_blocking=True)

    # -- random draws ---------------------------------------------------------------------
    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator, device=self.device)

    def _uniform(self, lo: float, hi: float, *shape) -> torch.Tensor:
        return self._rand(*shape).mul_(hi - lo).add_(lo)

    # -- the pipeline -----------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, images: torch.Tensor, items=None, epoch: int | None = None) -> torch.Tensor:
        """Augment a batch; ``items`` (the images' indices in the data set: the loader's
        ``batch_items``) and ``epoch`` are needed by an alternate flip, and ignored otherwise.
        ``last_params`` then holds, per image (tensors on the device unless
        noted): ``crop_applied`` (bool), ``crop_box`` (x_min, y_min, x_max, y_max in input pixels,
        the Albumentations ``crop_coords``), ``translate_applied`` (bool), ``translate`` ((dx, dy)
        in [-pad, pad]: output pixel (y, x) is the padded image's (y + dy, x + dx) before the
        flip; 0 where not applied), ``flip`` (bool), ``jitter_applied`` (bool, CPU),
        ``brightness``, ``contrast``, ``saturation``, ``hue`` (factors drawn for every image),
        ``jitter_order`` ((N, 4) op indices brightness=0 contrast=1 saturation=2 hue=3, CPU),
        ``erase_applied`` (bool: a hole was cut) and ``erase_box`` (x_min, y_min, x_max, y_max)."""
        x = self._to_float(images)
        params: dict[str, torch.Tensor] = {}
        ho, wo = _out_size(self.size, self.spec, x.shape[2], x.shape[3])
        flips = self._flips(x.shape[0], items, epoch, params)
        x = self._crop_flip(x, ho, wo, flips, params)
        if self.spec.translate is not None:
            x = self._translate(x, flips, params)
        if self.spec.color_jitter is not None:
            x = self._jitter(x, params)
        if self.spec.erase is not None:
            self._erase(x, params)
        self.last_params = params
        return self._finish(x)

    def _flips(self, n: int, items, epoch, params: dict) -> torch.Tensor | None:
        """HorizontalFlip: flip ~ U[0, 1) < p; alternate: ``alternate_flips`` of the items."""
        flip = self.spec.hflip
        if flip is None:
            return None
        if flip.alternate:
            if items is None or epoch is None:
                raise ConfigError(
                    "hflip alternate on the device needs each batch's item indices and the epoch "
                    "(DeviceAugment(images, items=..., epoch=...)); use --aug-device cpu"
                )
            items = items.cpu().numpy() if isinstance(items, torch.Tensor) else items
            flips = torch.from_numpy(alternate_flips(items, epoch, self.flip_seed))
            if flips.numel() != n:
                raise ValueError(f"{flips.numel()} item indices for a batch of {n} images")
            flips = self._to_device(flips)
        else:
            flips = self._rand(n) < flip.p
        params["flip"] = flips
        return flips

    def _crop_flip(self, x: torch.Tensor, ho: int, wo: int, flips, params: dict) -> torch.Tensor:
        """RandomResizedCrop (cv2 INTER_LINEAR) and HorizontalFlip as one bilinear resample.

        Crop parameters as ``RandomResizedCrop.get_params_dependent_on_data``: up to 10 tries of
        area ~ U(scale * H * W), aspect ~ exp(U(log ratio)), w = round(sqrt(area * aspect)),
        h = round(sqrt(area / aspect)), the first try with 0 < w <= W and 0 < h <= H wins (all 10
        drawn at once); none fits -> the centre crop of the ratio-clamped whole image. Corner:
        y_min = int((H - h + 1) * U[0, 1)), same for x. The crop box is resized to the output with
        cv2's half-pixel mapping, clamped to the box's edge pixels, as cv2.resize of the cropped
        array does; a flip reverses the sampling columns. ``crop.p`` < 1: an image without the
        crop gets the plain resize (SmallestMaxSize + CenterCrop, or nothing at native size),
        as the CPU backend's OneOf does."""
        n, _, h, w = x.shape
        dev = x.device
        crop = self.spec.crop
        if crop is None:
            if flips is not None and (h, w) == (ho, wo):  # no resample needed
                # lerp is exact at weights 0 and 1 (and, unlike a broadcast where, fast on CPU)
                return x.lerp_(x.flip(-1), flips.to(x.dtype).view(-1, 1, 1, 1))
            nh, nw = _smallest_max_size(h, w, ho, wo)
            xs = _resize_coords(w, nw, wo, dev).expand(n, wo)
            ys = _resize_coords(h, nh, ho, dev).expand(n, ho)
            if flips is not None:
                xs = torch.where(flips[:, None], xs.flip(1), xs)
            return x if (h, w) == (ho, wo) else _sample(x, xs, ys)

        area = h * w
        target = self._uniform(crop.scale[0] * area, crop.scale[1] * area, n, _MAX_CROP_TRIES)
        aspect = self._uniform(math.log(crop.ratio[0]), math.log(crop.ratio[1]), n, _MAX_CROP_TRIES).exp_()
        cw = torch.sqrt(target * aspect).round_()
        ch = torch.sqrt(target / aspect).round_()
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting try
        found = ok.any(dim=1)
        cw = cw.gather(1, first).squeeze(1)
        ch = ch.gather(1, first).squeeze(1)
        starts = self._rand(n, 2)
        y0 = ((h - ch + 1) * starts[:, 0]).floor_()
        x0 = ((w - cw + 1) * starts[:, 1]).floor_()
        fw, fh = self._fallback_crop(h, w)
        cw = torch.where(found, cw, float(fw))
        ch = torch.where(found, ch, float(fh))
        x0 = torch.where(found, x0, float((w - fw) // 2))
        y0 = torch.where(found, y0, float((h - fh) // 2))

        i = torch.arange(wo, device=dev, dtype=torch.float32)
        j = torch.arange(ho, device=dev, dtype=torch.float32)
        xs = x0[:, None] + (i + 0.5) * (cw / wo)[:, None] - 0.5
        ys = y0[:, None] + (j + 0.5) * (ch / ho)[:, None] - 0.5
        xs = torch.maximum(torch.minimum(xs, (x0 + cw - 1)[:, None]), x0[:, None])
        ys = torch.maximum(torch.minimum(ys, (y0 + ch - 1)[:, None]), y0[:, None])
        applied = None
        if crop.p < 1:
            applied = self._rand(n) < crop.p
            nh, nw = _smallest_max_size(h, w, ho, wo)
            xs = torch.where(applied[:, None], xs, _resize_coords(w, nw, wo, dev))
            ys = torch.where(applied[:, None], ys, _resize_coords(h, nh, ho, dev))
        if flips is not None:
            xs = torch.where(flips[:, None], xs.flip(1), xs)
        params["crop_applied"] = applied if applied is not None else torch.ones(n, dtype=torch.bool, device=dev)
        params["crop_box"] = torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1).long()
        return _sample(x, xs, ys)

    def _translate(self, x: torch.Tensor, flips, params: dict) -> torch.Tensor:
        """Pad by ``pad`` on every side (torch's "reflect" is cv2's BORDER_REFLECT_101, as the CPU
        backend pads; or ``fill``) and cut the window at an offset (dx, dy) drawn uniformly from
        the integers in [-pad, pad], per image, with one gather for the batch. It runs on the
        already flipped image (the flip is part of the crop's resample), where the window of the
        flipped pad at (-dx, dy) is the flip of the window at (dx, dy): the same output as
        translating first."""
        tr = self.spec.translate
        n, c, h, w = x.shape
        dev = x.device
        self.spec.check_size(min(h, w))
        pad = tr.pad
        off = torch.randint(-pad, pad + 1, (n, 2), generator=self.generator, device=dev)
        applied = torch.ones(n, dtype=torch.bool, device=dev)
        if tr.p < 1:
            applied = self._rand(n) < tr.p
            off = off * applied[:, None]
        params["translate_applied"] = applied
        params["translate"] = off
        if pad == 0:
            return x
        if tr.mode == "reflect":
            padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        elif isinstance(tr.fill, (list, tuple)):  # one value per channel: around a zero pad
            padded = F.pad(x, (pad, pad, pad, pad))
            border = torch.ones(1, 1, h + 2 * pad, w + 2 * pad, dtype=x.dtype, device=dev)
            border[:, :, pad : pad + h, pad : pad + w] = 0
            fill = torch.tensor([float(v) for v in tr.fill], dtype=x.dtype, device=dev).view(1, -1, 1, 1)
            padded.addcmul_(fill, border)
        else:
            padded = F.pad(x, (pad, pad, pad, pad), value=float(tr.fill))
        dx, dy = off.unbind(1)
        if flips is not None:
            dx = torch.where(flips, -dx, dx)
        wp = w + 2 * pad
        rows = (dy + pad)[:, None] + torch.arange(h, device=dev)
        cols = (dx + pad)[:, None] + torch.arange(w, device=dev)
        index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        return padded.view(n, c, -1).gather(2, index).view(n, c, h, w)

    def _fallback_crop(self, h: int, w: int) -> tuple[int, int]:
        r0, r1 = self.spec.crop.ratio
        in_ratio = w / h
        if in_ratio < r0:
            return w, round(w / r0)
        if in_ratio > r1:
            return round(h * r1), h
        return w, h

    def _jitter(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """ColorJitter: brightness, contrast, saturation factors ~ U[max(0, 1 - v), 1 + v], hue
        shift ~ U[-hue, hue] turns, applied in a random order per image (Albumentations shuffles
        the four ops on every call), each op clipped to [0, 255] like the uint8 path.

        Batched by step: at each of the four steps the jittered images are sorted by the op they
        take at that step, so every op runs once per step on a contiguous slice; no per-image
        loop and no device synchronisation (the grouping is drawn on the host)."""
        cj = self.spec.color_jitter
        n = x.shape[0]
        factors = torch.stack(
            [
                self._uniform(max(0.0, 1 - cj.brightness), 1 + cj.brightness, n),
                self._uniform(max(0.0, 1 - cj.contrast), 1 + cj.contrast, n),
                self._uniform(max(0.0, 1 - cj.saturation), 1 + cj.saturation, n),
                self._uniform(-cj.hue, cj.hue, n),
            ]
        )
        applied = torch.rand(n, generator=self.host_generator) < cj.p
        order = torch.rand(n, 4, generator=self.host_generator).argsort(dim=1)
        params.update(zip(_JITTER_NAMES, factors.unbind(0)))
        params["jitter_applied"] = applied
        params["jitter_order"] = order

        active = [cj.brightness > 0, cj.contrast > 0, cj.saturation > 0, cj.hue > 0]
        idx = applied.nonzero().squeeze(1)
        if idx.numel() == 0 or not any(active):
            return x
        if sum(active) == 1:  # one op: the order does not matter
            k = active.index(True)
            return self._jitter_rows(x, idx, k, factors[k])
        # The grouping, all on the host: at each step, the rows sorted by the op they take
        # (4 = none: an op switched off by the spec), and the counts per op.
        inactive = torch.tensor([not a for a in active] + [True])
        pos, sorts, counts = idx, [], []
        for step in range(4):
            key = order[pos, step]
            key = key.masked_fill(inactive[key], 4)
            sort = key.argsort(stable=True)
            pos = pos[sort]
            sorts.append(sort)
            counts.append(torch.bincount(key, minlength=5).tolist())
        # one host -> device copy of every index: the first gather (original rows), the
        # re-sorts of steps 1..3, the final scatter (original rows)
        m = idx.numel()
        index = self._to_device(torch.cat([idx[sorts[0]], *sorts[1:], pos]))
        first, *resorts, last = index.split(m)
        xs = _rows(x, first)
        fac = factors.index_select(1, first)
        for step in range(4):
            if step:
                xs = _rows(xs, resorts[step - 1])
                fac = fac.index_select(1, resorts[step - 1])
            start = 0
            for op in range(4):
                stop = start + counts[step][op]
                if stop > start:
                    _JITTER_OPS[op](xs[start:stop], fac[op, start:stop])
                start = stop
        x.view(x.shape[0], -1).index_copy_(0, last, xs.view(m, -1))
        return x

    def _jitter_rows(self, x, idx, op, factor):
        if idx.numel() == x.shape[0]:
            _JITTER_OPS[op](x, factor)
            return x
        idx = self._to_device(idx)
        sub = _rows(x, idx)
        _JITTER_OPS[op](sub, factor.index_select(0, idx))
        x.view(x.shape[0], -1).index_copy_(0, idx, sub.view(idx.numel(), -1))
        return x

    def _erase(self, x: torch.Tensor, params: dict) -> None:
        """Erasing (Albumentations 2.0.8, one hole): area ~ U[scale0 * A, max valid area] where
        the max valid area is min(scale1 * A, ratio0 * H^2, W^2 / ratio1); aspect ~ U over
        [max(ratio0, area / H^2), min(ratio1, W^2 / area)] (uniform, not log-uniform, and no
        retries, as in that release); h = round(sqrt(area / aspect)), w = round(sqrt(area *
        aspect)); top ~ randint[0, H - h], left ~ randint[0, W - w]. Filled with ``fill`` (a pixel
        value, or one per channel) or, for "random", uniform integers 0..255 per pixel and
        channel. In place."""
        er = self.spec.erase
        n, _, h, w = x.shape
        dev = x.device
        total = h * w
        min_area, max_area = total * er.scale[0], total * er.scale[1]
        r0, r1 = er.ratio
        max_valid = min(max_area, r0 * h * h, w * w / r1)
        u = self._rand(n, 5)
        applied = u[:, 0] < er.p
        if max_valid < min_area:
            params["erase_applied"] = torch.zeros(n, dtype=torch.bool, device=dev)
            params["erase_box"] = torch.zeros(n, 4, dtype=torch.long, device=dev)
            return
        area = u[:, 1] * (max_valid - min_area) + min_area
        lo_r = torch.clamp(area / (h * h), min=r0)
        hi_r = torch.clamp((w * w) / area, max=r1)
        applied &= lo_r <= hi_r
        aspect = lo_r + (hi_r - lo_r) * u[:, 2]
        eh = torch.sqrt(area / aspect).round_().clamp_(0, h)
        ew = torch.sqrt(area * aspect).round_().clamp_(0, w)
        top = ((h - eh + 1) * u[:, 3]).floor_()
        left = ((w - ew + 1) * u[:, 4]).floor_()
        params["erase_applied"] = applied
        params["erase_box"] = torch.stack([left, top, left + ew, top + eh], dim=1).long()
        rows = torch.arange(h, device=dev, dtype=torch.float32)
        cols = torch.arange(w, device=dev, dtype=torch.float32)
        in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None]) & applied[:, None]
        in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
        # the hole as a 0/1 float mask (N, 1, H, W): x (1 - m) + fill m is exact for m in {0, 1}
        # and, unlike a broadcast boolean where / masked_fill, fast on a CPU too
        m = (in_rows.to(x.dtype)[:, :, None] * in_cols.to(x.dtype)[:, None, :]).unsqueeze(1)
        x.mul_(1 - m)
        if er.fill == "random":
            noise = torch.randint(0, 256, x.shape, generator=self.generator, device=dev).to(x.dtype)
            x.addcmul_(noise, m)
        elif isinstance(er.fill, (list, tuple)):  # one value per channel
            fill = torch.tensor([float(v) for v in er.fill], dtype=x.dtype, device=dev).view(1, -1, 1, 1)
            x.addcmul_(fill, m)
        elif float(er.fill) != 0:
            x.add_(m, alpha=float(er.fill))
