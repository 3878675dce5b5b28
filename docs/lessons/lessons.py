"""The tables and pictures of docs/lessons.md, from the sweeps that docs/lessons/make.sh ran.

    python docs/lessons/lessons.py LESSON RUNS HERE

LESSON is one of the functions in LESSONS; RUNS holds the sweep directories; HERE is where the
table (LESSON.md) and picture (LESSON.png) go. Every number of a table is a mean ± sample
standard deviation over seeds, and a difference is called an effect ("shown") only where it is
larger than the larger of the two spreads; otherwise "not shown at this budget"."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np

# Misra (2019), CIFAR-10 test accuracy (%) of SqueezeNet without batch norm, 50 epochs.
REFERENCE = {"sigmoid": 74.8, "tanh": 83.2, "relu": 86.7, "leaky_relu": 86.9, "prelu": 85.7, "elu": 86.4, "selu": 83.9}


# -- reading a sweep -------------------------------------------------------------------------------
def read_sweep(sweep_dir: Path) -> dict[str, list[dict]]:
    """Setting label -> its runs (one per seed), each with its sweep.csv row, its metrics.csv
    epochs and its per-iteration training losses (from last.pt)."""
    with open(sweep_dir / "sweep.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        varied = reader.fieldnames[: reader.fieldnames.index("seed")]
        rows = list(reader)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        label = ", ".join(f"{k}={row[k]}" for k in varied) if len(varied) > 1 else (row[varied[0]] if varied else "all")
        run_dir = Path(row["run_dir"])
        row["epochs"] = read_epochs(run_dir / "metrics.csv")
        row["iterations"] = read_iterations(run_dir / "last.pt")
        groups.setdefault(label, []).append(row)
    return groups


def read_epochs(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(fh)]


def read_iterations(path: Path) -> list[float]:
    import torch

    if not path.is_file():  # a run that failed before its first checkpoint
        return []
    saved = torch.load(path, map_location="cpu", weights_only=False)
    return [float(x) for x in saved["history"]["iteration_losses"]]


# -- numbers ---------------------------------------------------------------------------------------
def finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and v != "" and math.isfinite(float(v))]


def stats(values) -> tuple[float, float]:
    values = finite(values)
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def pm(values, digits: int = 3) -> str:
    mean, std = stats(values)
    if math.isnan(mean):
        return "–"
    if abs(mean) >= 1000:
        return f"{mean:.3g} ± {std:.2g}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def verdict(better, worse) -> str:
    """'shown' where the mean of ``better`` exceeds that of ``worse`` by more than the larger of
    their standard deviations (the seeds' spread)."""
    (mb, sb), (mw, sw) = stats(better), stats(worse)
    if math.isnan(mb) or math.isnan(mw):
        return "not measured"
    return "shown" if mb - mw > max(sb, sw) else "not shown at this budget"


def at_epoch(run: dict, key: str, epoch: int) -> float:
    for e in run["epochs"]:
        if int(e["epoch"]) == epoch:
            return e[key]
    return math.nan


def last(run: dict, key: str) -> float:
    return run["epochs"][-1][key] if run["epochs"] else math.nan


def test_acc(runs) -> list[float]:
    return finite(r["test_acc"] for r in runs)


def smooth(values, window: int) -> np.ndarray:
    """A moving average over ``window`` iterations (one epoch's worth reads best)."""
    values = np.asarray(values, dtype=float)
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def spearman(xs, ys) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


# -- pictures --------------------------------------------------------------------------------------
def figure(ncols: int, width: float = 5.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.2), dpi=100, squeeze=False)
    return fig, axes[0]


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    print(f"picture: {path}")


def plot_iterations(ax, groups: dict[str, list[dict]], window: int, *, cap: float | None = None) -> None:
    """Training loss against iterations: per setting the mean over seeds (thick) and each seed
    (thin), smoothed over ``window`` iterations."""
    for k, (label, runs) in enumerate(groups.items()):
        colour = f"C{k}"
        curves = [smooth(r["iterations"], window) for r in runs if r["iterations"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        for c in curves:
            ax.plot(
                np.arange(window, window + len(c)), np.minimum(c, cap) if cap else c, color=colour, lw=0.6, alpha=0.4
            )
        mean = np.mean([c[:n] for c in curves], axis=0)
        ax.plot(np.arange(window, window + n), np.minimum(mean, cap) if cap else mean, color=colour, lw=2, label=label)
    ax.set_xlabel("iteration (optimizer step)")
    ax.set_ylabel(f"training loss (mean of {window} steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_bars(ax, groups: dict[str, list[dict]], values_of, ylabel: str) -> None:
    labels = list(groups)
    for x, label in enumerate(labels):
        values = finite(values_of(groups[label]))
        if not values:
            continue
        mean, std = stats(values)
        ax.bar(x, mean, color=f"C{x}", alpha=0.8, yerr=std if len(values) > 1 else None, capsize=4)
        ax.scatter([x] * len(values), values, color="black", s=8, zorder=3)
        ax.text(x, mean + std + 0.005, f"{mean:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=8)
    everything = finite(v for label in labels for v in values_of(groups[label]))
    if everything:  # differences of a few points must be visible: the axis starts near the lowest seed
        ax.set_ylim(max(0.0, min(everything) - 0.05), max(everything) + 0.04)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")


def write_table(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    print(text)


def table_head(*cols: str) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]


# -- the lessons -----------------------------------------------------------------------------------
def batch(runs: Path, here: Path) -> None:
    """The same epochs are many small steps or few large ones."""
    groups = read_sweep(runs / "batch")
    lines = table_head(
        "batch size",
        "seeds",
        "iterations per epoch",
        "train loss after epoch 1",
        "train loss after the last epoch",
        "iterations in all",
        "test acc",
    )
    for label, rs in groups.items():
        per_epoch = len(rs[0]["iterations"]) // max(1, len(rs[0]["epochs"]))
        lines.append(
            f"| {label} | {len(rs)} | {per_epoch} | {pm(at_epoch(r, 'train_loss', 1) for r in rs)} | "
            f"{pm(last(r, 'train_loss') for r in rs)} | {len(rs[0]['iterations'])} | {pm(test_acc(rs))} |"
        )
    small, large = list(groups.values())[0], list(groups.values())[-1]
    step = min(len(r["iterations"]) for r in large)  # the largest batch's last iteration

    def at_step(rs):  # the training loss around iteration ``step`` (a mean of 10 steps), negated
        return [-float(np.mean(r["iterations"][step - 10 : step])) for r in rs]

    lines += [
        "",
        f"After epoch 1, the smallest batch is ahead (train loss, lower is better): "
        f"{verdict([-at_epoch(r, 'train_loss', 1) for r in small], [-at_epoch(r, 'train_loss', 1) for r in large])}; "
        f"after the last epoch: {verdict([-last(r, 'train_loss') for r in small], [-last(r, 'train_loss') for r in large])}.",
        f"At the same iteration ({step}), the largest batch is ahead: {verdict(at_step(large), at_step(small))} "
        f"(train loss over iterations {step - 9}-{step}: batch {list(groups)[-1]} {pm([-v for v in at_step(large)])}, "
        f"batch {list(groups)[0]} {pm([-v for v in at_step(small)])}).",
    ]
    fig, (ax_ep, ax_it) = figure(2)
    for k, (label, rs) in enumerate(groups.items()):
        xs = [e["epoch"] for e in rs[0]["epochs"]]
        ax_ep.plot(
            xs,
            np.mean([[e["train_loss"] for e in r["epochs"]] for r in rs], axis=0),
            color=f"C{k}",
            marker="o",
            lw=2,
            label=f"batch {label}",
        )
    ax_ep.set_xlabel("epoch")
    ax_ep.set_ylabel("training loss (epoch mean)")
    ax_ep.grid(alpha=0.3)
    ax_ep.legend(fontsize=8)
    plot_iterations(ax_it, {f"batch {k}": v for k, v in groups.items()}, window=10)
    ax_it.set_xscale("log")
    ax_ep.set_title("against epochs", fontsize=9)
    ax_it.set_title("against iterations (log scale)", fontsize=9)
    save(fig, here / "batch.png")
    write_table(here / "batch.md", lines)


def optimizers(runs: Path, here: Path) -> None:
    """Each optimizer at its own rate; SGD against SGD + momentum at the same lr and at the same
    effective step lr / (1 - momentum)."""
    sgd = read_sweep(runs / "opt-sgd")
    groups = {
        "sgd lr 0.01": sgd["0.01"],
        "sgd lr 0.1": sgd["0.1"],
        "momentum 0.9, lr 0.01": read_sweep(runs / "opt-momentum")["all"],
    }
    for label, rs in read_sweep(runs / "opt-adaptive").items():
        groups[f"{label} lr 0.001"] = rs
    groups["adagrad lr 0.01"] = read_sweep(runs / "opt-adagrad")["all"]
    effective = {"sgd lr 0.01": "0.01", "sgd lr 0.1": "0.1", "momentum 0.9, lr 0.01": "0.1"}
    lines = table_head(
        "optimizer", "effective step", "seeds", "train loss after 25 iterations", "after 100", "after 200", "test acc"
    )
    for label, rs in groups.items():
        lines.append(
            f"| {label} | {effective.get(label, '–')} | {len(rs)} | "
            f"{pm(at_epoch(r, 'train_loss', 1) for r in rs)} | {pm(at_epoch(r, 'train_loss', 4) for r in rs)} | "
            f"{pm(at_epoch(r, 'train_loss', 8) for r in rs)} | {pm(test_acc(rs))} |"
        )

    def loss100(label):  # lower is better: negated, so that verdict's "better" is the larger
        return [-at_epoch(r, "train_loss", 4) for r in groups[label]]

    lines += [
        "",
        f"Momentum against plain SGD at the same lr 0.01 (train loss after 100 iterations): "
        f"{verdict(loss100('momentum 0.9, lr 0.01'), loss100('sgd lr 0.01'))}.",
        f"Momentum (lr 0.01) against plain SGD at the same effective step (lr 0.1): momentum ahead: "
        f"{verdict(loss100('momentum 0.9, lr 0.01'), loss100('sgd lr 0.1'))}; SGD ahead: "
        f"{verdict(loss100('sgd lr 0.1'), loss100('momentum 0.9, lr 0.01'))}.",
        f"Adam (lr 0.001) against the better plain SGD (lr 0.01): "
        f"{verdict(loss100('adam lr 0.001'), loss100('sgd lr 0.01'))}.",
    ]
    fig, (ax_it, ax_bar) = figure(2)
    plot_iterations(ax_it, groups, window=10)
    plot_bars(ax_bar, groups, test_acc, "test accuracy")
    ax_it.set_title("training loss against iterations, mean over seeds", fontsize=9)
    save(fig, here / "optimizers.png")
    write_table(here / "optimizers.md", lines)


def lr(runs: Path, here: Path) -> None:
    """Too low, good, too high: one loss-against-iterations plot (plain SGD)."""
    groups = {f"lr {k}": v for k, v in read_sweep(runs / "opt-sgd").items()}
    lines = table_head(
        "plain SGD",
        "seeds",
        "train loss after 25 iterations",
        "after 200",
        "lowest (10-step mean)",
        "failed runs",
        "test acc",
    )
    for label, rs in groups.items():
        lowest = [float(np.min(smooth(r["iterations"], 10))) for r in rs if r["iterations"]]
        failed = sum(str(r.get("stop_reason", "")).startswith("fail") or r.get("test_acc") in ("", None) for r in rs)
        lines.append(
            f"| {label} | {len(rs)} | {pm(at_epoch(r, 'train_loss', 1) for r in rs)} | "
            f"{pm(last(r, 'train_loss') for r in rs)} | {pm(lowest)} | {failed} | {pm(test_acc(rs))} |"
        )
    labels = list(groups)
    # good: the rate that ends lowest (the sweep lists the rates from low to high)
    low, high = labels[0], labels[-1]
    good = min(labels, key=lambda label: stats(last(r, "train_loss") for r in groups[label])[0])

    def end_loss(label):
        return [-last(r, "train_loss") for r in groups[label]]

    lines += [
        "",
        f"The good rate ({good}) ends lower than the low one ({low}): {verdict(end_loss(good), end_loss(low))}; "
        f"lower than the high one ({high}): {verdict(end_loss(good), end_loss(high))}.",
    ]
    fig, (ax,) = figure(1, width=7)
    plot_iterations(ax, groups, window=10, cap=50.0)
    ax.set_yscale("log")  # the diverging start is 10-100 times the others' losses
    ax.set_title("plain SGD: training loss against iterations (log scale)", fontsize=9)
    save(fig, here / "lr.png")
    write_table(here / "lr.md", lines)


def schedules(runs: Path, here: Path) -> None:
    """Constant, step, cosine and one-cycle at the same peak rate."""
    groups = read_sweep(runs / "schedules")
    lines = table_head("schedule", "seeds", "train loss, last epoch", "best val acc", "test acc")
    for label, rs in groups.items():
        lines.append(
            f"| {label} | {len(rs)} | {pm(last(r, 'train_loss') for r in rs)} | "
            f"{pm(finite(r['best_val_acc'] for r in rs))} | {pm(test_acc(rs))} |"
        )
    const = groups["none"]
    lines.append("")
    for label in [k for k in groups if k != "none"]:
        lines.append(
            f"{label} against constant: lower last-epoch train loss "
            f"{verdict([-last(r, 'train_loss') for r in groups[label]], [-last(r, 'train_loss') for r in const])}; "
            f"higher test accuracy {verdict(test_acc(groups[label]), test_acc(const))}."
        )
    fig, (ax_it, ax_lr, ax_bar) = figure(3)
    plot_iterations(ax_it, groups, window=25)
    for k, (label, rs) in enumerate(groups.items()):
        ax_lr.plot(
            [e["epoch"] for e in rs[0]["epochs"]],
            [e["lr"] for e in rs[0]["epochs"]],
            color=f"C{k}",
            marker="o",
            label=label,
        )
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate at the epoch's end")
    ax_lr.grid(alpha=0.3)
    ax_lr.legend(fontsize=8)
    plot_bars(ax_bar, groups, test_acc, "test accuracy")
    save(fig, here / "schedules.png")
    write_table(here / "schedules.md", lines)


def stop_epoch(epochs: list[dict], patience: int) -> tuple[int, int]:
    """Where early stopping on val_loss (min_delta 0) stops and which epoch it keeps."""
    best, best_epoch = math.inf, 0
    for e in epochs:
        epoch = int(e["epoch"])
        if e["val_loss"] < best:
            best, best_epoch = e["val_loss"], epoch
        elif epoch - best_epoch >= patience:
            return epoch, best_epoch
    return int(epochs[-1]["epoch"]), best_epoch


def regularisation(runs: Path, here: Path) -> None:
    """Over-fitting, early stopping, dropout and augmentation: one sweep, four settings."""
    groups = read_sweep(runs / "regularisation")
    names = {
        "dropout=0.0, aug=none": "none",
        "dropout=0.5, aug=none": "dropout 0.5",
        "dropout=0.0, aug=cifar-translate": "augmentation",
        "dropout=0.5, aug=cifar-translate": "both",
    }
    groups = {names.get(k, k): v for k, v in groups.items()}
    short = 5  # epochs of the short budget: the regime note
    lines = table_head(
        "regularisation",
        "seeds",
        "train acc, last epoch",
        "val acc, last epoch",
        "gap (train - val acc)",
        "lowest val loss (epoch)",
        "val loss, last epoch",
        f"val acc at epoch {short}",
        "test acc",
    )
    for label, rs in groups.items():
        best_epochs = [min(r["epochs"], key=lambda e: e["val_loss"])["epoch"] for r in rs]
        lines.append(
            f"| {label} | {len(rs)} | {pm(last(r, 'train_acc') for r in rs)} | {pm(last(r, 'val_acc') for r in rs)} | "
            f"{pm(last(r, 'train_acc') - last(r, 'val_acc') for r in rs)} | "
            f"{pm(min(e['val_loss'] for e in r['epochs']) for r in rs)} ({pm(best_epochs, 1)}) | "
            f"{pm(last(r, 'val_loss') for r in rs)} | {pm(at_epoch(r, 'val_acc', short) for r in rs)} | "
            f"{pm(test_acc(rs))} |"
        )
    base = groups["none"]
    stops = [stop_epoch(r["epochs"], 5) for r in base]
    kept_acc = [at_epoch(r, "val_acc", kept) for r, (_, kept) in zip(base, stops)]
    lines += [
        "",
        "Early stopping on the unregularised runs (val_loss, patience 5), from their curves: stops at epoch "
        f"{pm([s for s, _ in stops], 1)} of {len(base[0]['epochs'])}, keeping epoch {pm([k for _, k in stops], 1)} "
        f"(val acc there {pm(kept_acc)}; best val acc of the whole run {pm(finite(r['best_val_acc'] for r in base))}).",
        "",
    ]

    def gap(label):
        return [-(last(r, "train_acc") - last(r, "val_acc")) for r in groups[label]]

    for label in [k for k in groups if k != "none"]:
        lines.append(
            f"{label} against none: narrower gap {verdict(gap(label), gap('none'))}; higher test accuracy "
            f"{verdict(test_acc(groups[label]), test_acc(base))}; at epoch {short}, higher val acc "
            f"{verdict([at_epoch(r, 'val_acc', short) for r in groups[label]], [at_epoch(r, 'val_acc', short) for r in base])}, "
            f"lower val acc {verdict([at_epoch(r, 'val_acc', short) for r in base], [at_epoch(r, 'val_acc', short) for r in groups[label]])}."
        )
    plot_regularisation(groups, stops, here / "regularisation.png")
    plot_overfit(base, stops, here / "overfit.png")
    write_table(here / "regularisation.md", lines)


def dropout(runs: Path, here: Path) -> None:
    """Dropout between the hidden layers of a fully connected net, the lecture's setting, at two
    budgets (a dropped-out net learns more slowly)."""
    groups = {}
    for label, rs in read_sweep(runs / "dropout").items():
        # dropout alone, or dropout and epochs, as the sweep's axes
        values = dict(part.split("=") for part in label.split(", ")) if "=" in label else {"dropout": label}
        groups[(int(values.get("epochs", len(rs[0]["epochs"]))), float(values["dropout"]))] = rs
    short = 5  # epochs of the short budget (a constant rate: the curve there is a 5-epoch run)
    lines = table_head(
        "mlp",
        "epochs",
        "seeds",
        "train acc, last epoch",
        "val acc, last epoch",
        "gap (train - val acc)",
        "val loss, last epoch",
        f"val acc at epoch {short}",
        "test acc",
    )
    for (epochs, rate), rs in sorted(groups.items()):
        lines.append(
            f"| dropout {rate} | {epochs} | {len(rs)} | {pm(last(r, 'train_acc') for r in rs)} | "
            f"{pm(last(r, 'val_acc') for r in rs)} | {pm(last(r, 'train_acc') - last(r, 'val_acc') for r in rs)} | "
            f"{pm(last(r, 'val_loss') for r in rs)} | {pm(at_epoch(r, 'val_acc', short) for r in rs)} | "
            f"{pm(test_acc(rs))} |"
        )

    def gap(rs):
        return [-(last(r, "train_acc") - last(r, "val_acc")) for r in rs]

    lines.append("")
    budgets = sorted({epochs for epochs, _ in groups})
    for epochs in budgets:
        none, half = groups[(epochs, 0.0)], groups[(epochs, 0.5)]
        lines.append(
            f"{epochs} epochs, dropout 0.5 against none: narrower gap {verdict(gap(half), gap(none))}; "
            f"lower last-epoch val loss {verdict([-last(r, 'val_loss') for r in half], [-last(r, 'val_loss') for r in none])}; "
            f"higher test accuracy {verdict(test_acc(half), test_acc(none))}; lower test accuracy "
            f"{verdict(test_acc(none), test_acc(half))}; at epoch {short}, lower val acc "
            f"{verdict([at_epoch(r, 'val_acc', short) for r in none], [at_epoch(r, 'val_acc', short) for r in half])}."
        )
    longest = budgets[-1]
    shown = {f"dropout {rate}": rs for (epochs, rate), rs in sorted(groups.items()) if epochs == longest}
    more = runs / "dropout-10k"
    has_more = (more / "sweep.csv").is_file()
    fig, axes = figure(4 if has_more else 3)
    ax_loss, ax_acc, ax_bar = axes[:3]
    for k, (label, rs) in enumerate(shown.items()):
        for ax, what in ((ax_loss, "loss"), (ax_acc, "acc")):
            for key, ls in ((f"train_{what}", "-"), (f"val_{what}", "--")):
                xs, ys = mean_curve(rs, key)
                ax.plot(xs, ys, color=f"C{k}", ls=ls, lw=1.8, label=f"{label}, {key.split('_')[0]}")
    for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{what}: training solid, validation dashed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_acc.set_ylim(0, 1.02)
    ax_loss.set_title(f"mlp, {longest} epochs, mean of seeds", fontsize=9)
    plot_bars(
        ax_bar,
        {f"dropout {rate}, {epochs} ep": rs for (epochs, rate), rs in sorted(groups.items())},
        test_acc,
        "test accuracy",
    )
    ax_bar.set_title("800 training images", fontsize=9)
    if has_more:
        plot_dropout_more_data(axes[3], more)
    save(fig, here / "dropout.png")
    if has_more:
        lines += dropout_more_data(more)
    write_table(here / "dropout.md", lines)


def dropout_more_data(sweep_dir: Path) -> list[str]:
    """The second point of the dropout lesson: 8,000 training images and the whole test set
    (10,000 images, so that the scoring's own noise is about 0.5 points, not 1.1 as on 2,000),
    dropout 0.2 and 0.5 against none, a cosine rate."""
    groups = {float(label): rs for label, rs in read_sweep(sweep_dir).items()}
    lines = [
        "",
        "8,000 training images, 20 epochs, cosine rate, scored on the whole test set (10,000 images):",
        "",
        *table_head("mlp", "seeds", "train acc, last epoch", "gap (train - val acc)", "best val acc", "test acc"),
    ]
    for rate, rs in sorted(groups.items()):
        lines.append(
            f"| dropout {rate} | {len(rs)} | {pm(last(r, 'train_acc') for r in rs)} | "
            f"{pm(last(r, 'train_acc') - last(r, 'val_acc') for r in rs)} | "
            f"{pm(float(r['best_val_acc']) for r in rs)} | {pm(test_acc(rs))} |"
        )
    none = groups[0.0]
    lines.append("")
    for rate in sorted(r for r in groups if r > 0):
        with_dropout = groups[rate]
        paired = [float(a["test_acc"]) - float(b["test_acc"]) for a, b in zip(with_dropout, none)]
        lines.append(
            f"Dropout {rate} against none: narrower gap "
            f"{verdict([-(last(r, 'train_acc') - last(r, 'val_acc')) for r in with_dropout], [-(last(r, 'train_acc') - last(r, 'val_acc')) for r in none])}; "
            f"higher test accuracy {verdict(test_acc(with_dropout), test_acc(none))} "
            f"(per seed, dropout minus none: {', '.join(f'{d:+.3f}' for d in paired)})."
        )
    return lines


def plot_dropout_more_data(ax, sweep_dir: Path) -> None:
    groups = {
        f"dropout {float(label)}": rs
        for label, rs in sorted(read_sweep(sweep_dir).items(), key=lambda kv: float(kv[0]))
    }
    plot_bars(ax, groups, test_acc, "test accuracy (10,000 images)")
    ax.set_title("mlp, 8,000 training images, 20 epochs", fontsize=9)


def mean_curve(runs, key) -> tuple[list[float], np.ndarray]:
    n = min(len(r["epochs"]) for r in runs)
    xs = [e["epoch"] for e in runs[0]["epochs"][:n]]
    return xs, np.mean([[e[key] for e in r["epochs"][:n]] for r in runs], axis=0)


def plot_overfit(base, stops, path: Path) -> None:
    fig, (ax_loss, ax_acc) = figure(2)
    for ax, what in ((ax_loss, "loss"), (ax_acc, "acc")):
        for key, colour in ((f"train_{what}", "tab:blue"), (f"val_{what}", "tab:orange")):
            for r in base:
                ax.plot(
                    [e["epoch"] for e in r["epochs"]], [e[key] for e in r["epochs"]], color=colour, lw=0.6, alpha=0.4
                )
            xs, ys = mean_curve(base, key)
            ax.plot(xs, ys, color=colour, lw=2, label=key.replace("_", " ") + " (mean of seeds)")
        for k, (stop, kept) in enumerate(stops):
            ax.axvline(kept, color="tab:green", ls="--", lw=1, label="kept (lowest val loss)" if k == 0 else None)
            ax.axvline(stop, color="tab:red", ls=":", lw=1, label="early stop (patience 5)" if k == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_acc.set_ylim(0, 1.02)
    ax_loss.set_title("no regularisation: training and validation, one thin line per seed", fontsize=9)
    save(fig, path)


def plot_regularisation(groups, stops, path: Path) -> None:
    fig, (ax_loss, ax_acc, ax_bar) = figure(3)
    for k, (label, rs) in enumerate(groups.items()):
        for ax, what in ((ax_loss, "loss"), (ax_acc, "acc")):
            for key, ls in ((f"train_{what}", "-"), (f"val_{what}", "--")):
                xs, ys = mean_curve(rs, key)
                ax.plot(xs, ys, color=f"C{k}", ls=ls, lw=1.8, label=f"{label}, {key.split('_')[0]}")
    for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{what}: training solid, validation dashed")
        ax.grid(alpha=0.3)
    ax_acc.set_ylim(0, 1.02)
    ax_loss.legend(fontsize=7, ncol=2)
    plot_bars(ax_bar, groups, test_acc, "test accuracy (best-val-acc epoch's weights)")
    save(fig, path)


def activations(runs: Path, here: Path) -> None:
    """The CPU version of the activation comparison, its Spearman rho against the reference."""
    groups = read_sweep(runs / "activations")
    names = [k for k in groups if k in REFERENCE]
    short = 2
    lines = table_head("activation", "reference (%)", "seeds", f"val acc at epoch {short}", "best val acc", "test acc")
    for name in sorted(names, key=lambda n: -REFERENCE[n]):
        rs = groups[name]
        lines.append(
            f"| {name} | {REFERENCE[name]} | {len(rs)} | {pm(at_epoch(r, 'val_acc', short) for r in rs)} | "
            f"{pm(finite(r['best_val_acc'] for r in rs))} | {pm(test_acc(rs))} |"
        )
    ref = [REFERENCE[n] for n in names]
    mean_rho = spearman(ref, [stats(test_acc(groups[n]))[0] for n in names])
    seeds = sorted({int(r["seed"]) for n in names for r in groups[n]})
    per_seed = []
    for seed in seeds:
        accs = [next((float(r["test_acc"]) for r in groups[n] if int(r["seed"]) == seed), math.nan) for n in names]
        if all(math.isfinite(a) for a in accs):
            per_seed.append(spearman(ref, accs))
    short_rho = spearman(ref, [stats(at_epoch(r, "val_acc", short) for r in groups[n])[0] for n in names])
    no_sigmoid = [n for n in names if n != "sigmoid"]
    rho_wo = spearman([REFERENCE[n] for n in no_sigmoid], [stats(test_acc(groups[n]))[0] for n in no_sigmoid])
    lines += [
        "",
        f"Spearman rho of the mean test accuracies against the reference: {mean_rho:.2f}; "
        f"per seed: {', '.join(f'{r:.2f}' for r in per_seed)} (mean {np.mean(per_seed):.2f}); "
        f"without sigmoid: {rho_wo:.2f}; from the validation accuracy at epoch {short}: {short_rho:.2f}.",
    ]
    others = sorted((n for n in names if n != "sigmoid"), key=lambda n: stats(test_acc(groups[n]))[0])
    family = [n for n in ("relu", "leaky_relu", "prelu", "elu") if n in groups]
    means = [stats(test_acc(groups[n]))[0] for n in family]
    if "sigmoid" in groups and others:
        lines.append(
            f"Sigmoid last (against the next lowest, {others[0]}): "
            f"{verdict(test_acc(groups[others[0]]), test_acc(groups['sigmoid']))}."
        )
    if "tanh" in groups and "relu" in groups:
        lines.append(f"tanh behind ReLU: {verdict(test_acc(groups['relu']), test_acc(groups['tanh']))}.")
    if family:
        lines.append(
            f"The ReLU family ({', '.join(family)}): means {min(means):.3f} to {max(means):.3f}, the largest "
            f"standard deviation among them {max(stats(test_acc(groups[n]))[1] for n in family):.3f}."
        )
    if (runs / "activations-long" / "sweep.csv").is_file():
        lines += ["", *activations_long(runs / "activations-long")]
    fig, (ax_acc, ax_bar) = figure(2)
    for k, name in enumerate(names):
        xs, ys = mean_curve(groups[name], "val_acc")
        ax_acc.plot(xs, ys, color=f"C{k}", lw=2, marker="o", ms=3, label=name)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy (mean of seeds)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    plot_bars(ax_bar, {n: groups[n] for n in names}, test_acc, "test accuracy")
    ax_bar.set_title(f"Spearman rho against the reference: {mean_rho:.2f}", fontsize=9)
    save(fig, here / "activations.png")
    write_table(here / "activations.md", lines)


def activations_long(sweep_dir: Path) -> list[str]:
    """The second budget: 20 epochs with mild augmentation, closer to the reference's training."""
    groups = read_sweep(sweep_dir)
    names = [k for k in groups if k in REFERENCE]
    lines = [
        "20 epochs, augmented (cifar-translate):",
        "",
        *table_head("activation", "reference (%)", "seeds", "best val acc", "test acc"),
    ]
    for name in sorted(names, key=lambda n: -REFERENCE[n]):
        rs = groups[name]
        lines.append(
            f"| {name} | {REFERENCE[name]} | {len(rs)} | {pm(finite(r['best_val_acc'] for r in rs))} | "
            f"{pm(test_acc(rs))} |"
        )
    ref = [REFERENCE[n] for n in names]
    seeds = sorted({int(r["seed"]) for n in names for r in groups[n]})
    per_seed = []
    for seed in seeds:
        accs = [next((float(r["test_acc"]) for r in groups[n] if int(r["seed"]) == seed), math.nan) for n in names]
        if all(math.isfinite(a) for a in accs):
            per_seed.append(spearman(ref, accs))
    rho = spearman(ref, [stats(test_acc(groups[n]))[0] for n in names])
    no_sigmoid = [n for n in names if n != "sigmoid"]
    rho_wo = spearman([REFERENCE[n] for n in no_sigmoid], [stats(test_acc(groups[n]))[0] for n in no_sigmoid])
    lines += [
        "",
        f"Spearman rho at 20 epochs, augmented: {rho:.2f}; per seed: "
        f"{', '.join(f'{r:.2f}' for r in per_seed)}; without sigmoid: {rho_wo:.2f}.",
    ]
    if "relu" in groups and "tanh" in groups:
        lines.append(f"tanh behind ReLU: {verdict(test_acc(groups['relu']), test_acc(groups['tanh']))}.")
    return lines


LESSONS = {f.__name__: f for f in (batch, optimizers, lr, schedules, regularisation, dropout, activations)}


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] not in LESSONS:
        raise SystemExit(f"usage: lessons.py {{{','.join(LESSONS)}}} RUNS HERE")
    LESSONS[argv[0]](Path(argv[1]), Path(argv[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
