"""Torch Dataset and DataLoader factory: uint8 batches out of the workers; the float conversion
and normalisation happen at the end of the path (``BatchNormalizer``), on the training device."""

from __future__ import annotations

import math
import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from augpipe.errors import ConfigError


class AugmentedImages(Dataset):
    """Items ``indices`` of an ImageStore, each passed through ``transform`` (an Albumentations
    pipeline on uint8 HWC, or None) with its index in the store and ``epoch`` (what an
    alternate flip decides by). Yields (HWC uint8 array, label); a DataLoader's batch
    (``__getitems__``) also has each item's index in the store."""

    def __init__(self, store, indices, labels, transform=None, stream: int = 0):
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        # The rank of a distributed run: the ranks share the loader's seed (so that they agree
        # on the epoch's order) but must not augment with the same random numbers.
        self.stream = stream
        self.epoch = 0  # set by EpochLoader.set_epoch, before the workers copy the dataset

    def __len__(self) -> int:
        return len(self.indices)

    def _item(self, i: int):
        item = int(self.indices[i])
        img = self.store[item]
        if self.transform is not None:
            img = self.transform(image=img, item=item, epoch=self.epoch)["image"]
        return img, int(self.labels[item]), item

    def __getitem__(self, i: int):
        return self._item(i)[:2]

    def __getitems__(self, positions) -> list:
        """A batch, for the DataLoader (torch's batched fetch): (image, label, index in the store)
        each, so that the batch can say which items it holds (``EpochLoader.batch_items``)."""
        return [self._item(i) for i in positions]

    def reseed(self, seed: int) -> None:
        if self.stream:
            seed = (seed + self.stream * 0x9E3779B97F4A7C15) % 2**63
        random.seed(seed)
        np.random.seed(seed % 2**32)
        if self.transform is not None:
            from augpipe.augment.cpu import seed_transform

            seed_transform(self.transform, seed)


def collate_uint8(batch):
    """Stack HWC uint8 images into one NCHW uint8 tensor (a channels-last view, no copy).
    (image, label) items give (images, labels); (image, label, index) items also the indices."""
    images = torch.from_numpy(np.stack([b[0] for b in batch])).permute(0, 3, 1, 2)
    labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    if batch and len(batch[0]) > 2:
        return images, labels, torch.tensor([b[2] for b in batch], dtype=torch.int64)
    return images, labels


def _worker_init(worker_id: int) -> None:
    from augpipe.training.signals import loader_worker_signals

    loader_worker_signals()  # a signal to the process group is the main process's to handle
    # torch gives each worker a distinct seed derived from the loader's generator, drawn anew
    # every epoch, so augmentations differ across workers and epochs yet repeat with the seed.
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(torch.initial_seed() % 2**63)


def default_workers(device: str = "cpu") -> int:
    """Loader workers for this machine. On a CPU the model needs every core: with few cores the
    batches are augmented in the main process (measured on 2 cores: a worker process competing
    with torch's threads cost 12 % of the epoch, more than it saved); many cores spare a few.
    On CUDA the cores are free for augmentation."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.startswith("cuda"):
        return max(1, min(8, cores - 1))
    return 0 if cores <= 4 else min(4, cores // 4)


class RankSampler(torch.utils.data.Sampler):
    """One rank's share of an epoch in a distributed run.

    Training (``shuffle``): one permutation drawn from the loader's generator, the same on every
    rank, padded to a multiple of the world size by repeating its first items (as torch's
    DistributedSampler pads), and every ``world_size``-th item from position ``rank``: the ranks
    see disjoint parts of each epoch and take the same number of steps. Evaluation: items
    ``rank, rank + world_size, ...`` in order, unpadded, so that sums over the ranks count every
    image exactly once.
    """

    def __init__(self, n: int, rank: int, world_size: int, shuffle: bool, generator: torch.Generator):
        self.n, self.rank, self.world_size, self.shuffle, self.generator = n, rank, world_size, shuffle, generator

    def __len__(self) -> int:
        if self.shuffle:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.rank, self.n, self.world_size))
        order = torch.randperm(self.n, generator=self.generator).tolist()
        padded = len(self) * self.world_size
        while len(order) < padded:
            order += order[: padded - len(order)]
        return iter(order[self.rank : padded : self.world_size])


class EpochLoader:
    """A DataLoader that reshuffles every epoch and reseeds augmentation reproducibly, also
    when it runs in the main process (``num_workers=0``). With ``world_size`` above 1 it yields
    this rank's share of every epoch (``RankSampler``); ``batch_sampler`` replaces the sampling
    altogether (tar shards, each rank and worker reading its own).

    Yields (images, labels); ``batch_items`` is then the store indices of the batch just yielded
    (what the device augmentation's alternate flip needs, with ``epoch``)."""

    def __init__(
        self,
        dataset: AugmentedImages,
        *,
        batch_size: int,
        shuffle: bool,
        num_workers: int,
        seed: int,
        drop_last: bool = False,
        pin_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
        batch_sampler=None,
        collate_fn=collate_uint8,
    ):
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.generator = torch.Generator().manual_seed(seed)
        common = dict(
            num_workers=num_workers,
            collate_fn=collate_fn,
            generator=self.generator,
            worker_init_fn=_worker_init if num_workers > 0 else None,
            pin_memory=pin_memory,
            persistent_workers=False,
            prefetch_factor=4 if num_workers > 0 else None,
        )
        self.batch_sampler = batch_sampler
        if batch_sampler is not None:
            self.loader = DataLoader(dataset, batch_sampler=batch_sampler, **common)
        elif world_size > 1 or shuffle:
            # One sampler for one process and for many: a run of 2 processes of batch 8 then sees
            # exactly the images of a run of 1 process of batch 16.
            sampler = RankSampler(len(dataset), rank, world_size, shuffle, self.generator)
            self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)
        else:
            self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=drop_last, **common)
        self.epoch = 0
        self.batch_items: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """The epoch about to be drawn: a shard sampler deals the shards anew for each; an
        alternate flip flips by it."""
        self.epoch = epoch
        self.dataset.epoch = epoch
        if self.batch_sampler is not None and hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self):
        if self.num_workers == 0:
            self.dataset.reseed(int(torch.randint(2**62, (1,), generator=self.generator)))
        self.batch_items = None
        from augpipe.training.signals import children_start_deaf

        with children_start_deaf():  # the workers are forked here
            batches = iter(self.loader)
        return self._batches(batches)

    def _batches(self, batches):
        for batch in batches:
            if len(batch) > 2:
                images, labels, self.batch_items = batch
                yield images, labels
            else:
                yield batch


def iterations_per_epoch(n_items: int, batch_size: int) -> int:
    """ceil(N / batch): 6,000 images in batches of 100 make 60 iterations per epoch."""
    return math.ceil(n_items / batch_size)


class BatchNormalizer:
    """uint8 NCHW batch -> float, normalised with the spec's mean and std, on ``device``."""

    def __init__(self, mean, std, device="cpu", dtype=torch.float32, channels_last: bool = False):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        self.scale = 1.0 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255)
        self.device = torch.device(device)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float()
        x = (x - self.mean).mul_(self.scale)
        return x.contiguous(memory_format=self.memory_format).to(self.dtype)
