"""A finished run as a ready classifier: ``augpipe.load(run_dir)``, ``augpipe predict``.

The model is rebuilt by its plugin from the run's own settings and given the checkpoint's
weights; images go through the run's evaluation path (resize and centre-crop to the run's image
size, the spec's normalisation, the run's precision and memory layout), so a run's own test
images get the logits that ``augpipe evaluate`` scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from augpipe.config import TrainConfig, check_device_name
from augpipe.errors import ConfigError, DataError

log = logging.getLogger("augpipe")


def checkpoint_name(run_dir: Path) -> str:
    """The checkpoint a run scored: best.pt, or last.pt where it ran with --no-restore-best."""
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        if not TrainConfig.from_dict(TrainConfig.read_yaml(config_path), where=str(config_path)).restore_best:
            return "last.pt"
    return "best.pt"


def read_run_checkpoint(run_dir, checkpoint: str | None = None) -> tuple[Path, dict, TrainConfig]:
    """(path, checked checkpoint, its settings) of a run's checkpoint (default: the one it scored)."""
    from augpipe.files import load_checkpoint
    from augpipe.training.checkpoint import check_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    path = run_dir / (checkpoint or checkpoint_name(run_dir))
    state = check_checkpoint(load_checkpoint(path), path)
    return path, state, TrainConfig.from_dict(state["config"], where=str(path))


def model_from_checkpoint(plugins, cfg: TrainConfig, state: dict, path: Path, device: torch.device):
    """The run's model, built by its plugin, with the checkpoint's weights, on ``device``."""
    from augpipe.training.parts import build_model

    model = build_model(plugins, cfg, len(state["class_names"]), state["image_size"])
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        text = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: its weights do not fit model {cfg.plugin}/{cfg.model} ({text})") from None
    model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def as_rgb_uint8(image, where: str = "image") -> np.ndarray:
    """An HWC RGB uint8 array from what a user may hand over: uint8 or float (0-1) arrays, gray
    (HW or HW1), RGB or RGBA (the alpha is dropped)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"{where}: expected an image array of shape (height, width[, 1|3|4]), got {arr.shape}")
    if arr.dtype != np.uint8:
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == bool:
            raise DataError(f"{where}: expected uint8 or float pixels, got {arr.dtype}")
        values = arr.astype(np.float64)
        if not np.isfinite(values).all():
            raise DataError(f"{where}: the image holds NaN or infinite values")
        if np.issubdtype(arr.dtype, np.floating):
            if values.min() < 0 or values.max() > 1:
                raise DataError(
                    f"{where}: float pixels must lie in [0, 1] (uint8 for 0-255), got "
                    f"{values.min():g} to {values.max():g}"
                )
            values = values * 255.0
        elif values.min() < 0 or values.max() > 255:
            raise DataError(f"{where}: integer pixels must lie in [0, 255], got {values.min():g} to {values.max():g}")
        arr = np.rint(values).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


@dataclass
class FilePrediction:
    path: str
    top: list[tuple[str, float]]  # (class, probability), most probable first


@dataclass
class Classifier:
    """A trained model with everything it needs to label images as its run did."""

    model: torch.nn.Module
    class_names: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    run_dir: Path | None = None
    epoch: int | None = None
    tta: str = "none"  # test-time augmentation: none, flip, flip-translate (augpipe.training.tta)
    _transform: Any = field(default=None, repr=False)

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize (shorter side) and centre-crop to the run's image size, as its evaluation did."""
        if self._transform is None:
            from augpipe.augment.cpu import _compose, _resize_to

            self._transform = _compose(_resize_to(self.image_size, None))
        if image.shape[:2] == (self.image_size, self.image_size):
            return image
        return self._transform(image=image)["image"]

    def _read(self, item, max_pixels: int) -> np.ndarray:
        if isinstance(item, (str, Path)):
            from augpipe.data.images import read_image

            img, why = read_image(Path(item), max_pixels=max_pixels)
            if img is None:
                from augpipe.data.images import MISSING

                if why == MISSING:
                    raise DataError(f"{item}: no such file")
                raise DataError(f"{item}: {why} (not a readable image)" if why else f"{item}: not a readable image")
            return img
        return as_rgb_uint8(item)

    @torch.no_grad()
    def logits(self, images, *, batch_size: int = 64, max_pixels: int | None = None) -> np.ndarray:
        """Logits (N x classes) for ``images``: HWC RGB arrays (uint8, or float in [0, 1]) or
        paths of image files."""
        from augpipe.data.images import DEFAULT_MAX_PIXELS
        from augpipe.data.loader import BatchNormalizer
        from augpipe.training.loop import autocast_for
        from augpipe.training.tta import tta_logits

        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        images = list(images)
        prepare = BatchNormalizer(self.mean, self.std, str(self.device), channels_last=self.channels_last)
        out = []
        for start in range(0, len(images), batch_size):
            batch = np.stack(
                [
                    self.resize(self._read(item, max_pixels or DEFAULT_MAX_PIXELS))
                    for item in images[start : start + batch_size]
                ]
            )
            x = prepare(torch.from_numpy(batch).permute(0, 3, 1, 2))
            with autocast_for(self.device, self.precision):
                out.append(tta_logits(self.model, x, self.tta).cpu())
        if not out:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return torch.cat(out).numpy()

    def probabilities(self, images, *, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (softmax of the logits), N x classes."""
        logits = torch.from_numpy(self.logits(images, batch_size=batch_size))
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, images, *, top_k: int = 5, batch_size: int = 64) -> list[list[tuple[str, float]]]:
        """The ``top_k`` (class, probability) pairs of each image, most probable first."""
        return self._top(self.probabilities(images, batch_size=batch_size), top_k)

    def _top(self, probs: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
        if top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {top_k}")
        k = min(top_k, len(self.class_names))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[j], float(p[j])) for j in row] for row, p in zip(order, probs)]

    def predict_files(
        self, paths, *, top_k: int = 5, batch_size: int = 64, max_pixels: int | None = None
    ) -> tuple[list[FilePrediction], list[tuple[str, str]]]:
        """Predictions for the readable files of ``paths``, and (path, why) for each skipped one:
        one unreadable file among thousands must not stop the others, as in training."""
        from augpipe.data.images import DEFAULT_MAX_PIXELS, read_image

        predictions, skipped = [], []
        paths = [str(p) for p in paths]
        for start in range(0, len(paths), batch_size):
            names, images = [], []
            for p in paths[start : start + batch_size]:
                img, why = read_image(Path(p), max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
                if img is None:
                    skipped.append((p, why or "unreadable"))
                    continue
                names.append(p)
                images.append(img)
            if images:
                probs = self.probabilities(images, batch_size=batch_size)
                predictions += [FilePrediction(n, top) for n, top in zip(names, self._top(probs, top_k))]
        return predictions, skipped


def load(
    run_dir, *, checkpoint: str | None = None, device: str = "auto", plugins=None, tta: str | None = None
) -> Classifier:
    """A run's model, ready for inference: ``augpipe.load("runs/x").predict(["cat.jpg"])``.

    ``checkpoint`` defaults to the one the run scored (best.pt, or last.pt under
    --no-restore-best); ``tta`` to the run's own test-time augmentation."""
    from augpipe.augment.spec import AugmentSpec
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.settings import resolve_device
    from augpipe.training.tta import check_tta

    check_device_name(device)
    path, state, cfg = read_run_checkpoint(run_dir, checkpoint)
    dev = resolve_device(device)
    model = model_from_checkpoint(plugins or get_plugins(), cfg, state, path, dev)
    spec = AugmentSpec.load(cfg.aug)
    return Classifier(
        model=model,
        class_names=list(state["class_names"]),
        image_size=int(state["image_size"]),
        mean=_rgb(spec.normalize.mean),
        std=_rgb(spec.normalize.std),
        device=dev,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        run_dir=Path(run_dir),
        epoch=int(state["epoch"]),
        tta=check_tta(cfg.tta if tta is None else tta),
    )


def _rgb(values) -> tuple[float, float, float]:
    # The spec has checked that there are three.
    r, g, b = values
    return float(r), float(g), float(b)


def image_files(inputs) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders searched recursively (sorted,
    hidden files left out)."""
    from augpipe.data.images import is_image_file

    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and is_image_file(f) and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                raise DataError(f"{p}: no images in this folder (looked for {', '.join(_suffixes())})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return files


def _suffixes() -> list[str]:
    from augpipe.data.images import IMAGE_EXTENSIONS

    return sorted(IMAGE_EXTENSIONS)


def write_predictions(path, predictions: list[FilePrediction], top_k: int) -> Path:
    """predictions.csv: path, then class_1, probability_1 ... class_k, probability_k."""
    import csv
    import io

    from augpipe.files import write_atomic

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    k = max([len(p.top) for p in predictions] + [0]) or top_k
    w.writerow(["path"] + [c for i in range(1, k + 1) for c in (f"class_{i}", f"probability_{i}")])
    for p in predictions:
        w.writerow([p.path] + [v for name, prob in p.top for v in (name, f"{prob:.6f}")])
    return write_atomic(Path(path), buf.getvalue())
