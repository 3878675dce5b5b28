"""What the built-in trainers share: activation classes by augpipe's names."""


def activation_layer(name: str):
    """The activation class for ``name``. timm's classes all accept ``inplace=``, which timm's
    models pass to every activation they build."""
    from timm.layers import get_act_layer

    return get_act_layer(name)
