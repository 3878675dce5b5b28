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
    """The activation class for ``name``. timm's classes all accept ``inplace=``, which timm's
    models pass to every activation they build."""
    from timm.layers import get_act_layer

    return get_act_layer(name)


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
