"""The module the ``augpipe`` entry point names: its ``@hookimpl`` functions are the plugin."""

from augpipe.plugin import Trainer, hookimpl
from augpipe_example_plugin.model import WIDTHS, build_example


@hookimpl
def augpipe_register_trainers(register):
    register(
        Trainer(
            name="example",
            build_model=build_example,
            models=list(WIDTHS),
            default_model="example",
            # Training settings that suit these nets, used where the user gives none.
            defaults={"optimizer": "adam", "lr": 2e-3, "scheduler": "cosine", "batch_size": 64, "epochs": 8},
            description="a small VGG-style conv net for any image size",
            # None: global pooling takes any size, so augpipe trains at the data's own (or --image-size).
            input_size=None,
        )
    )


@hookimpl
def augpipe_register_augmentations(register):
    # Imported here, not at the top: Albumentations is only needed once a pipeline is built.
    from augpipe_example_plugin.transforms import RandomDesaturate

    register("RandomDesaturate", RandomDesaturate)
