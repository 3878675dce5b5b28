"""``augpipe export``: a run's model as ONNX or TorchScript, for runtimes without augpipe.

The exported model takes NCHW images of the run's image size, any batch size, and does its own
normalisation: uint8 (0-255) or float (0-1) pixels in, logits out. A check runs the file on a few
of the run's test images (random ones where its data is gone) and reports the largest difference
in logits against the PyTorch model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from augpipe.errors import ConfigError, DataError

log = logging.getLogger("augpipe")

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUTS = ("uint8", "float")
ONNX_OPSET = 17


class WithNormalization(torch.nn.Module):
    """The model behind the run's normalisation: uint8 pixels are divided by 255 first."""

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            x = images.float() / 255.0
        else:
            x = images.float()
        return self.model((x - self.mean) / self.std)


@dataclass
class ExportResult:
    path: Path
    format: str
    input: str
    image_size: int
    max_abs_diff: float | None  # largest |logit difference| on the check images; None: not checked
    check_images: int
    check_source: str  # "test split" or "random images"
    checked_with: str | None  # onnxruntime, torch.jit; None where the check could not run


def _unsupported_operation(err: BaseException) -> str:
    text = str(err)
    m = re.search(r"(aten::\w+|prim::\w+|operator '[^']+'|\bop(?:erator)? \w+)", text)
    return m.group(1) if m else (text.strip().splitlines()[0][:200] if text.strip() else type(err).__name__)


def check_images(classifier, n: int = 8) -> tuple[np.ndarray, str]:
    """Up to ``n`` of the run's test images at its image size (NHWC uint8), or random ones where
    the run's data or manifest is not there any more."""
    from augpipe.config import TrainConfig
    from augpipe.data.datasets import open_dataset
    from augpipe.data.split import read_manifest
    from augpipe.errors import AugpipeError
    from augpipe.training.settings import data_or_sample

    run_dir = classifier.run_dir
    try:
        cfg = TrainConfig.from_dict(TrainConfig.read_yaml(run_dir / "config.yaml"))
        source = open_dataset(data_or_sample(cfg.data))
        splits, _ = read_manifest(run_dir / "split.csv", source)
        index = {k: i for i, k in enumerate(source.keys)}
        images = []
        for key, split in splits.items():
            if split != "test":
                continue
            img = source.load(index[key])
            if img is not None:
                images.append(classifier.resize(img))
            if len(images) == n:
                break
        if images:
            return np.stack(images), "test split"
    except (AugpipeError, OSError, KeyError):
        pass
    rng = np.random.default_rng(0)
    size = classifier.image_size
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), "random images"


def export(
    run_dir,
    *,
    format: str = "onnx",
    out=None,
    input: str = "uint8",
    checkpoint: str | None = None,
    check: bool = True,
    plugins=None,
) -> ExportResult:
    """Write the run's model as ``format`` (onnx, torchscript) to ``out`` (default:
    RUN_DIR/model.onnx or model.pt) and check it against PyTorch."""
    from augpipe.files import atomic_path
    from augpipe.inference import load

    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}: choose from {', '.join(FORMATS)}")
    if input not in INPUTS:
        raise ConfigError(f"--input must be one of {', '.join(INPUTS)}, got {input!r}")
    classifier = load(run_dir, checkpoint=checkpoint, device="cpu", plugins=plugins)
    # Exported graphs are plain fp32 NCHW: the runtime chooses its own layout and precision.
    model = classifier.model.to(memory_format=torch.contiguous_format).float().eval()
    wrapped = WithNormalization(model, classifier.mean, classifier.std).eval()
    out = Path(out) if out is not None else Path(run_dir) / f"model{FORMATS[format]}"
    if out.is_dir():
        raise DataError(f"--out {out}: is a directory, not a file name")
    if not out.parent.is_dir():
        raise DataError(f"--out {out}: the directory {out.parent} does not exist")
    from augpipe.files import check_writable

    # Before the export: the exporters report a file they can not write as an unsupported model.
    check_writable(out.parent, f"--out {out}")
    size = classifier.image_size
    example = _as_input(np.zeros((2, size, size, 3), dtype=np.uint8), input)
    name = f"{classifier.run_dir}"
    with atomic_path(out) as tmp:
        if format == "onnx":
            _write_onnx(wrapped, example, tmp, name)
        else:
            _write_torchscript(wrapped, example, tmp, name)
    images, where = check_images(classifier)
    result = ExportResult(out, format, input, size, None, len(images), where, None)
    if check:
        with torch.no_grad():
            expected = wrapped(_as_input(images, input)).numpy()
        got, result.checked_with = _run_exported(out, format, _as_input(images, input).numpy())
        if got is not None:
            result.max_abs_diff = float(np.abs(got - expected).max())
    return result


def _as_input(images: np.ndarray, input: str) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return x if input == "uint8" else x.float() / 255.0


@contextlib.contextmanager
def _quiet_stdout():
    """torch's ONNX exporter prints its whole graph to the standard output (from C++, past
    sys.stdout) when an operation fails: the user gets augpipe's one line instead."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _write_onnx(wrapped, example, path: Path, name: str) -> None:
    import warnings

    try:
        with warnings.catch_warnings(), _quiet_stdout():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                (example,),
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
    except ModuleNotFoundError as err:
        raise ConfigError(f"ONNX export needs the {err.name!r} package: pip install 'augpipe[export]'") from None
    except Exception as err:
        raise ConfigError(
            f"the model of {name} can not be exported to ONNX: {_unsupported_operation(err)} "
            f"is not supported (try --format torchscript)"
        ) from None


def _write_torchscript(wrapped, example, path: Path, name: str) -> None:
    # The network is traced (plugins' models need not be scriptable); the wrapper is scripted, so
    # that its uint8-or-float branch stays a branch, and one file takes both.
    x = example.float() / 255.0 if example.dtype == torch.uint8 else example
    import warnings

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(wrapped.model, ((x - wrapped.mean) / wrapped.std,), check_trace=False)
            scripted = torch.jit.script(
                WithNormalization(traced, wrapped.mean.flatten().tolist(), wrapped.std.flatten().tolist())
            )
            scripted.save(str(path))
    except Exception as err:
        raise ConfigError(
            f"the model of {name} can not be exported to TorchScript: {_unsupported_operation(err)}"
        ) from None


def _run_exported(path: Path, format: str, x: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    if format == "onnx":
        try:
            import onnxruntime
        except ImportError:
            log.info("onnxruntime is not installed: the exported file is not checked (pip install 'augpipe[export]')")
            return None, None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["logits"], {"images": x})[0], f"onnxruntime {onnxruntime.__version__}"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, and still what C++ loads
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy(), "torch.jit"
