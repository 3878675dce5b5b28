"""The automatic policies (augment/policies.py): what they sample, against torchvision's own
lists and ops, and that they run, repeat, save and load as Albumentations transforms."""

from __future__ import annotations

import math
import random
from collections import Counter
from types import SimpleNamespace

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.transforms import InterpolationMode
from torchvision.transforms import autoaugment as tva

from augpipe.augment import policies as P
from augpipe.augment.cpu import seed_transform
from augpipe.errors import ConfigError

GEOMETRIC = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}


def smooth_image(h=32, w=32, seed=0) -> np.ndarray:
    """Structured pixels (gradients plus a little noise): ops like equalize and sharpen act on it
    as on a photo, and a shift or rotation visibly moves it."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 6) % 256, (yy * 7) % 256, ((xx + yy) * 3) % 256], -1)
    noise = np.random.default_rng(seed).integers(-20, 20, img.shape)
    return cv2.GaussianBlur(np.clip(img + noise, 0, 255).astype(np.uint8), (3, 3), 0)


def torchvision_op(img: np.ndarray, op: str, magnitude: float) -> np.ndarray:
    t = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    out = tva._apply_op(t, op, float(magnitude), interpolation=InterpolationMode.NEAREST, fill=None)
    return out.permute(1, 2, 0).numpy()


def seeded(transform, seed=0) -> A.Compose:
    compose = A.Compose([transform])
    seed_transform(compose, seed)
    return compose


def torchvision_space(name: str, bins: int, shape=(32, 32)) -> dict:
    if name == "trivial_augment":
        return tva.TrivialAugmentWide()._augmentation_space(bins)
    if name == "rand_augment":
        return tva.RandAugment()._augmentation_space(bins, shape)
    return tva.AutoAugment()._augmentation_space(bins, shape)


# -- what is sampled -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, transform",
    [("trivial_augment", P.TrivialAugmentWideTransform()), ("rand_augment", P.RandAugmentTransform(n=2, m=9))],
)
def test_every_op_of_the_space_is_drawn_with_torchvision_magnitudes(name, transform):
    space = torchvision_space(name, 31, (24, 40))
    rng = random.Random(0)
    drawn: dict[str, set[float]] = {}
    for _ in range(3000):
        for step in transform.sample(rng, (24, 40)).steps:
            drawn.setdefault(step.op, set()).add(round(step.magnitude, 4))
    assert set(drawn) == set(space)
    for op, (magnitudes, signed) in space.items():
        if magnitudes.ndim == 0:
            assert drawn[op] == {0.0}
            continue
        allowed = {round(float(v), 4) for v in magnitudes}
        allowed |= {-v for v in allowed} if signed else set()
        assert drawn[op] <= allowed, op
        if signed:  # both signs come up
            assert min(drawn[op]) < 0 < max(drawn[op]), op
    if name == "trivial_augment":  # the magnitude bin is uniform: all 31 reached
        assert len({abs(v) for v in drawn["Rotate"]}) == 31


@pytest.mark.parametrize("policy", P.AUTO_AUGMENT_POLICIES)
def test_auto_augment_reaches_every_sub_policy_and_applies_each_op_with_its_probability(policy):
    reference = tva.AutoAugment(tva.AutoAugmentPolicy(policy)).policies
    assert [tuple(map(tuple, sub)) for sub in reference] == [
        tuple(map(tuple, sub)) for sub in P.AUTO_AUGMENT_SUBPOLICIES[policy]
    ]
    space = torchvision_space("auto_augment", 10)
    transform = P.AutoAugmentTransform(policy=policy)
    rng = random.Random(1)
    picked, applied = Counter(), Counter()
    for _ in range(6000):
        plan = transform.sample(rng, (32, 32))
        i, *ran = plan.choice
        picked[i] += 1
        assert len(ran) == len(plan.steps)
        for position, step in zip(ran, plan.steps):
            op, _, level = reference[i][position]
            applied[i, position] += 1
            expected = 0.0 if level is None else float(space[op][0][level])
            assert step.op == op and abs(step.magnitude) == pytest.approx(expected, abs=1e-4)
    assert set(picked) == set(range(25))
    for i, sub in enumerate(reference):
        for position, (op, prob, _) in enumerate(sub):
            n = picked[i]
            # Binomial(n, prob) within 5 standard deviations (plus one for rounding)
            assert abs(applied[i, position] - n * prob) <= 5 * math.sqrt(n * prob * (1 - prob)) + 1, (i, op)
            assert (applied[i, position] > 0) == (prob > 0), (i, op)


def test_rand_augment_magnitude_scales_from_nothing_to_the_maximum():
    img = smooth_image()
    lowest = P.RandAugmentTransform(n=1, m=0)
    highest = P.RandAugmentTransform(n=1, m=30)
    rng = random.Random(0)
    low_plans = [lowest.sample(rng).steps[0] for _ in range(800)]
    high_plans = [highest.sample(rng).steps[0] for _ in range(800)]
    assert {s.magnitude for s in low_plans if s.op == "Rotate"} == {0.0}
    assert {abs(s.magnitude) for s in high_plans if s.op == "Rotate"} == {30.0}
    shifts = {abs(s.magnitude) for s in high_plans if s.op == "TranslateX"}
    assert len(shifts) == 1 and shifts.pop() == pytest.approx(150 / 331 * 32)

    # Through the pipeline: at m=0 every geometric op leaves the image exactly as it was; at
    # m=30 a rotation turns it by 30 degrees one way or the other, as torchvision does.
    seen = set()
    for transform, m in ((lowest, 0), (highest, 30)):
        compose = seeded(transform, seed=m)
        for _ in range(300):
            out = compose(image=img)["image"]
            (step,) = transform.params["plan"].steps
            if step.op in GEOMETRIC and m == 0:
                seen.add("still")
                np.testing.assert_array_equal(out, img)
            if step.op == "Rotate" and m == 30:
                seen.add("turned")
                assert not np.array_equal(out, img)
                np.testing.assert_array_equal(out, torchvision_op(img, "Rotate", step.magnitude))
    assert seen == {"still", "turned"}


# -- the ops themselves, against torchvision's -------------------------------------------------
OP_CASES = [
    ("ShearX", 0.3),
    ("ShearX", -0.99),
    ("ShearY", 0.27),
    ("ShearY", -0.5),
    ("TranslateX", 14.5),
    ("TranslateX", -32.0),
    ("TranslateY", 9.0),
    ("TranslateY", -13.6),
    ("Rotate", 30.0),
    ("Rotate", -9.0),
    ("Brightness", 0.9),
    ("Brightness", -0.5),
    ("Color", 0.9),
    ("Color", -0.9),
    ("Contrast", 0.9),
    ("Contrast", -0.9),
    ("Sharpness", 0.99),
    ("Sharpness", -0.9),
    ("Posterize", 4),
    ("Posterize", 2),
    ("Solarize", 128.0),
    ("Solarize", 255.0),
    ("Solarize", 178.5),
    ("AutoContrast", 0.0),
    ("Equalize", 0.0),
    ("Invert", 0.0),
    ("Identity", 0.0),
]


@pytest.mark.parametrize("op, magnitude", OP_CASES)
def test_each_op_matches_torchvision(op, magnitude):
    img = smooth_image(24, 40, seed=3)
    transform = P.AutoAugmentTransform()
    ours = transform.apply(img, plan=P.Plan((P.Step(op, magnitude),), (0,)))
    reference = torchvision_op(img, op, magnitude)
    assert ours.shape == img.shape and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - reference.astype(int))
    if op in GEOMETRIC:
        # nearest-neighbour sampling: a pixel may round the other way at an exact half
        assert (diff.max(-1) > 0).mean() <= 0.01
    elif op == "Equalize":
        assert diff.mean() <= 3 and diff.max() <= 8  # Albumentations' "pil" mode is one bin off PIL's
    else:
        assert diff.max() <= 2 and diff.mean() <= 1.0
    assert np.array_equal(ours, img) == np.array_equal(reference, img)  # changed where torchvision changes it


@pytest.mark.parametrize("op", ["Brightness", "Posterize", "Solarize"])
def test_lookup_tables_give_what_the_albumentations_function_gives(op):
    import albumentations.augmentations.pixel.functional as fpixel

    img = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    transform = P.TrivialAugmentWideTransform()
    direct = {
        "Brightness": lambda m: fpixel.adjust_brightness_torchvision(img, 1 + m),
        "Posterize": lambda m: fpixel.posterize(img, int(m)),
        "Solarize": lambda m: fpixel.solarize(img, m / 255),
    }[op]
    r = P._WIDE_SPACE[op]
    for m in P._magnitudes(r, 31) + tuple(-v for v in P._magnitudes(r, 31) if r.signed):
        out = transform.apply(img, plan=P.Plan((P.Step(op, m),), (0,)))
        np.testing.assert_array_equal(out, direct(m), err_msg=f"{op} {m}")


def test_geometric_fill_is_zero_by_default_and_can_be_set():
    img = np.full((8, 12, 3), 200, np.uint8)
    shift = P.Plan((P.Step("TranslateX", 5.0),), (0,))
    assert (P.TrivialAugmentWideTransform().apply(img, plan=shift)[:, :5] == 0).all()
    out = P.TrivialAugmentWideTransform(fill=128).apply(img, plan=shift)
    assert (out[:, :5] == 128).all() and (out[:, 5:] == 200).all()


# -- the transform in a pipeline -----------------------------------------------------------------
ALL_TRANSFORMS = [
    ("trivial_augment", P.TrivialAugment()),
    ("rand_augment", P.RandAugment()),
    ("rand_augment", P.RandAugment(n=3, m=30)),
    *[("auto_augment", P.AutoAugment(policy=p)) for p in P.AUTO_AUGMENT_POLICIES],
]


@pytest.mark.parametrize("name, op", ALL_TRANSFORMS)
@pytest.mark.parametrize("shape", [(32, 32, 3), (40, 24, 3), (24, 40, 3)])
def test_output_keeps_shape_and_dtype_and_the_seed_repeats_it(name, op, shape):
    images = [smooth_image(*shape[:2], seed=s) for s in range(30)]

    def run(seed):
        compose = seeded(P.policy_transform(name, op), seed)
        return [compose(image=img)["image"] for img in images]

    first, again, other = run(0), run(0), run(1)
    for out in first:
        assert out.shape == shape and out.dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert not all(np.array_equal(a, img) for a, img in zip(first, images))


def test_p_is_the_chance_of_running_the_policy():
    img = smooth_image()
    never = seeded(P.policy_transform("trivial_augment", P.TrivialAugment(p=0.0)))
    assert all(np.array_equal(never(image=img)["image"], img) for _ in range(20))
    assert P.policy_transform("rand_augment", P.RandAugment(p=0.3)).p == 0.3
    assert P.policy_transform("auto_augment").policy == "imagenet"  # the published default


@pytest.mark.parametrize(
    "name, op",
    ALL_TRANSFORMS[:2]
    + [
        ("rand_augment", P.RandAugment(n=3, m=5, num_magnitude_bins=11, p=0.7)),
        ("auto_augment", P.AutoAugment("svhn", p=0.9)),
    ],
)
def test_save_and_load_round_trip(tmp_path, name, op):
    transform = P.policy_transform(name, op, fill=128)
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), transform])
    path = tmp_path / "pipeline.yaml"
    A.save(pipeline, str(path), data_format="yaml")
    loaded = A.load(str(path), data_format="yaml")
    twin = loaded.transforms[1]
    assert type(twin) is type(transform)
    assert twin.get_transform_init_args() == transform.get_transform_init_args()
    assert twin.p == transform.p
    text = path.read_text()
    assert f"__class_fullname__: augpipe.augment.policies.{type(transform).__name__}" in text
    assert all(f"{arg}:" in text for arg in ("p", "fill", *transform.get_transform_init_args_names()))
    seed_transform(pipeline, 5)
    seed_transform(loaded, 5)
    for s in range(20):
        img = smooth_image(seed=s)
        np.testing.assert_array_equal(pipeline(image=img)["image"], loaded(image=img)["image"])


# -- validation ----------------------------------------------------------------------------------
BAD = [
    ("rand_augment", P.RandAugment(n=0), "rand_augment.n"),
    ("rand_augment", P.RandAugment(n=1.5), "rand_augment.n"),
    ("rand_augment", P.RandAugment(n=True), "rand_augment.n"),
    ("rand_augment", P.RandAugment(n="2"), "rand_augment.n"),
    ("rand_augment", P.RandAugment(m=31), "rand_augment.m must be a whole number in 0..30"),
    ("rand_augment", P.RandAugment(m=5, num_magnitude_bins=5), "0..4"),
    ("rand_augment", P.RandAugment(m=-1), "rand_augment.m"),
    ("rand_augment", P.RandAugment(m="9"), "rand_augment.m"),
    ("rand_augment", P.RandAugment(m=9.0), "rand_augment.m"),
    ("rand_augment", P.RandAugment(num_magnitude_bins=1, m=0), "rand_augment.num_magnitude_bins"),
    ("trivial_augment", P.TrivialAugment(num_magnitude_bins=1), "trivial_augment.num_magnitude_bins"),
    ("trivial_augment", P.TrivialAugment(num_magnitude_bins=31.0), "trivial_augment.num_magnitude_bins"),
    ("trivial_augment", P.TrivialAugment(num_magnitude_bins="31"), "trivial_augment.num_magnitude_bins"),
    ("trivial_augment", P.TrivialAugment(num_magnitude_bins=False), "trivial_augment.num_magnitude_bins"),
    ("trivial_augment", P.TrivialAugment(p=1.5), "trivial_augment.p must be in [0, 1], got 1.5"),
    ("rand_augment", P.RandAugment(p=-0.1), "rand_augment.p"),
    ("auto_augment", P.AutoAugment(p="1"), "auto_augment.p must be in [0, 1], got '1'"),
    ("auto_augment", P.AutoAugment(p=True), "auto_augment.p"),
    ("auto_augment", P.AutoAugment(p=float("nan")), "auto_augment.p"),
    ("auto_augment", P.AutoAugment(policy=10), "auto_augment.policy must be one of cifar10, imagenet, svhn"),
    (
        "auto_augment",
        P.AutoAugment(policy="zzz"),
        "unknown auto_augment policy 'zzz' (choose from cifar10, imagenet, svhn)",
    ),
]


@pytest.mark.parametrize("name, op, message", BAD)
def test_validate_policy_rejects_bad_values(name, op, message):
    with pytest.raises(ConfigError) as err:
        validate_then_build(name, op)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def validate_then_build(name, op):
    P.validate_policy(name, op)
    return P.policy_transform(name, op)


def test_did_you_mean():
    with pytest.raises(
        ConfigError,
        match=r"^unknown auto_augment policy 'cifar' \(did you mean cifar10\? "
        r"choose from cifar10, imagenet, svhn\)$",
    ):
        P.validate_policy("auto_augment", P.AutoAugment(policy="cifar"))
    with pytest.raises(ConfigError, match="did you mean imagenet"):
        P.policy_transform("auto_augment", P.AutoAugment(policy="ImageNet"))
    with pytest.raises(ConfigError, match="did you mean rand_augment"):
        P.validate_policy("rand_augmnet", P.RandAugment())


def test_valid_values_pass_and_any_object_with_the_fields_will_do():
    for name, op in ALL_TRANSFORMS:
        P.validate_policy(name, op)
    P.validate_policy("rand_augment", P.RandAugment(n=1, m=1, num_magnitude_bins=2, p=0))
    # the spec's own dataclasses have the same fields
    P.validate_policy("rand_augment", SimpleNamespace(n=2, m=9, num_magnitude_bins=31, p=1.0))
    with pytest.raises(TypeError):
        P.validate_policy("rand_augment", SimpleNamespace(n=2, p=1.0))


# -- the table -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, op", ALL_TRANSFORMS)
def test_policy_table_names_each_op_and_its_albumentations_function(name, op):
    rows = P.policy_table(name, op)
    assert all(set(row) == {"op", "albumentations", "magnitude", "signed"} for row in rows)
    ops = [row["op"] for row in rows]
    if name == "auto_augment":
        assert set(ops) == {step[0] for sub in P.AUTO_AUGMENT_SUBPOLICIES[op.policy] for step in sub}
    else:
        assert set(ops) == set(torchvision_space(name, 31))
    by_op = {row["op"]: row for row in rows}
    if "Rotate" in by_op:
        top = {"trivial_augment": "135", "rand_augment": "30", "auto_augment": "30"}[name]
        assert f"0 .. {top} degrees" in by_op["Rotate"]["magnitude"] and by_op["Rotate"]["signed"]
    if name == "rand_augment":
        assert f"at m={op.m}: {op.m:g}" in by_op["Rotate"]["magnitude"]  # 30 degrees over bins 0..30
    assert all(row["albumentations"] for row in rows)


# -- any valid entry, any small image ------------------------------------------------------------
@st.composite
def policy_entries(draw):
    name = draw(st.sampled_from(sorted(P.POLICIES)))
    p = draw(st.floats(0, 1))
    if name == "auto_augment":
        return name, P.AutoAugment(policy=draw(st.sampled_from(P.AUTO_AUGMENT_POLICIES)), p=p)
    bins = draw(st.integers(2, 40))
    if name == "trivial_augment":
        return name, P.TrivialAugment(num_magnitude_bins=bins, p=p)
    return name, P.RandAugment(
        n=draw(st.integers(1, 4)), m=draw(st.integers(0, bins - 1)), num_magnitude_bins=bins, p=p
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entry=policy_entries(),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    fill=st.sampled_from([0, 128, (10, 20, 30)]),
)
def test_any_valid_entry_runs_on_any_small_image(entry, h, w, seed, fill):
    name, op = entry
    compose = seeded(P.policy_transform(name, op, fill=fill), seed)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for _ in range(8):
        out = compose(image=img)["image"]
        assert out.shape == (h, w, 3) and out.dtype == np.uint8
