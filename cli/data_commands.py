"""``augpipe split`` and ``augpipe preview``."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import click

from augpipe.data.images import DEFAULT_MAX_PIXELS

MAX_PIXELS_HELP = (
    "Skip images with more pixels than this (read from the header, before decoding); "
    "the default is Pillow's decompression-bomb limit."
)


def _same_file(a: Path, b: Path) -> bool:
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop: it is not the source either way
        return False


def data_source(required: bool):
    """SOURCE as the command's argument or as ``--data``, the flag train, sweep and lr-find take,
    so that either spelling works everywhere a data set is read. The command gets ``source``."""

    def decorate(fn):
        @functools.wraps(fn)
        def command(*args, source, data, **kwargs):
            return fn(*args, source=_one_source(source, data, required), **kwargs)

        command = click.option(
            "--data", type=click.Path(path_type=Path), help="The data set, as SOURCE (give one of the two)."
        )(command)
        return click.argument("source", required=False, type=click.Path(path_type=Path))(command)

    return decorate


def _one_source(source: Path | None, data: Path | None, required: bool) -> Path | None:
    if source is not None and data is not None and not _same_file(source, data):
        raise click.UsageError(f"two data sets given, SOURCE {source} and --data {data}: give one")
    chosen = source if source is not None else data
    if chosen is None and required:
        raise click.UsageError("no data set: give it as SOURCE or --data PATH")
    return chosen


@click.command()
@data_source(required=True)
@click.option("--val", default=0.1, show_default=True, type=float, help="Validation fraction of the training pool.")
@click.option(
    "--test",
    default=0.1,
    show_default=True,
    type=float,
    help="Test fraction (unused where the source has a test split).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the hash order.")
@click.option(
    "--out", default="split.csv", show_default=True, type=click.Path(path_type=Path), help="Manifest to write."
)
@click.option(
    "--split-file",
    type=click.Path(path_type=Path),
    help="Earlier manifest: its items keep their split (its seed and ratios are reused).",
)
@click.option(
    "--strict", is_flag=True, help="Stop at the first unreadable image or exact duplicate instead of skipping it."
)
@click.option(
    "--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1), help=MAX_PIXELS_HELP
)
def split(source, val, test, seed, out, split_file, strict, max_pixels):
    """Split SOURCE into train / val / test and write the manifest."""
    import time

    from augpipe.data.prepare import describe_skipped, prepare_data
    from augpipe.data.split import (
        check_ratios,
        describe_duplicates,
        split_table,
        write_manifest,
    )
    from augpipe.errors import DataError
    from augpipe.report import check_output_path

    check_ratios(val, test)
    check_output_path(out)
    if _same_file(out, source):  # the manifest would replace the data set it lists
        raise DataError(f"--out {out}: is the data set {source} itself; choose another file name")
    start = time.perf_counter()
    data = prepare_data(
        source, val=val, test=test, seed=seed, split_file=split_file, strict=strict, cache_mb=0, max_pixels=max_pixels
    )
    write_manifest(out, data.source, data.assignment, seed=data.seed, val=data.val, test=data.test)
    click.echo(split_table(data.class_names, data.source.labels, data.assignment))
    click.echo(describe_duplicates(data.duplicates))
    if data.skipped:
        click.echo(f"skipped: {describe_skipped(data.skipped, data.too_large, data.max_pixels)}")
    click.echo(f"wrote {out} ({len(data.source)} images, {time.perf_counter() - start:.1f} s)")


@click.command()
@data_source(required=False)
@click.option("--n", "n", default=8, show_default=True, type=click.IntRange(min=1), help="Source images, one row each.")
@click.option(
    "--variants", default=6, show_default=True, type=click.IntRange(min=0), help="Augmented versions per image."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--aug",
    default="standard",
    show_default=True,
    help="Preset (none, light, standard, strong, cifar-translate, timm-a1, cifar-modern) or a spec .yaml.",
)
@click.option("--out", default="preview.png", show_default=True, type=click.Path(path_type=Path))
@click.option("--per-transform", is_flag=True, help="One column per transform, each applied alone.")
@click.option(
    "--describe", is_flag=True, help="Print what --aug does, op by op with every parameter, and its YAML; draw nothing."
)
@click.option(
    "--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1), help=MAX_PIXELS_HELP
)
def preview(source, n, variants, seed, aug, out, per_transform, describe, max_pixels):
    """Draw augmented versions of images from SOURCE (default: the bundled sample data), or with
    --describe print what the augmentation does."""
    if describe:
        from augpipe.augment.describe import describe_spec
        from augpipe.augment.spec import AugmentSpec

        click.echo(describe_spec(AugmentSpec.load(aug), name=aug), nl=False)
        return
    from augpipe.report import preview as draw

    path = draw(
        source, n=n, variants=variants, seed=seed, aug=aug, out=out, per_transform=per_transform, max_pixels=max_pixels
    )
    click.echo(str(path))


COMMANDS = [split, preview]
