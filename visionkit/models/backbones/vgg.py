"""VGG (Simonyan & Zisserman, 2015) as a staged backbone, one stage per max-pool.

The convolutional layers come from torchvision's ``make_layers`` over its ``cfgs`` table and live
in ``self.features`` exactly as in torchvision, so a torchvision VGG state dict without its
``classifier.*`` keys loads strictly. The fully connected head (``avgpool`` + ``classifier``)
is built apart by :meth:`VGGBackbone.build_classifier` under torchvision's names.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from visionkit.models.backbones.base import NORMS, Backbone, BackboneBuildError, convert_norms
from visionkit.registry import BACKBONES

#: registered name -> (torchvision cfg key, batch norm)
VARIANTS = {
    "vgg11": ("A", False),
    "vgg13": ("B", False),
    "vgg16": ("D", False),
    "vgg19": ("E", False),
    "vgg11_bn": ("A", True),
    "vgg13_bn": ("B", True),
    "vgg16_bn": ("D", True),
    "vgg19_bn": ("E", True),
}


def require_no_norm(family: str, norm: str, instead: str) -> None:
    """Refuse a norm option on a model built without normalization layers (only 'batch',
    the default meaning 'as built', applies), saying what to use instead."""
    if norm == "batch":
        return
    if norm not in NORMS:
        raise BackboneBuildError(f"unknown norm '{norm}'; choose one of {', '.join(NORMS)}")
    raise BackboneBuildError(
        f"{family} has no normalization layers, so norm='{norm}' cannot apply; keep "
        f"norm='batch' or {instead}"
    )


def init_like_torchvision(module: nn.Module) -> None:
    """torchvision's VGG initialisation (He init for convs, unit BN); kept so training from
    scratch behaves as with torchvision's model, whose constructor we do not call (it would
    allocate the ~100M-parameter classifier only to throw it away)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VGGBackbone(Backbone):
    """VGG convolutional layers with stages ``pool1..pool5`` (strides 2..32).

    ``base_width`` scales every layer's width (64 is the paper's; 16 gives a model small
    enough to train on a CPU). The stem is empty: ``frozen_stages=0`` freezes nothing.
    """

    min_input_size = 32  # five 2x2 max-pools: 32 px ends at 1x1, 31 px at 0x0
    classifier_prefixes = ("classifier",)

    def __init__(
        self,
        cfg: str = "D",
        batch_norm: bool = False,
        base_width: int = 64,
        in_channels: int = 3,
        out_stages: Sequence[str] | None = None,
        frozen_stages: int = -1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if not batch_norm:
            family = f"VGG without batch norm (cfg {cfg})"
            require_no_norm(family, norm, "use a _bn variant (e.g. vgg16_bn)")
        if cfg not in cfgs:
            raise BackboneBuildError(f"unknown VGG cfg '{cfg}'; torchvision has {', '.join(cfgs)}")
        if base_width < 1:
            raise BackboneBuildError(f"VGG base_width={base_width} must be a positive integer")
        layout = [v if v == "M" else v * base_width // 64 for v in cfgs[cfg]]
        features = make_layers(layout, batch_norm=batch_norm)
        if in_channels != 3:  # make_layers always starts from RGB
            first = features[0]
            features[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
        init_like_torchvision(features)
        self.features = convert_norms(features, norm) if batch_norm else features
        self.final_channels = layout[-2]

        self.add_stem([])
        per_conv = 3 if batch_norm else 2  # make_layers emits conv, (BN,) ReLU per number
        start = end = channels = pools = 0
        for v in layout:
            if v == "M":
                pools, end = pools + 1, end + 1
                mods = [f"features.{j}" for j in range(start, end)]
                self.add_stage(f"pool{pools}", mods, channels, 2**pools)
                start = end
            else:
                channels, end = v, end + per_conv
        assert end == len(self.features), "stage split out of step with make_layers"
        self.finish(out_stages, frozen_stages)

    def build_classifier(self, num_classes: int, dropout: float = 0.5) -> nn.Module:
        """The paper's head: 7x7 pooling, then fc-4096, fc-4096, fc-classes with dropout.

        Hidden widths scale with ``base_width`` (4096 at 64). Dropout defaults to the paper's
        0.5; Dropout modules are kept even at p=0 so the Linear layers stay at torchvision's
        indices ``classifier.0/3/6``.
        """
        hidden = 4096 * self.final_channels // 512
        head = FCHead(self.final_channels, 7, hidden, num_classes, dropout, dropout_first=False)
        init_like_torchvision(head)  # torchvision draws VGG's Linear weights from N(0, 0.01)
        return head


class FCHead(nn.Module):
    """Adaptive pooling to ``pool x pool`` and three linear layers (VGG / AlexNet head).

    ``dropout_first`` picks AlexNet's order (Dropout before each hidden Linear) over VGG's
    (Dropout after each hidden ReLU); both keep torchvision's ``classifier.N`` indices.
    """

    def __init__(
        self,
        channels: int,
        pool: int,
        hidden: int,
        num_classes: int,
        dropout: float,
        dropout_first: bool,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        flat = channels * pool * pool
        if dropout_first:  # AlexNet: D, L, R, D, L, R, L
            layers = [nn.Dropout(dropout), nn.Linear(flat, hidden), nn.ReLU(inplace=True)]
            layers += [nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True)]
        else:  # VGG: L, R, D, L, R, D, L
            layers = [nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            layers += [nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        self.classifier = nn.Sequential(*layers, nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))


for _name, (_cfg, _bn) in VARIANTS.items():
    BACKBONES.register(_name, partial(VGGBackbone, cfg=_cfg, batch_norm=_bn))
# a quarter-width VGG-11 with batch norm: ~0.6M conv parameters, trains on a CPU
BACKBONES.register("vgg11_bn_w16", partial(VGGBackbone, cfg="A", batch_norm=True, base_width=16))
