"""Fully connected networks on the flattened image, with dropout between the hidden layers:
the lecture's setting for activations and dropout."""

from augpipe.plugin import PluginError, Trainer, activation_layer, hookimpl, unknown_name_message

HIDDEN = {"mlp_small": (256,), "mlp": (512, 256), "mlp_large": (1024, 512, 256)}


def build_mlp(*, model: str, num_classes: int, image_size: int, activation: str, dropout: float):
    from torch import nn

    if model not in HIDDEN:
        raise PluginError(unknown_name_message("model", model, HIDDEN, " for plugin 'mlp'"))
    act = activation_layer(activation)
    layers, width = [nn.Flatten()], 3 * image_size * image_size
    for hidden in HIDDEN[model]:
        layers += [nn.Linear(width, hidden), act(inplace=True), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@hookimpl
def augpipe_register_trainers(register):
    register(
        Trainer(
            name="mlp",
            build_model=build_mlp,
            models=list(HIDDEN),
            default_model="mlp",
            defaults={
                "optimizer": "adam",
                "lr": 1e-3,
                "scheduler": "cosine",
                "batch_size": 128,
                "epochs": 20,
                "weight_decay": 0.0,
            },
            description="multi-layer perceptrons with dropout",
            # every pixel is an input: 32 px are 3,072 inputs, 224 px would be 150,528
            input_size=32,
        )
    )
