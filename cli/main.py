"""The ``augpipe`` command. Commands stay thin: parse, call the library, print.

Heavy libraries (torch, timm, albumentations) are imported inside the commands that use them,
so that ``augpipe --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys

import click

from augpipe.errors import AugpipeError


class _LevelFormatter(logging.Formatter):
    def format(self, record):
        msg = record.getMessage()
        return msg if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {msg}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now, so that each invocation in one process (tests,
    notebooks) gets the messages, not the stream of the first."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbose: bool = False) -> None:
    log = logging.getLogger("augpipe")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_LevelFormatter())
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


class AugpipeGroup(click.Group):
    """Turns library errors into one line and exit code 1; Ctrl-C into exit code 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AugpipeError as err:
            raise click.ClickException(str(err)) from None
        except KeyboardInterrupt as err:
            # A stop signal before the first step or a second one: nothing of the run is lost
            # that a checkpoint held (SIGTERM: 143, as Slurm and Kubernetes expect).
            from augpipe.training.signals import EXIT_CODES

            name = getattr(err, "signal_name", "SIGINT")
            click.echo(f"interrupted by {name}", err=True)
            ctx.exit(EXIT_CODES.get(name, 130))


@click.group(cls=AugpipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="augpipe", prog_name="augpipe")
@click.option("-v", "--verbose", is_flag=True, help="More log output.")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bars, and no progress lines where stderr is not a terminal."
)
def main(verbose: bool, quiet: bool) -> None:
    """Train image classifiers with data augmentation at the centre."""
    from augpipe.progress import set_quiet

    setup_logging(verbose)
    set_quiet(quiet)


def _register_commands() -> None:
    from augpipe.cli import (
        cache_commands,
        data_commands,
        lr_find_commands,
        model_commands,
        shard_commands,
        sweep_commands,
        train_commands,
    )

    for module in (
        data_commands,
        shard_commands,
        cache_commands,
        train_commands,
        sweep_commands,
        lr_find_commands,
        model_commands,
    ):
        for command in module.COMMANDS:
            main.add_command(command)
    from augpipe.plugin_manager import get_plugins

    get_plugins().add_commands(main)


_register_commands()
