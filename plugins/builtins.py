"""Built-in optimizers and learning-rate schedulers, registered like any plugin's."""

from augpipe.plugin import hookimpl


@hookimpl
def augpipe_register_optimizers(register):
    from augpipe.training.optim import OPTIMIZERS

    for name, factory in OPTIMIZERS.items():
        register(name, factory)


@hookimpl
def augpipe_register_schedulers(register):
    from augpipe.training.optim import SCHEDULERS

    for name, factory in SCHEDULERS.items():
        register(name, factory)
