"""Named training recipes: config files shipped with augpipe (``--recipe NAME``)."""

from importlib.resources import files
from pathlib import Path

from augpipe.errors import ConfigError


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in files(__name__).iterdir() if p.name.endswith(".yaml"))


def recipe_path(name: str) -> Path:
    if name not in recipe_names():
        raise ConfigError(f"unknown recipe {name!r}. Choose from: {', '.join(recipe_names())}")
    return Path(str(files(__name__) / f"{name}.yaml"))
