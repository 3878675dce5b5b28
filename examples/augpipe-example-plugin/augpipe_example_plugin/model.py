"""The ``example`` trainer's networks: VGG-style stages of two 3x3 convolutions, batch norm
and the chosen activation, each stage halving the resolution, then global average pooling,
dropout and the classifier."""

from augpipe.plugin import PluginError, activation_layer, unknown_name_message

# channels per stage
WIDTHS = {"example_tiny": (16, 32), "example": (32, 64, 128)}


def build_example(*, model: str, num_classes: int, image_size: int, activation: str, dropout: float):
    from torch import nn

    if model not in WIDTHS:  # augpipe checks --model against the list; a direct call may not
        raise PluginError(unknown_name_message("model", model, WIDTHS, " for plugin 'example'"))
    act = activation_layer(activation)  # a class: every activation of the network is a new one
    layers, cin = [], 3
    for width in WIDTHS[model]:
        for _ in range(2):
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), act(inplace=True)]
            cin = width
        # ceil_mode: an odd or tiny image still leaves at least one pixel for the pooling
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)
