"""The bundled sample data set (``shapes/``: 8 classes of 32x32 shapes and textures, made by
``generate.py``), shipped inside the wheel so that ``augpipe preview`` and ``augpipe train``
work right after ``pip install``."""

from importlib.resources import files
from pathlib import Path


def path() -> Path:
    return Path(str(files(__name__) / "shapes"))
