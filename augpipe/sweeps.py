"""``augpipe sweep``: a grid of training runs, each a normal run directory under one sweep
directory, and the tables and picture that compare them.

A sweep is identified by its resolved grid (``sweep.yaml``), so the same command finds the same
directory again: finished runs are skipped, an unfinished one is resumed from its ``last.pt``,
and one that left no checkpoint is started again. An interrupted sweep loses at most the run in
progress.

``ablate=True`` (``augpipe sweep --ablate``) makes the augmentation the axis: the spec as given
(``all``), without any op (``none``), and without each of its ops in turn (``-hflip``), and adds
``ablation.md`` and ``ablation.png``: what each op buys in test accuracy and in over-fitting.
``ablate="alone"`` trains each op alone instead (``+hflip``), ``ablate="both"`` both sets."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from augpipe.config import TrainConfig, typed_settings
from augpipe.errors import ConfigError, DataError, reject_unknown
from augpipe.training.rundir import read_summary, run_state

log = logging.getLogger("augpipe")

# A grid this large is more often a slip (one list too many) than a plan: ask first.
MAX_UNCONFIRMED_RUNS = 50
# Where and how fast a run computes, not what: a sweep continued on another machine or with
# another --threads is the same sweep (unless these are what the sweep varies).
# Where and how a run computes and reports, not what it computes: not part of a run's identity,
# and given again when a run is resumed.
RUNTIME_FIELDS = ("device", "threads", "devices", "dist_timeout", "logger", "tracking_uri", "experiment")
CSV_COLUMNS = [
    "seed",
    "best_val_acc",
    "best_val_loss",
    "test_acc",
    "test_loss",
    "epochs_run",
    "stop_reason",
    "train_seconds",
    "run_dir",
]


@dataclass
class PlannedRun:
    name: str  # the run directory's name, e.g. "activation=relu,seed=0"
    flags: dict  # what train() is given for this run (besides config, out and name)
    values: dict  # the varied settings, resolved (seed excluded)
    seed: int
    settings: dict = field(repr=False, default_factory=dict)  # every resolved setting that identifies the run
    cfg: TrainConfig | None = field(repr=False, default=None)
    labels: dict = field(default_factory=dict)  # varied setting -> its name, where a value has one ("-hflip")

    @property
    def setting(self) -> tuple:
        """The group this run belongs to: its varied settings, over seeds (a spec dict as its JSON,
        so that the group can be a key)."""
        return tuple((k, _json(v) if isinstance(v, (dict, list)) else v) for k, v in self.values.items())

    def shown(self, key: str):
        """A varied setting as the tables show it: its label, or the value."""
        return self.labels.get(key, _cell(self.values[key]))


@dataclass
class SweepResult:
    sweep_dir: Path
    runs: list[PlannedRun]
    rows: list[dict]  # one per finished run (sweep.csv)
    table: str  # sweep.md
    ran: int = 0
    resumed: int = 0
    skipped: int = 0
    interrupted: str | None = None  # the signal that stopped the sweep
    ablation: str | None = None  # ablation.md, for a sweep with ablate=True


# -- the grid ---------------------------------------------------------------------------------------
def _list_field(name: str) -> bool:
    return TrainConfig.__dataclass_fields__[name].type.startswith("list[")


def parse_values(name: str, text: str) -> list:
    """``--lr 0.01,0.1`` -> [0.01, 0.1], each item read as the field's type."""
    flag = "--" + name.replace("_", "-")
    items = [item.strip() for item in str(text).split(",")]
    if any(not item for item in items):
        raise ConfigError(f"{flag} {text!r}: an empty item in the comma list")
    return [typed_settings({name: item}, flag)[name] for item in items]


def _axis(name: str, values) -> list:
    """The values of one setting: a list (any length) or one value, type-checked, no repeats."""
    flag = "--" + name.replace("_", "-")
    if not isinstance(values, (list, tuple)) or _list_field(name):
        values = [values]
    if not values:
        raise ConfigError(f"{flag} needs at least one value")
    out = []
    for v in values:
        v = typed_settings({name: v}, flag)[name]
        if v in out:
            raise ConfigError(f"{flag}: {v!r} is given twice")
        out.append(v)
    return out


def _name_value(value) -> str:
    """A value as part of a folder name: a path by its last part, odd characters replaced."""
    if isinstance(value, (dict, list)):
        return "spec-" + _short_hash(value, 6)
    text = "none" if value is None else str(value)
    if "/" in text or "\\" in text:
        text = Path(text.replace("\\", "/")).stem or text
    text = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._") or "_"
    return text[:40]


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _short_hash(obj, n: int = 8) -> str:
    return hashlib.sha256(_json(obj).encode()).hexdigest()[:n]


# -- ablation ---------------------------------------------------------------------------------------
ABLATION_MODES = ("without", "alone", "both")


def ablation_mode(ablate) -> str | None:
    """``ablate`` as one of ``ABLATION_MODES`` (``True`` is ``"without"``), or None for no ablation."""
    if ablate is None or ablate is False:
        return None
    if ablate is True:
        return "without"
    if ablate in ABLATION_MODES:
        return ablate
    raise ConfigError(f"--ablate must be one of {', '.join(ABLATION_MODES)}, got {ablate!r}")


def ablation_specs(aug, mode: str = "without") -> dict[str, dict]:
    """The variants of an ablation of ``aug`` (a preset name, a spec file, a spec dict), as
    label -> spec dict: ``all`` (the spec as given), ``none`` (every op removed, the size and the
    normalisation kept), then per op that is on, in running order (an ``extra`` transform is the
    op of its name): ``-OP``, every op but OP (mode ``without``), or ``+OP``, OP alone (mode
    ``alone``), or both (mode ``both``). A ``-OP`` differs from ``all`` in OP only, a ``+OP`` from
    ``none`` in OP only; a variant equal to one already listed is not repeated."""
    from augpipe.augment.describe import op_sequence
    from augpipe.augment.spec import ALL_OPS, AugmentSpec

    mode = ablation_mode(mode) or "without"
    spec = AugmentSpec.load(aug)
    ops = op_sequence(spec)
    if not ops:
        raise ConfigError(f"--ablate: the augmentation {_shown_aug(aug)} has no ops to remove")
    none = copy.deepcopy(spec)
    for name in ALL_OPS:
        setattr(none, name, None)
    none.extra = []
    variants = {"all": spec.to_dict(), "none": none.to_dict()}

    def add(label: str, variant: AugmentSpec) -> None:
        as_dict = variant.to_dict()
        # With one op, removing it is "none"; removing either of two equal extras is one variant.
        if as_dict not in variants.values():
            variants[label] = as_dict

    if mode in ("without", "both"):
        for label, op in ops:
            without = copy.deepcopy(spec)
            if isinstance(op, dict):  # an extra transform: that entry of the list
                without.extra = [e for e in spec.extra if e is not op]
            else:
                setattr(without, label, None)
            add(f"-{label}", without)
    if mode in ("alone", "both"):
        for label, op in ops:
            alone = copy.deepcopy(none)
            if isinstance(op, dict):
                alone.extra = [copy.deepcopy(op)]
            else:
                setattr(alone, label, copy.deepcopy(getattr(spec, label)))
            add(f"+{label}", alone)
    return variants


def _shown_aug(aug) -> str:
    return "given as a mapping" if isinstance(aug, dict) else repr(str(aug))


def _ablated_aug(config, config_file, plugins, settings: dict):
    """The one augmentation an ablation takes apart: --aug, or the config's (a --config file, a
    recipe, the plugin's defaults, else the default preset)."""
    from augpipe.training.settings import build_config

    aug = settings.get("aug")
    if isinstance(aug, (list, tuple)):
        if len(aug) != 1:
            shown = ",".join("<mapping>" if isinstance(a, dict) else str(a) for a in aug)
            raise ConfigError(
                f"--ablate takes one --aug (a preset or a spec file) and makes its ops the axis, "
                f"got {len(aug)}: {shown}"
            )
        aug = aug[0]
    if aug is None:
        fixed = {k: v for k, v in settings.items() if not isinstance(v, (list, tuple)) or _list_field(k)}
        aug = build_config(config, config_file=config_file, plugins=plugins, **fixed).aug
    return aug


def _identity(cfg: TrainConfig, varied: list[str]) -> dict:
    """The settings that make a run what it is, with paths made absolute so that the same
    command from another folder is the same sweep."""
    from augpipe.augment.spec import PRESETS

    settings = cfg.to_dict()
    for key in ("out", "name") + tuple(k for k in RUNTIME_FIELDS if k not in varied):
        settings.pop(key)
    for key in ("data", "split_file"):
        if settings[key] is not None:
            settings[key] = str(Path(settings[key]).expanduser().resolve())
    if isinstance(settings["aug"], str) and settings["aug"] not in PRESETS:
        settings["aug"] = str(Path(settings["aug"]).expanduser().resolve())
    return settings


def plan_sweep(
    config=None,
    *,
    config_file=None,
    seeds: int = 1,
    yes: bool = False,
    plugins=None,
    ablate: bool | str = False,
    **settings,
) -> list[PlannedRun]:
    """The runs of the grid, in a stable order, each validated as ``augpipe train`` would
    validate it, so that a bad value stops the sweep before any run starts.

    A setting given as a list is an axis of the grid (a list for a list-valued setting such as
    ``milestones`` is its one value). The seed is the outermost loop (seed 0: every setting,
    seed 1: every setting, ...), so that an interrupted sweep has tried every setting before it
    repeats one. ``ablate`` (True or one of ``ABLATION_MODES``): the augmentation's variants of
    ``ablation_specs`` are the aug axis, each run named by its variant (``aug=-hflip,seed=0``)."""
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.settings import build_config

    plugins = plugins or get_plugins()
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds must be a whole number of at least 1, got {seeds!r}")
    reject_unknown(settings, TrainConfig.field_names(), "settings")
    for key in ("out", "name"):
        if settings.get(key) is not None:
            raise ConfigError(f"--{key} names the sweep's directory, not a setting of its runs")
    settings = {k: v for k, v in settings.items() if v is not None}
    labels: dict[str, dict[str, str]] = {}  # setting -> {the JSON of a value: its label}
    mode = ablation_mode(ablate)
    if mode:
        variants = ablation_specs(_ablated_aug(config, config_file, plugins, settings), mode)
        settings["aug"] = list(variants.values())
        labels["aug"] = {_json(spec): label for label, spec in variants.items()}
    given_seeds = _axis("seed", settings.pop("seed")) if "seed" in settings else None
    axes = {k: _axis(k, settings[k]) for k in TrainConfig.field_names() if k in settings}
    varied = [k for k, values in axes.items() if len(values) > 1]
    points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    count = len(points) * len(given_seeds or [0]) * seeds
    if count > MAX_UNCONFIRMED_RUNS and not yes:  # before the configs of a huge grid are built
        raise ConfigError(f"the sweep has {count} runs (more than {MAX_UNCONFIRMED_RUNS}): pass --yes to run them all")

    per_point = []
    for point in points:
        bases = given_seeds or [build_config(config, config_file=config_file, plugins=plugins, **point).seed]
        seed_list = [base + k for base in bases for k in range(seeds)]
        repeated = sorted({s for s in seed_list if seed_list.count(s) > 1})
        if repeated:
            raise ConfigError(f"--seed {','.join(map(str, bases))} with --seeds {seeds} gives seed {repeated[0]} twice")
        per_point.append(seed_list)
    runs = []
    for i in range(len(per_point[0])):
        for point, seed_list in zip(points, per_point):
            flags = {**point, "seed": seed_list[i]}
            cfg = build_config(config, config_file=config_file, plugins=plugins, **flags)
            values = {k: getattr(cfg, k) for k in varied}
            run_labels = {k: labels[k][_json(v)] for k, v in values.items() if _json(v) in labels.get(k, {})}
            name = ",".join(
                [f"{k}={_name_value(run_labels.get(k, v))}" for k, v in values.items()] + [f"seed={cfg.seed}"]
            )
            runs.append(PlannedRun(name, flags, values, cfg.seed, _identity(cfg, varied), cfg, run_labels))
    _check_distinct(runs)
    return runs


def _check_distinct(runs: list[PlannedRun]) -> None:
    """Two grid points that resolve to the same run (``--scheduler onecycle,one-cycle``) are a
    slip; two names that the folder-name rules made equal get a hash of their settings."""
    seen = {}
    for run in runs:
        key = _json(run.settings)
        if key in seen:
            raise ConfigError(f"runs {seen[key]} and {run.name} of the grid have the same settings")
        seen[key] = run.name
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1 or len(run.name) > 200:
            run.name = f"{run.name[:190]}-{_short_hash(run.settings, 6)}"


def check_runs_startable(runs: list[PlannedRun]) -> None:
    """What ``train`` would find wrong only when a run starts (an augmentation spec, a device,
    a data path), checked once per distinct value before the first run."""
    from augpipe.augment.spec import AugmentSpec
    from augpipe.training.settings import data_or_sample, resolve_device

    seen = set()
    for run in runs:
        cfg = run.cfg
        for what, value, check in (
            ("aug", cfg.aug, AugmentSpec.load),
            ("device", cfg.device, resolve_device),
            ("data", data_or_sample(cfg.data), _check_exists),
            ("split_file", cfg.split_file, _check_exists),
        ):
            key = (what, _json(value))
            if value is not None and key not in seen:
                seen.add(key)
                check(value)


def _check_exists(path) -> None:
    if not Path(path).expanduser().exists():
        raise DataError(f"{path}: no such file or directory")


def grid_document(runs: list[PlannedRun]) -> dict:
    """``sweep.yaml``: the settings every run shares, then each run's own."""
    keys = list(runs[0].settings)
    common = {k: runs[0].settings[k] for k in keys if all(r.settings[k] == runs[0].settings[k] for r in runs)}
    return {
        "common": common,
        "runs": [{"name": r.name, **{k: v for k, v in r.settings.items() if k not in common}} for r in runs],
    }


def default_name(runs: list[PlannedRun], grid: dict, ablate: bool | str = False) -> str:
    """``activation-1a2b3c4d``: what varies (an ablated aug as ``ablate``), and a hash of the
    whole grid."""
    varied = "-".join("ablate" if ablate and k == "aug" else k for k in runs[0].values)[:40] or (
        "seeds" if len(runs) > 1 else "sweep"
    )
    return f"{varied}-{_short_hash(grid)}"


# -- the sweep directory ---------------------------------------------------------------------------
def _check_folder_name(name) -> None:
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(f"--name must be a folder name without slashes, got {name!r}")


def _roundtrip(doc: dict):
    import yaml

    from augpipe.files import dump_yaml

    return yaml.safe_load(dump_yaml(doc))


def _grid_difference(saved, grid: dict) -> str:
    if not isinstance(saved, dict) or not isinstance(saved.get("runs"), list):
        return "its sweep.yaml is not a sweep's"
    old = [r.get("name") if isinstance(r, dict) else r for r in saved["runs"]]
    new = [r["name"] for r in grid["runs"]]
    if old != new:
        gone = [n for n in old if n not in new]
        added = [n for n in new if n not in old]
        detail = (
            f"run {added[0]} is not in it"
            if added
            else f"its run {gone[0]} is not in this grid"
            if gone
            else "its runs are in another order"
        )
        return f"{len(old)} runs there, {len(new)} here; {detail}"
    common = saved.get("common") if isinstance(saved.get("common"), dict) else {}
    for key in sorted(set(common) | set(grid["common"]), key=str):
        if common.get(key) != grid["common"].get(key):
            return f"{key}: {common.get(key)!r} there, {grid['common'].get(key)!r} here"
    return "the settings of a run differ"


def _with_new_defaults(saved, current: dict):
    """The saved grid with the settings that augpipe has gained since it was written filled in
    at their defaults: a sweep begun before an upgrade is the same sweep after it, as long as the
    new settings keep the behaviour of before (their default)."""
    import dataclasses

    if not isinstance(saved, dict) or not isinstance(saved.get("common"), dict):
        return saved
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    known = set(saved["common"]) | {k for r in saved.get("runs") or [] if isinstance(r, dict) for k in r}
    added = {
        k: v
        for k, v in current["common"].items()
        if k not in known and k in fields and v == _roundtrip({"v": fields[k]})["v"]
    }
    return {**saved, "common": {**saved["common"], **added}} if added else saved


def open_sweep_dir(sweep_dir: Path, grid: dict) -> None:
    """Make the sweep directory or check that it holds this very grid; then save the grid."""
    from augpipe.files import dump_yaml, read_yaml, write_atomic

    path = sweep_dir / "sweep.yaml"
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise DataError(f"{sweep_dir}: not a directory")
    if path.is_file():
        saved, current = read_yaml(path, "sweep file"), _roundtrip(grid)
        if saved == current:
            return
        if _with_new_defaults(saved, current) != current:
            raise ConfigError(
                f"{sweep_dir} holds another sweep ({_grid_difference(saved, grid)}): "
                f"choose another --name, or remove it"
            )
        write_atomic(path, dump_yaml(grid))  # the same sweep, its grid now naming the new settings too
        return
    if sweep_dir.is_dir() and any(sweep_dir.iterdir()):
        raise DataError(f"{sweep_dir} exists and is not a sweep directory (no sweep.yaml): choose another --name")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{sweep_dir}: can not be created ({err.strerror})") from None
    write_atomic(path, dump_yaml(grid))


# -- running ---------------------------------------------------------------------------------------
def sweep(
    config=None,
    *,
    config_file=None,
    seeds: int = 1,
    yes: bool = False,
    out="sweeps",
    name=None,
    plugins=None,
    progress: bool | None = None,
    ablate: bool | str = False,
    parallel: int = 1,
    **settings,
) -> SweepResult:
    """Train every combination of the settings given as lists, ``seeds`` times each (seeds
    ``seed``, ``seed + 1``, ...), one run at a time, into ``OUT/NAME/<run>``:

        augpipe.sweep(plugin="mlp", activation=["relu", "tanh"], seeds=3)

    Other keywords are ``train``'s, fixed for every run. The same call again skips the finished
    runs and resumes an unfinished one. Writes ``sweep.yaml``, ``sweep.csv``, ``sweep.md`` and
    ``sweep.png``. A SIGINT or SIGTERM ends the run in progress as ``train`` does, and the sweep
    after it (``result.interrupted`` names the signal).

    ``ablate=True``: the one ``aug`` (or the config's) is taken apart (``ablation_specs``), and
    ``ablation.md`` (``result.ablation``) and ``ablation.png`` show what each op buys;
    ``ablate="alone"`` trains each op alone, ``ablate="both"`` both:

        augpipe.sweep(plugin="mlp", aug="standard", ablate=True, seeds=3)

    ``parallel=K``: K runs at once in K worker processes (``_run_parallel``); the tables are the
    same as a serial sweep's."""
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.signals import StopSignals

    check_parallel(parallel, plugins)
    plugins = plugins or get_plugins()
    runs = plan_sweep(config, config_file=config_file, seeds=seeds, yes=yes, plugins=plugins, ablate=ablate, **settings)
    check_runs_startable(runs)
    grid = grid_document(runs)
    if name is None:
        name = default_name(runs, grid, ablate)
    _check_folder_name(name)
    if not isinstance(out, (str, Path)) or not str(out).strip() or "\0" in str(out):
        raise ConfigError(f"--out must be a folder path, got {out!r}")
    sweep_dir = Path(out) / name
    # Everything a user can get wrong has been checked: only now is anything written.
    open_sweep_dir(sweep_dir, grid)
    from augpipe.files import exclusive_lock

    lock = exclusive_lock(sweep_dir, "running this sweep")
    result = SweepResult(sweep_dir, runs, [], "")
    try:
        # Between runs too, a signal must end the sweep with its tables written.
        with StopSignals():
            if parallel > 1:
                _run_parallel(result, config, config_file, parallel)
            else:
                _run_all(result, config, config_file, plugins, progress)
    finally:
        try:
            result.rows, result.table = write_results(sweep_dir, runs)
            if ablation_mode(ablate):
                result.ablation = write_ablation(sweep_dir, runs)
        finally:
            lock.close()
    return result


def _run_all(result: SweepResult, config, config_file, plugins, progress) -> None:
    from augpipe.errors import AugpipeError
    from augpipe.progress import track
    from augpipe.training.run import train

    data_cache: dict = {}  # one decode of each data set for the whole sweep; each seed splits it anew
    total = len(result.runs)
    for i, run in enumerate(track(result.runs, total, "sweep", enabled=progress, unit="run", leave=True), 1):
        run_dir = result.sweep_dir / run.name
        state = run_state(run_dir)
        if state == "finished":
            result.skipped += 1
            log.info("run %d/%d %s: finished before, skipped", i, total, run.name)
            continue
        log.info("run %d/%d %s%s", i, total, run.name, ": resuming from last.pt" if state == "resume" else "")
        # Every run of the sweep in one MLflow experiment (one TensorBoard folder: the same out).
        experiment = run.flags.get("experiment") or result.sweep_dir.name
        try:
            if state == "resume":
                trained = train(
                    resume=run_dir,
                    plugins=plugins,
                    progress=progress,
                    data_cache=data_cache,
                    **{**{k: run.flags.get(k) for k in RUNTIME_FIELDS}, "experiment": experiment},
                )
                result.resumed += 1
            else:
                if state == "redo":  # stopped before its first checkpoint: nothing in it to keep
                    shutil.rmtree(run_dir)
                trained = train(
                    config,
                    config_file=config_file,
                    plugins=plugins,
                    progress=progress,
                    data_cache=data_cache,
                    **{**run.flags, "experiment": experiment},
                    out=str(result.sweep_dir),
                    name=run.name,
                )
                result.ran += 1
        except AugpipeError as err:
            err.args = (f"run {run.name}: {err}",)
            raise
        s = trained.summary
        if s.get("interrupted"):
            result.interrupted = s["interrupted"]
            log.warning("sweep interrupted by %s in run %s: the same command continues it", s["interrupted"], run.name)
            return
        log.info(
            "run %d/%d %s: %s, test accuracy %s", i, total, run.name, s.get("stop_reason"), _fmt(s.get("test_acc"), 4)
        )


# -- running K at once -----------------------------------------------------------------------------
def check_parallel(parallel, plugins=None) -> None:
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"--parallel must be a whole number of at least 1, got {parallel!r}")
    if parallel > 1 and plugins is not None:
        # A plugin manager can not be sent to another process; each one loads the installed plugins.
        raise ConfigError("parallel runs use the installed plugins: pass plugins=None with parallel > 1")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parallel_threads(parallel: int, given) -> int:
    """Torch threads per run: as given, else the cores shared out, so that K runs at once do
    not each start one thread per core and fight over them."""
    return given if given else max(1, _cores() // parallel)


def _job(index: int, run: PlannedRun, state: str, sweep_dir: Path, parallel: int) -> dict:
    """What a worker process needs to train one run as the serial sweep would."""
    experiment = run.flags.get("experiment") or sweep_dir.name
    runtime = {k: run.flags.get(k) for k in RUNTIME_FIELDS}
    threads = parallel_threads(parallel, run.flags.get("threads"))
    if state == "resume":
        kwargs = {"resume": str(sweep_dir / run.name), **runtime, "experiment": experiment, "threads": threads}
    else:
        kwargs = {**run.flags, "experiment": experiment, "threads": threads, "out": str(sweep_dir), "name": run.name}
    return {"index": index, "state": state, "kwargs": kwargs}


def _worker(config, config_file, jobs, results, stop) -> None:
    """A worker process: trains the jobs it takes until there are none or the sweep stops. In a
    process group of its own, so that a Ctrl-C reaches only the sweep's process, which passes
    one stop signal on (two would stop a run without its last step saved)."""
    import os

    from augpipe.errors import AugpipeError
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.run import train

    os.setpgrp()
    plugins, data_cache = get_plugins(), {}  # one decode of each data set per worker
    while not stop.is_set():
        job = jobs.get()
        if job is None:
            return
        try:
            conf = {} if job["state"] == "resume" else {"config": config, "config_file": config_file}
            train(**conf, plugins=plugins, progress=False, data_cache=data_cache, **job["kwargs"])
            results.put((job["index"], "done", ""))
        except AugpipeError as err:
            results.put((job["index"], type(err).__name__, str(err)))
            return
        except BaseException as err:  # noqa: BLE001 - the sweep must hear of it, not wait for ever
            results.put((job["index"], "crashed", f"{type(err).__name__}: {err}"))
            return


def _run_parallel(result: SweepResult, config, config_file, parallel: int) -> None:
    """The unfinished runs, ``parallel`` at once in worker processes (spawned: a forked copy of
    a process that has used torch's thread pools can hang). A finished run is read back from its
    run directory, as the tables are, so the order in which runs end changes nothing. A signal
    to the sweep is passed on once to the workers, which end their runs as ``train`` does."""
    import multiprocessing

    from augpipe.training.signals import Interrupted

    todo = []
    for i, run in enumerate(result.runs):
        state = run_state(result.sweep_dir / run.name)
        if state == "finished":
            result.skipped += 1
            continue
        if state == "redo":  # stopped before its first checkpoint: nothing in it to keep
            shutil.rmtree(result.sweep_dir / run.name)
        todo.append(_job(i, run, state, result.sweep_dir, parallel))
    if not todo:
        return
    ctx = multiprocessing.get_context("spawn")
    jobs, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    for job in todo:
        jobs.put(job)
    # Not daemonic: a run may start loader workers of its own, which a daemon may not.
    workers = [
        ctx.Process(target=_worker, args=(config, config_file, jobs, results, stop))
        for _ in range(min(parallel, len(todo)))
    ]
    for _ in workers:
        jobs.put(None)
    for w in workers:
        w.start()
    log.info(
        "%d run(s) to train, %d at once, %d torch thread(s) each", len(todo), len(workers), todo[0]["kwargs"]["threads"]
    )
    try:
        failure = _collect(result, todo, results, workers)
    except Interrupted as sig:
        result.interrupted = sig.signal_name
        failure = None
        log.warning(
            "%s received: the runs in progress finish their step and save last.pt; the same command "
            "continues the sweep",
            sig.signal_name,
        )
    stop.set()
    if result.interrupted or failure:
        _stop_workers(workers)
    for w in workers:
        w.join()
    jobs.cancel_join_thread()  # jobs left in the queue of a stopped sweep must not hold up its exit
    if failure:
        raise failure


def _collect(result: SweepResult, todo: list[dict], results, workers):
    """Wait for the workers' reports; returns the error of a failed run (None if none failed)."""
    import queue

    from augpipe.errors import AugpipeError, PluginError

    errors = {"ConfigError": ConfigError, "DataError": DataError, "PluginError": PluginError}
    states = {job["index"]: job["state"] for job in todo}
    left = len(todo)
    while left:
        try:
            index, status, message = results.get(timeout=0.5)
        except queue.Empty:
            if not any(w.is_alive() for w in workers):
                return AugpipeError(f"the sweep's worker processes ended with {left} run(s) not reported")
            continue
        left -= 1
        run = result.runs[index]
        if status != "done":
            return errors.get(status, AugpipeError)(f"run {run.name}: {message}")
        s = read_summary(result.sweep_dir / run.name) or {}
        if s.get("interrupted"):
            result.interrupted = s["interrupted"]
            return None
        if states[index] == "resume":
            result.resumed += 1
        else:
            result.ran += 1
        log.info(
            "run %d/%d %s: %s, test accuracy %s",
            index + 1,
            len(result.runs),
            run.name,
            s.get("stop_reason"),
            _fmt(s.get("test_acc"), 4),
        )
    return None


def _stop_workers(workers) -> None:
    """One SIGTERM to each worker still training: it finishes the step, saves and ends."""
    import os
    import signal

    for w in workers:
        if w.is_alive() and w.pid is not None:
            try:
                os.kill(w.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


# -- tables ----------------------------------------------------------------------------------------
def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _run_row(run: PlannedRun, run_dir: Path) -> dict | None:
    """The finished run's line of sweep.csv, from its summary.json and metrics.csv."""
    from augpipe.training.callbacks import read_metrics

    if run_state(run_dir) != "finished":
        return None
    s = read_summary(run_dir)
    try:
        epochs = read_metrics(run_dir / "metrics.csv")
    except (OSError, ValueError, csv.Error):
        epochs = []
    val_acc, val_loss = _finite(e.get("val_acc") for e in epochs), _finite(e.get("val_loss") for e in epochs)
    return {
        **{k: run.shown(k) for k in run.values},
        "seed": run.seed,
        "best_val_acc": max(val_acc) if val_acc else None,
        "best_val_loss": min(val_loss) if val_loss else None,
        "test_acc": s.get("test_acc"),
        "test_loss": s.get("test_loss"),
        "epochs_run": s.get("epochs_run"),
        "stop_reason": s.get("stop_reason"),
        "failed": bool(s.get("failed")),
        "train_seconds": s.get("train_seconds"),
        "run_dir": str(run_dir),
        "_epochs": epochs,
    }


def _cell(value):
    return "spec-" + _short_hash(value, 6) if isinstance(value, (dict, list)) else value


def write_results(sweep_dir: Path, runs: list[PlannedRun]) -> tuple[list[dict], str]:
    """sweep.csv, sweep.md and sweep.png for the runs finished so far."""
    from augpipe.files import write_atomic

    rows = [(run, row) for run in runs if (row := _run_row(run, sweep_dir / run.name)) is not None]
    varied = list(runs[0].values)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(varied + CSV_COLUMNS)
    for _, row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in varied + CSV_COLUMNS])
    write_atomic(sweep_dir / "sweep.csv", buf.getvalue())
    groups = _groups(runs, rows)
    table = markdown_table(sweep_dir.name, varied, groups, finished=len(rows), planned=len(runs))
    write_atomic(sweep_dir / "sweep.md", table)
    if rows:
        from augpipe.report import plot_sweep

        plot_sweep(
            [g["label"] for g in groups],
            [[r["_epochs"] for r in g["rows"]] for g in groups],
            [[r["test_acc"] for r in g["rows"]] for g in groups],
            sweep_dir / "sweep.png",
            title=f"sweep {sweep_dir.name}: {len(rows)} run(s)",
            legend_title=varied[0] if len(varied) == 1 else None,
        )
    return [{k: v for k, v in row.items() if not k.startswith("_")} for _, row in rows], table


def _groups(runs: list[PlannedRun], rows) -> list[dict]:
    """The finished runs per setting (over seeds), settings in the grid's order."""
    planned: dict[tuple, int] = {}
    first: dict[tuple, PlannedRun] = {}
    for run in runs:
        planned[run.setting] = planned.get(run.setting, 0) + 1
        first.setdefault(run.setting, run)
    by_setting: dict[tuple, list] = {s: [] for s in planned}
    for run, row in rows:
        by_setting[run.setting].append(row)
    groups = []
    for setting, members in by_setting.items():
        if not members:
            continue
        run = first[setting]
        shown = {k: _name_value(run.labels.get(k, v)) for k, v in run.values.items()}
        label = (
            ", ".join(f"{k}={v}" for k, v in shown.items())
            if len(shown) > 1
            else (next(iter(shown.values())) if shown else "all runs")
        )
        groups.append(
            {
                "setting": dict(run.values),
                "labels": dict(run.labels),
                "label": label,
                "rows": members,
                "planned": planned[setting],
            }
        )
    return groups


def _mean_std(values, digits: int) -> str:
    import numpy as np

    values = _finite(values)
    if not values:
        return "–"
    if len(values) == 1:
        return _fmt(values[0], digits)
    return f"{_fmt(float(np.mean(values)), digits)} ± {_fmt(float(np.std(values, ddof=1)), digits)}"


def _fmt(value, digits: int) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    # The loss of a diverged run (1e33) would fill a fixed-point column with digits.
    return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.3g}"


def short_reason(row: dict) -> str:
    reason = str(row.get("stop_reason") or "?")
    if row.get("failed"):
        return "failed"
    for prefix, short in (("early stopping", "early stop"), ("time budget", "time budget")):
        if reason.startswith(prefix):
            return short
    return reason[:30]


def _reasons(rows) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[short_reason(row)] = counts.get(short_reason(row), 0) + 1
    return ", ".join(k if n == 1 and len(rows) == 1 else f"{k} ×{n}" for k, n in counts.items())


def _epochs(rows) -> str:
    values = [int(r["epochs_run"]) for r in rows if isinstance(r.get("epochs_run"), int)]
    if not values:
        return "–"
    return str(values[0]) if min(values) == max(values) else f"{min(values)}–{max(values)}"


def markdown_table(name: str, varied: list[str], groups: list[dict], *, finished: int, planned: int) -> str:
    """sweep.md: one line per setting, mean ± standard deviation over its seeds."""

    def esc(value) -> str:
        return str(value).replace("|", "\\|")

    head = varied + ["seeds", "best val acc", "best val loss", "test acc", "epochs", "stopped", "time/run (s)"]
    lines = [
        f"# Sweep {name}",
        "",
        f"{finished} of {planned} runs finished"
        + ("" if finished == planned else "; the same command runs the rest")
        + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for g in groups:
        rows = g["rows"]
        cells = [esc(g.get("labels", {}).get(k, _cell(g["setting"][k]))) for k in varied]
        cells += [
            f"{len(rows)}" + ("" if len(rows) == g["planned"] else f" of {g['planned']}"),
            _mean_std([r["best_val_acc"] for r in rows], 3),
            _mean_std([r["best_val_loss"] for r in rows], 3),
            _mean_std([r["test_acc"] for r in rows], 3),
            _epochs(rows),
            esc(_reasons(rows)),
            _mean_std([r["train_seconds"] for r in rows], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    # A setting whose run failed (diverged) is not one to recommend, whatever its early epochs scored.
    scored = [
        (sum(v) / len(v), -k, g["label"])
        for k, g in enumerate(groups)
        if not any(r["failed"] for r in g["rows"]) and (v := _finite(r["best_val_acc"] for r in g["rows"]))
    ]
    lines.append("")
    if len(groups) > 1 and scored:
        best = max(scored)
        lines.append(
            f"Best by mean validation accuracy: {best[2]} ({best[0]:.3f})"
            + (", of the settings whose runs did not fail." if len(scored) < len(groups) else ".")
        )
    lines.append(
        "Mean ± sample standard deviation over seeds; best val acc and loss are the best epoch's of "
        "each run (metrics.csv); test acc is scored with the weights the run keeps (summary.json)."
    )
    return "\n".join(lines) + "\n"


# -- the ablation report ------------------------------------------------------------------------------
def _spec_ops(spec_dict) -> list[str]:
    from augpipe.augment.describe import op_sequence
    from augpipe.augment.spec import AugmentSpec

    return [label for label, _ in op_sequence(AugmentSpec.load(spec_dict))]


def ablation_groups(runs: list[PlannedRun], rows) -> list[dict]:
    """One entry per variant and setting of the other axes, in the grid's order: the variant's
    label, its ops, the finished runs' test accuracies and over-fitting gaps (training minus
    validation accuracy in the last epoch), and how many runs were planned."""
    groups: dict[tuple, dict] = {}
    finished = {id(run): row for run, row in rows}
    for run in runs:
        others = tuple((k, run.shown(k)) for k in run.values if k != "aug")
        group = groups.setdefault(
            run.setting,
            {
                "others": others,
                "variant": run.labels["aug"],
                "ops": _spec_ops(run.values["aug"]),
                "acc": [],
                "gap": [],
                "planned": 0,
            },
        )
        group["planned"] += 1
        if id(run) in finished:
            row = finished[id(run)]
            group["acc"].append(row["test_acc"])
            group["gap"].append(_last_epoch_gap(row["_epochs"]))
    return list(groups.values())


def _last_epoch_gap(epochs: list[dict]) -> float | None:
    """Training minus validation accuracy in the last epoch that has both: how far the network
    has over-fitted by the end of the run."""
    for epoch in reversed(epochs):
        train, val = _finite([epoch.get("train_acc")]), _finite([epoch.get("val_acc")])
        if train and val:
            return train[0] - val[0]
    return None


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _mean(values) -> float | None:
    values = _finite(values)
    return sum(values) / len(values) if values else None


def ablation_table(name: str, groups: list[dict]) -> str:
    """ablation.md: per variant its ops, test accuracy (mean ± std over seeds), the difference
    of the mean from the ``all`` and the ``none`` variants' of the same other settings, and the
    over-fitting gap (training minus validation accuracy, last epoch; mean ± std)."""

    def esc(value) -> str:
        return str(value).replace("|", "\\|")

    others = [k for k, _ in groups[0]["others"]] if groups else []
    references = {
        variant: {g["others"]: _mean(g["acc"]) for g in groups if g["variant"] == variant}
        for variant in ("all", "none")
    }
    head = others + [
        "variant",
        "ops used",
        "test acc",
        "difference from all",
        "difference from none",
        "train - val acc, last epoch",
        "n",
    ]
    lines = [
        f"# Ablation {name}",
        "",
        (
            "What each augmentation op buys: `all` trains with the whole spec, `none` with no op (size and "
            "normalisation kept), `-OP` with every op but OP, `+OP` with OP alone."
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]

    def difference(g: dict, variant: str) -> str:
        if g["variant"] == variant:
            return "reference"
        mean, ref = _mean(g["acc"]), references[variant].get(g["others"])
        return _signed(None if mean is None or ref is None else mean - ref)

    for g in groups:
        n = len(_finite(g["acc"]))
        cells = [esc(v) for _, v in g["others"]] + [
            esc(g["variant"]),
            esc(", ".join(g["ops"]) or "–"),
            _mean_std(g["acc"], 3),
            difference(g, "all"),
            difference(g, "none"),
            _mean_std(g["gap"], 3),
            f"{n}" + ("" if n == g["planned"] else f" of {g['planned']}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        (
            "Test accuracy: mean ± sample standard deviation over seeds (n runs finished). A negative "
            "difference from all for `-OP`: the runs without OP scored lower, so OP helped; a positive "
            "difference from none for `+OP`: OP alone helped. The last column is over-fitting: how much "
            "better the network does on its training images than on the validation images at the end."
        ),
    ]
    return "\n".join(lines) + "\n"


def plot_ablation(groups: list[dict], path, *, title: str = "") -> Path:
    """Per variant, mean test accuracy (top) and the over-fitting gap, training minus validation
    accuracy in the last epoch (bottom), the error bar one standard deviation over seeds, each seed
    a dot; ``all`` and ``none`` in their own colours with their means drawn across, ``-OP`` blue and
    ``+OP`` orange. One column per setting of the other axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from augpipe.report import save_figure

    panels: dict[tuple, list[dict]] = {}
    for g in groups:
        panels.setdefault(g["others"], []).append(g)
    width = max(4.5, 0.7 * max(len(p) for p in panels.values()) + 1.5)
    fig, axes = plt.subplots(2, len(panels), figsize=(width * len(panels), 8), dpi=100, squeeze=False)
    colours = {"all": "tab:green", "none": "tab:gray"}
    rows = (("acc", "test accuracy", (0, 1.05)), ("gap", "train - val accuracy, last epoch", (-0.1, 1.05)))
    for column, (others, members) in enumerate(panels.items()):
        xs = np.arange(len(members))
        for row, (key, ylabel, ylim) in enumerate(rows):
            ax = axes[row][column]
            for x, g in zip(xs, members):
                values = _finite(g.get(key, []))
                if not values:
                    continue
                mean = float(np.mean(values))
                std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                colour = colours.get(g["variant"], "tab:orange" if g["variant"].startswith("+") else "tab:blue")
                ax.bar(x, mean, color=colour, alpha=0.8, yerr=std if len(values) > 1 else None, capsize=4)
                ax.scatter([x] * len(values), values, color="black", s=8, zorder=3)
                ax.text(x, min(0.98, mean + std + 0.02), f"{mean:.2f}", ha="center", va="bottom", fontsize=8)
                if g["variant"] in colours:
                    ax.axhline(mean, color=colour, ls="--", lw=1, label=f"{g['variant']}: {mean:.3f}")
            ax.set_xticks(xs, [g["variant"] for g in members], rotation=30, ha="right", fontsize=8)
            ax.set_ylim(*ylim)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, axis="y")
            if row == 0:
                heading = ", ".join(f"{k}={v}" for k, v in others) or "mean ± std over seeds"
                ax.set_title(heading, fontsize=9)
            else:
                ax.set_title("over-fitting: lower is less", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="lower right" if row == 0 else "upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def write_ablation(sweep_dir: Path, runs: list[PlannedRun]) -> str:
    """ablation.md and (once a run has finished) ablation.png; returns the table."""
    from augpipe.files import write_atomic

    rows = [(run, row) for run in runs if (row := _run_row(run, sweep_dir / run.name)) is not None]
    groups = ablation_groups(runs, rows)
    table = ablation_table(sweep_dir.name, groups)
    write_atomic(sweep_dir / "ablation.md", table)
    if rows:
        plot_ablation(
            groups, sweep_dir / "ablation.png", title=f"ablation {sweep_dir.name}: {len(rows)} of {len(runs)} run(s)"
        )
    return table
