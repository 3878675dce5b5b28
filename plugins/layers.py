"""What the built-in trainers share: activation classes by augpipe's names."""

# Activation modules by lower-cased class name (torch's and timm's), and the names that count as
# each of augpipe's activations. Sigmoid gates (squeeze-excitation, efficientnet) gate features
# rather than activate them, so they are not counted.
_ACTIVATION_CLASS_NAMES = {"relu", "relu6", "leakyrelu", "prelu", "elu", "celu", "selu", "gelu", "gelutanh",
                           "quickgelu", "silu", "swish", "hardswish", "mish", "tanh"}
_SAME_FUNCTION = {"relu": {"relu"}, "leaky_relu": {"leakyrelu"}, "prelu": {"prelu"}, "elu": {"elu"},
                  "selu": {"selu"}, "gelu": {"gelu"}, "silu": {"silu", "swish"}, "sigmoid": set(),
                  "tanh": {"tanh"}}


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

    classes = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "selu": nn.SELU, "silu": nn.SiLU,
               "gelu": GELU, "prelu": PReLU, "sigmoid": Sigmoid, "tanh": Tanh}
    return classes[name]


def check_activation(model, activation: str, what: str):
    """Refuse a network that keeps activations ``activation`` did not reach: some timm models
    hard-code a few (mobilenetv3's ReLU blocks, the ReLU in SE modules), and a comparison of
    activations would otherwise be silently mixed."""
    from collections import Counter

    from augpipe.errors import PluginError

    accepted = _SAME_FUNCTION.get(activation, {activation})
    stray = Counter(type(m).__name__ for m in model.modules()
                    if type(m).__name__.lower() in _ACTIVATION_CLASS_NAMES - accepted)
    if stray:
        found = ", ".join(f"{n} {name}" for name, n in sorted(stray.items()))
        raise PluginError(f"{what} keeps activations that --activation {activation} does not reach ({found}): "
                          f"choose another model")
    return model
