"""``augpipe train``, ``augpipe evaluate`` and ``augpipe plugins``.

Every field of ``TrainConfig`` is a ``train`` flag, generated from the dataclass and the comment
beside each field, so the config file, the flags and the Python API never drift apart."""

from __future__ import annotations

import inspect
import io
import re
import tokenize
from pathlib import Path

import click

from augpipe.config import TrainConfig


def _field_comments() -> dict[str, str]:
    """Each field's comment: the one beside its line, or beside a line of its default where the
    formatter wrapped it (``ema: float | None = (`` / ``None  # ...`` / ``)``). Comments on
    lines of their own are section headings, not help."""
    source = inspect.getsource(TrainConfig)
    names = set(TrainConfig.field_names())
    owner: dict[int, str] = {}  # line number -> the field whose statement it belongs to
    current = None
    for number, line in enumerate(source.splitlines(), 1):
        m = re.match(r"    (\w+)\s*:", line)
        if m and m.group(1) in names:
            current = m.group(1)
        elif re.match(r"    [^\s)\]}]", line):  # a heading comment, a method: the field's statement is over
            current = None
        if current is not None:
            owner[number] = current
    comments: dict[str, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row, col = token.start
        field_name = owner.get(row)
        if token.type == tokenize.COMMENT and field_name and token.line[:col].strip():
            comments.setdefault(field_name, token.string.lstrip("#").strip())
    return comments


def config_options(comma_lists: bool = False, help_overrides: dict | None = None):
    """A click option for every TrainConfig field. ``comma_lists``: scalar settings are read as
    text, so that a sweep can take ``--lr 0.01,0.1`` (each item is typed later); on/off and
    repeatable settings keep their form. ``help_overrides``: name -> help for a plain text option."""
    comments = _field_comments()
    defaults = TrainConfig()

    def decorate(func):
        for name in reversed(TrainConfig.field_names()):
            annotation = TrainConfig.__dataclass_fields__[name].type
            flag = "--" + name.replace("_", "-")
            default = getattr(defaults, name)
            help_text = comments.get(name, "")
            if name == "recipe":
                from augpipe.recipes import recipe_names

                help_text = "settings shipped with augpipe: " + ", ".join(recipe_names())
            if default is not None and not isinstance(default, list):
                help_text += f"  [default: {default}]"
            if help_overrides and name in help_overrides:
                option = click.option(flag, name, default=None, help=help_overrides[name])
            elif annotation == "bool":
                option = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text)
            elif annotation.startswith("list["):
                kind = float if "float" in annotation else str
                option = click.option(
                    flag, name, type=kind, multiple=True, default=None, help=help_text + " (repeatable)"
                )
            elif comma_lists:
                option = click.option(flag, name, default=None, metavar="V[,V...]", help=help_text)
            else:
                kind = int if annotation.startswith("int") else float if annotation.startswith("float") else str
                option = click.option(flag, name, type=kind, default=None, help=help_text)
            func = option(func)
        return func

    return decorate


_config_options = config_options()


def _set_quiet(ctx, param, value):
    if value:
        from augpipe.progress import set_quiet

        set_quiet(True)
    return value


# Also a flag of the commands themselves, where people put it: augpipe train ... --quiet
quiet_option = click.option(
    "--quiet",
    "-q",
    is_flag=True,
    expose_value=False,
    callback=_set_quiet,
    help="No progress bars, and no progress lines where stderr is not a terminal.",
)


@click.command(context_settings={"max_content_width": 110})
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="YAML file of settings (config.yaml of a run works); flags override it.",
)
@click.option(
    "--resume",
    "resume",
    type=click.Path(path_type=Path),
    metavar="RUN_DIR",
    help="Continue an interrupted run from its last.pt, exactly (only --device, --threads, --devices, --dist-timeout and the logger flags may be given with it).",
)
@quiet_option
@_config_options
def train(config_file, resume, **flags):
    """Train a classifier: augpipe train --plugin resnet [--data PATH] ...

    The defaults shown are augpipe's own: a plugin's defaults (lr, epochs, batch size ...,
    listed by `augpipe plugins`) and a --recipe take precedence over them, and --config and
    the flags over both."""
    from augpipe.training.run import train as run_train

    flags = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items()}
    flags = {k: v for k, v in flags.items() if v is not None and v != []}
    from augpipe.distributed import launched_ranks

    result = run_train(config_file=config_file, resume=resume, **flags)
    if launched_ranks().rank != 0:
        return  # under torchrun every process runs this command; rank 0 reports the run
    s = result.summary
    click.echo(f"run: {result.run_dir}")
    click.echo(f"epochs: {s['epochs_run']} ({s['stop_reason']}); best epoch {s['best_epoch']}")
    if s.get("mean_images_per_s"):
        click.echo(f"speed: {s['mean_images_per_s']:.0f} images/s (training, mean over epochs)")
    if "test_acc" in s:
        click.echo(f"test accuracy: {s['test_acc']:.4f} on {s['test_images']} images")
    if s.get("interrupted"):
        from augpipe.training.signals import EXIT_CODES

        click.echo(f"interrupted by {s['interrupted']}; resume with: {s['resume_command']}", err=True)
        raise SystemExit(EXIT_CODES.get(s["interrupted"], 130))
    if result.failed:
        # A run that fails in its first epoch has no checkpoint: do not promise one.
        kept = (
            f"best checkpoint kept in {result.run_dir}"
            if (Path(result.run_dir) / "best.pt").is_file()
            else f"no epoch completed, no checkpoint in {result.run_dir}"
        )
        raise click.ClickException(f"{s['stop_reason']} ({kept})")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="Data set to score (default: the run's).")
@click.option(
    "--checkpoint",
    default=None,
    help="best.pt or last.pt (default: the one the run scored, best.pt unless it ran with --no-restore-best).",
)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--tta",
    type=click.Choice(["none", "flip", "flip-translate"]),
    default=None,
    help="Test-time augmentation (default: the run's own).",
)
def evaluate(run_dir, data, checkpoint, device, tta):
    """Rescore a run's checkpoint on the test split."""
    from augpipe.training.run import evaluate as run_evaluate

    result = run_evaluate(run_dir, data=data, checkpoint=checkpoint, device=device, tta=tta)
    click.echo(
        f"test accuracy: {result['acc']:.4f} on {result['n']} images ({result['checkpoint']}, epoch {result['epoch']})"
    )
    click.echo(f"test loss: {result['loss']:.4f}")
    width = max(len(n) for n in result["class_names"])
    for name, acc in result["per_class_acc"].items():
        click.echo(f"  {name:<{width}}  {acc:.3f}")


@click.command(name="plugins")
def list_plugins():
    """List installed plugins: package, version and what each offers."""
    from augpipe.plugin_manager import get_plugins

    plugins = get_plugins()
    kinds = {
        "trainers": plugins.trainers,
        "optimizers": plugins.optimizers,
        "schedulers": plugins.schedulers,
        "augmentations": plugins.augmentations,
        "callbacks": plugins.callbacks,
    }
    for name, info in sorted(plugins.info.items()):
        version = f" {info.version}" if info.version else ""
        click.echo(f"{name}  ({info.package}{version})")
        if info.error:
            click.echo(f"    failed to load: {info.error}")
            continue
        for kind, registry in kinds.items():
            owned = [n for n in registry.names() if registry.owner[n] == name]
            if not owned:
                continue
            if kind == "trainers":
                for t in owned:
                    trainer = registry.get(t)
                    models = trainer.model_names()
                    shown = ", ".join(models[:8]) + (f" ... ({len(models)} models)" if len(models) > 8 else "")
                    click.echo(
                        f"    trainer {t}: {trainer.description}; models: {shown} (default {trainer.default_model})"
                    )
                    if trainer.defaults:
                        click.echo("      defaults: " + ", ".join(f"{k}={v}" for k, v in trainer.defaults.items()))
            else:
                click.echo(f"    {kind}: {', '.join(owned)}")


COMMANDS = [train, evaluate, list_plugins]
