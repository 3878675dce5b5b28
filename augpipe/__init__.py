"""augpipe: train image classifiers with data augmentation at the centre.

The public API is imported lazily so that ``augpipe --help`` and ``import augpipe``
stay fast: torch, timm and albumentations load only when a function needs them.
"""

import os

# Albumentations checks PyPI for a newer release at import; augpipe must never touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

_API = {
    "open_dataset": "augpipe.data.datasets",
    "split_dataset": "augpipe.data.split",
    "AugmentSpec": "augpipe.augment.spec",
    "preview": "augpipe.report",
    "train": "augpipe.training.run",
    "evaluate": "augpipe.training.run",
    "load": "augpipe.inference",
    "Classifier": "augpipe.inference",
    "lr_find": "augpipe.training.lr_find",
    "TrainConfig": "augpipe.config",
    "hookimpl": "augpipe.hookspecs",
    "Trainer": "augpipe.hookspecs",
    "sweep": "augpipe.sweeps",
    "AugpipeError": "augpipe.errors",
}

# A literal list, so that linters and type checkers can read it.
__all__ = [
    "AugmentSpec",
    "AugpipeError",
    "Classifier",
    "TrainConfig",
    "Trainer",
    "__version__",
    "evaluate",
    "hookimpl",
    "load",
    "lr_find",
    "open_dataset",
    "preview",
    "split_dataset",
    "sweep",
    "train",
]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    if name == "__version__":
        # The installed distribution's, so that it can not drift from pyproject.toml.
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("augpipe")
        except PackageNotFoundError:  # a source tree on sys.path, not installed
            return "0+unknown"
    raise AttributeError(f"module 'augpipe' has no attribute {name!r}")
