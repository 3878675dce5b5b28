"""What the built-in trainers share: activation classes by augpipe's names."""

# Activation modules by lower-cased class name (torch's and timm's), and the names that count as
# each of augpipe's activations. Sigmoid gates (squeeze-excitation, efficientnet) gate features
# rather than activate them, so they are not counted.
_ACTIVATION_CLASS_NAMES = {
    "relu",
    "relu6",
    "leakyrelu",
    "prelu",
    "elu",
    "celu",
    "selu",
    "gelu",
    "gelutanh",
    "quickgelu",
    "silu",
    "swish",
    "hardswish",
    "mish",
    "tanh",
}
_SAME_FUNCTION = {
    "relu": {"relu"},
    "leaky_relu": {"leakyrelu"},
    "prelu": {"prelu"},
    "elu": {"elu"},
    "selu": {"selu"},
    "gelu": {"gelu"},
    "silu": {"silu", "swish"},
    "sigmoid": set(),
    "tanh": {"tanh"},
}


def activation_layer(name: str):
    """The activation class for ``name``; every one accepts ``inplace=``, which timm's models
    pass to each activation they build. Plain torch classes, so that the small trainers never
    import timm (its import alone holds about 200 MB)."""
    from torch import nn

    class Sigmoid(nn.Sigmoid):
        def __init__(self, inplace: bool = False):
            super().__init__()

    class Tanh(nn.Tanh):
        def __init__(self, inplace: bool = False):
            super().__init__()

    class GELU(nn.GELU):
        def __init__(self, inplace: bool = False):
            super().__init__()

    class PReLU(nn.PReLU):
        def __init__(self, num_parameters: int = 1, init: float = 0.25, inplace: bool = False):
            super().__init__(num_parameters, init)

    classes = {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "silu": nn.SiLU,
        "gelu": GELU,
        "prelu": PReLU,
        "sigmoid": Sigmoid,
        "tanh": Tanh,
    }
    return classes[name]


def check_activation(model, activation: str, what: str):
    """Refuse a network that keeps activations ``activation`` did not reach: some timm models
    hard-code a few (mobilenetv3's ReLU blocks, the ReLU in SE modules), and a comparison of
    activations would otherwise be silently mixed."""
    from collections import Counter

    from augpipe.errors import PluginError

    accepted = _SAME_FUNCTION.get(activation, {activation})
    stray = Counter(
        type(m).__name__ for m in model.modules() if type(m).__name__.lower() in _ACTIVATION_CLASS_NAMES - accepted
    )
    if stray:
        found = ", ".join(f"{n} {name}" for name, n in sorted(stray.items()))
        raise PluginError(
            f"{what} keeps activations that --activation {activation} does not reach ({found}): choose another model"
        )
    return model


def timm_input_size(model: str) -> int | None:
    """The image side a timm model is built for (its pretrained configuration's input size), or
    None where timm does not say."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(model)
    except Exception:  # a name timm does not know: the plugin reports it when it builds the model
        return None
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else None


def create_timm_model(model: str, *, pretrained: bool, **kwargs):
    """``timm.create_model``; pretrained weights that can not be had (no network, a model
    without any) end in one line that says what to do instead."""
    import timm

    from augpipe.errors import PluginError

    if not pretrained:
        return timm.create_model(model, pretrained=False, **kwargs)
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise PluginError(f"timm has no pretrained weights for {model!r}; use --weights FILE or train from scratch")
    try:
        return timm.create_model(model, pretrained=True, **kwargs)
    except TypeError:
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise PluginError(
            f"the pretrained weights of {model!r} can not be fetched ({type(err).__name__}"
            f"{': ' + first if first else ''}); with no network, download them elsewhere "
            f"and give --weights FILE"
        ) from None
