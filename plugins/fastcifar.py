"""airbench94's network (Keller Jordan, github.com/KellerJordan/cifar10-airbench) for 32x32
images: a 2x2 convolution whose weights are fitted to the training images (patch whitening) and
then frozen, three conv-pool-norm groups of widths 64/256/256, global max-pooling, and an output
layer scaled by 1/9.

A trainer of its own rather than a model of ``cnn``: a Trainer's ``defaults`` are per trainer, and
this network wants settings (GELU, momentum 0.85, label smoothing 0.2) that the ``cnn`` models do not.
"""

from augpipe.plugin import PluginError, Trainer, activation_layer, hookimpl, unknown_name_message

MODELS = ("airbench",)
WIDTHS = (64, 256, 256)
WHITEN_PATCH = 2
BN_MOMENTUM = 0.4  # torch's meaning: airbench's 0.6 is the weight of the old statistics
BN_EPS = 1e-12
OUTPUT_SCALE = 1 / 9
WHITEN_BIAS_EPOCHS = 3  # airbench94 trains the whitening layer's bias for the first 3 epochs only


def patch_whitening_weights(x, patch: int = 2, eps: float = 5e-4):
    """Weights of a ``patch x patch`` convolution (no padding, stride 1) that whitens the patches
    of ``x`` (float NCHW, normalised as the model's inputs are): ``2 * C * patch**2`` filters,
    the eigenvectors of the patches' second-moment matrix each divided by the square root of its
    eigenvalue plus ``eps``, largest eigenvalue first, then the same filters negated (so that an
    activation after the layer keeps both signs). As in airbench, the moment is taken about zero,
    not the mean: the inputs are normalised, and the layer's bias absorbs what is left.

    Each eigenvector's sign is fixed (its largest component positive): eigh may return either
    sign, and which half of the filters holds the negated copy decides what the next layer sees.
    """
    import torch
    import torch.nn.functional as F

    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float NCHW batch, got {x.dtype} of shape {tuple(x.shape)}")
    c = x.shape[1]
    d = c * patch * patch
    moment = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    count = 0
    # In chunks: 5,000 CIFAR images have 4.8 M patches, 460 MB as one float64 matrix.
    for chunk in x.split(256):
        p = F.unfold(chunk.double(), kernel_size=patch)  # (n, C*k*k, L), ordered as a conv weight's (c, kh, kw)
        p = p.transpose(1, 2).reshape(-1, d)
        moment += p.T @ p
        count += p.shape[0]
    if count == 0:
        raise ValueError(f"no {patch}x{patch} patches in a batch of shape {tuple(x.shape)}")
    eigenvalues, eigenvectors = torch.linalg.eigh(moment / count)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    largest = eigenvectors.abs().argmax(0)
    signs = torch.sign(eigenvectors[largest, torch.arange(d, device=x.device)])
    eigenvectors = eigenvectors * signs
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).reshape(d, c, patch, patch)
    return torch.cat([filters, -filters]).to(x.dtype)


def build_fastcifar(*, model: str, num_classes: int, image_size: int, activation: str, dropout: float):
    if model not in MODELS:
        raise PluginError(unknown_name_message("model", model, MODELS, " for plugin 'fastcifar'"))
    return _airbench_class()(num_classes=num_classes, activation=activation, dropout=dropout)


_CLASS = None


def _airbench_class():
    """The model class, made on first use: this module is imported for ``augpipe --help``,
    which must not import torch."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import torch
    from torch import nn

    class BatchNorm(nn.BatchNorm2d):
        """airbench's batch norm: its own momentum and eps, the scale frozen at 1, only the
        shift trained."""

        def __init__(self, channels: int):
            super().__init__(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
            self.weight.requires_grad_(False)

    def conv3x3(cin: int, cout: int) -> nn.Conv2d:
        conv = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
        # The first cin filters start as the identity: an implicit residual path (airbench).
        with torch.no_grad():
            nn.init.dirac_(conv.weight[:cin])
        return conv

    class ConvGroup(nn.Module):
        def __init__(self, cin: int, cout: int, act):
            super().__init__()
            self.conv1, self.pool, self.norm1 = conv3x3(cin, cout), nn.MaxPool2d(2), BatchNorm(cout)
            self.act1 = act(inplace=True)
            self.conv2, self.norm2, self.act2 = conv3x3(cout, cout), BatchNorm(cout), act(inplace=True)

        def forward(self, x):
            x = self.act1(self.norm1(self.pool(self.conv1(x))))
            return self.act2(self.norm2(self.conv2(x)))

    class AirBench(nn.Module):
        """airbench94's network. ``whiten`` is frozen (no gradient): call ``init_from_data``
        once, before training, to fit it to the training images; only its bias trains."""

        def __init__(self, *, num_classes: int, activation: str = "gelu", dropout: float = 0.0):
            super().__init__()
            act = activation_layer(activation)
            width = 2 * 3 * WHITEN_PATCH**2
            self.whiten = nn.Conv2d(3, width, WHITEN_PATCH, padding=0, bias=True)
            with torch.no_grad():
                self.whiten.bias.zero_()
            self.whiten.weight.requires_grad_(False)
            self.whiten_act = act(inplace=True)
            widths = (width,) + WIDTHS
            self.groups = nn.Sequential(*(ConvGroup(a, b, act) for a, b in zip(widths[:-1], widths[1:])))
            # airbench's MaxPool2d(3) over the 3x3 map left of a 32 px image; global, so other sizes work.
            self.pool = nn.AdaptiveMaxPool2d(1)
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(WIDTHS[-1], num_classes, bias=False)

        def get_classifier(self):
            return self.classifier

        def set_epoch(self, epoch: int) -> None:
            """Called by augpipe's loop before each training epoch (from 1): the whitening bias
            trains for the first WHITEN_BIAS_EPOCHS epochs, then stays as it is (no gradient,
            so the optimizer leaves it alone, momentum and decay included)."""
            self.whiten.bias.requires_grad_(epoch <= WHITEN_BIAS_EPOCHS)

        def forward(self, x):
            x = self.groups(self.whiten_act(self.whiten(x)))
            x = self.dropout(self.pool(x).flatten(1))
            return self.classifier(x) * OUTPUT_SCALE

        @torch.no_grad()
        def init_from_data(self, images_uint8_nchw: torch.Tensor, mean, std, eps: float = 5e-4) -> None:
            """Fit the whitening layer to training images (uint8 NCHW, at the model's input
            size, not augmented), normalised with ``mean`` and ``std`` (per channel, in [0, 1]
            units) exactly as the training batches are. airbench uses 5,000 images."""
            if images_uint8_nchw.dtype != torch.uint8 or images_uint8_nchw.ndim != 4 or images_uint8_nchw.shape[1] != 3:
                raise ValueError(
                    f"expected uint8 images of shape (N, 3, H, W), got {images_uint8_nchw.dtype} "
                    f"of shape {tuple(images_uint8_nchw.shape)}"
                )
            weight = self.whiten.weight
            m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
            s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255
            x = (images_uint8_nchw.float() - m) / s  # augpipe's BatchNormalizer, term for term
            weight.copy_(patch_whitening_weights(x, WHITEN_PATCH, eps).to(weight.device, weight.dtype))

    _CLASS = AirBench
    return _CLASS


@hookimpl
def augpipe_register_trainers(register):
    register(
        Trainer(
            name="fastcifar",
            build_model=build_fastcifar,
            models=list(MODELS),
            default_model="airbench",
            # airbench's own choices where augpipe's loop has them: GELU, Nesterov at momentum 0.85,
            # label smoothing 0.2, a one-cycle schedule.
            defaults={
                "activation": "gelu",
                "optimizer": "nesterov",
                "momentum": 0.85,
                "lr": 0.2,
                "scheduler": "onecycle",
                "label_smoothing": 0.2,
                "batch_size": 64,
                "epochs": 8,
            },
            description="airbench94's fast CIFAR-10 net, whitening first layer",
            input_size=32,
        )
    )
