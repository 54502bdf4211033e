"""Semantic segmentation heads, built from a backbone's ``feature_specs``.

Each head maps the backbone's feature dict to class logits at the resolution of the finest
feature it reads; the task upsamples them to the input size.

- ``fcn``: torchvision's ``FCNHead`` (3x3 conv to in/4 channels, BN, ReLU, dropout, 1x1 conv) on
  the deepest stage (Long et al. 2015, as torchvision's FCN-ResNet builds it).
- ``deeplabv3``: torchvision's ``ASPP`` + 3x3 conv + 1x1 conv on the deepest stage (Chen et al.
  2017, sec. 3.3); ``DeepLabHead`` itself when the width is its 256 channels.
- ``semantic_fpn``: the semantic branch of Panoptic FPN (Kirillov et al. 2019, sec. 3.2, fig. 3):
  an FPN over every returned stage, each level brought to the finest stride by
  (3x3 conv, GroupNorm, ReLU, 2x bilinear upsample) steps, the levels summed, a 1x1 conv.
  ``refine``: one finer stage (ResNet's stride-2 ``stem``) is left out of the FPN and fused
  after it, as DeepLabV3+'s decoder fuses low-level features (Chen et al. 2018, sec. 3.2: a
  1x1 conv narrows them, they are concatenated with the 2x-upsampled decoder output, 3x3 convs
  follow), so the logits come at stride 2 and object rims are not limited to the stride-4 grid.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from visionkit.models.backbones.base import BackboneBuildError, FeatureSpec, group_norm
from visionkit.models.necks.fpn import FPN

HEADS = ("fcn", "deeplabv3", "semantic_fpn")


class SingleStageHead(nn.Module):
    """Runs ``head`` on the feature map ``stage`` (the deepest one for fcn/deeplabv3)."""

    def __init__(self, stage: str, head: nn.Module, stride: int):
        super().__init__()
        self.stage, self.head, self.stride = stage, head, stride

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(features[self.stage])


def deeplab_head(in_channels: int, num_classes: int, rates: Sequence[int], channels: int) -> nn.Module:
    """torchvision's DeepLabHead, or the same layers at another width (its ASPP takes one)."""
    if channels == 256:
        return DeepLabHead(in_channels, num_classes, tuple(rates))
    return nn.Sequential(
        ASPP(in_channels, list(rates), out_channels=channels),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, num_classes, 1),
    )


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch over any backbone's stages (see the module docstring)."""

    def __init__(self, feature_specs: dict[str, FeatureSpec], num_classes: int, fpn_channels: int = 256,
                 channels: int = 128, owner: str = "backbone", upsample: str = "bilinear",
                 refine: str | None = None, refine_channels: int | None = None):
        super().__init__()
        self.refine_stage, self.fuse = refine, None
        if refine is not None:
            feature_specs = dict(feature_specs)
            if refine not in feature_specs:
                raise BackboneBuildError(f"refine stage '{refine}' is not a stage {owner} returns "
                                         f"({', '.join(feature_specs)}); add it to model.backbone.out_stages")
            fine = feature_specs.pop(refine)
            coarse = min(s.stride for s in feature_specs.values())
            if fine.stride * 2 != coarse:
                raise BackboneBuildError(f"refine stage '{refine}' has stride {fine.stride}; it must be half "
                                         f"the finest FPN stride ({coarse})")
            width = refine_channels or channels
            low = max(8, width // 4)  # DeepLabV3+ narrows the low level (48 of 304 channels)
            self.fuse = _Fuse(fine.channels, channels, low, width)
        self.fpn = FPN(feature_specs, fpn_channels, owner=owner)
        strides = [s.stride for s in feature_specs.values()]
        self.stride = strides[0]
        self.scale_heads = nn.ModuleDict()
        for name, stride in zip(feature_specs, strides):
            steps = math.log2(stride / self.stride)
            if steps != int(steps):
                raise BackboneBuildError(
                    f"semantic_fpn needs stage strides that are powers of two apart; {owner} has {strides}")
            layers: list[nn.Module] = []
            for k in range(max(int(steps), 1)):
                layers += [nn.Conv2d(fpn_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                           # GN(32) as the paper at 128 channels; at least 4 channels a group when
                           # narrower, so a 1x1 map (a small input's deepest level) still normalises
                           group_norm(channels, max(1, min(32, channels // 4))), nn.ReLU(inplace=True)]
                if steps > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads[name] = nn.Sequential(*layers)
        out_channels = channels if self.fuse is None else self.fuse.channels
        self.classifier = nn.Conv2d(out_channels, num_classes, 1)
        # "shuffle": besides the coarse logits (upsampled bilinearly by the task), predict a
        # residual for each of the stride x stride pixels of a cell and place them with a pixel
        # shuffle (sub-pixel convolution, Shi et al. 2016): the features know where inside a
        # cell an edge runs, which bilinear interpolation of coarse logits cannot express
        # (sharp corners get rounded). Output at the input resolution; costs one 1x1 conv.
        if self.fuse is not None:
            self.stride //= 2
        self.refine = None
        if upsample == "shuffle" and self.stride > 1:
            self.refine = nn.Sequential(nn.Conv2d(out_channels, num_classes * self.stride**2, 1),
                                        nn.PixelShuffle(self.stride))
            nn.init.zeros_(self.refine[0].weight)  # start as the plain head
            nn.init.zeros_(self.refine[0].bias)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        pyramid = self.fpn(features)
        out = None
        for name, head in self.scale_heads.items():
            x = head(pyramid[name])
            if out is not None and x.shape[-2:] != out.shape[-2:]:  # odd input sizes round down
                x = F.interpolate(x, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        if self.fuse is not None:
            out = self.fuse(out, features[self.refine_stage])
        logits = self.classifier(out)
        if self.refine is None:
            return logits
        fine = self.refine(out)
        return fine + F.interpolate(logits, size=fine.shape[-2:], mode="bilinear", align_corners=False)


class _Fuse(nn.Module):
    """DeepLabV3+-style fusion of a finer stage: 1x1 conv (``low`` channels) on it, concatenated
    with the decoder output upsampled to its size, then a 3x3 conv, GroupNorm, ReLU. The stride-2
    grid has 4x the cells, so when ``width`` is below the decoder's width a 1x1 conv narrows the
    decoder output before the upsampling (bilinear upsampling and its backward pass are memory
    bound on CPU and cost in proportion to the channels)."""

    def __init__(self, fine_channels: int, channels: int, low: int, width: int):
        super().__init__()
        self.channels = width
        self.narrow = nn.Conv2d(channels, width, 1, bias=False) if width < channels else nn.Identity()
        channels = min(channels, width)
        self.low = nn.Sequential(nn.Conv2d(fine_channels, low, 1, bias=False),
                                 group_norm(low, max(1, min(32, low // 4))), nn.ReLU(inplace=True))
        self.conv = nn.Sequential(nn.Conv2d(channels + low, width, 3, padding=1, bias=False),
                                  group_norm(width, max(1, min(32, width // 4))), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.narrow(x), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, self.low(fine)], 1))


def build_segmentation_head(name: str, feature_specs: dict[str, FeatureSpec], num_classes: int, *,
                            channels: int = 256, fpn_channels: int = 256,
                            atrous_rates: Sequence[int] = (12, 24, 36), owner: str = "backbone",
                            upsample: str = "bilinear", refine: str | None = None,
                            refine_channels: int | None = None) -> nn.Module:
    """The head ``name`` (one of :data:`HEADS`) for a backbone declaring ``feature_specs``."""
    if name not in HEADS:
        raise BackboneBuildError(f"unknown segmentation head '{name}'; choose one of {', '.join(HEADS)}")
    if name == "semantic_fpn":
        return SemanticFPNHead(feature_specs, num_classes, fpn_channels, channels, owner, upsample, refine,
                               refine_channels)
    if refine is not None:
        raise BackboneBuildError(f"refine is a semantic_fpn option; head '{name}' has no decoder to refine")
    stage = list(feature_specs)[-1]
    spec = feature_specs[stage]
    if name == "fcn":
        return SingleStageHead(stage, FCNHead(spec.channels, num_classes), spec.stride)
    return SingleStageHead(stage, deeplab_head(spec.channels, num_classes, atrous_rates, channels), spec.stride)


def build_aux_head(feature_specs: dict[str, FeatureSpec], num_classes: int, stage: str | None,
                   owner: str = "backbone") -> SingleStageHead:
    """An FCNHead on ``stage`` (default: the stage before the deepest), as torchvision's
    segmentation models attach to layer3 to help the deep layers train (Zhao et al. 2017, sec. 3.3)."""
    names = list(feature_specs)
    if stage is None:
        if len(names) < 2:
            raise BackboneBuildError(f"the auxiliary head needs two stages, {owner} returns {names}")
        stage = names[-2]
    if stage not in feature_specs:
        raise BackboneBuildError(f"aux_stage '{stage}' is not a stage {owner} returns ({', '.join(names)})")
    spec = feature_specs[stage]
    return SingleStageHead(stage, FCNHead(spec.channels, num_classes), spec.stride)
