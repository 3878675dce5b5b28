"""``augpipe sweep``: every ``train`` flag, where a comma list makes it an axis of the grid.

The flags are generated from ``TrainConfig`` as ``train``'s are, but as text, so that
``--lr 0.01,0.1`` can be given; ``augpipe.sweeps`` reads each item as the field's type."""

from __future__ import annotations

from pathlib import Path

import click

from augpipe.cli.train_commands import config_options, quiet_option

# Named once for the whole sweep, not per run.
SWEEP_LEVEL = {
    "out": "Folder of sweeps.  [default: sweeps]",
    "name": "Sweep directory OUT/NAME; default: what varies and a hash of the grid, so the same "
    "command finds the same directory.",
}


@click.command(context_settings={"max_content_width": 110})
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="YAML file of settings for every run; flags override it.",
)
@click.option(
    "--seeds", type=int, default=1, show_default=True, help="Runs of each setting, with seeds --seed, --seed + 1, ..."
)
@click.option("--yes", is_flag=True, help="Run a grid of more than 50 runs.")
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs trained at once, in as many worker processes, each with --threads (default: the "
    "cores / PARALLEL) torch threads; the tables are the same as a serial sweep's.",
)
@click.option(
    "--ablate",
    type=click.Choice(["without", "alone", "both"]),
    is_flag=False,
    flag_value="without",
    default=None,
    help="What each augmentation op buys: the one --aug (default: the config's) "
    "trained whole (all), without any op (none) and without each op in turn (-OP); --ablate alone: "
    "each op alone (+OP) instead, --ablate both: both sets; writes ablation.md and ablation.png.",
)
@quiet_option
@config_options(comma_lists=True, help_overrides=SWEEP_LEVEL)
def sweep(config_file, seeds, yes, parallel, ablate, **flags):
    """Train a grid of runs and compare them: augpipe sweep --plugin cnn --activation relu,elu,tanh --seeds 3

    A comma list makes a setting an axis of the grid; every combination is trained, one run at a
    time (--parallel K: K at once), into OUT/NAME/<setting>,seed=<seed>/. The same command again skips the finished runs
    and resumes an unfinished one. Writes sweep.csv, sweep.md and sweep.png.

    augpipe sweep --ablate --aug standard --seeds 3 trains the augmentation whole, without any op
    and without each op in turn (--ablate alone: each op alone; --ablate both), and compares them
    in ablation.md and ablation.png."""
    from augpipe.sweeps import parse_values
    from augpipe.sweeps import sweep as run_sweep

    out, name = flags.pop("out") or "sweeps", flags.pop("name")
    settings = {}
    for key, value in flags.items():
        if value is None or value == ():
            continue
        settings[key] = (
            list(value) if isinstance(value, tuple) else parse_values(key, value) if isinstance(value, str) else value
        )
    result = run_sweep(
        config_file=config_file, seeds=seeds, yes=yes, out=out, name=name, ablate=ablate, parallel=parallel, **settings
    )
    click.echo(f"sweep: {result.sweep_dir}")
    click.echo(result.table, nl=False)
    if result.ablation:
        click.echo("")
        click.echo(result.ablation, nl=False)
    if result.interrupted:
        from augpipe.training.signals import EXIT_CODES

        click.echo(
            f"interrupted by {result.interrupted}: {len(result.rows)} of {len(result.runs)} runs finished; "
            f"the same command continues the sweep",
            err=True,
        )
        raise SystemExit(EXIT_CODES.get(result.interrupted, 130))


COMMANDS = [sweep]
