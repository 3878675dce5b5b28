"""Each augmentation does what its name says; specs and pipelines round-trip; seeds repeat."""

from __future__ import annotations

import numpy as np
import pytest

from augpipe.augment.cpu import (
    build_eval_transform,
    build_train_transform,
    load_pipeline,
    save_pipeline,
    seed_transform,
)
from augpipe.augment.spec import PRESETS, AugmentSpec
from augpipe.errors import ConfigError


def image(size=32, low=1, high=256, seed=0, channels=3):
    h, w = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed).integers(low, high, (h, w, channels), dtype=np.uint8)


def smooth_image(size=32):
    """A colourful picture with structure (gradients), so that colour ops have something to move."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    return np.stack([40 + 170 * x, 60 + 120 * y, 200 - 150 * x * y], axis=-1).astype(np.uint8)


def only(op: str, size=None, **params):
    d = {op: {**params}}
    if size is not None:
        d["size"] = size
    return AugmentSpec.from_dict(d)


def outputs(t, img, n):
    return [t(image=img)["image"] for _ in range(n)]


# -- each op -------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [None, (24, 24)])
def test_flip_mirrors(native):
    img = image(24)
    t = build_train_transform(only("hflip", p=1.0), 24, native=native)
    for out in outputs(t, img, 3):
        assert np.array_equal(out, img[:, ::-1])


def test_flip_probability_is_used():
    img = image(8)
    t = build_train_transform(only("hflip", p=0.5), 8, native=(8, 8), seed=0)
    flipped = [np.array_equal(o, img[:, ::-1]) for o in outputs(t, img, 400)]
    unchanged = [np.array_equal(o, img) for o in outputs(t, img, 400)]
    assert 0.4 < np.mean(flipped) < 0.6
    assert 0.4 < np.mean(unchanged) < 0.6
    never = build_train_transform(only("hflip", p=0.0), 8, native=(8, 8))
    assert all(np.array_equal(o, img) for o in outputs(never, img, 20))


@pytest.mark.parametrize("fill", [0, 255, [10, 20, 30]])
def test_erasing_fills_one_rectangle_with_the_fill_value(fill):
    size, scale = 64, (0.1, 0.3)
    img = image(size, low=1, high=255)  # no pixel equals either fill value
    t = build_train_transform(
        only("erase", p=1.0, scale=list(scale), ratio=[0.5, 2.0], fill=fill), size, native=(size, size), seed=3
    )
    for out in outputs(t, img, 30):
        filled = (out == fill).all(axis=-1)
        assert filled.any()
        rows, cols = np.flatnonzero(filled.any(axis=1)), np.flatnonzero(filled.any(axis=0))
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        box = np.zeros_like(filled)
        box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
        assert np.array_equal(filled, box)  # one solid rectangle
        assert np.array_equal(out[~box], img[~box])  # the rest untouched
        # The area is drawn from ``scale`` and the sides rounded to whole pixels.
        slack = (h + w) / 2 + 0.25
        assert scale[0] * size * size - slack <= h * w <= scale[1] * size * size + slack, (h, w)


def test_erasing_random_fill_is_not_constant():
    img = np.full((32, 32, 3), 7, np.uint8)
    t = build_train_transform(
        only("erase", p=1.0, scale=[0.2, 0.3], ratio=[0.5, 2.0], fill="random"), 32, native=(32, 32), seed=0
    )
    out = t(image=img)["image"]
    changed = (out != 7).any(axis=-1)
    assert changed.sum() > 0.15 * 32 * 32
    assert len(np.unique(out[changed].reshape(-1, 3), axis=0)) > 10


@pytest.mark.parametrize("shape, size", [((32, 32), 16), ((20, 30), 12), ((16, 16), 24), ((40, 24), 40)])
def test_crop_has_the_requested_size(shape, size):
    img = image(shape)
    t = build_train_transform(only("crop", p=1.0, scale=[0.2, 1.0]), size, native=shape, seed=1)
    outs = outputs(t, img, 20)
    assert all(o.shape == (size, size, 3) and o.dtype == np.uint8 for o in outs)
    assert len({o.tobytes() for o in outs}) > 15  # a random crop, not one fixed resize


def test_crop_probability_is_used():
    """Where the crop is skipped the image is resized whole; the crop must happen with its p,
    in the pipeline as built and in the pipeline saved and loaded again."""
    img = image(32, seed=4)
    spec = only("crop", p=0.3, scale=[0.3, 0.6])  # never the whole picture
    plain = build_eval_transform(spec, 16, native=(32, 32))(image=img)["image"]
    t = build_train_transform(spec, 16, native=(32, 32), seed=0)
    cropped = np.mean([not np.array_equal(o, plain) for o in outputs(t, img, 2000)])
    assert 0.25 < cropped < 0.35, cropped


def test_brightness_moves_the_mean():
    img = smooth_image()
    t = build_train_transform(
        only("color_jitter", brightness=0.4, contrast=0, saturation=0, hue=0, p=1.0), 32, native=(32, 32), seed=0
    )
    means = np.array([o.mean() for o in outputs(t, img, 30)])
    assert np.abs(means - img.mean()).max() > 15
    assert means.std() > 5
    assert (means > img.mean() + 2).any() and (means < img.mean() - 2).any()  # both darker and brighter


def test_contrast_moves_the_spread():
    img = smooth_image()
    t = build_train_transform(
        only("color_jitter", brightness=0, contrast=0.4, saturation=0, hue=0, p=1.0), 32, native=(32, 32), seed=0
    )
    stds = np.array([o.astype(np.float32).std() for o in outputs(t, img, 30)])
    base = img.astype(np.float32).std()
    assert (stds > base * 1.05).any() and (stds < base * 0.95).any()


def test_saturation_moves_the_channel_spread():
    img = smooth_image()
    t = build_train_transform(
        only("color_jitter", brightness=0, contrast=0, saturation=0.6, hue=0, p=1.0), 32, native=(32, 32), seed=0
    )

    def chroma(x):
        return x.astype(np.float32).std(axis=-1).mean()

    spreads = np.array([chroma(o) for o in outputs(t, img, 30)])
    assert (spreads > chroma(img) * 1.1).any() and (spreads < chroma(img) * 0.9).any()


def test_jitter_with_p_zero_changes_nothing():
    img = smooth_image()
    t = build_train_transform(only("color_jitter", p=0.0), 32, native=(32, 32))
    assert all(np.array_equal(o, img) for o in outputs(t, img, 10))


# -- seeds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_same_seed_same_outputs_different_seed_different(preset):
    img = image(32)
    spec = AugmentSpec.preset(preset)
    a = outputs(build_train_transform(spec, 24, seed=5), img, 10)
    b = outputs(build_train_transform(spec, 24, seed=5), img, 10)
    c = outputs(build_train_transform(spec, 24, seed=6), img, 10)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # Reseeding replays the stream.
    t = build_train_transform(spec, 24, seed=0)
    seed_transform(t, 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, outputs(t, img, 10)))


# -- serialization -------------------------------------------------------------------------
@pytest.mark.parametrize("preset", list(PRESETS))
def test_spec_yaml_round_trip(tmp_path, preset):
    spec = AugmentSpec.preset(preset)
    spec.save(tmp_path / "spec.yaml")
    back = AugmentSpec.load(tmp_path / "spec.yaml")
    assert back == spec
    assert back.to_dict() == spec.to_dict()


def test_custom_spec_yaml_round_trip_gives_the_same_pipeline(tmp_path):
    spec = AugmentSpec.from_dict(
        {
            "size": 20,
            "crop": {"scale": [0.5, 0.9], "ratio": [0.8, 1.25], "p": 0.7},
            "hflip": {"p": 0.3},
            "color_jitter": {"brightness": 0.1, "contrast": 0.3, "saturation": 0.0, "hue": 0.02, "p": 0.5},
            "erase": {"scale": [0.05, 0.1], "ratio": [0.5, 2.0], "fill": "random", "p": 0.9},
            "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            "extra": [{"name": "GaussianBlur", "p": 0.5, "blur_limit": [3, 5]}],
        }
    )
    path = tmp_path / "custom.yml"
    spec.save(path)
    back = AugmentSpec.load(str(path))
    assert back == spec
    img = image(32)
    a = outputs(build_train_transform(spec, 20, native=(32, 32), seed=9), img, 8)
    b = outputs(build_train_transform(back, 20, native=(32, 32), seed=9), img, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize(
    "spec",
    [
        AugmentSpec.preset("standard"),
        AugmentSpec.preset("strong"),
        AugmentSpec.from_dict({"crop": {"p": 0.3, "scale": [0.3, 0.6]}, "hflip": {"p": 0.5}}),
        AugmentSpec.from_dict({"hflip": {"p": 0.5}, "extra": [{"name": "GaussianBlur", "p": 0.5}]}),
    ],
    ids=["standard", "strong", "crop-p0.3", "extra"],
)
def test_albumentations_pipeline_round_trip(tmp_path, spec):
    img = image(32)
    t = build_train_transform(spec, 16, native=(32, 32), seed=4)
    save_pipeline(t, tmp_path / "pipeline.yaml")
    loaded = load_pipeline(tmp_path / "pipeline.yaml")
    seed_transform(loaded, 4)
    fresh = build_train_transform(spec, 16, native=(32, 32), seed=4)
    a, b = outputs(fresh, img, 200), outputs(loaded, img, 200)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_load_pipeline_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such pipeline file"):
        load_pipeline(tmp_path / "absent.yaml")


# -- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "d, message",
    [
        ({"hflp": {"p": 1}}, "unknown key 'hflp' in augmentation spec; did you mean 'hflip'?"),
        ({"colour_jitter": {}}, "did you mean 'color_jitter'?"),
        ({"crop": {"scal": [0.2, 1.0]}}, "unknown key 'scal' in crop; did you mean 'scale'?"),
        ({"erase": {"probability": 0.5}}, "unknown key 'probability' in erase"),
        ({"zzz": 1}, "unknown key 'zzz' in augmentation spec .valid: size, crop"),
    ],
)
def test_unknown_keys_rejected_with_a_suggestion(d, message):
    with pytest.raises(ConfigError, match=message):
        AugmentSpec.from_dict(d)


@pytest.mark.parametrize(
    "d, message",
    [
        ({"size": 0}, "size must be a positive integer"),
        ({"size": 12.5}, "size must be a positive integer"),
        ({"hflip": {"p": 1.5}}, r"hflip.p must be in \[0, 1\]"),
        ({"hflip": {"p": "high"}}, r"hflip.p must be"),
        ({"crop": {"scale": 0.5}}, "crop.scale must be"),
        ({"crop": {"scale": [0.5]}}, "crop.scale must be"),
        ({"crop": {"scale": [0.9, 0.5]}}, "crop.scale must be"),
        ({"crop": {"scale": ["a", "b"]}}, "crop.scale must be"),
        ({"erase": {"ratio": [0, 2]}}, "erase.ratio must be"),
        ({"erase": {"fill": "grey"}}, "erase.fill must be"),
        ({"color_jitter": {"brightness": 1.5}}, "color_jitter.brightness"),
        ({"color_jitter": {"hue": "x"}}, "color_jitter.hue"),
        ({"normalize": {"std": [0.2, 0.2, 0]}}, "positive standard deviations"),
        ({"hflip": 3}, "hflip must be a mapping"),
        ({"extra": [{"p": 0.5}]}, "needs a name"),
    ],
)
def test_bad_values_rejected(d, message):
    with pytest.raises(ConfigError, match=message):
        AugmentSpec.from_dict(d)


def test_unknown_extra_transform():
    spec = AugmentSpec.from_dict({"extra": [{"name": "NoSuchBlur"}]})
    with pytest.raises(ConfigError, match="unknown augmentation 'NoSuchBlur'"):
        build_train_transform(spec, 16)
    spec = AugmentSpec.from_dict({"extra": [{"name": "GaussianBlur", "sigma": 3}]})
    with pytest.raises(ConfigError, match="GaussianBlur"):
        build_train_transform(spec, 16)


def test_spec_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such augmentation spec file"):
        AugmentSpec.load(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("crop: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        AugmentSpec.load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        AugmentSpec.load(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="unknown augmentation 'standrd'"):
        AugmentSpec.load("standrd")


# -- presets -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_load_and_build(name):
    spec = AugmentSpec.preset(name)
    assert spec == AugmentSpec.load(name) == AugmentSpec.from_dict(PRESETS[name])
    t = build_train_transform(spec, 16, seed=0)
    assert all(o.shape == (16, 16, 3) and o.dtype == np.uint8 for o in outputs(t, image(20), 5))


def test_preset_contents():
    assert AugmentSpec.load(None) == AugmentSpec.preset("standard")
    assert AugmentSpec.preset("none").active_ops() == []
    assert AugmentSpec.preset("light").active_ops() == ["crop", "hflip"]
    std = AugmentSpec.preset("standard")
    assert std.active_ops() == ["crop", "hflip", "color_jitter", "erase"]
    assert std.crop.scale == (0.35, 1.0) and std.erase.p == 0.25 and std.color_jitter.p == 0.8
    assert AugmentSpec.preset("strong").erase.fill == "random"
    with pytest.raises(ConfigError, match="choose from none, light, standard, strong"):
        AugmentSpec.preset("heavy")


def test_normalize_in_the_pipeline():
    spec = AugmentSpec.from_dict({"normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]}})
    img = image(8)
    out = build_eval_transform(spec, 8, native=(8, 8), normalize=True)(image=img)["image"]
    expected = (img / 255.0 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.5])
    assert out.dtype == np.float32 and np.allclose(out, expected, atol=1e-5)
