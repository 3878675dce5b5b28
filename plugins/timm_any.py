"""Any timm model by name (``--model convnext_atto``, ``--model vit_tiny_patch16_224`` ...),
randomly initialised, with the activation passed as timm's ``act_layer``."""

from augpipe.plugin import (
    PluginError,
    Trainer,
    activation_layer,
    check_activation,
    create_timm_model,
    hookimpl,
    timm_input_size,
    unknown_name_message,
)


def timm_models() -> list[str]:
    import timm

    return timm.list_models()


def build_timm(
    *, model: str, num_classes: int, image_size: int, activation: str, dropout: float, pretrained: bool = False
):
    import timm

    if not timm.is_model(model):
        raise PluginError(unknown_name_message("model", model, timm_models(), " for plugin 'timm'"))
    kwargs = dict(
        pretrained=pretrained, num_classes=num_classes, drop_rate=dropout, act_layer=activation_layer(activation)
    )
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
    register(
        Trainer(
            name="timm",
            build_model=build_timm,
            models=timm_models,
            default_model="resnet18",
            defaults={"optimizer": "adamw", "lr": 1e-3, "scheduler": "cosine", "weight_decay": 0.05},
            description="any timm model by name",
            input_size=timm_input_size,
        )
    )
