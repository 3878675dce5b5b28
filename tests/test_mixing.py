"""MixUp and CutMix on the batch (augpipe/augment/mixing.py) and their rows in the preview."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from augpipe.augment.mixing import (
    BatchMixer,
    cutmix,
    cutmix_box,
    mix_label,
    mixed_correct,
    mixup,
    preview_mixed,
    preview_modes,
)
from augpipe.augment.spec import AugmentSpec, CutMix, MixUp

C = 5


def batch(n, h=6, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, h, w, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return x, y


def one_hot(y):
    return torch.nn.functional.one_hot(y, C).float()


# -- the pure functions ---------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 6), lam=st.floats(0, 1), random_perm=st.booleans(), seed=st.integers(0, 99))
def test_mixup_is_the_weighted_sum_with_the_partner(n, lam, random_perm, seed):
    x, y = batch(n, seed=seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if random_perm else None
    partner = perm if perm is not None else torch.arange(n - 1, -1, -1)
    expected = lam * x + (1 - lam) * x[partner]
    mixed, targets = mixup(x.clone(), one_hot(y), lam, perm)
    assert torch.equal(mixed, expected)
    assert torch.allclose(targets.sum(1), torch.ones(n))
    assert torch.allclose(targets, lam * one_hot(y) + (1 - lam) * one_hot(y[partner]))


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    lam=st.floats(0, 1),
    u=st.tuples(st.floats(0, 1, exclude_max=True), st.floats(0, 1, exclude_max=True)),
)
def test_cutmix_pastes_one_minus_the_corrected_lambda_of_the_area(h, w, lam, u):
    n = 4
    # Image i is all i, so each pixel tells which image it came from.
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).clone()
    y = torch.tensor([0, 1, 2, 3])
    box, lam_real = cutmix_box(h, w, lam, u)
    assert 0 <= box.top and box.top + box.height <= h and 0 <= box.left and box.left + box.width <= w
    mixed, targets = cutmix(x, one_hot(y), lam_real, None, box)
    from_partner = (mixed != torch.arange(n).view(n, 1, 1, 1)).float().mean(dim=(1, 2, 3))
    assert torch.allclose(from_partner, torch.full((n,), 1 - lam_real), atol=1e-6)
    assert torch.allclose(targets.sum(1), torch.ones(n))
    assert torch.allclose(targets[0], torch.tensor([lam_real, 0, 0, 1 - lam_real, 0]))


def test_cutmix_boxes_at_the_border_are_clipped_and_lambda_follows():
    # lam 0.75: sides int(10 * 0.5) = 5, spanning centre -+ 5 // 2 (timm), so 4 pixels; on the
    # corner pixel only its 2x2 quarter is left.
    box, lam = cutmix_box(10, 10, 0.75, (0.0, 0.0))
    assert box == (0, 0, 2, 2) and lam == pytest.approx(1 - 4 / 100)
    box, lam = cutmix_box(10, 10, 0.75, (0.99, 0.5))
    assert (box.top, box.height, box.left, box.width) == (7, 3, 3, 4) and lam == pytest.approx(1 - 12 / 100)
    assert cutmix_box(8, 8, 1.0, (0.5, 0.5)) == ((4, 4, 0, 0), 1.0)


def test_cutmix_with_a_random_permutation_takes_the_partners_pixels():
    x, y = batch(4)
    perm = torch.tensor([2, 0, 3, 1])
    box = (1, 2, 3, 4)
    mixed, targets = cutmix(x.clone(), one_hot(y), 0.5, perm, box)
    assert torch.equal(mixed[:, :, 1:4, 2:6], x[perm][:, :, 1:4, 2:6])
    outside = torch.ones(6, 7, dtype=torch.bool)
    outside[1:4, 2:6] = False
    assert torch.equal(mixed[:, :, outside], x[:, :, outside])
    assert torch.allclose(targets, 0.5 * one_hot(y) + 0.5 * one_hot(y[perm]))


# -- BatchMixer ------------------------------------------------------------------------------
def mixer(mixup_p=0.5, cutmix_p=0.5, seed=3, rank=0):
    return BatchMixer(
        MixUp(alpha=0.4, p=mixup_p) if mixup_p is not None else None,
        CutMix(alpha=1.0, p=cutmix_p) if cutmix_p is not None else None,
        C,
        seed,
        rank,
    )


def test_the_same_seed_rank_epoch_and_step_mix_the_same_and_another_step_differently():
    x, y = batch(8)
    a = mixer()(x.clone(), y, epoch=2, step=5)
    b = mixer()(x.clone(), y, epoch=2, step=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    # MixUp's lambda is continuous (CutMix's takes the few values a box area can): every step,
    # rank and seed draws its own.
    lams = [
        mixer(1.0, None, **kw)(x.clone(), y, epoch=2, step=s)[2].lam
        for s in range(5, 15)
        for kw in ({}, {"rank": 1}, {"seed": 4})
    ]
    assert len(set(lams)) == len(lams)
    again = [mixer(1.0, None)(x.clone(), y, epoch=2, step=s)[2].lam for s in range(5, 15)]
    assert again == lams[::3]


def test_mixup_and_cutmix_switch_half_and_half():
    x, y = batch(2, h=4, w=4)
    m = mixer(0.5, 0.5)
    modes = [m(x.clone(), y, epoch=1, step=s)[2].mode for s in range(400)]
    assert "none" not in modes
    assert 160 <= modes.count("mixup") <= 240  # 400 draws of p 0.5: sd 10


def test_mixup_alone_mixes_the_share_of_batches_p_says():
    x, y = batch(2, h=4, w=4)
    m = mixer(0.3, None)
    results = [m(x.clone(), y, epoch=0, step=s) for s in range(400)]
    mixed = sum(info.mode == "mixup" for _, _, info in results)
    assert 90 <= mixed <= 150  # 400 draws of p 0.3: sd 9
    for out, targets, info in results:
        assert torch.allclose(targets.sum(1), torch.ones(2))
        if info.mode == "none":
            assert torch.equal(out, x) and torch.equal(targets, one_hot(y)) and info.lam == 1.0


def test_the_mixer_returns_the_targets_and_images_it_says():
    x, y = batch(6)
    for step in range(20):
        out, targets, info = mixer()(x.clone(), y, epoch=0, step=step)
        assert targets.dtype == torch.float32 and targets.shape == (6, C)
        assert torch.allclose(targets, info.lam * one_hot(y) + (1 - info.lam) * one_hot(y.flip(0)), atol=1e-6)
        if info.mode == "mixup":
            assert torch.equal(out, info.lam * x + (1 - info.lam) * x.flip(0))


def test_a_batch_of_one_is_returned_unchanged():
    x, y = batch(1)
    out, targets, info = mixer(1.0, None)(x.clone(), y, epoch=0, step=0)
    assert torch.equal(out, x) and torch.equal(targets, one_hot(y)) and info.mode == "none" and info.lam == 1.0


def test_from_spec_is_none_without_batch_ops():
    assert BatchMixer.from_spec(AugmentSpec.from_dict({"hflip": {"p": 0.5}}), C, 0) is None
    m = BatchMixer.from_spec(AugmentSpec.from_dict({"cutmix": {"alpha": 1.0}}), C, 0)
    assert m.cutmix.p == 1.0 and m.mixup is None


@pytest.mark.cuda
def test_the_mixer_mixes_a_cuda_batch_as_a_cpu_one():
    x, y = batch(6)
    for step in range(8):
        cpu = mixer()(x.clone(), y, epoch=1, step=step)
        gpu = mixer()(x.cuda(), y.cuda(), epoch=1, step=step)
        assert gpu[0].device.type == "cuda" and gpu[1].device.type == "cuda" and gpu[2] == cpu[2]
        assert torch.allclose(gpu[0].cpu(), cpu[0], atol=1e-6) and torch.allclose(gpu[1].cpu(), cpu[1])


# -- accuracy and the loss under mixing ------------------------------------------------------
def test_mixed_correct_counts_correct_predictions_for_one_hot_targets():
    logits = torch.tensor([[2.0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0], [0, 0, 0, 1.0, 0]])
    y = torch.tensor([0, 2, 3])
    got = mixed_correct(logits, one_hot(y))
    assert got.dtype == torch.float32 and got.item() == 2.0


def test_mixed_correct_is_lambda_when_the_first_images_classes_are_predicted():
    x, _ = batch(2)
    y = torch.tensor([1, 4])
    _, targets = mixup(x, one_hot(y), 0.7)
    logits = torch.nn.functional.one_hot(y, C).float() * 5  # image i predicted as its own class
    assert mixed_correct(logits, targets).item() == pytest.approx(2 * 0.7)
    assert mixed_correct(logits[:1], targets[:1]).item() == pytest.approx(0.7)


def test_label_smoothing_applies_to_the_mixed_targets():
    ls = 0.1
    x, y = batch(4)
    _, targets = mixup(x, one_hot(y), 0.65)
    logits = torch.randn(4, C, generator=torch.Generator().manual_seed(1))
    loss = torch.nn.CrossEntropyLoss(label_smoothing=ls)(logits, targets)
    smoothed = targets * (1 - ls) + ls / C
    by_hand = -(smoothed * torch.log_softmax(logits, 1)).sum(1).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


# -- the preview -----------------------------------------------------------------------------
def label_weights(text):
    return [float(part.split()[0]) for part in text.split(" + ")]


def test_preview_mixed_examples_mix_the_images_and_label_them():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    spec = AugmentSpec.from_dict({"mixup": {"alpha": 0.4, "p": 0.5}, "cutmix": {"alpha": 1.0, "p": 0.5}})
    examples = preview_mixed(images, [0, 1, 1], ["circle", "star"], spec, seed=0, n=6)
    assert len(examples) == 6
    for img, text in examples:
        assert img.dtype == np.uint8 and img.shape == (8, 8, 3)
        assert math.isclose(sum(label_weights(text)), 1.0)
        assert "circle" in text or "star" in text
    # The first example is MixUp of image 0 with image 1 (the next of another class).
    lam = label_weights(examples[0][1])[0]
    expected = lam * images[0].astype(float) + (1 - lam) * images[1].astype(float)
    assert np.abs(examples[0][0] - expected).max() <= 0.005 * 255 + 0.5
    assert preview_mixed(images, [0, 1, 1], ["circle", "star"], spec, seed=0, n=6)[3][1] == examples[3][1]


def test_preview_modes_alternate_as_the_p_say():
    both = AugmentSpec.from_dict({"mixup": {"p": 0.5}, "cutmix": {"p": 0.5}})
    assert preview_modes(both, 4) == ["mixup", "cutmix", "mixup", "cutmix"]
    mostly_cutmix = AugmentSpec.from_dict({"mixup": {"p": 0.25}, "cutmix": {"p": 0.75}})
    assert preview_modes(mostly_cutmix, 8).count("cutmix") == 6
    assert preview_modes(AugmentSpec.from_dict({"mixup": {"p": 0.3}}), 3) == ["mixup"] * 3
    assert preview_modes(AugmentSpec.from_dict({"mixup": {"p": 0.0}}), 3) == []


@pytest.mark.parametrize(
    "lam, text",
    [
        (0.62, "0.62 a + 0.38 b"),
        (0.615, "0.61 a + 0.39 b"),
        (0.999, "1.00 a"),
        (0.001, "1.00 b"),
        (0.07, "0.07 a + 0.93 b"),
    ],
)
def test_mix_labels_sum_to_one(lam, text):
    assert mix_label(lam, "a", "b") == text


def test_preview_draws_mixed_rows(tmp_path):
    import cv2

    from augpipe.report import preview

    plain = preview(aug={"hflip": {"p": 0.5}}, out=tmp_path / "plain.png", n=2, variants=2)
    mixed = preview(aug={"hflip": {"p": 0.5}, "mixup": {"alpha": 0.4}}, out=tmp_path / "p.png", n=2, variants=2)
    h_plain, w_plain = cv2.imread(str(plain)).shape[:2]
    h, w = cv2.imread(str(mixed)).shape[:2]
    # One "mixed batch" row of one cell (1 in at 32 px images) and its 0.3 in caption band, at 100 dpi.
    assert w == w_plain and abs(h - (h_plain + 130)) <= 1


def test_preview_per_transform_gives_each_batch_op_a_column(tmp_path):
    import cv2

    from augpipe.report import preview

    path = preview(
        aug={"hflip": {"p": 0.5}, "mixup": {"p": 0.5}, "cutmix": {"p": 0.5}},
        out=tmp_path / "ops.png",
        n=1,
        per_transform=True,
    )
    h, w = cv2.imread(str(path)).shape[:2]
    assert abs(w - (120 + 4 * 100)) <= 1 and abs(h - (30 + 130)) <= 1
