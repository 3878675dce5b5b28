"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016, torchvision's layouts) with every activation
selectable and no batch normalisation: the network of the published CIFAR-10 activation
comparison (Misra 2019, SqueezeNet, Adam 1e-3, batch 128, 50 epochs), where the activation alone
decides how well gradients flow. Images of 64 px or less get a 3x3 stride-1 first convolution,
as CIFAR adaptations of the network do, so a 32 px image is not shrunk to 7 px before the first
Fire module."""

from augpipe.plugin import PluginError, Trainer, activation_layer, hookimpl, unknown_name_message

# (squeeze, expand) per Fire module and where the max-pools go ("M"), after torchvision.
LAYOUTS = {
    "squeezenet1_0": (
        96,
        7,
        ["M", (16, 64), (16, 64), (32, 128), "M", (32, 128), (48, 192), (48, 192), (64, 256), "M", (64, 256)],
    ),
    "squeezenet1_1": (
        64,
        3,
        ["M", (16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256), (64, 256)],
    ),
}


def build_squeezenet(*, model: str, num_classes: int, image_size: int, activation: str, dropout: float):
    import torch
    from torch import nn

    if model not in LAYOUTS:
        raise PluginError(unknown_name_message("model", model, LAYOUTS, " for plugin 'squeezenet'"))
    act = activation_layer(activation)

    class Fire(nn.Module):
        def __init__(self, cin: int, squeeze: int, expand: int):
            super().__init__()
            self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), act(inplace=True))
            self.expand1x1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), act(inplace=True))
            self.expand3x3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), act(inplace=True))

        def forward(self, x):
            x = self.squeeze(x)
            return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)

    stem_width, stem_kernel, layout = LAYOUTS[model]
    small = image_size <= 64
    layers = [
        nn.Conv2d(3, stem_width, 3 if small else stem_kernel, stride=1 if small else 2, padding=1 if small else 0),
        act(inplace=True),
    ]
    width = stem_width
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(3, stride=2, ceil_mode=True))
        else:
            squeeze, expand = item
            layers.append(Fire(width, squeeze, expand))
            width = 2 * expand
    # The classifier is a 1x1 convolution followed by the activation and global average pooling,
    # as in the paper: the activation reaches the logits too.
    classifier = [
        nn.Dropout(dropout),
        nn.Conv2d(width, num_classes, 1),
        act(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ]
    net = nn.Sequential(nn.Sequential(*layers), nn.Sequential(*classifier))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            # torchvision's initialisation: the final convolution small, the others Kaiming-uniform.
            if m.out_channels == num_classes and m.kernel_size == (1, 1) and m.in_channels == width:
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
            else:
                nn.init.kaiming_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return net


@hookimpl
def augpipe_register_trainers(register):
    register(
        Trainer(
            name="squeezenet",
            build_model=build_squeezenet,
            models=list(LAYOUTS),
            default_model="squeezenet1_1",
            defaults={
                "optimizer": "adam",
                "lr": 1e-3,
                "scheduler": "none",
                "batch_size": 128,
                "epochs": 50,
                "dropout": 0.5,
                "weight_decay": 0.0,
            },
            description="SqueezeNet without batch norm: the network of the CIFAR-10 activation comparison",
            input_size=32,  # the comparison's CIFAR-10 images; --image-size 224 for ImageNet-sized photos
        )
    )
