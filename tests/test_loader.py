"""The loader: uint8 NCHW batches, ceil(N / batch) per epoch, reshuffled, reproducible."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from augpipe.augment.cpu import build_train_transform
from augpipe.augment.spec import AugmentSpec
from augpipe.data.images import ImageStore
from augpipe.data.loader import AugmentedImages, BatchNormalizer, EpochLoader, collate_uint8, iterations_per_epoch
from augpipe.data.prepare import prepare_data
from augpipe.errors import ConfigError


class ArraySource:
    """The least an ImageStore needs: N distinct random 12x12 images held in memory."""

    def __init__(self, n=23, size=12, seed=0):
        self.arrays = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)

    def __len__(self):
        return len(self.arrays)


def store_of(n=23):
    store, _ = ImageStore.build(ArraySource(n))
    return store


def identity_dataset(n=23, transform=None):
    """Labels are the item indices, so a batch's labels say which items it holds."""
    return AugmentedImages(store_of(n), np.arange(n), np.arange(n), transform)


def epochs(loader, count=2):
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(count)]


@pytest.mark.parametrize("n, batch", [(23, 5), (20, 5), (1, 4), (7, 1)])
def test_iterations_per_epoch_is_ceil(n, batch):
    loader = EpochLoader(identity_dataset(n), batch_size=batch, shuffle=True, num_workers=0, seed=0)
    batches = [y for _, y in loader]
    assert len(batches) == len(loader) == iterations_per_epoch(n, batch) == math.ceil(n / batch)
    assert [len(b) for b in batches[:-1]] == [batch] * (len(batches) - 1)
    assert len(batches[-1]) == n - batch * (len(batches) - 1)
    assert iterations_per_epoch(6000, 100) == 60 and iterations_per_epoch(6001, 100) == 61


def test_batches_are_uint8_nchw_of_the_stored_pixels():
    ds = identity_dataset(10)
    loader = EpochLoader(ds, batch_size=4, shuffle=False, num_workers=0, seed=0)
    x, y = next(iter(loader))
    assert x.dtype == torch.uint8 and tuple(x.shape) == (4, 3, 12, 12)
    assert y.dtype == torch.int64 and y.tolist() == [0, 1, 2, 3]
    for k in range(4):
        assert np.array_equal(x[k].numpy(), ds.store[k].transpose(2, 0, 1))


def test_every_item_once_per_epoch_and_reshuffled_each_epoch():
    loader = EpochLoader(identity_dataset(23), batch_size=5, shuffle=True, num_workers=0, seed=3)
    e1, e2 = epochs(loader)
    order1 = torch.cat([y for _, y in e1]).tolist()
    order2 = torch.cat([y for _, y in e2]).tolist()
    assert sorted(order1) == sorted(order2) == list(range(23))
    assert order1 != order2
    assert order1 != list(range(23))


@pytest.mark.parametrize("workers", [0, 1])
def test_same_seed_same_batches(workers):
    def run(seed):
        transform = build_train_transform(AugmentSpec.preset("standard"), 10, native=(12, 12))
        ds = AugmentedImages(store_of(15), np.arange(15), np.arange(15), transform)
        return epochs(EpochLoader(ds, batch_size=4, shuffle=True, num_workers=workers, seed=seed))

    a, b, c = run(7), run(7), run(8)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb) == 4
        for (xa, ya), (xb, yb) in zip(ea, eb):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a[0], c[0]))
    # The augmentation differs between epochs too, not only the order.
    first = {int(y): x for xb, yb in a[0] for x, y in zip(xb, yb)}
    second = {int(y): x for xb, yb in a[1] for x, y in zip(xb, yb)}
    assert sum(not torch.equal(first[i], second[i]) for i in range(15)) > 10


def test_no_shuffle_keeps_order():
    loader = EpochLoader(identity_dataset(9), batch_size=4, shuffle=False, num_workers=0, seed=0)
    for epoch in epochs(loader):
        assert torch.cat([y for _, y in epoch]).tolist() == list(range(9))


def test_indices_select_items_with_their_labels(tmp_path, make_folder):
    make_folder(tmp_path, {"a": 5, "b": 5}, size=8)
    data = prepare_data(tmp_path, val=0.2, test=0.2, seed=0)
    train = data.indices("train")
    ds = AugmentedImages(data.store, train, data.source.labels)
    assert len(ds) == len(train) == 6
    for i, item in enumerate(train):
        img, label = ds[i]
        assert label == data.source.labels[item]
        assert np.array_equal(img, data.source.load(item))


def test_bad_batch_size():
    with pytest.raises(ConfigError, match="--batch-size must be at least 1"):
        EpochLoader(identity_dataset(4), batch_size=0, shuffle=True, num_workers=0, seed=0)


def test_collate_makes_a_channels_last_view():
    imgs = [np.full((2, 3, 3), k, np.uint8) for k in range(4)]
    x, y = collate_uint8([(im, k) for k, im in enumerate(imgs)])
    assert tuple(x.shape) == (4, 3, 2, 3) and x.dtype == torch.uint8
    assert x[2].unique().tolist() == [2] and y.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_normalizer_matches_the_formula(channels_last):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 5, 4), dtype=np.uint8))
    out = BatchNormalizer(mean, std, channels_last=channels_last)(x)
    expected = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64
    ).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    half = BatchNormalizer(mean, std, dtype=torch.bfloat16)(x)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.double(), expected, atol=0.05)
