"""A spec in words: what each op does, in the order it runs, with every parameter (defaults
filled in), then the batch ops, the normalisation, and the YAML that reproduces the spec.
``augpipe preview --describe`` prints it; ``augpipe sweep --ablate`` takes its op order."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from augpipe.augment.spec import BATCH_OPS, POLICIES, SWITCH_PROB, AugmentSpec

# (the Albumentations class or what stands for it, what the op does) per op of the spec.
OP_TEXT = {
    "crop": (
        "RandomResizedCrop",
        ("cut a random region of `scale` of the area and aspect ratio in `ratio`, resized to the output side"),
    ),
    "translate": (
        "Pad + RandomCrop",
        (
            "pad `pad` px on every side and cut the original size back at a random "
            "offset: a shift of up to ±`pad` px on each axis"
        ),
    ),
    "hflip": ("HorizontalFlip", "mirror the image left to right"),
    "color_jitter": (
        "ColorJitter",
        (
            "scale brightness, contrast and saturation by factors drawn from "
            "[1 - v, 1 + v] and turn the hue by up to ±`hue` of the colour circle, "
            "in random order"
        ),
    ),
    "trivial_augment": (
        "TrivialAugmentWide",
        (
            "one op per image, drawn uniformly from the op table, at a "
            "magnitude drawn uniformly from the `num_magnitude_bins` bins, "
            "signed ops with a random sign"
        ),
    ),
    "rand_augment": (
        "RandAugment",
        (
            "`n` ops per image, drawn uniformly with replacement from the op table, each "
            "at magnitude bin `m` of `num_magnitude_bins`, signed ops with a random sign"
        ),
    ),
    "auto_augment": (
        "AutoAugment",
        (
            "one sub-policy of the `policy` table per image, each of its two ops applied "
            "with its own probability and magnitude"
        ),
    ),
    "erase": (
        "Erasing",
        ("fill a rectangle of `scale` of the area and aspect ratio in `ratio` with `fill` (random: noise)"),
    ),
    "mixup": (
        "MixUp",
        (
            "blend each image with a partner of the batch, x = lam x + (1 - lam) x', and its "
            "target likewise; lam ~ Beta(`alpha`, `alpha`), drawn once per batch"
        ),
    ),
    "cutmix": (
        "CutMix",
        (
            "paste a box of the partner image covering 1 - lam of the area; the targets are "
            "weighted by the areas; lam ~ Beta(`alpha`, `alpha`), drawn once per batch"
        ),
    ),
}


def op_sequence(spec: AugmentSpec) -> list[tuple[str, Any]]:
    """(label, op) for every op that is on, in running order: the per-image ops (the ``extra``
    transforms, each labelled by its name, run after the policies and before erase), then the
    batch ops. Two extras of one name are told apart as NAME, NAME_2, ..."""
    per_image = [n for n in spec.active_ops() if n not in BATCH_OPS]
    before_erase = [n for n in per_image if n != "erase"]
    seen: dict[str, int] = {}
    extras = []
    for entry in spec.extra:
        seen[entry["name"]] = seen.get(entry["name"], 0) + 1
        count = seen[entry["name"]]
        extras.append((entry["name"] if count == 1 else f"{entry['name']}_{count}", entry))
    out = [(n, getattr(spec, n)) for n in before_erase] + extras
    out += [(n, getattr(spec, n)) for n in per_image if n == "erase"]
    return out + [(n, getattr(spec, n)) for n in spec.batch_ops()]


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v) if v.is_integer() else f"{v:.6g}"
    return str(v)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in params.items()) or "no parameters"


def _chance(p: float) -> str:
    return "always" if p >= 1 else "never" if p <= 0 else f"with probability {_value(p)}"


def _op_lines(label: str, op) -> list[str]:
    if isinstance(op, dict):
        params = _extra_params(op)
        p = params.get("p")
        chance = (
            _chance(p) if isinstance(p, (int, float)) and not isinstance(p, bool) else "with the transform's default p"
        )
        return [f"{label} (albumentations.{op['name']}), {chance}", f"    {_params(params)}"]
    params = asdict(op)
    cls_name, what = OP_TEXT[label]
    if label == "hflip" and op.alternate:
        cls_name = "AlternateHorizontalFlip"
        what = (
            "mirror each image in every other epoch (half of the images each epoch, each image both ways in "
            "any two epochs running)"
        )
        chance = "by epoch and image, not by chance"
    else:
        chance = _chance(op.p)
    lines = [f"{label} ({cls_name}), {chance}: {what}", f"    {_params(params)}"]
    if label == "crop" and op.p < 1:
        lines.append("    otherwise the image is resized and centre-cropped to the output side")
    if label == "translate":
        lines.append(
            "    border: "
            + (
                "mirrored without repeating the edge (cv2 BORDER_REFLECT_101)"
                if op.mode == "reflect"
                else f"filled with {_value(op.fill)}"
            )
        )
    if label in POLICIES:
        lines += ["    " + line for line in _policy_table(label, op)]
    return lines


def _extra_params(entry: dict) -> dict:
    """An extra transform's parameters with Albumentations' defaults filled in, where the
    transform can be built from them; else the parameters given."""
    given = {k: v for k, v in entry.items() if k != "name"}
    try:
        import warnings

        import albumentations as A

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = getattr(A, entry["name"])(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
        return {**given, **{k: v for k, v in built.get_transform_init_args().items() if k not in given}}
    except (AttributeError, TypeError, ValueError):  # not one of Albumentations', or parameters it refuses
        return given


def _policy_table(name: str, op) -> list[str]:
    """The policy's op table from ``augpipe.augment.policies``, where that module has one; the
    parameters above say what the policy is without it."""
    try:
        from augpipe.augment.policies import policy_table

        rows = list(policy_table(name, op))
    except (ImportError, AttributeError):
        return ["(op table not available: augpipe.augment.policies has no policy_table)"]
    if not rows:
        return []
    if not all(isinstance(r, dict) for r in rows):
        return ["op table:"] + [f"  {r}" for r in rows]
    head = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(k) for k in head]] + [[_value(r.get(k, "")) for k in head] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    table = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return (
        ["op table:"]
        + ["  " + line for line in table[:1]]
        + ["  " + "-" * len(table[0])]
        + ["  " + line for line in table[1:]]
    )


def _batch_lines(spec: AugmentSpec) -> list[str]:
    ops = spec.batch_ops()
    if not ops:
        return ["none: every image trains with its own label"]
    lines = []
    for name in ops:
        op = getattr(spec, name)
        cls_name, what = OP_TEXT[name]
        lines += [f"{name} ({cls_name}), {_chance(op.p)} per batch: {what}", f"    {_params(asdict(op))}"]
    if spec.mixup is not None and spec.cutmix is not None:
        rest = max(0.0, 1 - spec.mixup.p - spec.cutmix.p)
        lines.append(
            f"a batch gets MixUp with probability {_value(spec.mixup.p)}, CutMix with "
            f"{_value(spec.cutmix.p)}, neither with {_value(rest)}"
        )
        if spec.mixup.p == spec.cutmix.p == SWITCH_PROB:
            lines.append(
                "every batch is mixed, switching between MixUp and CutMix 0.5 / 0.5 as timm does "
                "(switch_prob 0.5; the default where the spec gives both without p)"
            )
    lines.append(
        "the loss is taken against the mixed targets, so training accuracy is the expected accuracy under them"
    )
    return lines


def describe_spec(spec: AugmentSpec, name: str | None = None) -> str:
    """What ``spec`` does, in running order, and the YAML that reproduces it."""
    from augpipe.files import dump_yaml

    ops = op_sequence(spec)
    per_image = [(label, op) for label, op in ops if label not in BATCH_OPS]
    title = f"Augmentation {name}" if name else "Augmentation"
    size = (
        f"{spec.size}x{spec.size} px"
        if spec.size
        else "the data's own side (or --image-size); images of other sizes are resized and centre-cropped to it"
    )
    lines = [
        f"{title}: {len(per_image)} per-image op(s), {len(spec.batch_ops())} batch op(s)",
        "",
        f"Output size: {size}",
        "",
        "Per image, in running order (uint8 images, before normalisation):",
    ]
    if not per_image:
        lines.append("  none: each image is only resized to the output size")
    for k, (label, op) in enumerate(per_image, 1):
        first, *rest = _op_lines(label, op)
        lines += [f"  {k}. {first}"] + [f"  {line}" for line in rest]
    lines += ["", "Per batch, on the training device, after normalisation:"]
    lines += [f"  {line}" for line in _batch_lines(spec)]
    norm = spec.normalize
    lines += [
        "",
        (
            f"Normalisation: x / 255, minus mean {_value(norm.mean)}, divided by std {_value(norm.std)} "
            f"(per channel, RGB); evaluation images are only resized, centre-cropped and normalised"
        ),
        "",
        "YAML that reproduces it (save as a file, then --aug FILE.yaml):",
        "",
    ]
    lines += ["  " + line for line in dump_yaml(spec.to_dict()).splitlines()]
    return "\n".join(lines) + "\n"
