"""``augpipe sweep --ablate``: the variants of a spec (all, none, -OP, +OP), the grid they make
with the other axes, real tiny ablation sweeps and their reports, and the errors."""

from __future__ import annotations

import csv
import re

import pytest
from conftest import SWEEP_FAST, error_line
from hypothesis import given, settings
from hypothesis import strategies as st

from augpipe.augment.spec import AugmentSpec
from augpipe.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = SWEEP_FAST


def differing_keys(a: dict, b: dict) -> set:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


# -- the variants ----------------------------------------------------------------------------------
def test_standard_is_taken_apart_op_by_op_in_running_order():
    from augpipe.sweeps import ablation_specs

    variants = ablation_specs("standard")
    assert list(variants) == ["all", "none", "-crop", "-hflip", "-color_jitter", "-erase"]
    full = variants["all"]
    assert full == AugmentSpec.preset("standard").to_dict()
    for op in ("crop", "hflip", "color_jitter", "erase"):
        without = variants[f"-{op}"]
        assert full[op] is not None and without[op] is None
        assert differing_keys(full, without) == {op}  # everything else identical
        assert op not in AugmentSpec.from_dict(without).active_ops()
    none = AugmentSpec.from_dict(variants["none"])
    assert none.active_ops() == [] and none.extra == []
    assert variants["none"]["normalize"] == full["normalize"] and variants["none"]["size"] == full["size"]


def test_extras_and_batch_ops_are_ops_of_their_own():
    from augpipe.sweeps import ablation_specs

    aug = {
        "size": 24,
        "hflip": {"p": 0.5},
        "erase": True,
        "mixup": {"alpha": 0.4, "p": 0.5},
        "cutmix": {"alpha": 1.0, "p": 0.5},
        "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "extra": [{"name": "GaussianBlur", "p": 0.1, "blur_limit": [3, 5]}, {"name": "ToGray", "p": 0.2}],
    }
    variants = ablation_specs(aug)
    # The extras run after the flip and before erase; the batch ops last.
    assert list(variants) == ["all", "none", "-hflip", "-GaussianBlur", "-ToGray", "-erase", "-mixup", "-cutmix"]
    full = variants["all"]
    assert [e["name"] for e in variants["-GaussianBlur"]["extra"]] == ["ToGray"]
    assert [e["name"] for e in variants["-ToGray"]["extra"]] == ["GaussianBlur"]
    assert differing_keys(full, variants["-GaussianBlur"]) == {"extra"}
    assert "mixup" not in variants["-mixup"] and variants["-mixup"]["cutmix"] == full["cutmix"]
    assert differing_keys(full, variants["-mixup"]) == {"mixup"}
    none = variants["none"]
    assert none["extra"] == [] and "mixup" not in none and "cutmix" not in none
    assert none["size"] == 24 and none["normalize"] == {"mean": [0.5] * 3, "std": [0.25] * 3}


def test_one_op_gives_all_and_none_and_no_op_is_an_error():
    from augpipe.sweeps import ablation_specs

    # Without its one op the spec is "none": one variant, not two runs of the same spec.
    assert list(ablation_specs({"hflip": True})) == ["all", "none"]
    with pytest.raises(ConfigError, match="--ablate: the augmentation 'none' has no ops to remove"):
        ablation_specs("none")
    with pytest.raises(ConfigError, match=r"did you mean standard\?"):
        ablation_specs("standrad")


OP_VALUES = {
    "crop": st.fixed_dictionaries(
        {"scale": st.sampled_from([[0.08, 1.0], [0.5, 0.9]]), "p": st.sampled_from([0.5, 1.0])}
    ),
    "translate": st.fixed_dictionaries({"pad": st.integers(0, 4), "mode": st.sampled_from(["reflect", "constant"])}),
    "hflip": st.sampled_from([{"p": 0.5}, {"p": 0.5, "alternate": True}, True]),
    "color_jitter": st.just(True),
    "trivial_augment": st.just(True),
    "rand_augment": st.fixed_dictionaries({"n": st.integers(1, 3), "m": st.integers(0, 30)}),
    "erase": st.fixed_dictionaries({"p": st.sampled_from([0.25, 1.0]), "fill": st.sampled_from([0, "random"])}),
    "mixup": st.fixed_dictionaries({"alpha": st.sampled_from([0.2, 1.0]), "p": st.sampled_from([0.3, 0.5])}),
}
EXTRA_NAMES = ["GaussianBlur", "ToGray", "Blur", "RandomBrightnessContrast"]


@st.composite
def specs(draw):
    ops = draw(st.lists(st.sampled_from(list(OP_VALUES)), unique=True, max_size=len(OP_VALUES)))
    spec = {op: draw(OP_VALUES[op]) for op in ops}
    names = draw(st.lists(st.sampled_from(EXTRA_NAMES), unique=True, max_size=2))
    spec["extra"] = [{"name": n, "p": 0.2} for n in names]
    spec["size"] = draw(st.sampled_from([None, 16, 32]))
    return spec


@settings(max_examples=60, deadline=None)
@given(specs(), st.sampled_from(["without", "alone", "both"]))
def test_every_variant_lacks_exactly_its_op_or_has_only_it(aug, mode):
    from augpipe.sweeps import ablation_specs

    spec = AugmentSpec.from_dict(aug)
    ops = spec.active_ops() + [e["name"] for e in spec.extra]
    if not ops:
        with pytest.raises(ConfigError, match="no ops to remove"):
            ablation_specs(aug, mode)
        return
    variants = ablation_specs(aug, mode)
    full = variants["all"]
    assert full == spec.to_dict()
    expected = ["all", "none"]
    if len(ops) > 1:  # with one op, "-OP" is none and "+OP" is all
        expected += [f"-{op}" for op in ops] if mode in ("without", "both") else []
        # with two ops, "+A" is "-B": listed once, as "-B"
        alone = mode == "alone" or (mode == "both" and len(ops) > 2)
        expected += [f"+{op}" for op in ops] if alone else []
    assert sorted(variants) == sorted(expected)
    none = AugmentSpec.from_dict(variants["none"])
    assert none.active_ops() == [] and none.extra == [] and none.size == spec.size
    for label, variant in variants.items():
        kept = AugmentSpec.from_dict(variant)  # each variant is a valid spec
        if label[0] not in "-+":
            continue
        op = label[1:]
        if label[0] == "+":  # OP alone: none plus OP, with OP's settings unchanged
            if op in spec.active_ops():
                assert differing_keys(variants["none"], variant) == {op} and variant[op] == full[op]
                assert kept.active_ops() == [op] and kept.extra == []
            else:
                assert differing_keys(variants["none"], variant) == {"extra"}
                assert kept.active_ops() == [] and [e["name"] for e in kept.extra] == [op]
        elif op in spec.active_ops():
            assert differing_keys(full, variant) == {op} and op not in kept.active_ops()
        else:
            assert differing_keys(full, variant) == {"extra"}
            assert [e["name"] for e in kept.extra] == [e["name"] for e in spec.extra if e["name"] != op]


def test_alone_and_both_modes_list_the_ops_in_running_order():
    from augpipe.sweeps import ablation_specs

    assert list(ablation_specs("light", "alone")) == ["all", "none", "+crop", "+hflip"]
    assert list(ablation_specs("light", True)) == ["all", "none", "-crop", "-hflip"]
    assert list(ablation_specs("standard", "both")) == [
        "all", "none", "-crop", "-hflip", "-color_jitter", "-erase", "+crop", "+hflip", "+color_jitter", "+erase"
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="--ablate must be one of without, alone, both, got 'some'"):
        ablation_specs("light", "some")


# -- the grid --------------------------------------------------------------------------------------
def test_the_variants_are_the_aug_axis_combined_with_seeds_and_other_axes(tmp_path, tiny_data):
    from augpipe.sweeps import ablation_specs, plan_sweep

    variants = ablation_specs("standard")
    runs = plan_sweep(
        plugin="mlp", data=str(tiny_data), aug="standard", ablate=True, seeds=2, activation=["relu", "tanh"]
    )
    assert len(runs) == len(variants) * 2 * 2
    assert runs[0].name == "activation=relu,aug=all,seed=0"
    assert [r.name for r in runs[:4]] == [
        "activation=relu,aug=all,seed=0",
        "activation=relu,aug=none,seed=0",
        "activation=relu,aug=-crop,seed=0",
        "activation=relu,aug=-hflip,seed=0",
    ]
    for run in runs:
        label = run.labels["aug"]
        assert re.fullmatch(rf"activation=(relu|tanh),aug={re.escape(label)},seed=[01]", run.name)
        assert run.cfg.aug == variants[label] and run.settings["aug"] == variants[label]
    assert sorted({r.name for r in runs}) == sorted(r.name for r in runs)

    # Without --aug, the config's augmentation is taken apart.
    (tmp_path / "c.yaml").write_text("aug: light\n")
    runs = plan_sweep(plugin="mlp", config_file=tmp_path / "c.yaml", ablate=True)
    assert [r.labels["aug"] for r in runs] == ["all", "none", "-crop", "-hflip"]


def test_ablate_refuses_a_comma_list_of_augmentations():
    from augpipe.sweeps import plan_sweep

    with pytest.raises(ConfigError, match="--ablate takes one --aug .* got 2: none,light"):
        plan_sweep(plugin="mlp", aug=["none", "light"], ablate=True)


ERRORS = {
    "a comma list": (
        ["--aug", "light,standard"],
        ("--ablate takes one --aug (a preset or a spec file) and makes its ops the axis, got 2: light,standard"),
    ),
    "an unknown preset": (["--aug", "standrad"], "unknown augmentation 'standrad' (did you mean standard?)"),
    "no ops": (["--aug", "none"], "--ablate: the augmentation 'none' has no ops to remove"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_a_bad_ablation_is_one_error_line_before_any_run(tmp_path, cli, tiny_data, case):
    args, message = ERRORS[case]
    line = error_line(cli("sweep", "--data", tiny_data, *FAST, "--ablate", *args))
    assert message in line
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "runs").exists()


# -- a real ablation -------------------------------------------------------------------------------
def test_an_ablation_sweep_writes_its_report_and_resumes(tmp_path, cli, tiny_data):
    args = ["sweep", "--data", tiny_data, *FAST, "--aug", "light", "--ablate", "--seeds", "2"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    assert sweep_dir.name.startswith("ablate-")
    names = [f"aug={v},seed={s}" for s in (0, 1) for v in ("all", "none", "-crop", "-hflip")]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(names)

    table = (sweep_dir / "ablation.md").read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == [
        "| variant", "ops used", "test acc", "difference from all", "difference from none",
        "train - val acc, last epoch", "n |",
    ]  # fmt: skip
    assert [(r[0], r[1]) for r in rows[1:]] == [
        ("| all", "crop, hflip"),
        ("| none", "–"),
        ("| -crop", "hflip"),
        ("| -hflip", "crop"),
    ]
    with open(sweep_dir / "sweep.csv", newline="") as fh:
        accs, gaps = {}, {}
        for row in csv.DictReader(fh):
            accs.setdefault(row["aug"], []).append(float(row["test_acc"]))
            with open(f"{row['run_dir']}/metrics.csv", newline="") as m:
                last = list(csv.DictReader(m))[-1]
            gaps.setdefault(row["aug"], []).append(float(last["train_acc"]) - float(last["val_acc"]))
    assert sorted(accs) == ["-crop", "-hflip", "all", "none"] and all(len(v) == 2 for v in accs.values())
    mean = {k: sum(v) / 2 for k, v in accs.items()}
    for row in rows[1:]:
        variant = row[0][2:]
        assert re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}", row[2]) and row[6] == "2 |"
        assert float(row[2].split(" ± ")[0]) == pytest.approx(mean[variant], abs=5e-4)
        for column, reference in ((3, "all"), (4, "none")):
            if variant == reference:
                assert row[column] == "reference"
            else:
                assert float(row[column]) == pytest.approx(mean[variant] - mean[reference], abs=1e-3)
        assert float(row[5].split(" ± ")[0]) == pytest.approx(sum(gaps[variant]) / 2, abs=5e-4)
    assert table in result.output
    assert "| -hflip | 2 |" in (sweep_dir / "sweep.md").read_text()  # the variants by name, not a hash
    png = (sweep_dir / "ablation.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    stamps = {n: (sweep_dir / n / "summary.json").stat().st_mtime_ns for n in names}
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert [p.name for p in (tmp_path / "sweeps").iterdir()] == [sweep_dir.name]
    assert again.output.count("finished before, skipped") == len(names)
    assert {n: (sweep_dir / n / "summary.json").stat().st_mtime_ns for n in names} == stamps
    assert (sweep_dir / "ablation.md").read_text() == table


def test_ablate_alone_from_the_command_line_trains_each_op_alone(tmp_path, cli, tiny_data):
    result = cli("sweep", "--data", tiny_data, *FAST, "--aug", "light", "--ablate", "alone")
    assert result.exit_code == 0, result.output
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(
        f"aug={v},seed=0" for v in ("all", "none", "+crop", "+hflip")
    )
    table = (sweep_dir / "ablation.md").read_text()
    assert "| +crop | crop |" in table and "| +hflip | hflip |" in table and "| none | – |" in table


def test_an_unknown_ablation_mode_is_one_line(tmp_path, cli, tiny_data):
    result = cli("sweep", "--data", tiny_data, *FAST, "--aug", "light", "--ablate", "sometimes")
    assert result.exit_code == 2
    assert "'sometimes' is not one of 'without', 'alone', 'both'" in error_line(result)
    assert not (tmp_path / "sweeps").exists()
