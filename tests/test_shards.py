"""WebDataset tar shards: ``write_shards`` / ``open_shards`` round trips, ``augpipe shard``, training
from shards, the shard-aware batch sampler, and shard sets that are not what augpipe wrote."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import _make_folder, _make_split_folder, error_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augpipe.cli.main import AugpipeGroup
from augpipe.cli.shard_commands import shard
from augpipe.data import shards as shards_mod
from augpipe.data.datasets import open_dataset
from augpipe.data.images import decode_file
from augpipe.data.prepare import prepare_data
from augpipe.data.shards import ShardBatchSampler, open_shards, shard_index, write_shards
from augpipe.data.split import read_manifest, write_manifest
from augpipe.errors import ConfigError, DataError


@pytest.fixture
def folder(tmp_path):
    """3 classes of 10, 8 and 6 images of 16 px, PNG and JPEG mixed."""
    return _make_folder(tmp_path / "data", {"a": 10, "b": 8, "c": 6}, ext=[".png", ".jpg"])


@pytest.fixture
def sharded(tmp_path, folder):
    """(prepared data, shard folder) of ``folder`` with at most 4 images a shard."""
    data = prepare_data(folder, val=0.2, test=0.2, seed=1, cache_mb=0)
    out = tmp_path / "shards"
    write_shards(data, out, max_count=4)
    return data, out


class Messages(logging.Handler):
    """The augpipe log's messages (the CLI's setup turns propagation to the root logger off)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def messages():
    log = logging.getLogger("augpipe")
    handler, level = Messages(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler.lines
    log.removeHandler(handler)
    log.setLevel(level)


def run_cli(*args):
    """``augpipe shard ARGS`` through the group that turns augpipe's errors into one line (the
    command itself is registered in cli/main.py elsewhere)."""
    group = AugpipeGroup()
    group.add_command(shard)
    return CliRunner().invoke(group, ["shard", *[str(a) for a in args]])


# -- round trips -----------------------------------------------------------------------------------
def test_a_round_trip_gives_the_same_images_labels_and_split(sharded):
    data, out = sharded
    back = open_dataset(out)
    assert back.kind == "shards" and back.class_names == data.class_names
    assert sorted(back.keys) == sorted(data.source.keys)
    original = {k: i for i, k in enumerate(data.source.keys)}
    for j, key in enumerate(back.keys):
        i = original[key]
        assert back.labels[j] == data.source.labels[i]
        assert back.given[j] == data.assignment[i]
        # the file's own bytes, not re-encoded, hence the same pixels as decoding the file (JPEG too)
        assert back.blobs.read(j) == data.source.paths[i].read_bytes()
        assert np.array_equal(back.load(j), decode_file(data.source.paths[i]))
    assert back.fingerprint() == data.source.fingerprint()


def test_training_data_from_shards_keeps_the_split_and_decodes_through_the_store(sharded):
    data, out = sharded
    again = prepare_data(out, cache_mb=0)  # the given split of each sample is kept whatever --val
    split_of = dict(zip(data.source.keys, data.assignment))
    assert [split_of[k] for k in again.source.keys] == list(again.assignment)
    for j in range(len(again.source)):
        assert np.array_equal(
            again.store[j], decode_file(data.source.paths[data.source.keys.index(again.source.keys[j])])
        )


def test_the_manifest_of_the_original_data_set_fits_the_shards(tmp_path, sharded):
    data, out = sharded
    manifest = write_manifest(tmp_path / "split.csv", data.source, data.assignment, seed=1, val=0.2, test=0.2)
    previous, header = read_manifest(manifest, open_dataset(out))
    assert previous == dict(zip(data.source.keys, data.assignment))
    assert header["fingerprint"] == json.loads((out / "shards.json").read_text())["split"]["fingerprint"]
    assert read_manifest(out / "split.csv", open_dataset(out))[0] == previous


def test_one_series_of_shards_a_split_each_at_most_max_count(sharded):
    data, out = sharded
    index = json.loads((out / "shards.json").read_text())
    assert index["class_names"] == data.class_names and index["split"]["seed"] == 1
    by_split = defaultdict(list)
    for entry in index["shards"]:
        by_split[entry["split"]].append(entry)
        assert entry["file"].startswith(entry["split"] + "-") and 1 <= entry["count"] <= 4
        with tarfile.open(out / entry["file"]) as tf:
            names = tf.getnames()
        assert len(names) == 3 * entry["count"]
        assert {n.split(".", 1)[1] for n in names} <= {"png", "jpg", "cls", "json"}
    for split in ("train", "val", "test"):
        files = [e["file"] for e in by_split[split]]
        assert files == [f"{split}-{n:06d}.tar" for n in range(len(files))]
        assert sum(e["count"] for e in by_split[split]) == int((data.assignment == split).sum())
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_samples_store_the_key_label_name_and_split(sharded):
    data, out = sharded
    with tarfile.open(out / "train-000000.tar") as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    keys = sorted({n.split(".")[0] for n in members})
    meta = json.loads(members[f"{keys[0]}.json"])
    label = int(members[f"{keys[0]}.cls"])
    i = data.source.keys.index(meta["key"])
    assert meta == {"key": data.source.keys[i], "label": data.class_names[label], "split": "train"}
    assert label == data.source.labels[i]


def test_an_npz_source_is_written_as_lossless_png(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    y = np.arange(20) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["cat", "dog"]))
    data = prepare_data(tmp_path / "d.npz", val=0.2, test=0.2, seed=0, cache_mb=0)
    write_shards(data, tmp_path / "out", max_count=5)
    back = open_dataset(tmp_path / "out")
    for j, key in enumerate(back.keys):
        assert back.blobs.read(j)[:8] == b"\x89PNG\r\n\x1a\n"
        assert np.array_equal(back.load(j), x[int(key)])
        assert back.class_names[back.labels[j]] == ["cat", "dog"][y[int(key)]]


def test_a_given_split_and_resharding_shards(tmp_path):
    src = _make_split_folder(tmp_path / "data", {"train": {"a": 6, "b": 6}, "test": {"a": 2, "b": 2}})
    data = prepare_data(src, val=0.25, test=0.1, seed=0, cache_mb=0)
    write_shards(data, tmp_path / "one")
    again = prepare_data(tmp_path / "one", cache_mb=0)
    write_shards(again, tmp_path / "two", max_count=1)  # shards from shards: the same bytes and items
    back = open_dataset(tmp_path / "two")
    split_of = dict(zip(data.source.keys, data.assignment))
    assert sorted(back.keys) == sorted(data.source.keys)
    assert all(split_of[k] == g for k, g in zip(back.keys, back.given))
    assert {k for k, g in zip(back.keys, back.given) if g == "test"} == {k for k in back.keys if k.startswith("test/")}
    assert len(list((tmp_path / "two").glob("*.tar"))) == len(back)


def test_the_same_data_and_seed_give_the_same_bytes(tmp_path, folder):
    data = prepare_data(folder, seed=3, cache_mb=0)
    write_shards(data, tmp_path / "x", max_count=5)
    write_shards(data, tmp_path / "y", max_count=5)
    tars = sorted(p.name for p in (tmp_path / "x").glob("*.tar"))
    assert tars == sorted(p.name for p in (tmp_path / "y").glob("*.tar"))
    for name in tars:
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "y" / name).read_bytes()


def test_a_shard_is_closed_at_max_size(tmp_path, folder):
    data = prepare_data(folder, cache_mb=0)
    written = write_shards(data, tmp_path / "out", max_count=1000, max_size=1)
    assert len(written) == len(data.source)  # every sample passes one byte: one a shard


def test_webdataset_itself_reads_the_shards(sharded):
    import webdataset as wds

    data, out = sharded
    samples = list(wds.WebDataset(str(out / "val-000000.tar"), shardshuffle=False, empty_check=False).decode("rgb8"))
    assert samples
    for s in samples:
        i = data.source.keys.index(s["json"]["key"])
        assert s["cls"] == data.source.labels[i] and s["json"]["split"] == "val"
        image = s.get("png", s.get("jpg"))
        if "png" in s:
            assert np.array_equal(image, decode_file(data.source.paths[i]))


# -- the output folder -----------------------------------------------------------------------------
def test_rewriting_a_shard_set_replaces_it_whole(tmp_path, folder):
    data = prepare_data(folder, cache_mb=0)
    out = tmp_path / "out"
    write_shards(data, out, max_count=2)
    many = {p.name for p in out.glob("*.tar")}
    write_shards(data, out, max_count=100)
    assert {p.name for p in out.glob("*.tar")} == {"train-000000.tar", "val-000000.tar", "test-000000.tar"} < many
    assert sorted(open_dataset(out).keys) == sorted(data.source.keys)


def test_an_interrupted_write_leaves_no_finished_shard_and_the_old_set_whole(tmp_path, folder, monkeypatch):
    data = prepare_data(folder, cache_mb=0)
    out = tmp_path / "out"
    write_shards(data, out, max_count=3)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    calls = []
    real = shards_mod._encoded

    def failing(source, i):
        calls.append(i)
        if len(calls) > 7:
            raise DataError("disk full")
        return real(source, i)

    monkeypatch.setattr(shards_mod, "_encoded", failing)
    with pytest.raises(DataError, match="disk full"):
        write_shards(data, out, max_count=2)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    fresh = tmp_path / "fresh"
    calls.clear()
    with pytest.raises(DataError, match="disk full"):
        write_shards(data, fresh, max_count=2)
    assert [p.name for p in fresh.iterdir()] == [".lock"]  # nothing that looks finished
    monkeypatch.setattr(shards_mod, "_encoded", real)
    write_shards(data, fresh)  # the interrupted folder is taken again
    assert len(open_dataset(fresh)) == len(data.source)


def test_the_command_prints_the_counts_and_the_shards(tmp_path, folder):
    result = run_cli(folder, "--out", tmp_path / "out", "--val", "0.2", "--test", "0.2", "--max-count", "3")
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "out" / "shards.json").read_text())
    n_train = sum(e["count"] for e in index["shards"] if e["split"] == "train")
    n_shards = sum(e["split"] == "train" for e in index["shards"])
    assert (
        f"train: {n_train} images in {n_shards} shard(s) (train-000000.tar .. train-{n_shards - 1:06d}.tar)"
        in result.output
    )
    assert "total" in result.output and "shards.json" in result.output


@pytest.mark.parametrize("where", ["itself", "inside", "not empty", "a file"])
def test_the_command_refuses_an_out_folder_that_would_lose_something(tmp_path, folder, where):
    out = {
        "itself": folder,
        "inside": folder / "shards",
        "not empty": tmp_path / "mine",
        "a file": tmp_path / "file.txt",
    }[where]
    if where == "not empty":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    if where == "a file":
        out.write_text("keep me")
    before = sorted(str(p) for p in folder.rglob("*"))
    line = error_line(run_cli(folder, "--out", out))
    assert "--out" in line and str(out.name) in line
    assert sorted(str(p) for p in folder.rglob("*")) == before
    if where in ("not empty", "a file"):
        assert (out / "notes.txt" if where == "not empty" else out).read_text() == "keep me"


def test_bad_counts_are_config_errors(tmp_path, folder):
    data = prepare_data(folder, cache_mb=0)
    for kw in ({"max_count": 0}, {"max_count": True}, {"max_size": 0}):
        with pytest.raises(ConfigError):
            write_shards(data, tmp_path / "out", **kw)


# -- training --------------------------------------------------------------------------------------
@pytest.mark.usefixtures("one_torch_thread")
def test_train_from_shards(tmp_path):
    import augpipe

    src = _make_folder(tmp_path / "data", {"a": 12, "b": 12, "c": 12}, size=16)
    data = prepare_data(src, seed=0, cache_mb=0)
    write_shards(data, tmp_path / "shards", max_count=8)
    result = augpipe.train(
        data=str(tmp_path / "shards"),
        plugin="cnn",
        model="cnn_small",
        epochs=1,
        workers=0,
        threads=1,
        batch_size=8,
        progress=False,
        out=str(tmp_path / "runs"),
        name="r",
    )
    assert not result.failed and 0 <= result.summary["test_acc"] <= 1
    previous, _ = read_manifest(result.run_dir / "split.csv", open_dataset(src))
    assert previous == dict(zip(data.source.keys, data.assignment))


# -- shard sets that are not what augpipe wrote ----------------------------------------------------
def rewrite_tar(path: Path, change) -> None:
    """Rewrite the tar at ``path`` with ``change(list of (TarInfo, bytes))`` applied."""
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else b"") for m in tf.getmembers()]
    members = change(members)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in members:
            m.size = len(data) if m.isfile() else 0
            tf.addfile(m, io.BytesIO(data) if m.isfile() else None)
    path.write_bytes(buf.getvalue())


def edit_member(ext, new_bytes):
    def change(members):
        for k, (m, data) in enumerate(members):
            if m.name.endswith("." + ext):
                members[k] = (m, new_bytes(data))
                break
        return members

    return change


def rename_first(new_name):
    def change(members):
        members[0][0].name = new_name(members[0][0].name)
        return members

    return change


def as_link(members):
    m = members[0][0]
    link = tarfile.TarInfo(m.name)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return [(link, b"")] + members[1:]


def edit_index(change):
    def apply(out):
        index = json.loads((out / "shards.json").read_text())
        change(index)
        (out / "shards.json").write_text(json.dumps(index))

    return apply


def cut(at):
    def apply(out):
        path = out / "train-000000.tar"
        data = path.read_bytes()
        path.write_bytes(data[: at(data)])

    return apply


def data_end(tar: bytes) -> int:
    """Where the last member's data blocks end (the end-of-archive marker starts)."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        last = tf.getmembers()[-1]
    return last.offset_data + -(-last.size // 512) * 512


def _bump_count(index):
    index["shards"][0]["count"] += 1


BAD = {
    "index not json": (lambda out: (out / "shards.json").write_text("{not json"), "shards.json", "not valid JSON"),
    "index not utf-8": (lambda out: (out / "shards.json").write_bytes(b"\xff\xfe{}"), "shards.json", "UTF-8"),
    "index a list": (lambda out: (out / "shards.json").write_text("[1, 2]"), "shards.json", "format"),
    "count as text": (edit_index(lambda i: i["shards"][0].update(count="4")), "shards.json", "count"),
    "count wrong": (edit_index(_bump_count), "train-000000.tar", "shards.json says"),
    "file out of folder": (
        edit_index(lambda i: i["shards"][0].update(file="../train-000000.tar")),
        "shards.json",
        "file",
    ),
    "split of another file": (edit_index(lambda i: i["shards"][0].update(split="test")), "shards.json", "split"),
    "class names": (edit_index(lambda i: i.update(class_names=["a", "a", "c"])), "shards.json", "class_names"),
    "seed": (edit_index(lambda i: i["split"].update(seed=-1)), "shards.json", "seed"),
    "missing shard": (lambda out: (out / "train-000000.tar").unlink(), "train-000000.tar", "missing"),
    "truncated in a member": (cut(lambda d: 1200), "train-000000.tar", ""),
    "truncated at a member": (cut(lambda d: 3 * 1024), "train-000000.tar", "truncated"),
    "no end marker": (cut(lambda d: data_end(d)), "train-000000.tar", "end-of-archive"),
    "half an end marker": (cut(lambda d: data_end(d) + 700), "train-000000.tar", "end-of-archive"),
    "dot-dot member": (
        lambda out: rewrite_tar(out / "train-000000.tar", rename_first(lambda n: "../" + n)),
        "train-000000.tar",
        "..",
    ),
    "absolute member": (
        lambda out: rewrite_tar(out / "train-000000.tar", rename_first(lambda n: "/tmp/" + n)),
        "train-000000.tar",
        "absolute",
    ),
    "link member": (lambda out: rewrite_tar(out / "train-000000.tar", as_link), "train-000000.tar", "link"),
    "label out of range": (
        lambda out: rewrite_tar(out / "train-000000.tar", edit_member("cls", lambda d: b"3")),
        "train-000000.tar",
        "class index",
    ),
    "label not a number": (
        lambda out: rewrite_tar(out / "train-000000.tar", edit_member("cls", lambda d: b"-1")),
        "train-000000.tar",
        "class index",
    ),
    "label name differs": (
        lambda out: rewrite_tar(
            out / "train-000000.tar",
            edit_member("json", lambda d: json.dumps({**json.loads(d), "label": "zebra"}).encode()),
        ),
        "train-000000.tar",
        "zebra",
    ),
    "split differs": (
        lambda out: rewrite_tar(
            out / "train-000000.tar",
            edit_member("json", lambda d: json.dumps({**json.loads(d), "split": "test"}).encode()),
        ),
        "train-000000.tar",
        "split",
    ),
    "key changed": (
        lambda out: rewrite_tar(
            out / "train-000000.tar",
            edit_member("json", lambda d: json.dumps({**json.loads(d), "key": "a/other.png"}).encode()),
        ),
        "shards.json",
        "fingerprint",
    ),
    "gzip shard": (
        lambda out: (out / "train-000000.tar").write_bytes(
            __import__("gzip").compress((out / "train-000000.tar").read_bytes())
        ),
        "train-000000.tar",
        "tar",
    ),
    "shard is a link": (
        lambda out: (
            (out / "train-000000.tar").unlink(),
            (out / "train-000000.tar").symlink_to(out / "train-000001.tar"),
        ),
        "train-000000.tar",
        "link",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_shard_set_that_is_not_what_augpipe_wrote_is_one_data_error(sharded, case):
    _, out = sharded
    damage, names, says = BAD[case]
    damage(out)
    with pytest.raises(DataError) as err:
        open_dataset(out)
    message = str(err.value)
    assert names in message and says in message and "\n" not in message, message


def test_an_oversized_index_is_refused_before_it_is_read(sharded, monkeypatch):
    _, out = sharded
    monkeypatch.setattr(shards_mod, "MAX_INDEX_BYTES", 100)
    with pytest.raises(DataError, match="too large for a shard index"):
        open_shards(out)


def test_a_bad_shard_set_through_the_command_is_one_error_line(tmp_path, sharded):
    _, out = sharded
    (out / "train-000001.tar").unlink()
    line = error_line(run_cli(out, "--out", tmp_path / "again"))
    assert "train-000001.tar" in line and "missing" in line


def test_a_shard_changed_after_it_was_indexed_is_an_unreadable_image(sharded):
    from augpipe.data.images import UNREADABLE, ImageStore

    _, out = sharded
    source = open_shards(out)
    path = out / "train-000000.tar"
    path.write_bytes(path.read_bytes()[:600])
    assert ImageStore(source).read(0) == (None, UNREADABLE)


# -- the sampler -----------------------------------------------------------------------------------
def shard_items(sizes, seed=0):
    """shard_of_item for shards of ``sizes``, the items of the shards interleaved."""
    ids = np.repeat(np.arange(len(sizes)) * 3 + 7, sizes)  # any integer ids, not 0..S-1
    return np.random.default_rng(seed).permutation(ids)


def epoch_batches(shard_of_item, batch_size, world_size, num_workers, epoch=0, **kw):
    """{rank: batches} of one epoch."""
    out = {}
    for rank in range(world_size):
        s = ShardBatchSampler(
            shard_of_item, batch_size, rank=rank, world_size=world_size, num_workers=num_workers, **kw
        )
        s.set_epoch(epoch)
        out[rank] = list(s)
        assert len(out[rank]) == len(s)
    return out


def readers(batches, num_workers):
    """{(rank, worker): items} as a DataLoader hands them out: batch k to worker k % W."""
    w = max(1, num_workers)
    got = defaultdict(list)
    for rank, bs in batches.items():
        for k, b in enumerate(bs):
            got[(rank, k % w)].extend(b)
    return got


def test_each_rank_and_worker_reads_only_its_own_shards(messages):
    shard_of = shard_items([10, 10, 10, 10, 10, 10, 10, 7, 10, 10, 10, 10, 3])
    batches = epoch_batches(shard_of, 4, world_size=3, num_workers=2)
    assert len({len(b) for b in batches.values()}) == 1  # DDP needs equal counts
    owner = {}
    for reader, items in readers(batches, 2).items():
        for s in set(shard_of[items].tolist()):
            assert owner.setdefault(s, reader) == reader  # a shard has one reader
    assert set(owner) == set(shard_of.tolist())
    everything = [i for b in batches.values() for batch in b for i in batch]
    assert set(everything) == set(range(len(shard_of)))  # every item, some repeated as padding
    sampler = ShardBatchSampler(shard_of, 4, world_size=3, num_workers=2)
    assert len(everything) == len(shard_of) + sampler.padding
    assert all(len(batch) == 4 for b in batches.values() for batch in b)
    assert not any("fewer shards than readers" in m for m in messages)


def test_a_dataloader_hands_each_worker_the_batches_of_its_shards():
    import torch
    from torch.utils.data import DataLoader, Dataset

    class WhoReads(Dataset):
        def __len__(self):
            return len(shard_of)

        def __getitem__(self, i):
            return torch.tensor([i, torch.utils.data.get_worker_info().id])

    shard_of = shard_items([6, 6, 6, 6, 5])
    sampler = ShardBatchSampler(shard_of, 3, num_workers=2, seed=5)
    loader = DataLoader(WhoReads(), batch_sampler=sampler, num_workers=2, multiprocessing_context="fork")
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        seen = defaultdict(set)
        batches = list(loader)
        assert len(batches) == len(sampler)
        for batch in batches:
            items, workers = batch[:, 0].numpy(), set(batch[:, 1].tolist())
            assert len(workers) == 1
            seen[workers.pop()] |= set(shard_of[items].tolist())
        assert not seen[0] & seen[1] and seen[0] | seen[1] == set(shard_of.tolist())


def test_the_order_is_seeded_by_seed_and_epoch():
    shard_of = shard_items([8] * 8)
    first = epoch_batches(shard_of, 4, world_size=2, num_workers=2, seed=1, epoch=0)
    assert epoch_batches(shard_of, 4, world_size=2, num_workers=2, seed=1, epoch=0) == first
    later = epoch_batches(shard_of, 4, world_size=2, num_workers=2, seed=1, epoch=1)
    other_seed = epoch_batches(shard_of, 4, world_size=2, num_workers=2, seed=2, epoch=0)
    assert later != first and other_seed != first
    # over epochs a rank reads different shards
    mine = [
        {s for b in epoch_batches(shard_of, 4, 2, 2, seed=1, epoch=e)[0] for s in shard_of[b].tolist()}
        for e in range(4)
    ]
    assert len({frozenset(m) for m in mine}) > 1


def test_fewer_shards_than_readers_deals_items_and_says_so(messages):
    shard_of = shard_items([9, 4])
    batches = epoch_batches(shard_of, 2, world_size=2, num_workers=2)
    assert len({len(b) for b in batches.values()}) == 1
    assert {i for b in batches.values() for batch in b for i in batch} == set(range(13))
    assert any("fewer shards than readers" in m for m in messages)


def test_drop_last_repeats_nothing_and_keeps_the_counts_equal():
    shard_of = shard_items([7, 5, 9, 6, 8])
    sampler = ShardBatchSampler(shard_of, 3, world_size=2, num_workers=0, drop_last=True)
    batches = epoch_batches(shard_of, 3, world_size=2, num_workers=0, drop_last=True)
    flat = [i for b in batches.values() for batch in b for i in batch]
    assert len(flat) == len(set(flat)) == len(shard_of) - sampler.dropped
    assert len(batches[0]) == len(batches[1]) == len(sampler)


@pytest.mark.parametrize(
    "kw", [{"batch_size": 0}, {"rank": 2, "world_size": 2}, {"num_workers": -1}, {"seed": -3}, {"world_size": True}]
)
def test_bad_sampler_settings_are_config_errors(kw):
    args = {"batch_size": 4, **kw}
    with pytest.raises(ConfigError):
        ShardBatchSampler(shard_items([4, 4]), args.pop("batch_size"), **args)


def test_no_items_is_a_data_error():
    with pytest.raises(DataError):
        ShardBatchSampler([], 4)


def test_shard_index_follows_the_items_through_a_subset(sharded):
    data, out = sharded
    prepared = prepare_data(out, cache_mb=0)
    train = prepared.indices("train")
    per_item = shard_index(prepared.source)[train]
    files = prepared.source.blobs.files
    for j, i in zip(per_item, train):
        assert prepared.source.describe(int(i)).startswith(f"{files[j]}:")
    assert shard_index(data.source) is None


FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=14),
    world=st.integers(1, 4),
    workers=st.integers(0, 3),
    batch=st.integers(1, 7),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 5),
)
def test_sampler_properties(sizes, world, workers, batch, drop_last, seed, epoch):
    shard_of = shard_items(sizes, seed=len(sizes))
    n = len(shard_of)
    batches = epoch_batches(shard_of, batch, world, workers, epoch=epoch, seed=seed, drop_last=drop_last)
    sampler = ShardBatchSampler(shard_of, batch, world_size=world, num_workers=workers, seed=seed, drop_last=drop_last)
    # the same number of batches on every rank and in every epoch, each batch full
    assert {len(b) for b in batches.values()} == {len(sampler)}
    assert len(
        epoch_batches(shard_of, batch, world, workers, epoch=epoch + 1, seed=seed, drop_last=drop_last)[0]
    ) == len(sampler)
    assert all(len(x) == batch for b in batches.values() for x in b)
    flat = [i for b in batches.values() for x in b for i in x]
    assert all(0 <= i < n for i in flat)
    if drop_last:
        assert len(flat) == len(set(flat)) == n - sampler.dropped
    else:
        assert set(flat) == set(range(n)) and len(flat) == n + sampler.padding
    if sampler.by_shards:
        owner = {}
        for reader, items in readers(batches, workers).items():
            for s in set(shard_of[items].tolist()):
                assert owner.setdefault(s, reader) == reader
    assert epoch_batches(shard_of, batch, world, workers, epoch=epoch, seed=seed, drop_last=drop_last) == batches


def test_a_second_open_of_shards_decodes_nothing_and_a_rewritten_set_is_decoded_again(sharded, monkeypatch):
    """Shard members are in the image index (by shard path and offset, with the shard's mtime):
    the second command, or the second rank of a distributed run, reads what the first learnt."""
    import augpipe.data.images as images_module

    data, out = sharded
    seen = []
    real = images_module.inspect_bytes

    def counting(blob, max_pixels=images_module.DEFAULT_MAX_PIXELS):
        seen.append(len(blob))
        return real(blob, max_pixels)

    monkeypatch.setattr(images_module, "inspect_bytes", counting)
    first = prepare_data(out, cache_mb=0)
    assert len(seen) == len(first.source)
    seen.clear()
    second = prepare_data(out, cache_mb=0)
    assert seen == []  # nothing decoded
    assert second.duplicates == first.duplicates and second.assignment.tolist() == first.assignment.tolist()
    assert second.store.native_size() == first.store.native_size()
    write_shards(data, out, max_count=3)  # new shards, new offsets and mtimes
    prepare_data(out, cache_mb=0)
    assert len(seen) == len(first.source)
