"""The data side of a run: the decoded, split data set (``load_data``), the image size, and the
loaders with their batch preparation (``DataPipeline``: augmentation on the host or the device,
the data in host memory or on the device)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from augpipe import distributed
from augpipe.config import TrainConfig
from augpipe.errors import AugpipeError, ConfigError, DataError
from augpipe.errors import first_line as _first_line
from augpipe.training.settings import data_or_sample

log = logging.getLogger("augpipe")


class DataPipeline:
    """Loaders and the batch preparation (augmentation and normalisation) for a prepared split."""

    def __init__(self, data, cfg: TrainConfig, spec, image_size: int, device: torch.device, plugins):
        from augpipe.augment.cpu import build_eval_transform, build_train_transform
        from augpipe.data.loader import AugmentedImages, BatchNormalizer, EpochLoader, default_workers

        needs_workers = _needs_loader_workers(spec)
        if cfg.aug_device == "gpu" and needs_workers:
            raise ConfigError(f"{needs_workers}: use --aug-device cpu")
        # auto: on the device where there is a CUDA one (or the data is to be there), unless the
        # spec has operations only the workers' Albumentations can run.
        self.aug_on_device = cfg.aug_device == "gpu" or (
            cfg.aug_device == "auto" and (device.type == "cuda" or cfg.data_on_device == "on") and not needs_workers
        )
        if cfg.data_on_device == "on" and needs_workers:
            raise ConfigError(f"--data-on-device on: {needs_workers}")
        native = data.store.native_size() if data.store.shapes_equal else None
        self.native = native
        workers = cfg.workers if cfg.workers is not None else default_workers(device.type)
        lookup = plugins.augmentation_lookup()
        if spec.batch_ops() and cfg.batch_size < 2:
            ops = spec.batch_ops()
            raise ConfigError(
                f"{' and '.join(ops)} {'mix' if len(ops) > 1 else 'mixes'} the images of a batch: "
                f"--batch-size must be at least 2, got {cfg.batch_size}"
            )
        if self.aug_on_device:
            from augpipe.augment.device import DeviceAugment

            self.train_transform = (
                build_eval_transform(spec, image_size, native=native) if native != (image_size, image_size) else None
            )
            rank = distributed.ranks().rank  # each rank its own random numbers
            # flip_seed: the alternate flip of an image is the same whichever rank draws it
            self.device_augment = DeviceAugment(
                spec,
                image_size,
                device=device,
                generator_seed=cfg.seed + 7919 * rank if rank else cfg.seed,
                channels_last=cfg.channels_last,
                flip_seed=cfg.seed,
            )
            self.prepare_train = self._augment_on_device
        else:
            self.train_transform = build_train_transform(spec, image_size, native=native, seed=cfg.seed, lookup=lookup)
            self.prepare_train = BatchNormalizer(
                spec.normalize.mean, spec.normalize.std, device, channels_last=cfg.channels_last
            )
        eval_transform = build_eval_transform(spec, image_size, native=native)
        if not eval_transform.transforms:
            eval_transform = None
        self.prepare_eval = BatchNormalizer(
            spec.normalize.mean, spec.normalize.std, device, channels_last=cfg.channels_last
        )
        pin = device.type == "cuda"
        labels = data.source.labels
        me = distributed.ranks()

        shards = shard_batch_sampler(data, cfg, me, workers)
        self.resident = self.aug_on_device and self._data_to_device(data, cfg, device, image_size, shards)
        if self.resident:
            workers = 0

        def loader(split, transform, shuffle, seed_offset, n_workers, drop_last=False, batch_sampler=None):
            if self.resident:
                from augpipe.data.resident import ResidentLoader, stack_split

                items = data.indices(split)
                return ResidentLoader(
                    stack_split(data.store, items, transform),
                    labels[items],
                    items,
                    device,
                    batch_size=cfg.batch_size,
                    shuffle=shuffle,
                    seed=cfg.seed + seed_offset,
                    drop_last=drop_last,
                    rank=me.rank,
                    world_size=me.world_size,
                )
            ds = AugmentedImages(data.store, data.indices(split), labels, transform, stream=me.rank)
            return EpochLoader(
                ds,
                batch_size=cfg.batch_size,
                shuffle=shuffle,
                num_workers=n_workers,
                seed=cfg.seed + seed_offset,
                pin_memory=pin,
                drop_last=drop_last,
                rank=me.rank,
                world_size=me.world_size,
                batch_sampler=batch_sampler,
            )

        # A last training batch of a single image breaks batch norm (one value per channel).
        n_train = math.ceil(len(data.indices("train")) / me.world_size)  # this rank's share
        lone_last = n_train % cfg.batch_size == 1 and n_train > 1
        if cfg.batch_size > n_train > 0:
            log.warning(
                "--batch-size %d is more than the %d training images%s: each epoch is one batch of %d",
                cfg.batch_size,
                n_train,
                " of this process" if me.world_size > 1 else "",
                n_train,
            )
        self.train = loader("train", self.train_transform, True, 0, workers, drop_last=lone_last, batch_sampler=shards)
        if cfg.low_res_size is not None:
            if cfg.low_res_size >= image_size:
                raise ConfigError(
                    f"--low-res-size must be smaller than the training size ({image_size} px), got {cfg.low_res_size}"
                )
            self.prepare_train = LowResolution(
                self.prepare_train, self.train, cfg.low_res_size, cfg.low_res_epochs, cfg.channels_last
            )
            first = "epoch 1 trains" if cfg.low_res_epochs == 1 else f"epochs 1-{cfg.low_res_epochs} train"
            log.info(
                "%s at %dx%d (progressive resizing), then at %dx%d", first, *[cfg.low_res_size] * 2, *[image_size] * 2
            )
        # Evaluation batches need no augmentation: decoding from the cache is cheap in-process.
        eval_workers = 0 if data.store.cached else workers
        self.val = loader("val", eval_transform, False, 1, eval_workers)
        self.test = loader("test", eval_transform, False, 2, eval_workers)
        self.workers = workers

    @staticmethod
    def _data_to_device(data, cfg: TrainConfig, device: torch.device, image_size: int, shards) -> bool:
        from augpipe.data.resident import decide, split_bytes

        why_not = "the data is read from tar shards, a few at a time" if shards is not None else None
        resized = (
            None if data.store.shapes_equal and data.store.native_size() == (image_size, image_size) else image_size
        )
        needed = sum(split_bytes(data.store, data.indices(s), resized) for s in ("train", "val", "test"))
        return decide(cfg.data_on_device, device, needed, why_not)

    def _augment_on_device(self, images):
        # The alternate flip decides by the batch's items and the epoch, which the train loader knows.
        return self.device_augment(images, items=self.train.batch_items, epoch=self.train.epoch)

    def check_train_transform(self, data, image_size: int) -> None:
        """Run the training augmentation once on a real image, on a copy (the pipeline's own
        random streams stay untouched): an ``extra`` transform that fails on these images (a
        crop larger than they are) or changes their size is refused before anything is written."""
        import copy

        if self.train_transform is None or not len(data.indices("train")):
            return
        i = int(data.indices("train")[0])
        try:
            out = copy.deepcopy(self.train_transform)(image=data.store[i])["image"]
        except AugpipeError:
            raise
        except Exception as err:
            raise ConfigError(
                f"the augmentation fails on {data.source.describe(i)}: {type(err).__name__}: {_first_line(err)}"
            ) from None
        if out.shape != (image_size, image_size, 3):
            raise ConfigError(
                f"the augmentation turns {data.source.describe(i)} into {tuple(out.shape)}, "
                f"not {image_size}x{image_size}x3: an 'extra' transform changes the size"
            )


class LowResolution:
    """Progressive resizing: the training batches of the first ``epochs`` epochs, prepared as
    usual (augmented, normalised), then downscaled to ``size`` pixels (bilinear with antialiasing,
    as Pillow shrinks). A network with global pooling takes any size, and a low-resolution step
    costs about (size / full size)^2 of a full one. Keyed by the loader's epoch, so a resumed run
    trains each epoch at the size it had."""

    def __init__(self, prepare, loader, size: int, epochs: int, channels_last: bool):
        self.prepare, self.loader, self.size, self.epochs = prepare, loader, size, epochs
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def active(self) -> bool:
        return 1 <= self.loader.epoch <= self.epochs

    def __call__(self, images):
        x = self.prepare(images)
        if not self.active():
            return x
        x = torch.nn.functional.interpolate(
            x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )
        return x.contiguous(memory_format=self.memory_format)


def _needs_loader_workers(spec) -> str | None:
    """Why ``spec`` can only be augmented by Albumentations in loader workers, or None."""
    if spec.extra:
        return "augmentations under 'extra' run only in loader workers"
    if spec.policy_ops():
        return f"{', '.join(spec.policy_ops())} runs only in loader workers (its operations are Albumentations')"
    return None


def shard_batch_sampler(data, cfg: TrainConfig, me, workers: int):
    """For a data set read from tar shards, the batch sampler that gives each rank and each loader
    worker its own shards; None for every other source. Its batches are all full (a reader short
    of items repeats its own), so there is no lone last batch to drop."""
    shard_of = getattr(data.source.blobs, "shard_of_item", None)
    if shard_of is None:
        return None
    from augpipe.data.shards import ShardBatchSampler

    train = data.indices("train")
    return ShardBatchSampler(
        np.asarray(shard_of)[train],
        cfg.batch_size,
        rank=me.rank,
        world_size=me.world_size,
        num_workers=workers,
        seed=cfg.seed,
    )


def load_data(cfg: TrainConfig, split_file=None, data_cache: dict | None = None, min_classes: int = 2):
    """The run's data, opened, decoded, checked and split. With ``data_cache`` (a dict shared by
    the runs of one process, as a sweep's) a data set is decoded once for every run that reads it
    with the same decoding settings; only the split, which depends on the seed, is made anew."""
    from augpipe.data.prepare import decode_data, split_decoded

    data_path = data_or_sample(cfg.data)
    key = (str(Path(data_path).expanduser().resolve()), cfg.strict, cfg.cache_mb, cfg.max_pixels, min_classes)
    decoded = data_cache.get(key) if data_cache is not None else None
    if decoded is None:
        decoded = decode_data(
            data_path,
            strict=cfg.strict,
            cache_mb=cfg.cache_mb,
            max_pixels=cfg.max_pixels,
            min_classes=min_classes,
            split_file=split_file,
        )
        if data_cache is not None:
            data_cache[key] = decoded
    return data_path, split_decoded(decoded, val=cfg.val, test=cfg.test, seed=cfg.seed, split_file=split_file)


def choose_image_size(cfg: TrainConfig, spec, trainer, data) -> tuple[int, str]:
    """The side images are trained at, and where it came from: --image-size, else the
    augmentation spec's size, else the size the model is built for (as timm's models declare
    theirs), else the data's own."""
    native = data.store.native_size()
    held = (
        f"the data's images are {native[1]}x{native[0]}"
        if data.store.shapes_equal
        else f"the data's images differ in size, most are {native[1]}x{native[0]}"
    )
    if cfg.image_size:
        return cfg.image_size, f"--image-size; {held}"
    if spec.size:
        return spec.size, f"the augmentation spec's size; {held}"
    built_for = trainer.model_input_size(cfg.model)
    if built_for:
        if data.store.shapes_equal and native == (built_for, built_for):
            return built_for, f"what {cfg.plugin}/{cfg.model} is built for, and the data's own size"
        return built_for, f"what {cfg.plugin}/{cfg.model} is built for; {held}, resized to it (--image-size to choose)"
    return min(native), f"the data's own size; {cfg.plugin}/{cfg.model} takes any"


def use_weights_normalization(spec, normalization) -> None:
    """Starting weights were trained on images normalised their own way: use it, unless the
    augmentation spec names a normalisation of its own (anything but the default)."""
    from augpipe.augment.spec import IMAGENET_MEAN, IMAGENET_STD, Normalize

    mean, std = (tuple(float(v) for v in normalization[0]), tuple(float(v) for v in normalization[1]))
    own = (tuple(float(v) for v in spec.normalize.mean), tuple(float(v) for v in spec.normalize.std))
    if own != (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)):
        if own != (mean, std):
            log.info(
                "normalisation: the spec's own (mean %s, std %s), not the weights' (mean %s, std %s)",
                list(spec.normalize.mean),
                list(spec.normalize.std),
                list(mean),
                list(std),
            )
        return
    if len(mean) == 3 and len(std) == 3 and all(s > 0 for s in std):
        spec.normalize = Normalize(mean=mean, std=std)
        log.info("normalisation: the weights' own (mean %s, std %s)", list(mean), list(std))


def _load_data_once(cfg, split_file, data_cache, me):
    """Rank 0 opens and decodes the data set first (filling the image index), then the other
    ranks do (reading it), and every rank takes rank 0's split: the split is made once."""
    if me.active and not me.is_main:
        distributed.barrier_for_data()
    data_path, data = load_data(cfg, split_file, data_cache)
    if not me.active:
        return data_path, data
    if me.is_main:
        distributed.barrier_for_data()
    fingerprint, assignment = distributed.broadcast_object(
        (data.source.fingerprint(), data.assignment.tolist()), data_phase=True
    )
    if data.source.fingerprint() != fingerprint:
        raise DataError(
            f"rank {me.rank}: the data set at {data_path} is not the one rank 0 reads (its images or "
            f"labels differ); every node needs the same copy"
        )
    data.assignment = np.asarray(assignment, dtype=data.assignment.dtype)
    return data_path, data


def augmented_grid(cfg: TrainConfig, data, pipeline, image_size: int, plugins, rows: int = 8, variants: int = 6):
    """Training images (one a row, in the first column) and augmented versions of them, as the
    run's spec augments them, tiled into one RGB array. Drawn with a copy of the pipeline seeded
    apart, so that the run's own random streams are untouched."""
    from augpipe.augment.cpu import build_eval_transform, build_train_transform, seed_transform
    from augpipe.augment.spec import AugmentSpec

    spec = AugmentSpec.load(cfg.aug)
    transform = build_train_transform(
        spec, image_size, native=pipeline.native, seed=cfg.seed, lookup=plugins.augmentation_lookup()
    )
    seed_transform(transform, cfg.seed + 104729)
    plain = build_eval_transform(spec, image_size, native=pipeline.native)
    train = data.indices("train")
    picks = np.random.default_rng(cfg.seed).choice(train, size=min(rows, len(train)), replace=False)
    tiles = []
    for i in picks:
        img = data.store[int(i)]
        row = [plain(image=img)["image"] if plain.transforms else img]
        row += [transform(image=img)["image"] for _ in range(variants)]
        tiles.append(np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in row], axis=1))
    return np.concatenate(tiles, axis=0)
