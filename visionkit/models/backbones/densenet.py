"""DenseNet-BC (Huang et al., 2017) as a staged backbone, one stage per dense block.

torchvision's ``DenseNet`` builds the layers; we keep its ``features`` Sequential unchanged
(``features.conv0``, ``features.denseblock1``, ``features.transition1``, ... ``features.norm5``)
and drop its ``classifier``, so a torchvision state dict without ``classifier.*`` loads strictly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn
from torchvision.models import DenseNet

from visionkit.models.backbones.base import Backbone, convert_norms
from visionkit.registry import BACKBONES

#: registered name -> (growth rate k, layers per block, stem channels); torchvision's table
VARIANTS = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
    # CPU-sized: the paper's CIFAR growth rate (k=12, 2k stem channels) with DenseNet-121's
    # block proportions at about a third of its depth; 138 output channels, ~0.1M parameters
    "densenet_bc_k12_tiny": (12, (2, 4, 8, 5), 24),
}


# "denselayer1.norm.1.weight" -> "denselayer1.norm1.weight" (also relu/conv, 1 and 2)
_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


class DenseNetBackbone(Backbone):
    """Stem ``conv0..pool0`` (stride 4), then stages ``denseblock1..4`` at strides 4, 8, 16, 32.

    Stage k runs transition k-1 (1x1 conv halving the channels, 2x2 average pool) and dense
    block k, so each stage ends on a dense block's concatenated features; the last stage adds
    ``norm5``. The ReLU that torchvision applies after ``norm5`` belongs to the classifier.
    """

    # stride-2 conv0 and pool0 then three 2x2 average pools: the last needs a 2x2 input, so
    # pool0 must give 8x8, i.e. a 15x15 conv0 output, i.e. 29 px (torchvision's min_size too)
    min_input_size = 29
    classifier_prefixes = ("classifier",)

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        in_channels: int = 3,
        out_stages: Sequence[str] | None = None,
        frozen_stages: int = -1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        net = DenseNet(
            growth_rate=growth_rate,
            block_config=tuple(block_config),
            num_init_features=num_init_features,
            bn_size=bn_size,
            drop_rate=drop_rate,
            num_classes=1,  # its classifier is discarded; build_classifier makes ours
            memory_efficient=memory_efficient,
        )
        features = net.features
        if in_channels != 3:
            conv = nn.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(conv.weight)  # as torchvision initialises conv0
            features.conv0 = conv
        self.features = convert_norms(features, norm)

        self.add_stem(["features.conv0", "features.norm0", "features.relu0", "features.pool0"])
        channels, last = num_init_features, len(block_config)
        for k, layers in enumerate(block_config, start=1):
            mods = [f"features.transition{k - 1}"] if k > 1 else []
            mods.append(f"features.denseblock{k}")
            if k > 1:
                channels //= 2  # the transition's compression (theta = 0.5, DenseNet-BC)
            channels += layers * growth_rate
            if k == last:
                mods.append("features.norm5")
            self.add_stage(f"denseblock{k}", mods, channels, 4 * 2 ** (k - 1))
        self.final_channels = channels
        self.finish(out_stages, frozen_stages)

    @staticmethod
    def remap_torchvision_keys(state_dict: dict) -> dict:
        """torchvision's published DenseNet files predate its module names: ``norm.1.weight``
        there is ``norm1.weight`` here (torchvision renames them the same way when it loads)."""
        out = {}
        for key, value in state_dict.items():
            out[_LEGACY_KEY.sub(r"\1\2", key)] = value
        return out

    def build_classifier(self, num_classes: int, dropout: float = 0.0) -> nn.Module:
        """torchvision's head: ReLU, global average pooling, one Linear named ``classifier``
        (the paper uses no dropout here; ``dropout`` > 0 adds one before the Linear)."""
        return DenseNetHead(self.final_channels, num_classes, dropout)


class DenseNetHead(nn.Module):
    """ReLU (not in place: the backbone's output may feed other heads), pool, Linear."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)
        nn.init.zeros_(self.classifier.bias)  # as torchvision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(self.relu(x), 1), 1)
        return self.classifier(self.dropout(x))


for _name, (_k, _blocks, _stem) in VARIANTS.items():
    _kwargs = {"growth_rate": _k, "block_config": _blocks, "num_init_features": _stem}
    BACKBONES.register(_name, partial(DenseNetBackbone, **_kwargs))
