"""``augpipe predict`` and ``augpipe export``: a finished run's model used outside training."""

from __future__ import annotations

from pathlib import Path

import click

CHECKPOINT_HELP = "best.pt or last.pt (default: the one the run scored)."


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes shown per image.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the predictions as CSV (path, class_1, probability_1, ...).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--checkpoint", default=None, help=CHECKPOINT_HELP)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--tta",
    type=click.Choice(["none", "flip", "flip-translate"]),
    default=None,
    help="Test-time augmentation (default: the run's own).",
)
def predict(run_dir, inputs, top_k, out, batch_size, checkpoint, device, tta):
    """Label images with a run's model: augpipe predict RUN_DIR IMAGE... | FOLDER...

    Images go through the run's own evaluation transform (resize, centre-crop, normalisation) at
    its precision. Folders are searched recursively; unreadable files are reported and skipped."""
    from augpipe.inference import image_files, load, write_predictions

    files = image_files(inputs)
    classifier = load(run_dir, checkpoint=checkpoint, device=device, tta=tta)
    predictions, skipped = classifier.predict_files(files, top_k=top_k, batch_size=batch_size)
    for path, why in skipped:
        click.echo(f"warning: skipped {path}: {why}", err=True)
    width = max([len(p.path) for p in predictions] + [len("image")])
    click.echo(f"{'image':<{width}}  top {min(top_k, len(classifier.class_names))} (probability)")
    for p in predictions:
        click.echo(f"{p.path:<{width}}  " + ", ".join(f"{name} {prob:.3f}" for name, prob in p.top))
    if out is not None:
        write_predictions(out, predictions, top_k)
        click.echo(f"predictions: {out}")
    click.echo(f"{len(predictions)} image(s) labelled" + (f", {len(skipped)} skipped (unreadable)" if skipped else ""))
    if not predictions:
        raise click.ClickException("no readable image among the inputs")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "format_", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write (default: RUN_DIR/model.onnx or RUN_DIR/model.pt).",
)
@click.option(
    "--input",
    "input_",
    type=click.Choice(["uint8", "float"]),
    default="uint8",
    show_default=True,
    help="Pixels the ONNX model takes: uint8 0-255 or float 0-1 (a TorchScript model takes both).",
)
@click.option("--checkpoint", default=None, help=CHECKPOINT_HELP)
def export(run_dir, format_, out, input_, checkpoint):
    """Write a run's model for other runtimes: augpipe export RUN_DIR --format onnx|torchscript

    The model takes NCHW images of the run's size, any batch size, and normalises them itself.
    It is then run on a few of the run's test images, and the largest difference in logits
    against PyTorch is printed (ONNX: with onnxruntime, pip install 'augpipe[export]')."""
    from augpipe.export import export as run_export

    r = run_export(run_dir, format=format_, out=out, input=input_, checkpoint=checkpoint)
    click.echo(
        f"exported: {r.path} ({r.format}, input {r.input} N x 3 x {r.image_size} x {r.image_size}, "
        f"any batch size; logits out)"
    )
    if r.max_abs_diff is None:
        click.echo("check: not run (pip install 'augpipe[export]' for onnxruntime)")
    else:
        click.echo(
            f"check: largest logit difference against PyTorch {r.max_abs_diff:.2e} on {r.check_images} "
            f"{r.check_source} ({r.checked_with})"
        )


COMMANDS = [predict, export]
