"""``augpipe lr-find``: the learning-rate range test on the settings ``augpipe train`` takes."""

from __future__ import annotations

from pathlib import Path

import click

from augpipe.cli.train_commands import _config_options

# Kept in step with augpipe.training.lr_find.DEFAULTS by a test; not imported from there, so that
# `augpipe --help` does not load torch.
START_LR, END_LR, ITERATIONS, SMOOTH, DIVERGE, OUT = 1e-7, 10.0, 100, 0.05, 4.0, "lr_find"


def _out_is_this_tests_folder(func):
    """The train flags include --out (where run directories go); here it is the folder for
    lr_find.png and lr_find.csv, and a config file's ``out`` is not used."""
    for param in getattr(func, "__click_params__", []):
        if param.name == "out":
            param.help = f"Folder for lr_find.png and lr_find.csv.  [default: {OUT}]"
    return func


@click.command(name="lr-find", context_settings={"max_content_width": 110})
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="YAML file of settings (config.yaml of a run works); flags override it.",
)
@click.option("--start-lr", type=float, default=START_LR, show_default=True, help="First learning rate of the ramp.")
@click.option("--end-lr", type=float, default=END_LR, show_default=True, help="Last learning rate of the ramp.")
@click.option(
    "--iterations",
    type=int,
    default=ITERATIONS,
    show_default=True,
    help="Optimizer steps, the rate growing exponentially from --start-lr to --end-lr (the loader cycles).",
)
@click.option(
    "--smooth",
    type=float,
    default=SMOOTH,
    show_default=True,
    help="Weight of each new loss in the moving average (1 - beta; fastai's beta 0.98 is 0.02).",
)
@click.option(
    "--diverge",
    type=float,
    default=DIVERGE,
    show_default=True,
    help="Stop when the smoothed loss passes this many times its best.",
)
@_out_is_this_tests_folder
@_config_options
def lr_find(config_file, start_lr, end_lr, iterations, smooth, diverge, out, **flags):
    """Learning-rate range test: augpipe lr-find --plugin cnn [train flags ...]

    Trains the model `augpipe train` would build, on its data and augmentation, for
    --iterations steps while the rate ramps up (no scheduler), then plots the loss against the
    rate and suggests one. The scheduler, epoch and early-stopping flags are accepted and unused."""
    from augpipe.training.lr_find import lr_find as run_lr_find

    flags = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items()}
    flags = {k: v for k, v in flags.items() if v is not None and v != []}
    r = run_lr_find(
        config_file=config_file,
        start_lr=start_lr,
        end_lr=end_lr,
        iterations=iterations,
        smooth=smooth,
        diverge=diverge,
        out=out or OUT,
        **flags,
    )
    click.echo(
        f"lr-find: {len(r.lrs)} of {r.planned} iterations, lr {r.lrs[0]:.3g} to {r.lrs[-1]:.3g} ({r.stop_reason})"
    )
    steepest = f"{r.steepest_lr:.3g}" if r.steepest_lr is not None else "none (no descent measured)"
    click.echo(f"steepest descent:  {steepest}")
    minimum = (
        f"{r.minimum_div10:.3g} (smoothed loss lowest at lr {r.minimum_lr:.3g})"
        if r.minimum_div10 is not None
        else "none (lowest at the first point)"
    )
    click.echo(f"loss minimum / 10: {minimum}")
    if r.suggestion is not None:
        click.echo(f"suggested lr: {r.suggestion:.3g} ({r.rule})" + (f"; {r.note}" if r.note else ""))
    else:
        click.echo(f"suggested lr: none; {r.note}")
    click.echo(f"plot: {r.paths['plot']}")
    click.echo(f"table: {r.paths['csv']}")


COMMANDS = [lr_find]
