"""``augpipe cache info`` and ``augpipe cache clear``: the image index beside the user's cache."""

from __future__ import annotations

import click


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@click.group()
def cache():
    """The image index: what decoding each image file found, so that a command decodes only new or
    changed files ($AUGPIPE_CACHE_DIR, else $XDG_CACHE_HOME/augpipe, else ~/.cache/augpipe)."""


@cache.command()
def info():
    """Where the image index is, how many files it describes, its size."""
    from augpipe.data.index import index_info

    about = index_info()
    click.echo(f"image index: {about['path']}" + ("" if about["exists"] else " (not created yet)"))
    click.echo(f"entries: {about['entries']:,}")
    click.echo(f"size: {_size(about['bytes'])}")


@cache.command()
def clear():
    """Forget every file: the next command decodes its data set again."""
    from augpipe.data.index import clear_index, index_path

    removed = clear_index()
    click.echo(f"cleared {index_path()}: {removed:,} entries removed")


COMMANDS = [cache]
