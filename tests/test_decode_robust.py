"""Decoding that survives hostile and unusual files: decompression bombs, JPEGs with data after
the end marker, truncated progressive JPEGs, EXIF thumbnails; a cache that keeps what fits; and
the data-set checks around them (empty classes, too few classes, --out over the source)."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from conftest import random_image, write_image

from augpipe.data.datasets import open_dataset
from augpipe.data.images import (
    DEFAULT_MAX_PIXELS,
    TOO_LARGE,
    UNREADABLE,
    ImageStore,
    decode_file,
    jpeg_structure,
    read_image,
)
from augpipe.data.prepare import prepare_data
from augpipe.errors import DataError


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def fake_huge_png(width=60000, height=60000) -> bytes:
    """A valid PNG stream of ~75 bytes whose header claims width x height 1-bit pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def photo(rng, h=48, w=64) -> np.ndarray:
    """Smooth pixels: a JPEG of them has structure (and 0xFF bytes) like a real photo's."""
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def jpeg_bytes(img, progressive=False) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] + ([cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else [])
    ok, buf = cv2.imencode(".jpg", img, params)
    assert ok
    return buf.tobytes()


def with_exif_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """``jpeg`` with an APP1 EXIF segment holding ``thumbnail`` (IFD1's JPEGInterchangeFormat)."""
    ifd0 = struct.pack(">H", 0) + struct.pack(">I", 14)  # no entries; IFD1 at offset 14
    ifd1 = (
        struct.pack(">H", 2)
        + struct.pack(">HHII", 0x0201, 4, 1, 44)
        + struct.pack(">HHII", 0x0202, 4, 1, len(thumbnail))
        + struct.pack(">I", 0)
    )
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd0 + ifd1 + thumbnail
    assert tiff.index(thumbnail) == 44
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


# -- decompression bombs -------------------------------------------------------------------
def test_fake_huge_png_is_too_large_not_an_exception(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(fake_huge_png())
    assert path.stat().st_size < 100
    assert read_image(path) == (None, TOO_LARGE)
    assert decode_file(path) is None
    # Above the limit even when a caller raises it: OpenCV itself refuses 3.6e9 pixels.
    assert read_image(path, max_pixels=10**10) == (None, UNREADABLE)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif", ".webp"])
def test_max_pixels_is_read_from_the_header_of_each_format(tmp_path, ext):
    path = write_image(tmp_path / f"x{ext}", random_image(np.random.default_rng(0), (20, 30)))
    assert read_image(path, max_pixels=600)[1] is None
    assert read_image(path, max_pixels=599) == (None, TOO_LARGE)


def test_a_bomb_beyond_pillows_own_error_limit_is_too_large(tmp_path):
    # A BMP header claiming 30000 x 30000: Pillow raises DecompressionBombError for it.
    header = (
        b"BM"
        + struct.pack("<IHHI", 54, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, 0, 0, 0, 0, 0)
    )
    (tmp_path / "bomb.bmp").write_bytes(header)
    assert read_image(tmp_path / "bomb.bmp") == (None, TOO_LARGE)


def test_any_decoder_exception_makes_the_file_unreadable(tmp_path, monkeypatch):
    path = write_image(tmp_path / "x.png", random_image(np.random.default_rng(0), 8))
    for err in (cv2.error("boom"), MemoryError(), ValueError("bad")):

        def fail(*args, err=err):
            raise err

        monkeypatch.setattr(cv2, "imdecode", fail)
        assert read_image(path) == (None, UNREADABLE)


def test_prepare_data_skips_and_counts_images_above_max_pixels(tmp_path, make_folder, caplog):
    root = make_folder(tmp_path / "ds", {"a": 6, "b": 6}, size=16)
    (root / "a" / "bomb.png").write_bytes(fake_huge_png())
    write_image(root / "b" / "big.png", random_image(np.random.default_rng(1), 40))  # 1600 pixels
    (root / "b" / "zero.png").write_bytes(b"")
    with caplog.at_level("WARNING", logger="augpipe"):
        data = prepare_data(root, val=0.2, test=0.2, max_pixels=1000)
    assert len(data.source) == 12
    assert sorted(p.rsplit("/", 1)[-1] for p in data.too_large) == ["big.png", "bomb.png"]
    assert len(data.skipped) == 3
    assert "skipped 3 image(s): 1 unreadable, 2 larger than --max-pixels (1,000 pixels), first:" in caplog.text
    # With the default limit the 40x40 one is kept.
    assert len(prepare_data(root, val=0.2, test=0.2).source) == 13
    with pytest.raises(DataError, match=r"^3 image\(s\): 1 unreadable, 2 larger than --max-pixels"):
        prepare_data(root, val=0.2, test=0.2, max_pixels=1000, strict=True)


def test_split_and_preview_skip_a_fake_huge_png(tmp_path, cli, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 6}, size=16)
    make_folder(root, {"b": 6}, size=8, seed=1)
    (root / "a" / "bomb.png").write_bytes(fake_huge_png())
    res = cli("split", "ds", "--out", "m.csv")
    assert res.exit_code == 0, res.output
    assert (
        f"warning: skipped 1 image(s): 1 larger than --max-pixels ({DEFAULT_MAX_PIXELS:,} pixels), first: ds/a/bomb.png"
    ) in res.output
    assert "a/bomb.png" not in (tmp_path / "m.csv").read_text()
    res = cli("split", "ds", "--out", "small.csv", "--max-pixels", 255)  # a's 16x16 images are 256
    assert res.exit_code == 1 and "Error: class 'a' has no readable images (all 7 were skipped)" in res.output

    res = cli("preview", "ds", "--n", 2, "--variants", 1, "--out", "p.png")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    res = cli("preview", "ds", "--n", 1, "--variants", 1, "--out", "q.png", "--max-pixels", 255)
    assert res.exit_code == 0, res.output  # the rows take the classes in turn: a (skipped), then b
    assert "warning: skipped image ds/a/" in res.output and "larger than --max-pixels (255 pixels)" in res.output
    assert cli("split", "ds", "--max-pixels", 0).exit_code == 2


# -- JPEG completeness ---------------------------------------------------------------------
def test_jpeg_with_bytes_after_the_end_marker_decodes(tmp_path):
    rng = np.random.default_rng(0)
    img = photo(rng)
    data = jpeg_bytes(img)
    tail = bytearray(rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    for at in (10, 5000, 50_000):
        tail[at : at + 2] = b"\xff\xd9"
    tail[-10_000:] = tail[-10_000:].replace(b"\xff", b"\xfe")  # no EOI-like bytes near the end
    (tmp_path / "motion.jpg").write_bytes(data + bytes(tail))
    (tmp_path / "plain.jpg").write_bytes(data)
    decoded = decode_file(tmp_path / "motion.jpg")
    assert decoded is not None and np.array_equal(decoded, decode_file(tmp_path / "plain.jpg"))


@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpeg_is_unreadable_wherever_it_is_cut(tmp_path, progressive):
    data = jpeg_bytes(photo(np.random.default_rng(1)), progressive=progressive)
    assert jpeg_structure(data) == (True, (64, 48))
    (tmp_path / "whole.jpg").write_bytes(data)
    assert decode_file(tmp_path / "whole.jpg").shape == (48, 64, 3)
    sos = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    assert len(sos) > (1 if progressive else 0)
    cuts = {
        "in the header": 30,
        "just after SOS": sos[0] + 14,
        "mid-scan": (sos[0] + len(data)) // 2,
        "just before EOI": len(data) - 2,
        "inside EOI": len(data) - 1,
    }
    if progressive:
        cuts["in the last scan"] = (sos[-1] + len(data)) // 2
        cuts["before the last scan"] = sos[-1]
    for where, at in cuts.items():
        (tmp_path / "cut.jpg").write_bytes(data[:at])
        assert read_image(tmp_path / "cut.jpg") == (None, UNREADABLE), where


def test_exif_thumbnail_eoi_does_not_make_a_cut_jpeg_complete(tmp_path):
    rng = np.random.default_rng(2)
    main = jpeg_bytes(photo(rng, 40, 40))
    data = with_exif_thumbnail(main, jpeg_bytes(photo(rng, 8, 8)))
    (tmp_path / "exif.jpg").write_bytes(data)
    assert decode_file(tmp_path / "exif.jpg").shape == (40, 40, 3)
    assert jpeg_structure(data) == (True, (40, 40))  # the thumbnail's size is not the image's
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) - len(main) // 2])
    assert decode_file(tmp_path / "cut.jpg") is None


def test_jpeg_walk_tolerates_fill_bytes_and_restart_markers(tmp_path):
    img = photo(np.random.default_rng(3))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])
    data = buf.tobytes()
    assert b"\xff\xd0" in data
    padded = data[:2] + b"\xff\xff\xff" + data[2:-2] + b"\xff\xff\xd9"
    for name, content in (("rst.jpg", data), ("fill.jpg", padded)):
        (tmp_path / name).write_bytes(content)
        assert decode_file(tmp_path / name) is not None, name
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    assert decode_file(tmp_path / "cut.jpg") is None


# -- the cache keeps what fits ---------------------------------------------------------------
def store_with_files_removed(tmp_path, make_folder, sizes, cache_mb):
    """Build a store of images of ``sizes`` pixels square, then delete the files: what is still
    readable is what the cache holds."""
    rng = np.random.default_rng(4)
    root = tmp_path / "ds"
    for k, side in enumerate(sizes):
        write_image(root / "a" / f"{k:02d}.png", random_image(rng, side))
    src = open_dataset(root)
    store, report = ImageStore.build(src, cache_mb=cache_mb)
    expected = [decode_file(p) for p in src.paths]
    for p in src.paths:
        p.unlink()
    in_memory = []
    for i in range(len(src)):
        try:
            assert np.array_equal(store[i], expected[i])
            in_memory.append(i)
        except DataError:
            pass
    return store, report, in_memory


def test_one_large_image_does_not_disable_the_cache_for_the_rest(tmp_path, make_folder):
    # 100 KB budget: the 200x200 image (120 KB) does not fit, the 8 16x16 ones (768 B each) do.
    store, report, in_memory = store_with_files_removed(tmp_path, make_folder, [200] + [16] * 8, 100 / 1024)
    assert in_memory == list(range(1, 9))
    assert report.n_cached == 8 and not report.cached and not store.cached and not store.shapes_equal
    assert store.native_size() == (16, 16)


def test_images_of_one_shape_past_the_budget_are_cached_as_far_as_they_fit(tmp_path, make_folder):
    # 10 images of 3 KB with a 20 KB budget: the first 6 stay in memory.
    store, report, in_memory = store_with_files_removed(tmp_path, make_folder, [32] * 10, 20 / 1024)
    assert in_memory == list(range(6))
    assert report.n_cached == 6 and store.cached_count == 6 and not store.cached
    sub = store.subset([0, 2, 4])
    assert sub.cached and sub.shapes_equal and len(sub) == 3
    assert not store.subset([0, 8]).cached


def test_a_set_that_fits_is_stacked_and_no_cache_keeps_nothing(tmp_path, make_folder):
    store, report, in_memory = store_with_files_removed(tmp_path, make_folder, [16] * 5, 1)
    assert in_memory == list(range(5)) and store.cached and store.shapes_equal and report.cached
    (tmp_path / "ds").rename(tmp_path / "old")
    store, report, in_memory = store_with_files_removed(tmp_path, make_folder, [16] * 5, 0)
    assert in_memory == [] and not store.cached and report.n_cached == 0


# -- classes -------------------------------------------------------------------------------
def test_a_class_whose_images_are_all_unreadable_is_an_error(tmp_path, make_folder):
    root = make_folder(tmp_path / "ds", {"cat": 5, "dog": 6}, size=8)
    for p in (root / "cat").iterdir():
        p.write_bytes(b"")
    with pytest.raises(DataError, match=r"^class 'cat' has no readable images \(all 5 were skipped\)$"):
        prepare_data(root)


def test_an_npz_class_name_without_images_is_an_error(tmp_path):
    x = np.random.default_rng(5).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(12) % 2, class_names=np.array(["cat", "dog", "truck"]))
    with pytest.raises(DataError, match="class 'truck' has no images"):
        prepare_data(tmp_path / "d.npz")


def test_min_classes(tmp_path, make_folder):
    root = make_folder(tmp_path / "ds", {"cat": 10}, size=8)
    assert prepare_data(root).class_names == ["cat"]
    with pytest.raises(DataError, match=r"has 1 class \('cat'\): a classifier needs at least 2"):
        prepare_data(root, min_classes=2)


# -- split --out over the source -----------------------------------------------------------
def test_split_refuses_to_overwrite_its_source_manifest(tmp_path, cli, make_folder):
    make_folder(tmp_path / "ds", {"a": 6, "b": 6}, size=8)
    rows = "".join(f"ds/{c}/{i:04d}.png,{c}\n" for c in "ab" for i in range(6))
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\n" + rows)
    (tmp_path / "link.csv").symlink_to(manifest)
    before = manifest.read_bytes()
    for out in ("list.csv", "./list.csv", "sub/../list.csv", "link.csv", str(manifest)):
        res = cli("split", "list.csv", "--out", out)
        assert res.exit_code == 1, (out, res.output)
        assert res.output.startswith("Error: --out ") and "is the data set list.csv itself" in res.output
        assert "Traceback" not in res.output and manifest.read_bytes() == before
    assert cli("split", "list.csv", "--out", "other.csv").exit_code == 0
    assert manifest.read_bytes() == before
