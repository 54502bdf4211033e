"""Feature pyramid (Lin et al. 2017) over any backbone's declared stages.

Wraps ``torchvision.ops.FeaturePyramidNetwork``; the input channels come from the backbone's
``feature_specs``, never from the config, and the neck declares its own output specs the same way.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from visionkit.models.backbones.base import BackboneBuildError, FeatureSpec
from visionkit.registry import NECKS


@NECKS.register("fpn")
class FPN(nn.Module):
    """Top-down pyramid with lateral 1x1 and output 3x3 convolutions, ``out_channels`` wide.

    ``extra_pool`` adds a stride-2 max-pooled level on top ("pool", as Mask R-CNN's RPN uses);
    ``norm_layer`` (for example ``nn.BatchNorm2d``) follows each conv, which then has no bias.
    """

    def __init__(self, feature_specs: dict[str, FeatureSpec], out_channels: int = 256,
                 extra_pool: bool = False, owner: str = "backbone", norm_layer=None):
        super().__init__()
        if len(feature_specs) < 2:
            raise BackboneBuildError(
                f"fpn needs at least two backbone stages, {owner} returns {list(feature_specs)}; "
                "widen model.backbone.out_stages"
            )
        strides = [s.stride for s in feature_specs.values()]
        if strides != sorted(strides) or len(set(strides)) != len(strides):
            raise BackboneBuildError(f"fpn needs stages of increasing stride, {owner} has {strides}")
        self.in_names = list(feature_specs)
        self.fpn = FeaturePyramidNetwork([s.channels for s in feature_specs.values()], out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_pool else None,
                                         norm_layer=norm_layer)
        self.feature_specs = {n: FeatureSpec(out_channels, s.stride) for n, s in feature_specs.items()}
        if extra_pool:
            self.feature_specs["pool"] = FeatureSpec(out_channels, strides[-1] * 2)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(self.fpn(OrderedDict((n, features[n]) for n in self.in_names)))
