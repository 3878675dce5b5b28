"""Run settings: one dataclass, the single source of defaults, validated, to and from YAML.

Precedence, lowest first: the defaults below, the trainer plugin's defaults, the optimizer's
default learning rate, a named ``--recipe``, a ``--config`` file, then command-line flags.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from augpipe.data.images import DEFAULT_CACHE_MB, DEFAULT_MAX_PIXELS
from augpipe.errors import ConfigError, reject_unknown

ACTIVATIONS = ("relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "silu", "sigmoid", "tanh")
MONITORS = ("val_loss", "val_acc", "train_loss", "train_acc")
PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Learning rates that train each optimizer stably on the bundled data and CIFAR-10 when the
# user gives none: adaptive methods want a far smaller step than SGD.
EMA_MODES = ("average", "lookahead")  # --ema-mode (augpipe.training.averaging)
DEFAULT_LR = {
    "sgd": 0.05,
    "momentum": 0.05,
    "nesterov": 0.05,
    "rmsprop": 1e-3,
    "adam": 1e-3,
    "adamw": 1e-3,
    "adagrad": 1e-2,
    "muon": 0.05,
}  # muon: its SGD part's; the matrices take 0.4x


# The largest values a setting may take: every number from a config file or a flag has a range,
# checked here, so that a typo or a 400-digit number is one line, not a run that never ends or a
# traceback deep in torch (docs/reliability.md lists them all).
MAX_EPOCHS = 10**6  # more epochs than any computer finishes
MAX_STEPS = 10**9  # optimizer steps (--ema-every)
MAX_BATCH = 2**20  # images in one batch
MAX_IMAGE_SIZE = 8192  # pixels a side
MAX_DEVICES = 1024
WORKERS_PER_CORE = 4  # loader workers (and threads) per CPU core; at least MIN_WORKER_LIMIT
MIN_WORKER_LIMIT = 8  # so that a config written on an ordinary machine runs on a small one
MAX_SECONDS = 10**8  # --dist-timeout; about three years
MAX_MINUTES = 10**7  # --max-minutes; about nineteen years
MAX_RATE = 10**6  # --lr, --min-lr, --norm-lr-scale, --backbone-lr-scale, --weight-decay, --gamma
UPPER_BOUNDS = {
    "epochs": MAX_EPOCHS,
    "freeze_epochs": MAX_EPOCHS,
    "low_res_epochs": MAX_EPOCHS,
    "patience": MAX_EPOCHS,
    "start_from_epoch": MAX_EPOCHS,
    "warmup_epochs": MAX_EPOCHS,
    "step_size": MAX_EPOCHS,
    "ema_start": MAX_EPOCHS,
    "ema_every": MAX_STEPS,
    "ema_power": 100,
    "batch_size": MAX_BATCH,
    "image_size": MAX_IMAGE_SIZE,
    "low_res_size": MAX_IMAGE_SIZE,
    "devices": MAX_DEVICES,
    "dist_timeout": MAX_SECONDS,
    "max_minutes": MAX_MINUTES,
    "cache_mb": 2**30,
    "max_pixels": 2**40,
    "min_delta": 1e9,
    "lr": MAX_RATE,
    "min_lr": MAX_RATE,
    "weight_decay": MAX_RATE,
    "gamma": MAX_RATE,
    "norm_lr_scale": MAX_RATE,
    "backbone_lr_scale": MAX_RATE,
    "milestones": MAX_EPOCHS,
}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_limit() -> int:
    """The most loader workers (or threads) a run may ask for on this machine: a million of them
    would fork until the kernel's out-of-memory killer stops the machine."""
    return max(MIN_WORKER_LIMIT, WORKERS_PER_CORE * cores())


def shown_number(value) -> str:
    """A number as a message shows it: a 400-digit one by its length, not its digits."""
    text = str(value)
    digits = text.lstrip("-").split(".")[0]
    return f"a {len(digits)}-digit number" if len(digits) > 20 else text


@dataclass
class TrainConfig:
    # what to train
    recipe: str | None = None  # settings shipped with augpipe (augpipe/recipes/NAME.yaml)
    plugin: str = "resnet"  # trainer plugin (augpipe plugins lists them)
    model: str | None = None  # model of the plugin; None = the plugin's default
    activation: str = "relu"  # every activation of the network
    dropout: float = 0.0  # rate before the classifier (between hidden layers for mlp)
    pretrained: bool = False  # start from timm's pretrained weights (fetched once into timm's cache)
    weights: str | None = None  # start from a local file: a state dict (.pth, .safetensors) or an augpipe checkpoint
    freeze_epochs: int = 0  # train only the classifier for this many epochs, then everything
    backbone_lr_scale: float = 1.0  # learning rate of all but the classifier, as a fraction of --lr
    # data
    data: str | None = None  # data set path; None = the bundled sample data
    val: float = 0.1  # validation fraction of the training pool
    test: float = 0.1  # test fraction, where the source has no test split
    split_file: str | None = None  # reuse a split manifest
    strict: bool = False  # stop at an unreadable image or an exact duplicate instead of skipping it
    image_size: int | None = None  # side in pixels; None = the augmentation's size or the data's
    low_res_size: int | None = None  # progressive resizing: the first epochs train downscaled to this side; None = off
    low_res_epochs: int = 0  # epochs trained at --low-res-size, from the first; validation and test stay at full size
    aug: Any = "standard"  # preset name, spec .yaml path, or a spec dict
    aug_device: str = "auto"  # where augmentation runs: auto, cpu (workers), gpu (device)
    data_on_device: str = "auto"  # the splits' uint8 images held on the device, a batch an index gather: auto (CUDA, when they fit), on, off
    cache_mb: float = DEFAULT_CACHE_MB  # keep decoded images in memory up to this size (MB)
    max_pixels: int = DEFAULT_MAX_PIXELS  # skip images of more pixels (width x height): Pillow's bomb limit
    workers: int | None = None  # loader workers; None = chosen from the cores
    # optimisation
    optimizer: str = "momentum"  # sgd, momentum, nesterov, rmsprop, adam, adamw, adagrad, muon
    lr: float | None = None  # None = the optimizer's default (DEFAULT_LR)
    weight_decay: float = 5e-4
    decay_bias_and_norm: bool = (
        False  # weight decay on biases and normalisation parameters too (airbench94 decays them; timm does not)
    )
    norm_lr_scale: float = 1.0  # learning rate of normalisation layers' parameters, as a multiple of --lr (airbench94: 64); their decay per step is kept
    momentum: float | None = None  # None = 0.9 for momentum/nesterov/muon, the optimizer's own otherwise
    scheduler: str = "cosine"  # none, step, multistep, exponential, cosine, onecycle, linear, plateau
    warmup_epochs: float = 0.0  # linear warm-up, in epochs (fractions allowed)
    step_size: float = 10  # step: epochs between decays
    milestones: list[float] = field(
        default_factory=lambda: [0.5, 0.75]
    )  # multistep: epochs, or fractions of the run if all < 1
    gamma: float = 0.1  # step / multistep / exponential / plateau decay factor
    min_lr: float = 0.0  # cosine floor; where linear ends
    label_smoothing: float = 0.0
    ema: float | None = (
        None  # decay of a moving average of the weights, which is then what is scored and kept as best (e.g. 0.99); None = off
    )
    ema_start: float = 0.0  # epochs before the average starts (until then it copies the weights)
    ema_every: int = 1  # optimizer steps between updates of the average
    ema_power: float = 0.0  # the decay grows over the run as --ema * (step / total) ** power (airbench94: 3)
    ema_mode: str = "average"  # average, or lookahead: the average is copied back into the trained weights
    epochs: int = 10
    batch_size: int = 64
    max_minutes: float | None = None  # stop after this much training time (time-to-accuracy runs)
    # early stopping (off while patience is None)
    patience: int | None = None
    monitor: str = "val_loss"
    min_delta: float = 0.0
    start_from_epoch: int = 0  # epochs before early stopping may act
    restore_best: bool = True  # test and save the best epoch's weights, not the last
    tta: str = "none"  # test-time augmentation of the validation and test scores: none, flip, flip-translate
    # machine
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "fp32"  # fp32; bf16 autocast (CUDA, and CPUs with AVX-512 BF16 or AMX); fp16 (CUDA)
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CPUs and on CUDA
    compile: bool = False  # torch.compile the model
    compile_mode: str = "default"  # torch.compile's mode: default, reduce-overhead (CUDA graphs), max-autotune, max-autotune-no-cudagraphs
    threads: int | None = (
        None  # torch intra-op threads; None = every core (workers mostly wait), shared by the processes of --devices
    )
    devices: int = 1  # processes to train in with torch.distributed (one per GPU, or CPU processes on gloo); --batch-size is per process
    dist_timeout: float = 600  # seconds a process waits for the others before it gives up (a rank died or hangs)
    seed: int = 0  # 0 <= seed < 2**32
    # output
    out: str = "runs"
    name: str | None = None  # run directory name; None = a timestamp
    callbacks: list[str] = field(default_factory=list)  # registered callbacks to attach
    logger: list[str] = field(default_factory=list)  # experiment loggers besides metrics.csv: tensorboard, mlflow
    tracking_uri: str | None = None  # MLflow tracking URI; None = file:<out>/mlruns
    experiment: str | None = None  # MLflow experiment; None = augpipe (a sweep: the sweep's name)

    # -- construction -------------------------------------------------------------------
    # Which fields were given (to the constructor, see _init_recording_choices, or set
    # afterwards): only those override a plugin's defaults, so TrainConfig(plugin="cnn") trains
    # as train(plugin="cnn") does.
    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if "_chosen" in self.__dict__ and name in self.__dataclass_fields__:
            self.__dict__["_chosen"].add(name)

    def chosen(self) -> dict:
        """The fields set by whoever built this config, as a dict."""
        return {name: getattr(self, name) for name in self.field_names() if name in self.__dict__["_chosen"]}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> TrainConfig:
        """A config of exactly these settings (a run's own config.yaml), checked as strictly as
        settings from the command line."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: settings must be a mapping, got {type(d).__name__}")
        reject_unknown(d, cls.field_names(), where)
        cfg = cls(**{k: _coerce(k, v, where) for k, v in d.items()})
        cfg.validate()
        return cfg

    @staticmethod
    def read_yaml(path) -> dict:
        from augpipe.files import read_yaml

        data = read_yaml(path, "config file")
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of settings")
        reject_unknown(data, TrainConfig.field_names(), str(path))
        return data

    @classmethod
    def resolve(
        cls, *, plugin_defaults: dict | None = None, file: dict | None = None, flags: dict | None = None
    ) -> TrainConfig:
        """Merge the layers (see the module docstring) into one validated config."""
        chosen: dict[str, Any] = {}
        for layer in (file or {}, flags or {}):
            chosen.update({k: v for k, v in layer.items() if v is not None})
        merged = dict(plugin_defaults or {})
        merged.update(chosen)
        reject_unknown(merged, cls.field_names(), "settings")
        cfg = cls(**{k: _coerce(k, v) for k, v in merged.items()})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path) -> None:
        from augpipe.files import dump_yaml, write_atomic

        write_atomic(path, dump_yaml(self.to_dict()))

    def _check_upper_bounds(self) -> None:
        for name, high in UPPER_BOUNDS.items():
            value = getattr(self, name)
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v > high:
                    raise ConfigError(f"--{name.replace('_', '-')} must be at most {high:,}, got {shown_number(v)}")
        limit = worker_limit()
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ConfigError(
                    f"--{name} must be at most {limit} on this machine ({WORKERS_PER_CORE} per CPU "
                    f"core, {cores()} cores), got {shown_number(value)}"
                )

    # -- derived values -----------------------------------------------------------------
    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.optimizer, 1e-3)

    @property
    def resolved_momentum(self) -> float:
        if self.momentum is not None:
            return self.momentum
        return 0.9 if self.optimizer in ("momentum", "nesterov", "muon") else 0.0

    @property
    def monitor_mode(self) -> str:
        return "max" if self.monitor.endswith("acc") else "min"

    def validate(self) -> None:
        for name in self.field_names():
            _check_type(name, getattr(self, name))
        self._check_upper_bounds()

        def positive(name, value, allow_none=False):
            if value is None and allow_none:
                return
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be above 0, got {value}")

        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}. Choose from: {', '.join(ACTIVATIONS)}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        positive("lr", self.lr, allow_none=True)
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        # torch's SGD raises a bare ValueError for Nesterov without momentum, once the data is loaded.
        if self.optimizer in ("nesterov", "muon") and self.momentum == 0:
            raise ConfigError(f"--optimizer {self.optimizer} needs a --momentum above 0 (use --optimizer sgd for none)")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must not be negative, got {self.weight_decay}")
        if self.min_lr < 0:
            raise ConfigError(f"--min-lr must not be negative, got {self.min_lr}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {value}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 0):
            raise ConfigError(f"--patience must be a whole number of at least 0, got {self.patience}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"unknown monitor {self.monitor!r}. Choose from: {', '.join(MONITORS)}")
        if self.min_delta < 0 or self.start_from_epoch < 0 or self.warmup_epochs < 0:
            raise ConfigError("--min-delta, --start-from-epoch and --warmup-epochs must not be negative")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"--ema must be a decay in (0, 1), e.g. 0.99, got {self.ema}")
        if self.ema_start < 0:
            raise ConfigError(f"--ema-start must not be negative, got {self.ema_start}")
        if not isinstance(self.ema_every, int) or isinstance(self.ema_every, bool) or self.ema_every < 1:
            raise ConfigError(f"--ema-every must be a whole number of at least 1, got {self.ema_every}")
        if not (self.ema_power >= 0 and math.isfinite(self.ema_power)):
            raise ConfigError(f"--ema-power must be a number >= 0, got {self.ema_power}")
        if self.ema_mode not in EMA_MODES:
            raise ConfigError(f"--ema-mode must be {' or '.join(EMA_MODES)}, got {self.ema_mode!r}")
        from augpipe.training.tta import check_tta

        check_tta(self.tta)
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        positive("gamma", self.gamma)
        positive("step_size", self.step_size)
        positive("max_minutes", self.max_minutes, allow_none=True)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}. Choose from: {', '.join(PRECISIONS)}")
        if self.aug_device not in ("auto", "cpu", "gpu"):
            raise ConfigError(f"--aug-device must be auto, cpu or gpu, got {self.aug_device!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.data_on_device not in ("auto", "on", "off"):
            raise ConfigError(f"--data-on-device must be auto, on or off, got {self.data_on_device!r}")
        if self.data_on_device == "on" and self.aug_device == "cpu":
            raise ConfigError("--data-on-device on augments on the device: it needs --aug-device auto or gpu")
        if self.pretrained and self.weights is not None:
            raise ConfigError("--pretrained and --weights both choose the starting weights: give one")
        if self.weights is not None and (not self.weights.strip() or "\0" in self.weights):
            raise ConfigError(f"--weights must be a file path, got {self.weights!r}")
        if self.freeze_epochs < 0:
            raise ConfigError(f"--freeze-epochs must be a whole number of at least 0, got {self.freeze_epochs}")
        if self.backbone_lr_scale < 0:
            raise ConfigError(f"--backbone-lr-scale must not be negative, got {self.backbone_lr_scale}")
        if not self.norm_lr_scale > 0 or not math.isfinite(self.norm_lr_scale):
            raise ConfigError(f"--norm-lr-scale must be a number above 0, got {self.norm_lr_scale}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 8):
            raise ConfigError(f"--image-size must be a whole number of at least 8, got {self.image_size}")
        if self.low_res_size is not None and (not isinstance(self.low_res_size, int) or self.low_res_size < 8):
            raise ConfigError(f"--low-res-size must be a whole number of at least 8, got {self.low_res_size}")
        if not isinstance(self.low_res_epochs, int) or self.low_res_epochs < 0:
            raise ConfigError(f"--low-res-epochs must be a whole number of at least 0, got {self.low_res_epochs}")
        if (self.low_res_size is None) != (self.low_res_epochs == 0):
            raise ConfigError("--low-res-size and --low-res-epochs go together: give both, or neither")
        if self.low_res_epochs >= self.epochs:
            raise ConfigError(
                f"--low-res-epochs must be fewer than --epochs ({self.epochs}), got {self.low_res_epochs}: "
                "the last epochs train at full size (for a smaller size throughout, use --image-size)"
            )
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must not be negative, got {self.workers}")
        if not isinstance(self.devices, int) or self.devices < 1:
            raise ConfigError(f"--devices must be a whole number of at least 1, got {self.devices}")
        positive("dist_timeout", self.dist_timeout)
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be a whole number in [0, 2**32), got {self.seed}")
        if self.cache_mb < 0:
            raise ConfigError(f"--cache-mb must not be negative, got {self.cache_mb}")
        if self.max_pixels < 1:
            raise ConfigError(f"--max-pixels must be at least 1, got {self.max_pixels}")
        if self.milestones and min(self.milestones) <= 0:
            raise ConfigError(f"--milestones must be above 0, got {self.milestones}")
        if self.name is not None and (
            not self.name.strip() or self.name in (".", "..") or any(c in self.name for c in "/\\\0")
        ):
            raise ConfigError(f"--name must be a folder name without slashes, got {self.name!r}")
        if not self.out.strip() or "\0" in self.out:
            raise ConfigError(f"--out must be a folder path, got {self.out!r}")
        if isinstance(self.aug, str) and not self.aug.strip():
            raise ConfigError("--aug must name a preset or a spec file")
        check_device_name(self.device)
        from augpipe.data.split import check_ratios

        check_ratios(self.val, self.test)


_dataclass_init = TrainConfig.__init__


def _init_recording_choices(self, *args, **kwargs):
    _dataclass_init(self, *args, **kwargs)
    object.__setattr__(self, "_chosen", set(TrainConfig.field_names()[: len(args)]) | set(kwargs))


TrainConfig.__init__ = _init_recording_choices


def typed_settings(d, where: str = "settings") -> dict:
    """``d`` with each value coerced (numbers written as text) and type-checked: done to every
    layer before any value is used, so ``plugin: []`` is a one-line error, not a TypeError."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: settings must be a mapping, got {type(d).__name__}")
    reject_unknown(d, TrainConfig.field_names(), where)
    out = {}
    for k, v in d.items():
        if v is None:
            out[k] = v
            continue
        out[k] = _coerce(k, v, where)
        _check_type(k, out[k])
    return out


def check_device_name(name) -> None:
    """auto, cpu, cuda or cuda:N: the devices augpipe trains on."""
    if not isinstance(name, str) or not (name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name)):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


_TYPE_WORDS = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "text",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _allowed_types(name: str) -> tuple[tuple[type, ...], type | None]:
    """(types the field accepts, type of list items) from its annotation."""
    kind = TrainConfig.__dataclass_fields__[name].type
    if kind == "Any":  # aug: a preset name, a spec file or a spec mapping
        return (str, dict, type(None)), None
    allowed: list[type] = []
    item = None
    for part in (p.strip() for p in kind.split("|")):
        if part.startswith("list["):
            allowed.append(list)
            item = {"float": float, "str": str, "int": int}[part[5:-1]]
        else:
            allowed.append({"bool": bool, "int": int, "float": float, "str": str, "None": type(None)}[part])
    return tuple(allowed), item


def _matches(value, t: type) -> bool:
    if t is float:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1e308:
            return False  # math.isfinite would raise OverflowError on a 400-digit integer
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)


def _check_type(name: str, value) -> None:
    """Strict: YAML's ``"false"`` is text, not false; ``true`` is not a batch size."""
    allowed, item = _allowed_types(name)
    flag = "--" + name.replace("_", "-")
    if not any(_matches(value, t) for t in allowed):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float in allowed:
            raise ConfigError(f"{flag} must be a finite number, got {shown_number(value)}")
        want = " or ".join(_TYPE_WORDS[t] for t in allowed)
        raise ConfigError(f"{flag} must be {want}, got {_show(value)}")
    if isinstance(value, list) and item is not None:
        for v in value:
            if not _matches(v, item):
                raise ConfigError(f"{flag} must be a list of {_TYPE_WORDS[item]}s, got {_show(value)}")


def _show(value) -> str:
    text = repr(value)
    shown = text if len(text) <= 60 else text[:57] + "..."
    return f"{shown} ({_TYPE_WORDS.get(type(value), type(value).__name__)})"


def _coerce(name: str, value, where: str = "settings") -> Any:
    """YAML reads ``5e-4`` (no dot) as a string: turn numbers written as text into numbers of the
    field's type, and name the field when that is impossible. Nothing else is converted: the
    type check in ``validate`` refuses what is left."""
    allowed, item = _allowed_types(name)
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list) and item in (int, float):
        return [_number(name, v, item) if isinstance(v, str) else v for v in value]
    if not isinstance(value, str) or str in allowed:
        return value
    if float in allowed:
        return _number(name, value, float)
    if int in allowed:
        return _number(name, value, int)
    return value


def _number(name: str, value: str, target: type):
    digits = value.strip().lstrip("+-")
    if digits.isdigit() and len(digits) > 20:  # float() would round it, int() may refuse it
        raise ConfigError(
            f"--{name.replace('_', '-')} must be at most {UPPER_BOUNDS.get(name, 2**63):,}, "
            f"got a {len(digits)}-digit number"
        )
    try:
        number = float(value)
        if target is int:
            if not math.isfinite(number) or number != int(number):
                raise ValueError
            return int(number)
        return number
    except (TypeError, ValueError, OverflowError):
        word = "a whole number" if target is int else "a number"
        shown = repr(value) if len(value) <= 40 else f"{value[:20]!r}... ({len(value)} characters)"
        raise ConfigError(f"--{name.replace('_', '-')} must be {word}, got {shown}") from None
