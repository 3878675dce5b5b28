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
    pipeline on uint8 HWC, or None). Yields (HWC uint8 array, label)."""

    def __init__(self, store, indices, labels, transform=None):
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img = self.store[int(self.indices[i])]
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        return img, int(self.labels[self.indices[i]])

    def reseed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        if self.transform is not None:
            from augpipe.augment.cpu import seed_transform

            seed_transform(self.transform, seed)


def collate_uint8(batch):
    """Stack HWC uint8 images into one NCHW uint8 tensor (a channels-last view, no copy)."""
    images = np.stack([b[0] for b in batch])
    labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2), labels


def _worker_init(worker_id: int) -> None:
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


class EpochLoader:
    """A DataLoader that reshuffles every epoch and reseeds augmentation reproducibly, also
    when it runs in the main process (``num_workers=0``)."""

    def __init__(self, dataset: AugmentedImages, *, batch_size: int, shuffle: bool, num_workers: int,
                 seed: int, drop_last: bool = False, pin_memory: bool = False):
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.generator = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
            collate_fn=collate_uint8, generator=self.generator, drop_last=drop_last,
            worker_init_fn=_worker_init if num_workers > 0 else None, pin_memory=pin_memory,
            persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.num_workers == 0:
            self.dataset.reseed(int(torch.randint(2**62, (1,), generator=self.generator)))
        return iter(self.loader)


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
