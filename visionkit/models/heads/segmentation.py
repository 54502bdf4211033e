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

The losses below are the task's: per-pixel cross-entropy that skips ``ignore_index`` pixels, with
optional class weights and extra weight on label rims, and an optional soft Dice term (Milletari et
al. 2016, eq. 1, averaged over classes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from visionkit.models.backbones.base import BackboneBuildError, FeatureSpec, group_norm
from visionkit.models.heads.settings import head_choices, option
from visionkit.registry import HEADS, NECKS


@dataclass
class SegmentationSettings:
    """``model.head`` of ``task: segmentation``: the head, its auxiliary head, the loss and inference."""

    name: str = option("semantic_fpn", choices=head_choices("segmentation"),
                       help="fcn, deeplabv3 (ASPP) on the deepest stage; semantic_fpn over every stage")
    num_classes: int | None = option(None, min=1, help="null: from the data set")
    channels: int | None = option(None, min=1,
                                  help="head width; null: deeplabv3 256 (ASPP), semantic_fpn 128")
    fpn_channels: int = option(256, min=1, help="semantic_fpn: FPN width")
    atrous_rates: list[int] = option([12, 24, 36], min=1,  # noqa: RUF009
                                     help="deeplabv3: ASPP dilation rates")
    upsample: str = option("bilinear", choices=("bilinear", "shuffle"),
                           help="semantic_fpn: shuffle adds sub-pixel logits (sharper edges)")
    refine: str | None = option(None,
                                help="semantic_fpn: a finer stage fused after the FPN (stem: logits at stride 2)")
    refine_channels: int | None = option(None, min=1, help="refine: fusion width; null: channels")
    aux: bool = option(False, help="auxiliary FCN head on a shallower stage (training only)")
    aux_stage: str | None = option(None, help="null: the stage before the deepest")
    aux_weight: float = option(0.4, min=0, help="the auxiliary head's loss weight")
    ignore_index: int = option(255, min=0, max=255, help="label value left out of loss and scores")
    class_weights: list[float] | None = option(None, min=0,  # noqa: RUF009
                                               help="cross-entropy weight per class")
    dice_weight: float = option(0.0, min=0, help="weight of the soft Dice loss term")
    boundary_weight: float = option(1.0, min=0,
                                    help="cross-entropy weight of pixels within 1 px of a label change (1: off)")
    inference: str = option("whole", choices=("whole", "slide"),
                            help="slide: window-by-window logits, averaged (large images)")
    window: int | None = option(None, min=8, help="slide: window side; null: data.image_size")
    stride: int | None = option(None, min=1, help="slide: step; null: 2/3 of the window")


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
        self.fpn = NECKS.build("fpn", feature_specs, fpn_channels, owner=owner)
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


def _deepest(feature_specs: dict[str, FeatureSpec], s: SegmentationSettings) -> tuple[str, FeatureSpec]:
    if s.refine is not None:
        raise BackboneBuildError(f"refine is a semantic_fpn option; head '{s.name}' has no decoder to refine")
    stage = list(feature_specs)[-1]
    return stage, feature_specs[stage]


@HEADS.register("segmentation.fcn")
def fcn(feature_specs: dict[str, FeatureSpec], num_classes: int, s: SegmentationSettings,
        owner: str = "backbone") -> nn.Module:
    stage, spec = _deepest(feature_specs, s)
    return SingleStageHead(stage, FCNHead(spec.channels, num_classes), spec.stride)


@HEADS.register("segmentation.deeplabv3")
def deeplabv3(feature_specs: dict[str, FeatureSpec], num_classes: int, s: SegmentationSettings,
              owner: str = "backbone") -> nn.Module:
    stage, spec = _deepest(feature_specs, s)
    head = deeplab_head(spec.channels, num_classes, s.atrous_rates, s.channels or 256)
    return SingleStageHead(stage, head, spec.stride)


@HEADS.register("segmentation.semantic_fpn")
def semantic_fpn(feature_specs: dict[str, FeatureSpec], num_classes: int, s: SegmentationSettings,
                 owner: str = "backbone") -> nn.Module:
    return SemanticFPNHead(feature_specs, num_classes, s.fpn_channels, s.channels or 128, owner, s.upsample,
                           s.refine, s.refine_channels)


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


# -- losses ----------------------------------------------------------------------------------------
def label_boundaries(target: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` bool: pixels with a different label value (ignore included) in their 3x3
    neighbourhood (the image border is not a change)."""
    t = target.unsqueeze(1).float()
    pad = F.pad(t, (1, 1, 1, 1), mode="replicate")
    return (F.max_pool2d(pad, 3, 1) != -F.max_pool2d(-pad, 3, 1)).squeeze(1)


def boundary_factor(target: torch.Tensor, boundary_weight: float) -> torch.Tensor | None:
    """Per-pixel loss factor: ``boundary_weight`` on pixels whose 3x3 neighbourhood holds another
    label, 1 elsewhere; None when ``boundary_weight`` is 1 (off)."""
    if boundary_weight == 1.0:
        return None
    return torch.where(label_boundaries(target), boundary_weight, 1.0)


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                       class_weights: torch.Tensor | None = None,
                       factor: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the labelled pixels, class-weighted and rim-weighted (``factor``)."""
    w = None if class_weights is None else class_weights.to(logits.device)
    if factor is None:
        return F.cross_entropy(logits.float(), target, weight=w, ignore_index=ignore_index)
    # a weighted mean over the labelled pixels: weight = class weight x rim factor, as
    # cross_entropy's own class-weighted mean divides by the summed weights
    nll = F.cross_entropy(logits.float(), target, weight=w, ignore_index=ignore_index, reduction="none")
    weight = (target != ignore_index) * factor
    if w is not None:
        weight = weight * w[target.clamp(max=w.numel() - 1)]
    return (nll * factor).sum() / weight.sum().clamp(min=1e-12)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """1 - mean over classes of the soft Dice coefficient, ignore pixels left out."""
    n = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).float()
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(target.clamp(max=n - 1) * (target != ignore_index), n).permute(0, 3, 1, 2)
    onehot = onehot.float() * valid
    inter = (probs * onehot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (total + 1)).mean()
