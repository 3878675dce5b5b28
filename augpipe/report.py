"""Pictures: the augmentation preview grid, loss curves and the confusion matrix."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from augpipe.errors import ConfigError, DataError

log = logging.getLogger("augpipe")


def check_output_path(path) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"{path}: the directory {path.parent} does not exist")
    if path.is_dir():  # found before the work, not as an OSError when the file is finally moved
        raise DataError(f"{path}: is a directory, not a file name")
    return path


def save_figure(fig, path: Path) -> Path:
    """Write atomically: a failure never leaves a half-written picture behind."""
    import matplotlib.pyplot as plt

    from augpipe.files import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


MAX_PREVIEW_ROWS, MAX_PREVIEW_VARIANTS = 200, 50


def _pick_rows(source, n: int, seed: int) -> list[int]:
    """``n`` items, round-robin over the classes so that the rows show different classes."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(source.labels == c)).tolist() for c in range(len(source.class_names))]
    order = []
    while len(order) < len(source) and any(by_class):
        for members in by_class:
            if members:
                order.append(members.pop())
    return order


def grid_figure(rows: list[tuple], column_titles: list[str], cell_inches: float = 1.0):
    """A figure with one row of images per entry, the row label at the left. An entry is
    ``(label, images)`` or ``(label, images, captions)``: a caption per image (empty for none),
    written above it in a band that only rows with captions get."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = len(column_titles)
    label_w, title_h, pad, caption_h = 1.2, 0.3, 0.04, 0.3
    captions = [list(row[2]) if len(row) > 2 and any(row[2]) else None for row in rows]
    heights = [cell_inches + (caption_h if c else 0.0) for c in captions]
    fig = plt.figure(figsize=(label_w + n_cols * cell_inches, title_h + sum(heights)), dpi=100)
    W, H = fig.get_size_inches()
    y = H - title_h
    for (label, images, *_), cells, height in zip(rows, captions, heights):
        y -= height
        fig.text(0.1 / W, (y + cell_inches / 2) / H, label, va="center", ha="left", fontsize=9)
        for c, img in enumerate(images):
            x = label_w + c * cell_inches
            ax = fig.add_axes([(x + pad) / W, (y + pad) / H, (cell_inches - 2 * pad) / W, (cell_inches - 2 * pad) / H])
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            if cells and c < len(cells) and cells[c]:
                # "0.62 circle + 0.38 star" is wider than a cell: one class a line.
                fig.text(
                    (x + cell_inches / 2) / W,
                    (y + cell_inches + caption_h / 2) / H,
                    cells[c].replace(" + ", "\n+ "),
                    ha="center",
                    va="center",
                    fontsize=6,
                    linespacing=1.1,
                )
    for c, title in enumerate(column_titles):
        fig.text(
            (label_w + (c + 0.5) * cell_inches) / W, (H - title_h / 2) / H, title, ha="center", va="center", fontsize=8
        )
    return fig


def preview(
    source=None,
    *,
    n: int = 8,
    variants: int = 6,
    seed: int = 0,
    aug="standard",
    out="preview.png",
    per_transform: bool = False,
    lookup=None,
    max_pixels: int | None = None,
) -> Path:
    """Draw ``n`` images of ``source`` (default: the bundled sample data) with ``variants``
    augmented versions each, or with each transform of the spec alone (``per_transform``).
    Images with more than ``max_pixels`` pixels (default: DEFAULT_MAX_PIXELS) are skipped.

    A spec with ``mixup`` or ``cutmix`` adds "mixed batch" rows below (one per four images, as
    many cells as the other rows): augmented images mixed as training mixes them, each titled
    with its mixed label. With ``per_transform`` they get a column each instead: every image
    mixed, by that op alone, with the next shown image of another class."""
    import albumentations as A

    from augpipe.augment.cpu import build_train_transform, op_transforms, seed_transform
    from augpipe.augment.spec import AugmentSpec
    from augpipe.data.datasets import open_dataset
    from augpipe.data.images import DEFAULT_MAX_PIXELS, TOO_LARGE, ImageStore

    out = check_output_path(out)
    if n < 1 or variants < 0:
        raise DataError("--n must be at least 1 and --variants at least 0")
    # One figure of n x (variants + 1) cells: a billion of them fills the memory before the OOM killer.
    if n > MAX_PREVIEW_ROWS or variants > MAX_PREVIEW_VARIANTS:
        from augpipe.config import shown_number

        raise ConfigError(
            f"--n must be at most {MAX_PREVIEW_ROWS} and --variants at most {MAX_PREVIEW_VARIANTS} "
            f"(one picture), got {shown_number(n)} and {shown_number(variants)}"
        )
    spec = AugmentSpec.load(aug)
    if source is None:
        from augpipe.sample_data import path as sample_path

        source = sample_path()
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    src = open_dataset(source)
    store = ImageStore(src, max_pixels=max_pixels)
    size = spec.size or min(store.native_size())
    batch_ops = spec.batch_ops()
    # Mixing needs a partner even when a single image is shown.
    wanted = max(n, 2) if batch_ops else n

    found = []  # (label index, image)
    for i in _pick_rows(src, wanted * 4, seed):
        img, problem = store.read(i)
        if img is None:
            if problem == TOO_LARGE:
                log.warning(
                    "skipped image %s: larger than --max-pixels (%s pixels)", src.describe(i), f"{max_pixels:,}"
                )
            else:
                log.warning("skipped unreadable image %s", src.describe(i))
            continue
        found.append((int(src.labels[i]), img))
        if len(found) == wanted:
            break
    if not found:
        raise DataError(f"{source}: no readable images")
    rows = [(src.class_names[label], img) for label, img in found[:n]]
    labels = [label for label, _ in found]

    if per_transform:
        ops = spec.active_ops()
        if not ops:
            raise DataError("the augmentation spec has no transforms to show")
        image_ops = [name for name in ops if name not in batch_ops]
        pipelines = []
        for k, name in enumerate(image_ops):
            t = A.Compose(
                op_transforms(spec, name, size, force=True)
                if name == "crop"
                else [A.SmallestMaxSize(max_size=size), A.CenterCrop(height=size, width=size)]
                + op_transforms(spec, name, size, force=True)
            )
            seed_transform(t, seed + k)
            pipelines.append(t)
        titles = ["original"] + image_ops + batch_ops
        grid = [(label, [img] + [t(image=img)["image"] for t in pipelines]) for label, img in rows]
        if batch_ops:
            _add_mixed_columns(grid, found, labels, src.class_names, spec, size, seed, len(image_ops))
    else:
        t = build_train_transform(spec, size, seed=seed, lookup=lookup)
        titles = ["original"] + [f"augmented {k + 1}" for k in range(variants)]
        grid = [(label, [img] + [t(image=img)["image"] for _ in range(variants)]) for label, img in rows]
        if batch_ops:
            augmented = np.stack([t(image=img)["image"] for _, img in found])
            grid += _mixed_rows(augmented, labels, src.class_names, spec, seed, -(-n // 4), len(titles))
    cell = float(np.clip(size / 64, 1.0, 2.0))
    return save_figure(grid_figure(grid, titles, cell), out)


def _mixed_rows(images: np.ndarray, labels, class_names, spec, seed: int, n_rows: int, n_cols: int) -> list:
    from augpipe.augment.mixing import preview_mixed

    examples = preview_mixed(images, labels, class_names, spec, seed, n_rows * n_cols)
    chunks = [examples[r * n_cols : (r + 1) * n_cols] for r in range(n_rows)]
    return [("mixed batch", [img for img, _ in chunk], [text for _, text in chunk]) for chunk in chunks if chunk]


def _add_mixed_columns(grid: list, found, labels, class_names, spec, size: int, seed: int, first_op: int) -> None:
    """Each row's image mixed with a partner by each batch op alone, at the size the per-image
    columns show (resized and centre-cropped, as they are)."""
    import albumentations as A

    from augpipe.augment.mixing import preview_mixed

    fit = A.Compose([A.SmallestMaxSize(max_size=size), A.CenterCrop(height=size, width=size)])
    images = np.stack([fit(image=img)["image"] for _, img in found])
    captions = [[""] * len(images_) for _, images_ in grid]
    for k, name in enumerate(spec.batch_ops()):
        examples = preview_mixed(images, labels, class_names, spec, seed + first_op + k, len(grid), mode=name)
        for r, (img, text) in enumerate(examples):
            grid[r][1].append(img)
            captions[r].append(text)
    grid[:] = [(label, images_, cells) for (label, images_), cells in zip(grid, captions)]


def plot_curves(
    epochs: list[dict],
    path,
    *,
    best_epoch: int | None = None,
    stop_epoch: int | None = None,
    iteration_losses: list[float] | None = None,
    title: str = "",
) -> Path:
    """Training against validation loss and accuracy per epoch; the best and the stopping epoch
    marked, so over-fitting (validation loss turning up while training loss falls) shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = check_output_path(path)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    xs = [e["epoch"] for e in epochs]

    def series(key):
        return [e.get(key) if e.get(key) is not None else np.nan for e in epochs]

    if iteration_losses and xs:
        it = np.arange(1, len(iteration_losses) + 1) / max(1, len(iteration_losses)) * len(xs)
        ax_loss.plot(
            it + xs[0] - 1, iteration_losses, color="tab:blue", alpha=0.2, lw=0.8, label="training loss (per iteration)"
        )
    ax_loss.plot(xs, series("train_loss"), "o-", color="tab:blue", label="training loss")
    ax_loss.plot(xs, series("val_loss"), "o-", color="tab:orange", label="validation loss")
    ax_acc.plot(xs, series("train_acc"), "o-", color="tab:blue", label="training accuracy")
    ax_acc.plot(xs, series("val_acc"), "o-", color="tab:orange", label="validation accuracy")
    for ax in (ax_loss, ax_acc):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1, label=f"best epoch ({best_epoch})")
        if stop_epoch is not None:
            ax.axvline(stop_epoch, color="tab:red", ls=":", lw=1.5, label=f"early stop ({stop_epoch})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(confusion: np.ndarray, class_names: list[str], path, title: str = "") -> Path:
    """The confusion matrix, rows normalised (true class), counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = check_output_path(path)
    k = len(class_names)
    side = min(14, 2.5 + 0.55 * k)
    fig, ax = plt.subplots(figsize=(side + 1, side), dpi=100)
    rows = confusion.sum(1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(confusion[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "test confusion matrix", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sweep(
    labels: list[str],
    curves: list[list[list[dict]]],
    test_acc: list[list[float | None]],
    path,
    *,
    title: str = "",
    legend_title: str | None = None,
) -> Path:
    """A sweep at a glance: validation loss and accuracy per epoch, one colour per setting (each
    seed a thin line, their mean a thick one), and the test accuracy per setting as a bar (mean
    over seeds, the error bar one standard deviation, each seed a dot).

    ``curves[i]``: the metrics.csv rows of each seed of setting ``labels[i]``; ``test_acc[i]``
    their test accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = check_output_path(path)
    n = len(labels)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "viridis")
    colours = [cmap(i) if n <= 20 else cmap(i / max(1, n - 1)) for i in range(n)]
    fig, (ax_loss, ax_acc, ax_bar) = plt.subplots(
        1, 3, figsize=(16, 4.8), dpi=100, gridspec_kw={"width_ratios": [1, 1, max(0.8, 0.12 * n)]}
    )
    for label, runs, colour in zip(labels, curves, colours):
        for ax, key in ((ax_loss, "val_loss"), (ax_acc, "val_acc")):
            by_epoch: dict[float, list[float]] = {}
            for epochs in runs:
                xs = [e["epoch"] for e in epochs if e.get(key) is not None and np.isfinite(e[key])]
                ys = [e[key] for e in epochs if e.get(key) is not None and np.isfinite(e[key])]
                if len(runs) > 1:
                    ax.plot(xs, ys, color=colour, lw=0.9, alpha=0.5)
                for x, y in zip(xs, ys):
                    by_epoch.setdefault(x, []).append(y)
            xs = sorted(by_epoch)
            # One point per epoch needs a marker to be seen; many would hide the lines.
            ax.plot(
                xs,
                [np.mean(by_epoch[x]) for x in xs],
                color=colour,
                lw=2,
                label=label,
                marker="o" if len(xs) <= 20 else None,
                ms=4,
            )
    for ax, what in ((ax_loss, "validation loss"), (ax_acc, "validation accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.set_ylim(0, 1)
    losses = [
        e["val_loss"]
        for runs in curves
        for epochs in runs
        for e in epochs
        if e.get("val_loss") is not None and np.isfinite(e["val_loss"])
    ]
    top = 3 * float(np.median(losses)) if losses else None
    clipped = bool(top) and max(losses) > top
    if clipped:
        # A diverging run (--lr too large) would flatten every other curve to a line at zero.
        bottom = min(losses)
        ax_loss.set_ylim(max(0.0, bottom - 0.05 * (top - bottom)), top)
    ax_loss.set_title(
        "validation loss (thin: each seed, thick: mean)"
        + (f"\nvalues above {top:.3g} are off the chart" if clipped else ""),
        fontsize=9,
    )
    ax_acc.set_title("validation accuracy (thin: each seed, thick: mean)", fontsize=9)
    ax_loss.legend(fontsize=8, title=legend_title, title_fontsize=8, ncol=1 if n <= 8 else 2)

    xs = np.arange(n)
    for x, values, colour in zip(xs, test_acc, colours):
        values = [v for v in values if v is not None and np.isfinite(v)]
        if not values:
            continue
        mean = float(np.mean(values))
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        ax_bar.bar(x, mean, color=colour, alpha=0.8, yerr=std if len(values) > 1 else None, capsize=4)
        ax_bar.scatter([x] * len(values), values, color="black", s=8, zorder=3)
        ax_bar.text(x, min(0.98, mean + std + 0.02), f"{mean:.2f}", ha="center", va="bottom", fontsize=8)
    tilt = n > 4 or max(map(len, labels), default=0) > 10
    ax_bar.set_xticks(xs, labels, rotation=30 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax_bar.set_ylim(0, 1.05)
    ax_bar.set_ylabel("test accuracy")
    ax_bar.set_title("test accuracy: mean ± std over seeds (dots: each seed)", fontsize=9)
    ax_bar.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
