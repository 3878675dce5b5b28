"""Starting from trained weights: a local weights file fitted to a new class count, the
classifier told apart from the backbone, the backbone frozen for the first epochs or given a
smaller learning rate."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from augpipe.errors import DataError
from augpipe.training.callbacks import Callback

log = logging.getLogger("augpipe")

# Prefixes that wrappers add to every key: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def classifier_module_names(model: torch.nn.Module, num_classes: int) -> list[str]:
    """The module(s) that map features to classes: timm's ``get_classifier()`` where the model
    has it, else the last linear or convolution layer with ``num_classes`` outputs."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        heads = head if isinstance(head, (tuple, list)) else (head,)
        names = [name for name, m in model.named_modules() if any(m is h for h in heads) and name]
        if names:
            return names
    last = None
    for name, m in model.named_modules():
        out = (
            getattr(m, "out_features", None)
            if isinstance(m, torch.nn.Linear)
            else getattr(m, "out_channels", None)
            if isinstance(m, torch.nn.Conv2d)
            else None
        )
        if out == num_classes:
            last = name
    if last is None:
        raise DataError(
            f"{type(model).__name__}: no layer with {num_classes} outputs, so its classifier "
            f"can not be told apart from the rest"
        )
    return [last]


def classifier_parameter_names(model: torch.nn.Module, num_classes: int) -> set[str]:
    heads = classifier_module_names(model, num_classes)
    return {
        name for name, _ in model.named_parameters() if any(name == h or name.startswith(h + ".") for h in heads)
    } | {name for name, _ in model.named_buffers() if any(name.startswith(h + ".") for h in heads)}


def read_weights(path) -> tuple[dict, tuple | None]:
    """(state dict, (mean, std) of the normalisation the weights were trained with, or None)
    from a .safetensors file, a torch state dict (.pth, .pt, .bin; also Lightning's
    ``state_dict`` and a ``model`` entry) or an augpipe checkpoint. Loaded without running code."""
    from augpipe.files import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise DataError(f"--weights {path}: no such file")
    normalization = None
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"--weights {path}: not a readable safetensors file ({err})") from None
    else:
        obj = load_checkpoint(path)
        state = obj
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "config" in obj and "class_names" in obj:
            state = obj["model"]  # an augpipe checkpoint: its own normalisation comes along
            aug = obj["config"].get("aug") if isinstance(obj["config"], dict) else None
            norm = aug.get("normalize") if isinstance(aug, dict) else None
            if isinstance(norm, dict) and "mean" in norm and "std" in norm:
                normalization = (tuple(norm["mean"]), tuple(norm["std"]))
        elif isinstance(obj, dict):
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(obj.get(key), dict):
                    state = obj[key]
                    break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"--weights {path}: holds no state dict (a mapping of layer names to tensors)")
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state, normalization


def load_weights(model: torch.nn.Module, path, num_classes: int) -> tuple | None:
    """Put the weights of ``path`` into ``model``; the classifier is kept from the file where
    its shape fits and left as built where the class count differs. A file for another
    architecture is an error naming the layers that do not fit. Returns the weights'
    normalisation (mean, std) where the file says it."""
    state, normalization = read_weights(path)
    own = model.state_dict()
    head = classifier_parameter_names(model, num_classes)
    mismatched = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [k for k in mismatched if k not in head]
    if wrong or unexpected or [k for k in missing if k not in head]:
        parts = []
        if wrong:
            parts.append(
                f"{len(wrong)} of another shape ("
                + ", ".join(
                    f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in wrong[:3]
                )
                + ")"
            )
        absent = [k for k in missing if k not in head]
        if absent:
            parts.append(f"{len(absent)} missing from the file ({', '.join(absent[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the model ({', '.join(unexpected[:3])})")
        raise DataError(f"--weights {path}: the weights are for another architecture: " + "; ".join(parts))
    fitting = {k: v for k, v in state.items() if k not in mismatched}
    model.load_state_dict(fitting, strict=False)
    new_head = sorted(set(mismatched) | {k for k in missing if k in head})
    log.info(
        "weights: %s (%d tensors loaded%s)",
        path,
        len(fitting),
        f"; the classifier ({', '.join(new_head)}) starts anew for {num_classes} classes" if new_head else "",
    )
    return normalization


def set_backbone_trainable(model: torch.nn.Module, head: set[str], trainable: bool) -> None:
    for name, p in model.named_parameters():
        if name not in head:
            p.requires_grad_(trainable)


def scale_backbone_lr(optimizer: torch.optim.Optimizer, model: torch.nn.Module, head: set[str], scale: float) -> None:
    """Split each parameter group in two: the classifier's parameters at the group's rate, the
    rest at ``scale`` times it (the classifier's groups first, so the logged rate is --lr)."""
    from augpipe.training.optim import split_param_groups

    split_param_groups(optimizer, {id(p) for name, p in model.named_parameters() if name not in head}, scale)


class FreezeBackbone(Callback):
    """Only the classifier trains for the first ``epochs`` epochs; then everything does (the
    fine-tuning of fastai's ``fine_tune`` and Lightning's ``BackboneFinetuning``)."""

    def __init__(self, model: torch.nn.Module, head: set[str], epochs: int, start_epoch: int = 1):
        self.model, self.head, self.epochs = model, head, epochs
        frozen = start_epoch <= epochs
        set_backbone_trainable(model, head, not frozen)
        if frozen:
            log.info("backbone frozen: only the classifier trains in epochs 1-%d", epochs)

    def on_epoch_end(self, epoch, metrics, model) -> bool:
        if epoch == self.epochs:
            set_backbone_trainable(self.model, self.head, True)
            log.info("backbone unfrozen after epoch %d: every layer trains from here", epoch)
        return False
