"""The image index (augpipe/data/index.py) and the lazily filled shared cache (images.py): a
second open decodes nothing, changes are seen, a broken index never stops a command."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import sys

import numpy as np
import pytest
from conftest import random_image, write_image

from augpipe.data import images as images_module
from augpipe.data.datasets import open_dataset
from augpipe.data.images import ImageStore, decode_file, pixel_digest
from augpipe.data.index import INDEX_NAME, clear_index, index_info
from augpipe.data.loader import AugmentedImages, EpochLoader
from augpipe.data.prepare import decode_data


@pytest.fixture
def decodes(monkeypatch):
    """Counts the files decoded in this process (small scans stay in it), by path."""
    seen = []
    real = images_module.inspect_file

    def counting(path, max_pixels=images_module.DEFAULT_MAX_PIXELS):
        seen.append(os.path.basename(str(path)))
        return real(path, max_pixels)

    monkeypatch.setattr(images_module, "inspect_file", counting)
    return seen


def build(root, **kw):
    return ImageStore.build(open_dataset(root), **kw)


def blank_out_keeping_stat(path):
    """Overwrite a file with zeros of the same length and put its mtime back: the index still
    matches it, and decoding it would find it unreadable."""
    st = os.stat(path)
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_second_open_decodes_nothing(tmp_path, make_folder, decodes):
    root = make_folder(tmp_path / "ds", {"a": 5, "b": 4}, size=12)
    store, report = build(root)
    assert report.decoded == 9 and len(decodes) == 9
    digests = list(report.digests)
    assert digests == [pixel_digest(decode_file(p)) for p in store.source.paths]
    for p in store.source.paths:
        blank_out_keeping_stat(p)
    decodes.clear()
    again, report2 = build(root)
    # Had anything been decoded, the zeroed files would be unreadable.
    assert decodes == [] and report2.decoded == 0 and report2.bad == []
    assert list(report2.digests) == digests
    assert again.shapes_equal and again.native_size() == (12, 12) and again.cached and again.cached_count == 9


def test_a_changed_file_is_decoded_again_a_removed_one_is_gone_an_added_one_is_decoded(tmp_path, make_folder, decodes):
    root = make_folder(tmp_path / "ds", {"a": 4, "b": 4}, size=8)
    build(root)
    rng = np.random.default_rng(9)
    changed = root / "a" / "0001.png"
    st = os.stat(changed)
    write_image(changed, random_image(rng, (10, 14)))  # another size of file and of picture
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    (root / "b" / "0002.png").unlink()
    write_image(root / "b" / "new.png", random_image(rng, 8))
    decodes.clear()
    store, report = build(root)
    assert sorted(decodes) == ["0001.png", "new.png"] and report.decoded == 2
    keys = store.source.keys
    assert "b/0002.png" not in keys and "b/new.png" in keys
    i = keys.index("a/0001.png")
    assert report.digests[i] == pixel_digest(decode_file(changed))
    assert np.array_equal(store[i], decode_file(changed)) and store[i].shape == (10, 14, 3)
    assert not store.shapes_equal and store.native_size() == (8, 8)
    decodes.clear()
    build(root)
    assert decodes == []


def test_only_the_mtime_changed_is_decoded_again(tmp_path, make_folder, decodes):
    root = make_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=8)
    build(root)
    touched = root / "b" / "0000.png"
    st = os.stat(touched)
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    decodes.clear()
    build(root)
    assert decodes == ["0000.png"]


def test_unreadable_and_too_large_are_decided_at_use_time(tmp_path, make_folder, decodes):
    root = make_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=16)
    write_image(root / "a" / "big.png", random_image(np.random.default_rng(1), 40))
    (root / "b" / "0001.png").write_bytes(b"not an image")
    _, report = build(root)
    keys = open_dataset(root).keys
    assert [keys[i] for i in report.bad] == ["b/0001.png"] and report.too_large == []
    decodes.clear()
    # 40x40 = 1600 pixels is above a limit of 1000: known from the index, nothing decoded.
    _, low = build(root, max_pixels=1000)
    assert decodes == [] and [keys[i] for i in low.too_large] == ["a/big.png"]
    assert [keys[i] for i in low.bad] == ["a/big.png", "b/0001.png"]


def test_an_image_refused_under_a_low_limit_is_decoded_under_a_higher_one(tmp_path, make_folder, decodes):
    root = make_folder(tmp_path / "ds", {"a": 2, "b": 2}, size=16)
    _, low = build(root, max_pixels=100)
    assert len(low.too_large) == 4
    decodes.clear()
    store, high = build(root, max_pixels=1000)
    assert len(decodes) == 4 and high.bad == [] and store.native_size() == (16, 16)
    decodes.clear()
    build(root, max_pixels=100)
    assert decodes == []  # 256 pixels, now known from the decoded image, is still above 100


def test_a_corrupt_index_is_replaced_with_a_warning(tmp_path, make_folder, private_image_index, caplog):
    root = make_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=8)
    index_file = private_image_index / INDEX_NAME
    index_file.write_bytes(b"this is no SQLite database" * 100)
    with caplog.at_level(logging.WARNING, logger="augpipe"):
        decoded = decode_data(root)
    assert len(decoded.source) == 6
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "corrupt" in warnings[0] and "\n" not in warnings[0]
    assert index_info()["entries"] == 6
    with sqlite3.connect(index_file) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_an_unusable_index_location_is_a_warning_not_an_error(tmp_path, make_folder, monkeypatch, caplog):
    root = make_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=8)
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder can not be made here")
    monkeypatch.setenv("AUGPIPE_CACHE_DIR", str(blocker / "augpipe"))
    with caplog.at_level(logging.WARNING, logger="augpipe"):
        decoded = decode_data(root)
    assert len(decoded.source) == 6 and decoded.skipped == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not usable" in warnings[0]


def _scan_in_child(root, cache_dir, queue):
    os.environ["AUGPIPE_CACHE_DIR"] = cache_dir
    try:
        decoded = decode_data(root)
        queue.put((len(decoded.source), len(decoded.skipped)))
    except BaseException as err:  # noqa: BLE001 - the parent reports it
        queue.put(repr(err))


def test_two_processes_scanning_at_once_both_succeed(tmp_path, make_folder, private_image_index):
    root = make_folder(tmp_path / "ds", {"a": 150, "b": 150}, size=8)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_scan_in_child, args=(str(root), str(private_image_index), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [(300, 0), (300, 0)]
    assert [p.exitcode for p in procs] == [0, 0]
    assert index_info()["entries"] == 300


def test_a_scan_in_processes_finds_what_a_scan_in_one_process_finds(tmp_path, make_folder, monkeypatch):
    root = make_folder(tmp_path / "ds", {"a": 300, "b": 300}, size=6)
    (root / "a" / "0007.png").write_bytes(b"")
    source = open_dataset(root)
    monkeypatch.setattr(images_module, "PROCESS_SCAN_MIN", 10**9)
    serial_store, serial = ImageStore.build(source, use_index=False)
    monkeypatch.setattr(images_module, "PROCESS_SCAN_MIN", 1)
    store, forked = ImageStore.build(source, use_index=False, workers=2)
    assert forked.bad == serial.bad == [7]
    assert list(forked.digests) == list(serial.digests)
    # Decoded in the scan processes, the pixels went straight into the cache.
    for p in source.paths:
        p.unlink()
    assert all(np.array_equal(store[i], serial_store[i]) for i in range(len(source)) if i != 7)


_SCAN_AFTER_OPENCV_THREADS = """
import sys, cv2, numpy as np
from augpipe.data import images
from augpipe.data.datasets import open_dataset
threads = cv2.getNumThreads()  # OpenCV's default: not set by hand (setting it first hides the hang)
big = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)
for _ in range(3):
    cv2.GaussianBlur(big, (31, 31), 5)  # OpenCV's thread pool is running when the scan forks
images.PROCESS_SCAN_MIN = 1
store, report = images.ImageStore.build(open_dataset(sys.argv[1]), use_index=False, workers=2)
assert cv2.getNumThreads() == threads, cv2.getNumThreads()  # the parent's setting is given back
print(len(report.digests))
"""


def test_a_forked_scan_after_opencv_used_its_threads_does_not_hang(tmp_path, make_folder):
    import subprocess

    root = make_folder(tmp_path / "ds", {"a": 20, "b": 20}, size=6)
    done = subprocess.run(
        [sys.executable, "-c", _SCAN_AFTER_OPENCV_THREADS, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["40"]


def test_the_lazily_filled_cache_is_shared_with_loader_workers(tmp_path, make_folder, decodes):
    root = make_folder(tmp_path / "ds", {"a": 10, "b": 10}, size=12)
    build(root)
    store, report = build(root)
    assert report.decoded == 0 and store.cached and store._cache.filled_count() == 0
    expected = [decode_file(p) for p in store.source.paths]
    # Labels are the item indices, so each image handed over can be told apart.
    ds = AugmentedImages(store, np.arange(len(store)), np.arange(len(store)))
    loader = EpochLoader(ds, batch_size=4, shuffle=True, num_workers=2, seed=0)
    seen = {}
    for x, y in loader:
        seen.update(zip(y.tolist(), x.permute(0, 2, 3, 1).numpy()))
    assert sorted(seen) == list(range(len(store)))
    assert all(np.array_equal(seen[i], expected[i]) for i in seen)
    # The workers decoded them; the main process sees every one of them in the shared memory.
    assert store._cache.filled_count() == len(store)
    for p in store.source.paths:
        p.unlink()
    assert all(np.array_equal(store[i], expected[i]) for i in range(len(store)))


def test_the_lazily_filled_cache_gives_the_pixels_of_a_decode_in_the_main_process(tmp_path, make_folder):
    root = make_folder(tmp_path / "ds", {"a": 4, "b": 4}, size=(9, 11), ext=[".png", ".bmp", ".tif"])
    build(root)
    store, report = build(root)
    assert report.decoded == 0 and store._cache.filled_count() == 0
    expected = [decode_file(p) for p in store.source.paths]
    first = [store[i].copy() for i in range(len(store))]
    assert store._cache.filled_count() == len(store)
    for p in store.source.paths:
        p.unlink()
    assert all(np.array_equal(a, e) and np.array_equal(store[i], e) for i, (a, e) in enumerate(zip(first, expected)))
    sub = store.subset([1, 3])
    assert np.array_equal(sub[1], expected[3])  # a subset shares the filled memory, no copy


def test_the_cache_budget_is_taken_in_order_without_decoding(tmp_path, make_folder, decodes):
    root = make_folder(tmp_path / "ds", {"a": 5, "b": 5}, size=32)  # 3 KB each
    build(root)
    decodes.clear()
    store, report = build(root, cache_mb=10 / 1024)
    assert decodes == [] and report.n_cached == store.cached_count == 3 and not store.cached
    assert store.subset([0, 1, 2]).cached and not store.subset([0, 3]).cached
    _, none = build(root, cache_mb=0)
    assert none.n_cached == 0 and not none.cached


def test_the_index_is_not_used_for_array_sources(tmp_path, make_cifar10):
    root = make_cifar10(tmp_path / "cifar", per_batch=8, n_classes=2)
    decoded = decode_data(root)
    assert decoded.store.cached and index_info()["entries"] == 0


def test_cache_info_and_clear(tmp_path, make_folder, private_image_index):
    from click.testing import CliRunner

    from augpipe.cli.cache_commands import cache

    root = make_folder(tmp_path / "ds", {"a": 3, "b": 4}, size=8)
    runner = CliRunner()
    out = runner.invoke(cache, ["info"])
    assert out.exit_code == 0 and "not created yet" in out.output and "entries: 0" in out.output
    build(root)
    out = runner.invoke(cache, ["info"])
    assert out.exit_code == 0, out.output
    assert str(private_image_index / INDEX_NAME) in out.output and "entries: 7" in out.output
    out = runner.invoke(cache, ["clear"])
    assert out.exit_code == 0 and "7 entries removed" in out.output
    assert index_info()["entries"] == 0 and clear_index() == 0
    _, report = build(root)
    assert report.decoded == 7


def test_a_scan_shows_progress_only_when_asked_or_on_a_terminal(tmp_path, make_folder, capsys):
    root = make_folder(tmp_path / "ds", {"a": 3, "b": 3}, size=8)
    build(root)  # stderr is no terminal under pytest: nothing is drawn
    assert "decoding images" not in capsys.readouterr().err
    (tmp_path / "ds").rename(tmp_path / "other")
    _, report = build(tmp_path / "other", progress=True)
    err = capsys.readouterr().err
    assert report.decoded == 6 and "decoding images" in err and "image" in err
