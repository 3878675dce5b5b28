"""``augpipe shard``: the split data set as WebDataset tar shards."""

from __future__ import annotations

from pathlib import Path

import click

from augpipe.cli.data_commands import MAX_PIXELS_HELP, data_source
from augpipe.data.images import DEFAULT_MAX_PIXELS


@click.command()
@data_source(required=True)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the shards: new, empty, or an earlier shard set (replaced).",
)
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
    "--split-file",
    type=click.Path(path_type=Path),
    help="Earlier manifest: its items keep their split (its seed and ratios are reused).",
)
@click.option(
    "--max-count",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per shard at most (more, smaller shards deal more evenly to ranks and workers).",
)
@click.option(
    "--max-size-mb",
    default=1024.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Image bytes per shard at most (a shard is closed once it reaches this).",
)
@click.option(
    "--strict", is_flag=True, help="Stop at the first unreadable image or exact duplicate instead of skipping it."
)
@click.option(
    "--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1), help=MAX_PIXELS_HELP
)
def shard(source, out, val, test, seed, split_file, max_count, max_size_mb, strict, max_pixels):
    """Split SOURCE and write it as WebDataset tar shards in OUT (one series a split, shards.json last)."""
    import time

    from augpipe.data.prepare import describe_skipped, prepare_data
    from augpipe.data.shards import check_out_dir, write_shards
    from augpipe.data.split import check_ratios, describe_duplicates, split_table

    check_ratios(val, test)
    check_out_dir(out, source)  # before the decoding, which can take minutes
    start = time.perf_counter()
    data = prepare_data(
        source, val=val, test=test, seed=seed, split_file=split_file, strict=strict, cache_mb=0, max_pixels=max_pixels
    )
    written = write_shards(data, out, max_count=max_count, max_size=max(1, int(max_size_mb * 2**20)))
    click.echo(split_table(data.class_names, data.source.labels, data.assignment))
    click.echo(describe_duplicates(data.duplicates))
    if data.skipped:
        click.echo(f"skipped: {describe_skipped(data.skipped, data.too_large, data.max_pixels)}")
    for split in ("train", "val", "test"):
        names = [p.name for p in written if p.name.startswith(f"{split}-")]
        if names:
            shown = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
            count = int((data.assignment == split).sum())
            click.echo(f"{split}: {count} images in {len(names)} shard(s) ({shown})")
    folder = written[0].parent if written else Path(out)
    click.echo(f"wrote {folder}/shards.json ({len(data.source)} images, {time.perf_counter() - start:.1f} s)")


COMMANDS = [shard]
