"""A small, fast convolutional net for 32x32 images on a CPU, in the style of the fast CIFAR-10
training nets (airbench): a stem, three conv-pool-norm groups, global max-pooling."""

from augpipe.plugin import PluginError, Trainer, activation_layer, hookimpl, unknown_name_message

# widths of the stem and the three groups
WIDTHS = {"cnn_small": (24, 32, 64, 128), "cnn": (32, 64, 128, 256), "cnn_wide": (64, 128, 256, 512)}


def build_cnn(*, model: str, num_classes: int, image_size: int, activation: str, dropout: float):
    from torch import nn

    if model not in WIDTHS:
        raise PluginError(unknown_name_message("model", model, WIDTHS, " for plugin 'cnn'"))
    act = activation_layer(activation)
    w = WIDTHS[model]

    def conv_bn(cin, cout, pool=False):
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        return layers + [nn.BatchNorm2d(cout), act(inplace=True)]

    layers = conv_bn(3, w[0])
    for cin, cout in zip(w[:-1], w[1:]):
        layers += conv_bn(cin, cout, pool=True) + conv_bn(cout, cout)
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(w[-1], num_classes)]
    return nn.Sequential(*layers)


@hookimpl
def augpipe_register_trainers(register):
    register(
        Trainer(
            name="cnn",
            build_model=build_cnn,
            models=list(WIDTHS),
            default_model="cnn",
            # lr 0.02: at 0.05 these nets (global max-pooling, no output scaling) sit at the edge of
            # divergence (validation loss jumping to 35-80, results that depend on the seed). Batch 32
            # gives twice the steps for the same CPU time: 6 epochs of the bundled data are 480 steps.
            defaults={
                "optimizer": "nesterov",
                "lr": 0.02,
                "scheduler": "onecycle",
                "batch_size": 32,
                "label_smoothing": 0.1,
                "epochs": 6,
            },
            description="small conv nets for 32x32 images",
            input_size=32,
        )
    )
