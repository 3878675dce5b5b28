"""The device backend (augment/device.py) against the Albumentations backend (augment/cpu.py).

Two kinds of check: distributions (each op alone, many images, the device's parameters or
pixels against Albumentations' applied parameters or pixels, by a two-sample KS statistic or a
rate), and exact references (the device's own recorded parameters replayed through cv2 and
Albumentations' functional ops must give the device's pixels). Everything is seeded, so the
results are deterministic; the thresholds are those a true difference would cross (see
``test_ks_detects_a_wrong_distribution``).
"""

from __future__ import annotations

import math
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from augpipe.augment.cpu import build_eval_transform, build_train_transform
from augpipe.augment.device import DeviceAugment, DeviceEval
from augpipe.augment.spec import AugmentSpec
from augpipe.data.loader import BatchNormalizer
from augpipe.errors import ConfigError

N = 2500  # samples per side of each distribution comparison
KS_MAX = 0.08  # two-sample KS statistic for n = m = 2500: p ~ 4e-4 at 0.08
RAW = {"mean": [0.0, 0.0, 0.0], "std": [1 / 255] * 3}  # "normalise" to the 0..255 pixel scale


def raw_spec(**ops) -> AugmentSpec:
    return AugmentSpec.from_dict({"size": ops.pop("size", 32), "normalize": RAW, **ops})


def ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (ties handled: CDFs compared at every value)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return float(
        np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)))
    )


def alb_runs(spec, img, n, size=32, seed=123):
    """Run the Albumentations pipeline of ``spec`` ``n`` times on ``img`` (HWC uint8): the
    output images and, per run, {transform name: applied params}."""
    t = build_train_transform(spec, size, native=img.shape[:2], seed=seed)
    t.save_applied_params = True
    outs, params = [], []
    for _ in range(n):
        r = t(image=img)
        outs.append(r["image"])
        params.append({name: p for name, p in r["applied_transforms"]})
    return np.stack(outs), params


def dev_run(spec, img, n, size=32, seed=7, **kw):
    """The device pipeline on ``n`` copies of ``img`` (HWC uint8): (N, H, W, C) float pixels and
    the recorded parameters."""
    aug = DeviceAugment(spec, size, generator_seed=seed, **kw)
    batch = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].expand(n, -1, -1, -1)
    out = aug(batch).permute(0, 2, 3, 1).numpy()
    return out, aug.last_params


def pattern(h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def constant(value, h=32, w=32):
    return np.full((h, w, 3), value, dtype=np.uint8)


# -- the statistic itself ------------------------------------------------------------------
def test_ks_detects_a_wrong_distribution():
    img = pattern()
    _, alb = alb_runs(raw_spec(crop={"scale": [0.1, 1.0]}), img, N)
    alb_area = [_box_area(p["RandomResizedCrop"]["crop_coords"]) for p in alb]
    _, right = dev_run(raw_spec(crop={"scale": [0.1, 1.0]}), img, N)
    _, wrong = dev_run(raw_spec(crop={"scale": [0.2, 1.0]}), img, N)
    assert ks(_dev_area(right), alb_area) < KS_MAX
    assert ks(_dev_area(wrong), alb_area) > KS_MAX


def _box_area(box, total=32 * 32):
    x0, y0, x1, y1 = box
    return (x1 - x0) * (y1 - y0) / total


def _dev_area(params, total=32 * 32):
    b = params["crop_box"].numpy()
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / total


# -- crop ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_crop_parameters_match_albumentations(shape):
    spec = raw_spec(crop={"scale": [0.08, 1.0], "ratio": [0.5, 2.0]})
    img = pattern(*shape)
    _, alb = alb_runs(spec, img, N)
    _, dev = dev_run(spec, img, N)
    a = np.array([p["RandomResizedCrop"]["crop_coords"] for p in alb], float)
    d = dev["crop_box"].numpy().astype(float)
    assert dev["crop_applied"].all()
    for name, col in {
        "area": lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]),
        "aspect": lambda b: (b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1]),
        "x_min": lambda b: b[:, 0],
        "y_min": lambda b: b[:, 1],
    }.items():
        assert ks(col(d), col(a)) < KS_MAX, name
    h, w = shape
    assert (d[:, 0] >= 0).all() and (d[:, 2] <= w).all() and (d[:, 1] >= 0).all() and (d[:, 3] <= h).all()
    assert (d[:, 2] > d[:, 0]).all() and (d[:, 3] > d[:, 1]).all()


def test_crop_fallback_is_the_centre_crop():
    # 8 x 32: no try can fit (h <= 8 needs aspect >= ~3.8 > 4/3): the ratio-clamped centre crop
    spec = raw_spec(crop={"scale": [0.9, 1.0], "ratio": [0.75, 4 / 3]}, size=8)
    img = pattern(8, 32)
    _, alb = alb_runs(spec, img, 20, size=8)
    _, dev = dev_run(spec, img, 20, size=8)
    assert {p["RandomResizedCrop"]["crop_coords"] for p in alb} == {(10, 0, 21, 8)}
    assert (dev["crop_box"] == torch.tensor([10, 0, 21, 8])).all()


def test_crop_and_flip_pixels_match_cv2_resize_of_the_box():
    spec = raw_spec(crop={"scale": [0.08, 1.0], "ratio": [0.5, 2.0]}, hflip={"p": 0.5})
    img = pattern(24, 40)
    out, prm = dev_run(spec, img, 64)
    ref_img = img.astype(np.float32)
    for k in range(64):
        x0, y0, x1, y1 = prm["crop_box"][k].tolist()
        ref = cv2.resize(ref_img[y0:y1, x0:x1], (32, 32), interpolation=cv2.INTER_LINEAR)
        if prm["flip"][k]:
            ref = ref[:, ::-1]
        np.testing.assert_allclose(out[k], ref, atol=2e-3, err_msg=f"image {k}")
    assert 10 < int(prm["flip"].sum()) < 54


def test_crop_probability_and_plain_resize_otherwise():
    spec = raw_spec(crop={"scale": [0.2, 1.0], "p": 0.3})
    img = pattern(40, 48)
    out, prm = dev_run(spec, img, 2000)
    rate = prm["crop_applied"].float().mean().item()
    assert abs(rate - 0.3) < 0.04
    plain = DeviceEval(spec, 32)(torch.from_numpy(img).permute(2, 0, 1)[None]).permute(0, 2, 3, 1).numpy()[0]
    assert np.allclose(out[~prm["crop_applied"].numpy()], plain, atol=1e-3)
    # the CPU backend's OneOf picks the crop at the same rate
    _, alb = alb_runs(spec, img, 2000)
    alb_rate = np.mean(["RandomResizedCrop" in p for p in alb])
    assert abs(alb_rate - rate) < 0.05


def test_crop_position_is_uniform_over_every_valid_corner():
    # a fixed 16 x 16 crop of a 32 x 32 image: the corner takes each of 0..16 with chance 1/17
    spec = raw_spec(crop={"scale": [0.25, 0.25], "ratio": [1.0, 1.0]})
    _, alb = alb_runs(spec, pattern(), N)
    _, dev = dev_run(spec, pattern(), N)
    a = np.array([p["RandomResizedCrop"]["crop_coords"] for p in alb])
    d = dev["crop_box"].numpy()
    assert set(np.unique(a[:, 2] - a[:, 0])) == set(np.unique(d[:, 2] - d[:, 0])) == {16}
    for col in (0, 1):
        assert set(np.unique(d[:, col])) == set(np.unique(a[:, col])) == set(range(17))
        counts = np.bincount(d[:, col], minlength=17)
        assert counts.min() > 0.6 * N / 17 and counts.max() < 1.4 * N / 17


def test_eval_matches_albumentations_resize_and_centre_crop():
    spec = AugmentSpec.preset("standard")
    img = pattern(40, 48, seed=3)
    ref = build_eval_transform(spec, 32, native=(40, 48), normalize=True)(image=img)["image"]
    got = DeviceEval(spec, 32)(torch.from_numpy(img).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert got.shape == ref.shape == (32, 32, 3)
    assert np.abs(got - ref).max() < 0.03  # the CPU path rounds the resize to uint8: <= 0.5 / 255 / 0.224
    same = DeviceEval(spec, 32)(torch.from_numpy(pattern()).permute(2, 0, 1)[None])
    norm = BatchNormalizer(spec.normalize.mean, spec.normalize.std)(torch.from_numpy(pattern()).permute(2, 0, 1)[None])
    assert torch.allclose(same, norm, atol=1e-5)


# -- flip ----------------------------------------------------------------------------------------
def test_flip_rate_and_pixels():
    spec = raw_spec(hflip={"p": 0.3})
    img = pattern()
    out, prm = dev_run(spec, img, N)
    flips = prm["flip"].numpy()
    alb_out, _ = alb_runs(spec, img, N)
    alb_rate = np.mean([np.array_equal(o, img[:, ::-1]) for o in alb_out])
    assert abs(flips.mean() - 0.3) < 0.04 and abs(alb_rate - flips.mean()) < 0.05
    assert np.allclose(out[flips], img[:, ::-1].astype(np.float32), atol=1e-3)
    assert np.allclose(out[~flips], img.astype(np.float32), atol=1e-3)
    # at another size the flip rides on the plain resize
    other = pattern(40, 48)
    out, prm = dev_run(raw_spec(hflip={"p": 0.5}), other, 64)
    plain = DeviceEval(raw_spec(), 32)(torch.from_numpy(other).permute(2, 0, 1)[None]).permute(0, 2, 3, 1).numpy()
    flips = prm["flip"].numpy()
    assert 0 < flips.sum() < 64
    assert np.allclose(out[flips], plain[:, :, ::-1], atol=1e-3) and np.allclose(out[~flips], plain, atol=1e-3)


# -- colour jitter --------------------------------------------------------------------------------
def jitter(**kw):
    base = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "p": 1.0}
    return raw_spec(color_jitter={**base, **kw})


def test_brightness_factors_from_pixels():
    spec = jitter(brightness=0.4)
    img = constant(100)
    alb_out, alb = alb_runs(spec, img, N)
    out, prm = dev_run(spec, img, N)
    a = alb_out.reshape(N, -1).mean(1) / 100
    d = out.reshape(N, -1).mean(1) / 100
    assert ks(d, a) < KS_MAX
    assert abs(d.min() - 0.6) < 0.02 and abs(d.max() - 1.4) < 0.02
    assert abs(a.min() - 0.6) < 0.02 and abs(a.max() - 1.4) < 0.02
    assert ks(prm["brightness"].numpy(), [p["ColorJitter"]["brightness"] for p in alb]) < KS_MAX


def test_contrast_factors_from_pixels():
    spec = jitter(contrast=0.5)
    img = constant(60)
    img[:, 16:] = 160  # gray mean 110: contrast scales the spread around it
    alb_out, _ = alb_runs(spec, img, N)
    out, _ = dev_run(spec, img, N)

    def spread(o):
        return (o[:, :, 16:, 0].mean((1, 2)) - o[:, :, :16, 0].mean((1, 2))) / 100

    a, d = spread(alb_out.astype(float)), spread(out)
    assert ks(d, a) < KS_MAX
    assert abs(d.min() - 0.5) < 0.02 and abs(d.max() - 1.5) < 0.02
    assert np.allclose(out.mean((1, 2, 3)), 110, atol=0.01)  # the mean is kept


def test_saturation_factors_from_pixels():
    spec = jitter(saturation=0.5)
    img = np.empty((32, 32, 3), np.uint8)
    img[:] = (200, 100, 50)
    alb_out, _ = alb_runs(spec, img, N)
    out, _ = dev_run(spec, img, N)
    a = (alb_out[:, 0, 0, 0].astype(float) - alb_out[:, 0, 0, 2]) / 150
    d = (out[:, 0, 0, 0] - out[:, 0, 0, 2]) / 150
    assert ks(d, a) < KS_MAX
    assert abs(d.min() - 0.5) < 0.02 and abs(d.max() - 1.5) < 0.02


def test_hue_shift_from_pixels():
    spec = jitter(hue=0.1)
    img = np.empty((32, 32, 3), np.uint8)
    img[:] = (200, 80, 40)
    alb_out, alb = alb_runs(spec, img, N)
    out, prm = dev_run(spec, img, N)

    def hue_deg(rgb):
        hsv = cv2.cvtColor(rgb.astype(np.float32)[None] / 255, cv2.COLOR_RGB2HSV)[0]
        return hsv[:, 0]

    h0 = hue_deg(img[0, :1])[0]
    shift = lambda o: (hue_deg(o[:, 0, 0]) - h0 + 180) % 360 - 180  # noqa: E731
    a, d = shift(alb_out[:, :, :, :]), shift(out)
    # device: exact shifts of U[-36, 36] degrees. Albumentations' uint8 path works on OpenCV's
    # 8-bit hue (2-degree steps), so its shifts lie on a 2-degree lattice whose offset depends on
    # how OpenCV rounds the source pixel's hue: OpenCV 4 truncates (shifts up to 2 degrees low),
    # OpenCV 5 rounds (-34.875 is its smallest here). Either way within 2 degrees, plus rounding.
    np.testing.assert_allclose(d, prm["hue"].numpy() * 360, atol=0.05)
    assert abs(d.min() + 36) < 0.5 and abs(d.max() - 36) < 0.5
    assert -3 < a.min() + 36 < 3 and -3 < a.max() - 36 < 3
    assert abs(np.mean(d) - np.mean(a)) < 2.5
    assert ks(prm["hue"].numpy(), [p["ColorJitter"]["hue"] for p in alb]) < KS_MAX


def test_jitter_probability_and_orders():
    spec = AugmentSpec.from_dict({"size": 32, "normalize": RAW, "color_jitter": {"p": 0.6}})
    img = pattern()
    _, alb = alb_runs(spec, img, N)
    out, prm = dev_run(spec, img, N)
    applied = prm["jitter_applied"].numpy()
    assert abs(applied.mean() - 0.6) < 0.04
    assert abs(np.mean(["ColorJitter" in p for p in alb]) - applied.mean()) < 0.05
    assert np.allclose(out[~applied], img.astype(np.float32), atol=1e-3)
    # every image has its own order of the four ops, uniform over the 24, as in Albumentations
    for orders in (
        Counter(tuple(o) for o in prm["jitter_order"].tolist()),
        Counter(tuple(p["ColorJitter"]["order"]) for p in alb if "ColorJitter" in p),
    ):
        assert len(orders) == 24
        total = sum(orders.values())
        assert max(orders.values()) < 1.6 * total / 24 and min(orders.values()) > 0.5 * total / 24


def test_jitter_pixels_replay_albumentations_functional_ops():
    """The device's recorded factors and order, replayed image by image through Albumentations'
    float32 functional ops, give the device's pixels: the batched grouping applies each image's
    ops in its own order."""
    from albumentations.augmentations.pixel import functional as fp

    fns = [
        fp.adjust_brightness_torchvision,
        fp.adjust_contrast_torchvision,
        fp.adjust_saturation_torchvision,
        fp.adjust_hue_torchvision,
    ]
    spec = jitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.3, p=0.9)
    rng = np.random.default_rng(5)
    imgs = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
    imgs[:, :8] //= 2  # some structure, and values that clip under brightness
    aug = DeviceAugment(spec, 16, generator_seed=11)
    out = aug(torch.from_numpy(imgs).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy() / 255
    prm = aug.last_params
    names = ["brightness", "contrast", "saturation", "hue"]
    n_orders = set()
    for k in range(len(imgs)):
        ref = imgs[k].astype(np.float32) / 255
        if prm["jitter_applied"][k]:
            order = prm["jitter_order"][k].tolist()
            n_orders.add(tuple(order))
            for op in order:
                ref = fns[op](ref, float(prm[names[op]][k]))
        np.testing.assert_allclose(out[k], ref, atol=2e-4, err_msg=f"image {k}")
    assert len(n_orders) > 15


def test_jitter_order_matters():
    # the same factors in two orders give different images (clipping between ops), so a
    # backend that ignored the order would fail the replay above
    x = torch.full((1, 3, 4, 4), 200.0)
    x[..., :2] = 20
    from augpipe.augment import device as d

    a, b = x.clone(), x.clone()
    d._brightness(a, torch.tensor([1.5])), d._contrast(a, torch.tensor([0.5]))
    d._contrast(b, torch.tensor([0.5])), d._brightness(b, torch.tensor([1.5]))
    assert not torch.allclose(a, b)


# -- erase ------------------------------------------------------------------------------------------
def test_erased_area_fractions_match_albumentations():
    spec = raw_spec(erase={"scale": [0.02, 0.33], "ratio": [0.3, 3.3], "fill": 0, "p": 0.7})
    img = constant(128)
    alb_out, _ = alb_runs(spec, img, N)
    out, prm = dev_run(spec, img, N)
    a = (alb_out[..., 0] == 0).mean((1, 2))
    d = (out[..., 0] == 0).mean((1, 2))
    assert abs((d > 0).mean() - 0.7) < 0.04 and abs((a > 0).mean() - (d > 0).mean()) < 0.05
    assert ks(d[d > 0], a[a > 0]) < KS_MAX
    # the hole is the recorded rectangle, a rectangle of fill in every channel
    box = prm["erase_box"].numpy()
    recorded = np.where(prm["erase_applied"].numpy(), (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]), 0) / 1024
    assert np.allclose(recorded, d)
    assert ((out == 0).all(-1) == (out == 0).any(-1)).all()
    aspect = lambda o: [(r.any(0).sum() / r.any(1).sum()) for r in o[..., 0] == 0 if r.any()]  # noqa: E731
    assert ks(aspect(out), aspect(alb_out)) < KS_MAX


def test_erase_position_is_uniform_over_every_valid_corner():
    # a fixed 16 x 16 hole in a 32 x 32 image: its corner takes each of 0..16 with chance 1/17
    spec = raw_spec(erase={"scale": [0.25, 0.25], "ratio": [1.0, 1.0], "p": 1.0})
    _, alb = alb_runs(spec, constant(128), N)
    _, dev = dev_run(spec, constant(128), N)
    a = np.array([p["Erasing"]["holes"][0] for p in alb])
    d = dev["erase_box"].numpy()
    assert set(np.unique(a[:, 2] - a[:, 0])) == set(np.unique(d[:, 2] - d[:, 0])) == {16}
    for col in (0, 1):
        assert set(np.unique(d[:, col])) == set(np.unique(a[:, col])) == set(range(17))
        counts = np.bincount(d[:, col], minlength=17)
        assert counts.min() > 0.6 * N / 17 and counts.max() < 1.4 * N / 17


def test_erase_fill_per_channel():
    spec = raw_spec(erase={"scale": [0.1, 0.2], "fill": [10, 20, 30], "p": 1.0})
    img = constant(128)
    alb_out, _ = alb_runs(spec, img, 50)
    out, prm = dev_run(spec, img, 50)
    for o in (out, alb_out.astype(np.float32)):
        hole = (o != 128).any(-1)
        assert hole.any(axis=(1, 2)).all()
        assert np.array_equal(o[hole], np.broadcast_to([10.0, 20.0, 30.0], o[hole].shape))


def test_erase_random_fill():
    spec = raw_spec(erase={"scale": [0.2, 0.3], "fill": "random", "p": 1.0})
    img = constant(128)
    out, prm = dev_run(spec, img, 64)
    assert prm["erase_applied"].all()
    for k in range(8):
        x0, y0, x1, y1 = prm["erase_box"][k].tolist()
        hole = out[k, y0:y1, x0:x1]
        assert hole.std() > 40 and hole.min() >= 0 and hole.max() <= 255
        assert np.allclose(hole, np.round(hole))  # integers 0..255, as for a uint8 image
        rest = out[k].copy()
        rest[y0:y1, x0:x1] = 128
        assert np.allclose(rest, 128)


# -- the whole pipeline ---------------------------------------------------------------------------------
def test_each_image_draws_its_own_parameters():
    aug = DeviceAugment(AugmentSpec.preset("standard"), 32, generator_seed=0)
    batch = torch.from_numpy(pattern()).permute(2, 0, 1)[None].repeat(16, 1, 1, 1)
    out = aug(batch)
    flat = out.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(16) for j in range(i + 1, 16))
    assert len(set(aug.last_params["crop_box"][:, 0].tolist())) > 4


def test_seeds_repeat_and_differ():
    spec = AugmentSpec.preset("strong")
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (8, 3, 36, 36), dtype=np.uint8))
    a = DeviceAugment(spec, 32, generator_seed=3)
    b = DeviceAugment(spec, 32, generator_seed=3)
    c = DeviceAugment(spec, 32, generator_seed=4)
    first = a(batch)
    assert torch.equal(first, b(batch))
    assert not torch.allclose(first, c(batch))
    second = a(batch)
    assert not torch.allclose(first, second)  # the stream moves on
    a.reseed(3)
    assert torch.equal(a(batch), first)


def test_output_shape_dtype_layout_and_normalisation():
    spec = AugmentSpec.preset("standard")
    batch = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (4, 40, 48, 3), dtype=np.uint8)).permute(
        0, 3, 1, 2
    )
    out = DeviceAugment(spec, 24)(batch)
    assert out.shape == (4, 3, 24, 24) and out.dtype == torch.float32 and out.is_contiguous()
    out = DeviceAugment(spec, 24, channels_last=True, dtype=torch.bfloat16)(batch)
    assert out.shape == (4, 3, 24, 24) and out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    lo = (0 - np.array(spec.normalize.mean)) / np.array(spec.normalize.std)
    hi = (1 - np.array(spec.normalize.mean)) / np.array(spec.normalize.std)
    x = DeviceAugment(spec, 24)(batch)
    for c in range(3):
        assert lo[c] - 1e-4 <= x[:, c].min() and x[:, c].max() <= hi[c] + 1e-4
    # size from the spec, else the images' own
    assert DeviceAugment(AugmentSpec.from_dict({"size": 20}))(batch).shape == (4, 3, 20, 20)
    assert DeviceAugment(AugmentSpec())(batch).shape == (4, 3, 40, 48)


def test_empty_spec_is_only_normalisation():
    spec = AugmentSpec.preset("none")
    batch = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)).permute(
        0, 3, 1, 2
    )
    got = DeviceAugment(spec, 32)(batch)
    ref = BatchNormalizer(spec.normalize.mean, spec.normalize.std)(batch)
    assert torch.allclose(got, ref, atol=1e-5)
    # and with the raw "normalisation", the pixels come back exactly
    assert torch.equal(DeviceAugment(raw_spec(), 32)(batch).round(), batch.float())


def test_spec_with_extra_transforms_is_refused():
    spec = AugmentSpec.from_dict({"extra": [{"name": "GaussianBlur", "p": 0.1}]})
    with pytest.raises(ConfigError, match="GaussianBlur"):
        DeviceAugment(spec, 32)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(2, 32, 32, 3, dtype=torch.uint8),  # NHWC
        torch.zeros(2, 1, 32, 32, dtype=torch.uint8),  # gray
        torch.zeros(2, 3, 32, 32),
    ],
)  # float
def test_bad_input_is_refused(bad):
    with pytest.raises(ValueError, match="uint8 NCHW"):
        DeviceAugment(AugmentSpec(), 32)(bad)
    with pytest.raises(ValueError, match="uint8 NCHW"):
        DeviceEval(AugmentSpec(), 32)(bad)


def test_standard_preset_statistics_are_close_to_albumentations():
    """The whole standard pipeline on one pattern image: per-image mean and spread of the
    outputs, device against Albumentations (a check that the ops compose alike)."""
    spec = AugmentSpec.preset("standard")
    img = pattern(seed=9)
    alb_out, _ = alb_runs(AugmentSpec.from_dict({**spec.to_dict(), "normalize": RAW}), img, N)
    out, _ = dev_run(AugmentSpec.from_dict({**spec.to_dict(), "normalize": RAW}), img, N)
    for stat in (lambda o: o.reshape(len(o), -1).mean(1), lambda o: o.reshape(len(o), -1).std(1)):
        assert ks(stat(out), stat(alb_out.astype(np.float32))) < KS_MAX
    assert math.isfinite(float(out.sum()))


@pytest.mark.cuda
def test_cuda_backend_runs_the_same_contract():
    spec = AugmentSpec.preset("strong")
    batch = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (64, 36, 36, 3), dtype=np.uint8)).permute(
        0, 3, 1, 2
    )
    a = DeviceAugment(spec, 32, device="cuda", generator_seed=1)
    out = a(batch.pin_memory())
    assert out.device.type == "cuda" and out.shape == (64, 3, 32, 32) and torch.isfinite(out).all()
    assert all(v.device.type == ("cpu" if k.startswith("jitter_") else "cuda") for k, v in a.last_params.items())
    a.reseed(1)
    assert torch.equal(a(batch), out)
    # crop + flip pixels: the recorded boxes through cv2, as on the CPU
    raw = DeviceAugment(raw_spec(crop={"scale": [0.1, 1.0]}, hflip={"p": 0.5}), 32, device="cuda")
    got = raw(batch).permute(0, 2, 3, 1).cpu().numpy()
    imgs = batch.permute(0, 2, 3, 1).numpy().astype(np.float32)
    for k in range(8):
        x0, y0, x1, y1 = raw.last_params["crop_box"][k].tolist()
        ref = cv2.resize(imgs[k, y0:y1, x0:x1], (32, 32), interpolation=cv2.INTER_LINEAR)
        ref = ref[:, ::-1] if raw.last_params["flip"][k] else ref
        np.testing.assert_allclose(got[k], ref, atol=2e-3)
