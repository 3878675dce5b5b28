"""ResNets from timm: the ImageNet family (resnet18 ... resnet152, resnext, wide and SE
variants) and the CIFAR ResNets of He et al. (resnet20 ... resnet110: three stages of 16, 32 and
64 channels), all built with timm's ResNet class and randomly initialised. Images of 64 px or
less get the CIFAR stem (3x3 convolution, no max-pool)."""

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

# basic blocks per stage: 6n + 2 layers
CIFAR_RESNETS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


def resnet_models() -> list[str]:
    import timm

    return list(CIFAR_RESNETS) + timm.list_models(module="resnet")


def resnet_input_size(model: str) -> int | None:
    return 32 if model in CIFAR_RESNETS else timm_input_size(model)


def build_resnet(
    *, model: str, num_classes: int, image_size: int, activation: str, dropout: float, pretrained: bool = False
):
    import timm
    from torch import nn

    act = activation_layer(activation)
    if model in CIFAR_RESNETS:
        from timm.models.resnet import BasicBlock, ResNet

        if pretrained:
            raise PluginError(
                f"there are no pretrained weights for {model!r} (a CIFAR ResNet); use --weights FILE "
                f"or an ImageNet ResNet such as resnet18"
            )
        n = CIFAR_RESNETS[model]
        # A 'deep' stem of width 8 makes the stem end at 16 channels, as the CIFAR ResNets do.
        # zero_init_last=False: timm zeroes each block's last batch-norm scale (right for its long
        # ImageNet schedules), which left these short-trained CIFAR nets near chance for epochs.
        net = ResNet(
            BasicBlock,
            layers=(n, n, n),
            channels=(16, 32, 64),
            stem_type="deep",
            stem_width=8,
            num_classes=num_classes,
            drop_rate=dropout,
            act_layer=act,
            zero_init_last=False,
        )
        net.layer4 = nn.Identity()  # timm's forward runs layer1..layer4; these nets have three stages
    elif model in timm.list_models(module="resnet"):
        net = create_timm_model(model, pretrained=pretrained, num_classes=num_classes, drop_rate=dropout, act_layer=act)
    else:
        raise PluginError(unknown_name_message("model", model, resnet_models(), " for plugin 'resnet'"))
    if image_size <= 64 or model in CIFAR_RESNETS:
        # A 7x7 stride-2 stem and a max-pool would shrink a 32 px image to 8 px before the first
        # block; CIFAR ResNets keep the resolution instead.
        width = net.bn1.num_features  # also right for the deep stems of the *d variants
        net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return check_activation(net, activation, f"resnet model {model!r}")


@hookimpl
def augpipe_register_trainers(register):
    register(
        Trainer(
            name="resnet",
            build_model=build_resnet,
            models=resnet_models,
            default_model="resnet20",
            # 10 epochs of the bundled data's 2,560 training images (400 steps): about a minute on 2 cores.
            defaults={
                "optimizer": "nesterov",
                "lr": 0.1,
                "scheduler": "onecycle",
                "batch_size": 64,
                "epochs": 10,
                "label_smoothing": 0.1,
            },
            description="timm's ResNet family, with the CIFAR ResNets",
            input_size=resnet_input_size,
        )
    )
