"""An example augpipe plugin: the ``example`` trainer and the ``RandomDesaturate`` augmentation.

Nothing heavy is imported here: augpipe imports the entry-point module (``.plugin``) whenever
it starts, ``augpipe --help`` included, so torch and Albumentations are imported only when a
model or a transform is built.
"""

__version__ = "0.1.0"
