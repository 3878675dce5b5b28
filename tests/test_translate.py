"""``translate`` (pad, then a window at a random integer offset) and the alternate flip, on both
backends: the same meaning, seeded, validated, and shown in the preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from augpipe.augment.cpu import build_train_transform, load_pipeline, save_pipeline
from augpipe.augment.device import DeviceAugment
from augpipe.augment.spec import PRESETS, AugmentSpec, alternate_flip, alternate_flips
from augpipe.data.images import ImageStore
from augpipe.data.loader import AugmentedImages, EpochLoader
from augpipe.errors import ConfigError

RAW = {"mean": [0.0, 0.0, 0.0], "std": [1 / 255] * 3}  # "normalise" to the 0..255 pixel scale
N = 4000
SIDE = 12


def spec_of(**ops) -> AugmentSpec:
    return AugmentSpec.from_dict({"normalize": RAW, **ops})


def pattern(side=SIDE, seed=0) -> np.ndarray:
    # random pixels: no two windows of its padded copy are alike, so a window names its offset
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def padded(img, pad, mode, fill):
    """The padded image the spec means: numpy's "reflect" is cv2's BORDER_REFLECT_101 and
    torch's "reflect" (the edge pixel not repeated)."""
    if mode == "reflect":
        return np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out = np.empty((img.shape[0] + 2 * pad, img.shape[1] + 2 * pad, 3), np.uint8)
    out[:] = np.asarray(fill, dtype=np.uint8)
    out[pad : pad + img.shape[0], pad : pad + img.shape[1]] = img
    return out


def windows(img, pad, mode, fill, unique=True) -> dict[bytes, tuple[int, int]]:
    """Every window of the padded image, by its bytes -> its offset (dx, dy) in [-pad, pad]."""
    big, h, w = padded(img, pad, mode, fill), img.shape[0], img.shape[1]
    out = {
        big[pad + dy : pad + dy + h, pad + dx : pad + dx + w].tobytes(): (dx, dy)
        for dy in range(-pad, pad + 1)
        for dx in range(-pad, pad + 1)
    }
    assert len(out) == (2 * pad + 1) ** 2 or not unique
    return out


def cpu_outputs(spec, img, n=N, seed=3) -> np.ndarray:
    t = build_train_transform(spec, img.shape[0], native=img.shape[:2], seed=seed)
    return np.stack([t(image=img)["image"] for _ in range(n)])


def device_outputs(spec, img, n=N, seed=3, **kw) -> np.ndarray:
    aug = DeviceAugment(spec, img.shape[0], generator_seed=seed)
    batch = torch.from_numpy(img).permute(2, 0, 1)[None].expand(n, -1, -1, -1)
    out = aug(batch, **kw).permute(0, 2, 3, 1).numpy()
    pixels = np.rint(out)
    assert np.abs(out - pixels).max() < 1e-3  # the device works in float: whole pixel values still
    return pixels.astype(np.uint8)


def offsets_of(outputs, img, pad, mode, fill, unique=True) -> list[tuple[int, int]]:
    known = windows(img, pad, mode, fill, unique)
    found = [known.get(o.tobytes()) for o in outputs]
    assert None not in found, "an output is not a window of the padded image"
    return found


def chi_square_uniform(found, pad) -> tuple[float, float]:
    cells = [(dx, dy) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)]
    counts = np.array([sum(1 for f in found if f == c) for c in cells], float)
    expected = len(found) / len(cells)
    stat = float(((counts - expected) ** 2 / expected).sum())
    return stat, float(chi2.ppf(0.999, len(cells) - 1))


BACKENDS = {"cpu": cpu_outputs, "device": device_outputs}


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize(
    "pad, mode, fill", [(2, "reflect", 0), (2, "constant", 0), (1, "constant", [10, 200, 30]), (3, "reflect", 0)]
)
def test_each_output_is_a_window_of_the_padded_image_at_a_uniform_offset(backend, pad, mode, fill):
    img = pattern()
    spec = spec_of(translate={"pad": pad, "mode": mode, "fill": fill})
    found = offsets_of(BACKENDS[backend](spec, img), img, pad, mode, fill)
    stat, bound = chi_square_uniform(found, pad)
    assert stat < bound, (stat, bound)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_translate_p_leaves_the_other_images_in_place(backend):
    img, pad, p = pattern(), 2, 0.3
    found = offsets_of(BACKENDS[backend](spec_of(translate={"pad": pad, "p": p}), img), img, pad, "reflect", 0)
    centred = sum(1 for f in found if f == (0, 0)) / len(found)
    expected = (1 - p) + p / 25
    assert abs(centred - expected) < 4 * np.sqrt(expected * (1 - expected) / len(found)), centred
    moved = [f for f in found if f != (0, 0)]
    stat, bound = chi_square_uniform(moved + [(0, 0)] * round(len(moved) / 24), pad)
    assert stat < bound, (stat, bound)


def test_device_output_is_the_flip_of_the_window_it_reports():
    """Flip after translate, as the op order says; the device fuses the flip into the crop's
    resample and mirrors the offset: the result must be the flipped window at the reported one."""
    img, pad = pattern(), 2
    spec = spec_of(translate={"pad": pad}, hflip={"p": 0.5})
    aug = DeviceAugment(spec, SIDE, generator_seed=5)
    out = aug(torch.from_numpy(img).permute(2, 0, 1)[None].expand(400, -1, -1, -1))
    out = np.rint(out.permute(0, 2, 3, 1).numpy()).astype(np.uint8)
    big = padded(img, pad, "reflect", 0)
    flips, offsets = aug.last_params["flip"].numpy(), aug.last_params["translate"].numpy()
    assert 100 < flips.sum() < 300
    for o, flip, (dx, dy) in zip(out, flips, offsets):
        window = big[pad + dy : pad + dy + SIDE, pad + dx : pad + dx + SIDE]
        assert np.array_equal(o, window[:, ::-1] if flip else window)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_flip_then_translate_is_uniform_over_offsets_and_flips_on_both_backends(backend):
    img, pad = pattern(), 1
    spec = spec_of(translate={"pad": pad}, hflip={"p": 0.5})
    known = windows(img, pad, "reflect", 0)
    out = BACKENDS[backend](spec, img, n=2000)
    cells = []
    for o in out:
        plain, flipped = known.get(o.tobytes()), known.get(o[:, ::-1].tobytes())
        assert (plain is None) != (flipped is None)
        cells.append((plain, False) if plain is not None else (flipped, True))
    counts = np.unique(np.array([(dx, dy, f) for (dx, dy), f in cells]), axis=0, return_counts=True)[1]
    assert len(counts) == 18
    expected = len(cells) / 18
    assert ((counts - expected) ** 2 / expected).sum() < chi2.ppf(0.999, 17)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_translate_is_seeded(backend):
    img, spec = pattern(), spec_of(translate={"pad": 2}, hflip={"p": 0.5})
    a, b, c = (BACKENDS[backend](spec, img, n=50, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_constant_mode_works_on_images_smaller_than_the_pad():
    img = pattern(side=3)
    spec = spec_of(translate={"pad": 4, "mode": "constant", "fill": 9})
    for outputs in (cpu_outputs(spec, img, n=200), device_outputs(spec, img, n=200)):
        # windows wholly in the border are all alike: only "some window" can be checked
        offsets_of(outputs, img, 4, "constant", 9, unique=False)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"pad": -1}, "translate.pad must be a whole number of pixels >= 0, got -1"),
        ({"pad": 1.5}, "translate.pad must be a whole number of pixels >= 0, got 1.5"),
        ({"pad": True}, "translate.pad must be a whole number of pixels >= 0, got True"),
        ({"mode": "wrap"}, "translate.mode must be reflect or constant, got 'wrap'"),
        ({"p": 1.5}, "translate.p must be in [0, 1], got 1.5"),
        ({"p": -0.1}, "translate.p must be in [0, 1], got -0.1"),
        ({"fill": "random"}, "translate.fill must be a number or [r, g, b], got 'random'"),
        ({"fill": [1, 2]}, "translate.fill must be a number or [r, g, b], got [1, 2]"),
        ({"padd": 2}, "unknown key 'padd' in translate; did you mean 'pad'?"),
    ],
)
def test_bad_translate_settings_are_one_line_config_errors(bad, message):
    with pytest.raises(ConfigError) as err:
        AugmentSpec.from_dict({"translate": bad})
    assert str(err.value) == message


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"alternate": "yes"}, "hflip.alternate must be true or false, got 'yes'"),
        (
            {"alternate": True, "p": 0.8},
            "hflip.p must be 0.5 with alternate: true (half of the images are flipped each epoch), got 0.8",
        ),
        ({"alternat": True}, "unknown key 'alternat' in hflip; did you mean 'alternate'?"),
    ],
)
def test_bad_flip_settings_are_one_line_config_errors(bad, message):
    with pytest.raises(ConfigError) as err:
        AugmentSpec.from_dict({"hflip": bad})
    assert str(err.value) == message


def test_a_reflection_wider_than_the_image_is_refused_on_both_backends():
    spec = spec_of(translate={"pad": 8})
    with pytest.raises(ConfigError, match=r"translate.pad 8 is too large for 8x8 images in reflect mode"):
        build_train_transform(spec, 8)
    with pytest.raises(ConfigError, match=r"translate.pad 8 is too large for 8x8 images in reflect mode"):
        DeviceAugment(spec, 8)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_spec_order_round_trip_and_presets():
    spec = AugmentSpec.load("cifar-translate")
    assert spec.active_ops() == ["translate", "hflip"]
    assert (spec.translate.pad, spec.translate.mode, spec.hflip.alternate) == (2, "reflect", True)
    assert spec.crop is None and spec.color_jitter is None and spec.erase is None
    assert AugmentSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()
    full = AugmentSpec.from_dict({"crop": {}, "translate": {}, "hflip": {}, "color_jitter": {}, "erase": {}})
    assert full.active_ops() == ["crop", "translate", "hflip", "color_jitter", "erase"]
    for name in ("none", "light", "standard", "strong"):  # the earlier presets mean what they meant
        old = AugmentSpec.preset(name)
        assert old.translate is None and (old.hflip is None or not old.hflip.alternate)
        assert "translate" not in PRESETS[name]


def test_the_saved_pipeline_rebuilds_the_same_augmentation(tmp_path):
    img, spec = pattern(), AugmentSpec.preset("cifar-translate")
    t = build_train_transform(spec, SIDE, native=(SIDE, SIDE), seed=4)
    save_pipeline(t, tmp_path / "augment.yaml")
    back = load_pipeline(tmp_path / "augment.yaml")
    for pipeline in (t, back):
        pipeline.set_random_state(np.random.default_rng(1), __import__("random").Random(1))
    for k in range(20):
        assert np.array_equal(t(image=img, item=k, epoch=k)["image"], back(image=img, item=k, epoch=k)["image"])


# -- the alternate flip ----------------------------------------------------------------------
class Images:
    """The least an ImageStore needs: distinct random images held in memory."""

    def __init__(self, n, side=SIDE):
        self.arrays = np.random.default_rng(1).integers(0, 256, (n, side, side, 3), dtype=np.uint8)

    def __len__(self):
        return len(self.arrays)


def loader_of(n, transform=None, workers=0, batch=8):
    store, _ = ImageStore.build(Images(n))
    ds = AugmentedImages(store, np.arange(n), np.arange(n), transform)
    return store, EpochLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, seed=0)


def flipped_per_epoch(store, loader, augment=None, epochs=(1, 2)) -> list[dict[int, bool]]:
    """{item: flipped?} for each epoch, from the pixels (labels are the item indices)."""
    out = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        seen = {}
        for images, labels in loader:
            if augment is not None:
                assert torch.equal(loader.batch_items, labels)
                images = augment(images, items=loader.batch_items, epoch=loader.epoch)
                images = np.rint(images.permute(0, 2, 3, 1).numpy()).astype(np.uint8)
            else:
                images = images.permute(0, 2, 3, 1).numpy()
            for img, item in zip(images, labels.tolist()):
                original = store[item]
                assert item not in seen
                assert np.array_equal(img, original) or np.array_equal(img, original[:, ::-1])
                seen[item] = not np.array_equal(img, original)
        assert len(seen) == len(store)
        out.append(seen)
    return out


def check_alternates(per_epoch, n):
    first, second = per_epoch
    assert all(first[i] != second[i] for i in range(n))  # each image once each way
    assert 0.3 * n < sum(first.values()) < 0.7 * n  # about half of them flipped each epoch


@pytest.mark.parametrize("workers", [0, 1])
def test_over_two_epochs_every_image_is_seen_once_flipped_cpu(workers):
    n, spec = 48, spec_of(hflip={"alternate": True})
    store, loader = loader_of(n, build_train_transform(spec, SIDE, native=(SIDE, SIDE), seed=7), workers=workers)
    per_epoch = flipped_per_epoch(store, loader)
    check_alternates(per_epoch, n)
    flips = alternate_flips(np.arange(n), 1, 7)  # what the spec says, from the seed alone
    assert [per_epoch[0][i] for i in range(n)] == flips.tolist()


def test_over_two_epochs_every_image_is_seen_once_flipped_device():
    n, spec = 48, spec_of(hflip={"alternate": True})
    store, loader = loader_of(n)
    aug = DeviceAugment(spec, SIDE, generator_seed=99, flip_seed=7)
    per_epoch = flipped_per_epoch(store, loader, aug)
    check_alternates(per_epoch, n)
    # the same images as the CPU backend with the same seed
    _, cpu_loader = loader_of(n, build_train_transform(spec, SIDE, native=(SIDE, SIDE), seed=7))
    assert flipped_per_epoch(store, cpu_loader) == per_epoch


def test_the_flips_follow_the_epoch_not_the_loaders_history():
    """What resuming at epoch 3 needs: a fresh loader told the epoch flips as the running one did."""
    n, spec = 24, spec_of(hflip={"alternate": True})
    store, running = loader_of(n, build_train_transform(spec, SIDE, native=(SIDE, SIDE), seed=2))
    _, fresh = loader_of(n, build_train_transform(spec, SIDE, native=(SIDE, SIDE), seed=2))
    assert flipped_per_epoch(store, running, epochs=(1, 2, 3))[2] == flipped_per_epoch(store, fresh, epochs=(3,))[0]


def test_alternate_flip_on_the_device_without_the_items_is_a_config_error():
    aug = DeviceAugment(spec_of(hflip={"alternate": True}), SIDE)
    with pytest.raises(ConfigError, match="needs each batch's item indices and the epoch"):
        aug(torch.zeros(2, 3, SIDE, SIDE, dtype=torch.uint8))


def test_alternate_flips_is_half_and_seeded():
    items = np.arange(10_000)
    a = alternate_flips(items, 1, 0)
    assert abs(a.mean() - 0.5) < 0.02
    assert np.array_equal(alternate_flips(items, 2, 0), ~a) and np.array_equal(alternate_flips(items, 3, 0), a)
    assert not np.array_equal(alternate_flips(items, 1, 1), a)
    # the per-image form (the CPU backend's) is the same function
    for seed in (0, 7, -3, 2**40):
        assert [alternate_flip(i, 5, seed) for i in range(0, 10_000, 37)] == alternate_flips(
            np.arange(0, 10_000, 37), 5, seed
        ).tolist()


def test_preview_per_transform_has_a_translate_column(make_folder, tmp_path, monkeypatch):
    import augpipe.report as report

    make_folder(tmp_path / "ds", {"a": 2, "b": 2}, size=16)
    shown, draw = {}, report.grid_figure

    def grab(grid, titles, cell):
        shown.update(grid=grid, titles=titles)
        return draw(grid, titles, cell)

    monkeypatch.setattr(report, "grid_figure", grab)
    report.preview(tmp_path / "ds", n=2, per_transform=True, aug="cifar-translate", out=tmp_path / "ops.png")
    assert shown["titles"] == ["original", "translate", "hflip"]
    assert (tmp_path / "ops.png").is_file()
    for _, (img, moved, flipped) in shown["grid"]:
        assert offsets_of([moved], img, 2, "reflect", 0)
        assert np.array_equal(flipped, img[:, ::-1])  # shown forced: the flip itself


@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_hands_the_device_backend_each_batchs_items_and_the_epoch(tmp_path, monkeypatch):
    """The training run hands the device backend each batch's items and the epoch."""
    from conftest import colour_classes

    from augpipe.augment import device as device_module
    from augpipe.training.run import train

    data = colour_classes(tmp_path / "data", per_class=8, size=16)
    seen = []
    real = device_module.DeviceAugment.forward

    def recording(self, images, items=None, epoch=None):
        seen.append((epoch, items.tolist()))
        return real(self, images, items=items, epoch=epoch)

    monkeypatch.setattr(device_module.DeviceAugment, "forward", recording)
    result = train(
        data=str(data),
        plugin="mlp",
        model="mlp_small",
        epochs=2,
        batch_size=4,
        workers=0,
        threads=1,
        aug="cifar-translate",
        aug_device="gpu",
        progress=False,
        out=str(tmp_path / "runs"),
        name="d",
    )
    assert result.summary["stop_reason"] == "completed"
    by_epoch = {}
    for epoch, items in seen:
        by_epoch.setdefault(epoch, []).extend(items)
    assert sorted(by_epoch) == [1, 2]
    assert sorted(by_epoch[1]) == sorted(by_epoch[2])  # every training image, once an epoch
