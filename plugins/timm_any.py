"""Any timm model by name (``--model convnext_atto``, ``--model vit_tiny_patch16_224`` ...),
randomly initialised, with the activation passed as timm's ``act_layer``."""
from augpipe.hookspecs import Trainer, hookimpl
from augpipe.plugins.layers import timm_input_size


def timm_models() -> list[str]:
    import timm

    return timm.list_models()


def build_timm(*, model: str, num_classes: int, image_size: int, activation: str, dropout: float,
               pretrained: bool = False):
    import timm

    from augpipe.errors import PluginError
    from augpipe.plugins.layers import activation_layer, check_activation, create_timm_model
    from augpipe.plugin_manager import unknown_name_message

    if not timm.is_model(model):
        raise PluginError(unknown_name_message("model", model, timm_models(), " for plugin 'timm'"))
    kwargs = dict(pretrained=pretrained, num_classes=num_classes, drop_rate=dropout,
                  act_layer=activation_layer(activation))
    try:
        net = create_timm_model(model, img_size=image_size, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise PluginError(f"timm model {model!r} can not take --activation: {err}") from None
        try:
            net = create_timm_model(model, **kwargs)
        except TypeError as err:
            raise PluginError(f"timm model {model!r} can not take --activation: {err}") from None
    return check_activation(net, activation, f"timm model {model!r}")


@hookimpl
def augpipe_register_trainers(register):
    register(Trainer(
        name="timm", build_model=build_timm, models=timm_models, default_model="resnet18",
        defaults={"optimizer": "adamw", "lr": 1e-3, "scheduler": "cosine", "weight_decay": 0.05},
        description="any timm model by name", input_size=timm_input_size,
    ))
