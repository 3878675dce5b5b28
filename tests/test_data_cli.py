"""``augpipe split`` and ``augpipe preview`` through the command line, good input and bad.

Every bad input must end in exit code 1 or 2 with one ``Error:`` line that says what is wrong,
no traceback, and no output file.
"""

from __future__ import annotations

import csv
import pickle
import shutil

import cv2
import numpy as np
import pytest
from conftest import error_line, write_image


def manifest_rows(path):
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return {r["path"]: r for r in csv.DictReader(lines)}


def leftovers(folder):
    """Temporary files an interrupted write could leave behind."""
    return sorted(p.name for p in folder.rglob(".*.tmp*"))


def assert_clean_failure(result, needle, *outputs, code=(1, 2)):
    line = error_line(result, codes=code)
    assert needle in line, line
    for path in outputs:
        assert not path.exists(), f"{path} was written"
        assert not leftovers(path.parent), leftovers(path.parent)


# -- split: what works ---------------------------------------------------------------------
def test_split_writes_the_manifest_and_prints_the_table(tmp_path, cli, make_folder):
    make_folder(tmp_path / "ds", {"cat": 10, "dog": 20}, size=8)
    res = cli("split", "ds", "--val", "0.2", "--test", "0.1", "--seed", "3", "--out", "m.csv")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["class", "train", "val", "test", "total"]
    assert lines[1].split() == ["cat", "7", "2", "1", "10"]
    assert lines[2].split() == ["dog", "14", "4", "2", "20"]
    assert lines[3].split() == ["total", "21", "6", "3", "30"]
    assert "duplicates: none" in res.output
    assert lines[-1].startswith("wrote m.csv (30 images")
    rows = manifest_rows(tmp_path / "m.csv")
    assert len(rows) == 30 and rows["cat/0000.png"]["label"] == "cat"
    header = (tmp_path / "m.csv").read_text()
    assert "# seed: 3\n" in header and "# val: 0.2\n" in header and "# test: 0.1\n" in header


def test_split_ignores_non_image_files(tmp_path, cli, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 5, "b": 5}, size=8)
    (root / "a" / "notes.txt").write_text("x")
    (root / "a" / "anim.gif").write_bytes(b"GIF89a")
    (root / "b" / "Thumbs.db").write_bytes(b"\0" * 10)
    (root / "b" / ".DS_Store").write_bytes(b"\0" * 10)
    res = cli("split", "ds", "--out", "m.csv")
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output and "skipped" not in res.output
    assert len(manifest_rows(tmp_path / "m.csv")) == 10


def test_split_skips_unreadable_images_with_a_warning_and_a_count(tmp_path, cli, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 6, "b": 6}, size=16, ext=[".png", ".jpg"])
    (root / "a" / "zero.png").write_bytes(b"")
    data = (root / "b" / "0001.jpg").read_bytes()
    (root / "b" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "b" / "text.png").write_text("not a picture")
    res = cli("split", "ds", "--out", "m.csv")
    assert res.exit_code == 0, res.output
    assert "warning: skipped 3 unreadable image(s), first: ds/a/zero.png" in res.output
    assert "skipped: 3 unreadable image(s)" in res.output
    rows = manifest_rows(tmp_path / "m.csv")
    assert len(rows) == 12 and not {"a/zero.png", "b/cut.jpg", "b/text.png"} & set(rows)

    strict = cli("split", "ds", "--out", "strict.csv", "--strict")
    assert_clean_failure(strict, "3 unreadable image(s), first: ds/a/zero.png", tmp_path / "strict.csv")


def test_split_file_keeps_old_items_and_assigns_new_ones(tmp_path, cli, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 12, "b": 12}, size=8)
    assert cli("split", "ds", "--val", "0.25", "--test", "0.25", "--seed", "4", "--out", "v1.csv").exit_code == 0
    old = manifest_rows(tmp_path / "v1.csv")
    make_folder(root, {"a": 8, "b": 4}, size=8, seed=50, prefix="new_")
    res = cli("split", "ds", "--split-file", "v1.csv", "--out", "v2.csv")
    assert res.exit_code == 0, res.output
    new = manifest_rows(tmp_path / "v2.csv")
    assert len(new) == 36
    assert all(new[k]["split"] == r["split"] for k, r in old.items())
    added = [r for k, r in new.items() if k not in old]
    assert len(added) == 12 and {r["split"] for r in added} <= {"train", "val", "test"}
    assert sum(r["split"] == "test" for r in new.values() if r["label"] == "a") == 5  # round(20 * 0.25)
    # The manifest's seed and ratios were reused, and updating in place works too.
    assert "# seed: 4\n" in (tmp_path / "v2.csv").read_text()
    shutil.copy(tmp_path / "v2.csv", tmp_path / "v3.csv")
    assert cli("split", "ds", "--split-file", "v3.csv", "--out", "v3.csv").exit_code == 0
    assert (tmp_path / "v3.csv").read_bytes() == (tmp_path / "v2.csv").read_bytes()


def test_split_reports_duplicates(tmp_path, cli, make_split_folder):
    root = make_split_folder(tmp_path / "ds", {"train": {"a": 6}, "test": {"a": 2}}, size=8)
    shutil.copy(root / "train/a/0003.png", root / "test/a/leak.png")
    res = cli("split", "ds", "--val", "0", "--out", "m.csv")
    assert res.exit_code == 0, res.output
    assert "duplicates: 1 exact copies skipped (the first image of each of 1 group(s) kept)" in res.output
    manifest = (tmp_path / "m.csv").read_text()  # the first in the data set's order is kept: test/ < train/
    assert "test/a/leak.png" in manifest and "train/a/0003.png" not in manifest


# -- preview -------------------------------------------------------------------------------
def png_size(path):
    img = cv2.imread(str(path))
    assert img is not None, f"{path} is not a readable PNG"
    return img.shape[:2]


def expected_size(rows, cols, image_side):
    # grid_figure: 1.2 in of row labels, 0.3 in of titles, one cell per image, at 100 dpi.
    cell = min(max(image_side / 64, 1.0), 2.0)
    return round(100 * (0.3 + rows * cell)), round(100 * (1.2 + cols * cell))


@pytest.mark.parametrize("n, variants", [(2, 3), (5, 1), (1, 0)])
def test_preview_grid_has_one_row_per_image_and_a_column_per_variant(tmp_path, cli, make_folder, n, variants):
    make_folder(tmp_path / "ds", {"a": 4, "b": 4}, size=16)
    res = cli("preview", "ds", "--n", n, "--variants", variants, "--out", "grid.png")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "grid.png"
    h, w = png_size(tmp_path / "grid.png")
    eh, ew = expected_size(n, variants + 1, 16)
    assert abs(h - eh) <= 1 and abs(w - ew) <= 1, ((h, w), (eh, ew))


def test_preview_cells_grow_with_the_image_size(tmp_path, cli, make_folder):
    make_folder(tmp_path / "ds", {"a": 3}, size=100)
    (tmp_path / "big.yaml").write_text("size: 96\nhflip: {p: 0.5}\n")
    res = cli("preview", "ds", "--n", 2, "--variants", 2, "--aug", "big.yaml", "--out", "grid.png")
    assert res.exit_code == 0, res.output
    h, w = png_size(tmp_path / "grid.png")
    eh, ew = expected_size(2, 3, 96)
    assert abs(h - eh) <= 1 and abs(w - ew) <= 1, ((h, w), (eh, ew))


@pytest.mark.parametrize("aug, ops", [("standard", 4), ("light", 2)])
def test_preview_per_transform_has_a_column_per_op(tmp_path, cli, make_folder, aug, ops):
    make_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=16)
    res = cli("preview", "ds", "--n", 3, "--per-transform", "--aug", aug, "--out", "ops.png")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "ops.png"
    h, w = png_size(tmp_path / "ops.png")
    eh, ew = expected_size(3, ops + 1, 16)
    assert abs(h - eh) <= 1 and abs(w - ew) <= 1


def test_preview_is_seeded(tmp_path, cli, make_folder):
    make_folder(tmp_path / "ds", {"a": 3}, size=16)
    for name, seed in (("a.png", 1), ("b.png", 1), ("c.png", 2)):
        assert cli("preview", "ds", "--n", 2, "--seed", seed, "--out", name).exit_code == 0
    a, b, c = (cv2.imread(str(tmp_path / n)) for n in ("a.png", "b.png", "c.png"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_preview_of_the_bundled_sample_data(tmp_path, cli):
    res = cli("preview", "--n", 2, "--variants", 1, "--out", "sample.png")
    assert res.exit_code == 0, res.output
    assert png_size(tmp_path / "sample.png") == expected_size(2, 2, 32)


def test_preview_skips_an_unreadable_image(tmp_path, cli, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 2}, size=16)
    (root / "b").mkdir()
    (root / "b" / "broken.png").write_bytes(b"")  # rows take the classes in turn: a, b, a
    res = cli("preview", "ds", "--n", 2, "--variants", 1, "--out", "p.png")
    assert res.exit_code == 0, res.output
    assert "warning: skipped unreadable image" in res.output and "broken.png" in res.output
    assert png_size(tmp_path / "p.png") == expected_size(2, 2, 16)


# -- bad input -----------------------------------------------------------------------------
def _ds(tmp_path, make_folder):
    return make_folder(tmp_path / "ds", {"a": 6, "b": 6}, size=8)


def bad_missing_path(tmp_path, mf):
    return ["split", "absent"], "absent: no such file or directory"


def bad_empty_folder(tmp_path, mf):
    (tmp_path / "empty").mkdir()
    return ["split", "empty"], "empty: the folder is empty"


def bad_no_class_folders(tmp_path, mf):
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "x.png", np.zeros((4, 4, 3), np.uint8))
    return ["split", "flat"], "no class subfolders"


def bad_class_without_images(tmp_path, mf):
    root = _ds(tmp_path, mf)
    (root / "c").mkdir()
    (root / "c" / "readme.txt").write_text("x")
    return ["split", "ds"], "ds/c: class folder has no images"


def bad_split_folder_class_without_images(tmp_path, mf):
    mf(tmp_path / "sp" / "train", {"a": 4}, size=8)
    (tmp_path / "sp" / "test" / "a").mkdir(parents=True)
    return ["split", "sp"], "test/a: class folder has no images"


def bad_not_a_data_set(tmp_path, mf):
    (tmp_path / "x.txt").write_text("x")
    return ["split", "x.txt"], "not a data set"


def bad_unreadable_strict(tmp_path, mf):
    root = _ds(tmp_path, mf)
    (root / "b" / "zero.png").write_bytes(b"")
    return ["split", "ds", "--strict"], "1 unreadable image(s), first: ds/b/zero.png"


def bad_all_unreadable(tmp_path, mf):
    (tmp_path / "ds" / "a").mkdir(parents=True)
    (tmp_path / "ds" / "a" / "x.png").write_bytes(b"")
    return ["split", "ds"], "no readable images"


def bad_val_negative(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["split", "ds", "--val", "-0.1"], "--val must be a fraction in [0, 1), got -0.1"


def bad_test_negative(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["split", "ds", "--test", "-1"], "--test must be a fraction"


def bad_ratios_sum_to_one(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["split", "ds", "--val", "0.5", "--test", "0.5"], "must be below 1"


def bad_ratios_above_one(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["split", "ds", "--val", "0.7", "--test", "0.6"], "must be below 1"


def bad_ratio_nan(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["split", "ds", "--val", "nan"], "--val must be a fraction"


def bad_ratio_not_a_number(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["split", "ds", "--val", "lots"], "'lots' is not a valid float"


def bad_class_too_small(tmp_path, mf):
    mf(tmp_path / "ds", {"big": 20, "tiny": 2}, size=8)
    return ["split", "ds"], "class 'tiny' has 2 image(s): too few"


def bad_csv_missing_files(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "list.csv").write_text("path,label\nds/a/0000.png,a\nds/a/gone.png,a\n")
    return ["split", "list.csv"], "names 1 missing file(s), first: ds/a/gone.png"


def bad_csv_without_header(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "list.csv").write_text("ds/a/0000.png,a\n")
    return ["split", "list.csv"], "must name the columns path,label"


def bad_csv_not_utf8(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "list.csv").write_bytes("path,label\nds/a/0000.png,caf\xe9\n".encode("latin-1"))
    return ["split", "list.csv"], "not a UTF-8 text file"


def bad_csv_unknown_split(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "list.csv").write_text("path,label,split\nds/a/0000.png,a,holdout\n")
    return ["split", "list.csv"], "unknown split name 'holdout'"


def bad_split_file_unknown_labels(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "old.csv").write_text("path,label,split\na/0000.png,zebra,train\n")
    return ["split", "ds", "--split-file", "old.csv"], "unknown labels, first: 'zebra'"


def bad_split_file_missing_items(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "old.csv").write_text("path,label,split\na/0000.png,a,train\na/gone.png,a,test\n")
    return ["split", "ds", "--split-file", "old.csv"], "missing from the data set, first: a/gone.png"


def bad_split_file_short_row(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "old.csv").write_text("# seed: 0\npath,label,split\na/0000.png,a,train\na/0001.png,a\n")
    return ["split", "ds", "--split-file", "old.csv"], "old.csv: line 4: expected path,label,split"


def bad_split_file_absent(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["split", "ds", "--split-file", "absent.csv"], "absent.csv: no such split manifest"


def bad_split_out_in_missing_dir(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["split", "ds", "--out", "nowhere/m.csv"], "the directory nowhere does not exist"


def bad_split_out_is_a_directory(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "outdir").mkdir()
    return ["split", "ds", "--out", "outdir"], "outdir: is a directory"


def bad_npz_truncated(tmp_path, mf):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 1, 0, 1]))
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(data[: len(data) // 2])
    return ["split", "d.npz"], "d.npz: not a readable .npz file"


def bad_cifar_batch(tmp_path, mf):
    from conftest import _make_cifar10

    root = _make_cifar10(tmp_path / "c10")
    with open(root / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    return ["split", "c10"], "data_batch_3: CIFAR data must be N x 3072"


def bad_preview_missing_source(tmp_path, mf):
    return ["preview", "absent"], "absent: no such file or directory"


def bad_preview_out_in_missing_dir(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["preview", "ds", "--out", "nowhere/p.png"], "the directory nowhere does not exist"


def bad_preview_out_is_a_directory(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "outdir").mkdir()
    return ["preview", "ds", "--out", "outdir"], "outdir: is a directory"


def bad_preview_unknown_preset(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["preview", "ds", "--aug", "heavy"], "unknown augmentation 'heavy'"


def bad_preview_spec_unknown_key(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "spec.yaml").write_text("hflp: {p: 1}\n")
    return ["preview", "ds", "--aug", "spec.yaml"], "unknown key 'hflp' in augmentation spec; did you mean 'hflip'?"


def bad_preview_spec_bad_value(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "spec.yaml").write_text("crop: {scale: 0.5}\n")
    return ["preview", "ds", "--aug", "spec.yaml"], "crop.scale must be [low, high]"


def bad_preview_spec_bad_extra_argument(tmp_path, mf):
    _ds(tmp_path, mf)
    (tmp_path / "spec.yaml").write_text("extra: [{name: GaussianBlur, sigma: 3}]\n")
    return ["preview", "ds", "--aug", "spec.yaml"], "augmentation 'GaussianBlur': unknown argument(s) sigma"


def bad_preview_spec_missing(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["preview", "ds", "--aug", "absent.yaml"], "absent.yaml: no such augmentation spec file"


def bad_preview_per_transform_without_ops(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["preview", "ds", "--aug", "none", "--per-transform"], "no transforms to show"


def bad_preview_zero_rows(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["preview", "ds", "--n", "0"], "Invalid value for '--n'"


def bad_class_all_unreadable(tmp_path, mf):
    root = _ds(tmp_path, mf)
    for p in (root / "b").iterdir():
        p.write_bytes(b"")
    return ["split", "ds"], "class 'b' has no readable images (all 6 were skipped)"


def bad_npz_class_name_without_images(tmp_path, mf):
    np.savez(
        tmp_path / "d.npz",
        x=np.zeros((8, 8, 8, 3), np.uint8),
        y=np.arange(8) % 2,
        class_names=np.array(["cat", "dog", "truck"]),
    )
    return ["split", "d.npz"], "class 'truck' has no images"


def bad_too_large_strict(tmp_path, mf):
    _ds(tmp_path, mf)  # 8x8 images: 64 pixels
    return [
        "split",
        "ds",
        "--strict",
        "--max-pixels",
        "63",
    ], "12 image(s): 12 larger than --max-pixels (63 pixels), first: ds/a/0000.png"


def bad_max_pixels_zero(tmp_path, mf):
    _ds(tmp_path, mf)
    return ["preview", "ds", "--max-pixels", "0"], "Invalid value for '--max-pixels'"


BAD = [f for name, f in sorted(globals().items()) if name.startswith("bad_")]


@pytest.mark.parametrize("scenario", BAD, ids=[f.__name__[4:] for f in BAD])
def test_bad_input_fails_cleanly(tmp_path, cli, make_folder, scenario):
    args, needle = scenario(tmp_path, make_folder)
    out = tmp_path / ("m.csv" if args[0] == "split" else "p.png")
    if "--out" not in args:
        args += ["--out", out.name]
    else:
        out = tmp_path / args[args.index("--out") + 1]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = cli(*args)
    assert_clean_failure(result, needle)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, f"files written: {set(after) - set(before)}"
    if not out.is_dir():
        assert not out.exists()


def test_warnings_reach_every_invocation(tmp_path, cli, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 4, "b": 4}, size=8)
    (root / "a" / "zero.png").write_bytes(b"")
    first = cli("split", "ds", "--out", "1.csv")
    second = cli("split", "ds", "--out", "2.csv")
    assert "warning: skipped 1 unreadable" in first.output
    assert "warning: skipped 1 unreadable" in second.output
