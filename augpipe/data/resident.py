"""``--data-on-device``: a split's uint8 images held in one tensor on the training device, so
that a batch is an index gather there: no loader workers, no image crossing from the host per
step. Only the epoch's order (one int64 vector) crosses, once per epoch.

The order is the one ``EpochLoader`` draws with no workers: the same generator, the same draws
in the same sequence (augmentation reseed, DataLoader base seed, permutation), the same
``RankSampler`` share under torchrun and the same dropped lone last batch. So a run with its
data on the device trains on exactly the batches of a run without, epoch after epoch, and an
interrupted epoch resumes from the generator's saved state as it does there.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset

from augpipe.data.loader import EpochLoader
from augpipe.errors import ConfigError

log = logging.getLogger("augpipe")

MODES = ("auto", "on", "off")
# auto: the data goes to a CUDA device when all splits together take at most this share of the
# device's free memory, leaving the rest to the model, its activations and the allocator's slack.
FREE_MEMORY_SHARE = 0.25


class _Positions(Dataset):
    """Positions 0..n-1, fetched as a batch by the DataLoader: the order without the images."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, positions):
        return positions

    def reseed(self, seed: int) -> None:
        """Nothing to seed (the device augmentation has its own generator); the draw that calls
        this is kept so that the order matches ``EpochLoader``'s."""


def _positions_collate(positions) -> torch.Tensor:
    return torch.as_tensor(positions, dtype=torch.int64)


def stack_split(store, items: np.ndarray, transform=None) -> np.ndarray:
    """The images ``items`` of ``store`` as one NHWC uint8 array, each through ``transform``
    (the deterministic resize to the model's size, when the images have another)."""
    first = store[int(items[0])] if len(items) else np.zeros((1, 1, 3), np.uint8)
    if transform is not None:
        first = transform(image=first)["image"]
    out = np.empty((len(items), *first.shape), np.uint8)
    for k, item in enumerate(items):
        img = store[int(item)]
        if transform is not None:
            img = transform(image=img)["image"]
        if img.shape != first.shape:
            raise ConfigError(
                f"--data-on-device needs images of one size; {store.source.describe(int(item))} "
                f"is {img.shape[1]}x{img.shape[0]}, not {first.shape[1]}x{first.shape[0]}: "
                f"use --data-on-device off"
            )
        out[k] = img
    return out


class ResidentLoader(EpochLoader):
    """An ``EpochLoader`` whose images already lie on ``device``: yields (uint8 NCHW images,
    labels) on the device; ``batch_items`` is the store indices of the batch, on the host (what the
    alternate flip decides by, without waiting for the device)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        items: np.ndarray,
        device,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(
            _Positions(len(items)),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=0,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
            collate_fn=_positions_collate,
        )
        self.device = torch.device(device)
        # NHWC bytes as NCHW channels-last: the layout the convolutions want, without a copy
        self.images = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.items = np.asarray(items, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def __iter__(self):
        batches = list(super().__iter__())  # one epoch's order: a few hundred small int64 tensors
        self.batch_items = None
        if not batches:
            return iter(())
        sizes = [len(b) for b in batches]
        order = torch.cat(batches)
        host_order = order.numpy()
        order = order.to(self.device, non_blocking=True)
        return self._gather(order, host_order, sizes)

    def _batches(self, batches):
        yield from batches  # positions, not images: the parent's unpacking does not apply

    def _gather(self, order, host_order, sizes):
        start = 0
        for size in sizes:
            pos = order[start : start + size]
            self.batch_items = self.items[host_order[start : start + size]]
            start += size
            yield self.images.index_select(0, pos), self.labels.index_select(0, pos)


def split_bytes(store, items: np.ndarray, image_size: int | None) -> int:
    """What ``items`` take as uint8 images on the device (at ``image_size`` when they are resized)."""
    if not len(items):
        return 0
    if image_size is not None:
        return len(items) * image_size * image_size * 3
    h, w = store.native_size()
    return len(items) * h * w * 3


def decide(mode: str, device: torch.device, needed: int, why_not: str | None) -> bool:
    """Whether the splits go to the device. ``why_not``: what rules it out (a spec that needs
    loader workers, tar shards), None when nothing does. ``on`` where something rules it out is
    an error; ``auto`` is on for CUDA when ``needed`` bytes fit the free memory's share."""
    if mode == "off":
        return False
    if why_not is not None:
        if mode == "on":
            raise ConfigError(f"--data-on-device on: {why_not}")
        return False
    if mode == "on":
        return True
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    if needed > FREE_MEMORY_SHARE * free:
        log.info(
            "data stays on the host: its %.0f MB are over %d %% of the device's %.0f MB free",
            needed / 2**20,
            FREE_MEMORY_SHARE * 100,
            free / 2**20,
        )
        return False
    return True
