"""Dense depth head: a decoder over any backbone's stages and the depth regression losses.

Two decoders, both built from the backbone's ``feature_specs`` (channels and strides):

- ``unet``: U-Net style (Ronneberger et al. 2015): from the deepest stage, upsample x2-ish to the
  next shallower stage, concatenate it (skip connection) and fuse with two 3x3 conv-BN-ReLU; repeat
  to the shallowest stage, then once more with a light full-resolution stem over the image itself,
  so edges are placed at input resolution rather than blurred by a 4x upsampling.
- ``fpn``: a feature pyramid (Lin et al. 2017, torchvision's FeaturePyramidNetwork) whose levels
  are each upsampled to the finest level and summed (the semantic branch of Panoptic FPN,
  Kirillov et al. 2019), then refined with the same full-resolution stem.

The output is metric depth at input resolution, kept inside ``[min_depth, max_depth]`` by a
sigmoid interpolated in log space: ``d = exp(log min + sigmoid(x) (log max - log min))``, so a unit
of the network's output is the same *relative* change at every distance (what abs_rel scores).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from visionkit.errors import ConfigError
from visionkit.models.heads.settings import head_choices, option
from visionkit.registry import HEADS

DECODERS = ("unet", "fpn")
LOSSES = ("l1", "silog", "berhu")


@dataclass
class DepthSettings:
    """``model.head`` of ``task: depth``: the decoder and its loss."""

    name: str = option("unet", choices=head_choices("depth"), help="unet: skip connections; fpn: pyramid sum")
    channels: int = option(32, min=4, help="decoder width at stride 4 (doubles deeper, up to 4x)")
    loss: str = option("silog", choices=LOSSES,
                       help="on valid pixels: l1, silog (Eigen et al. 2014), berhu (Laina et al. 2016)")
    silog_lambda: float = option(0.85, min=0, max=1, help="1: fully scale invariant")
    silog_scale: float = option(10.0, min=0, help="silog: scale of the loss (as in BTS)")
    berhu_threshold: float = option(0.2, min=0, max=1, help="c = threshold * max |error|")


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class UpFuse(nn.Module):
    """Upsample ``x`` to the skip's size, concatenate, fuse with two 3x3 convolutions."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.fuse = nn.Sequential(conv_bn_relu(cin + cskip, cout), conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, skip], 1))


def _width(stride: int, base: int) -> int:
    """Decoder width at a stride: ``base`` at stride 1-4, doubling per halving, at most 4x base."""
    return base * min(4, max(1, stride // 4))


class DepthHead(nn.Module):
    """Decoder + depth prediction over ``feature_specs``; ``forward(images, features)`` -> (B, H, W)."""

    def __init__(self, feature_specs: dict, in_channels: int = 3, *, decoder: str = "unet",
                 channels: int = 32, min_depth: float = 1e-3, max_depth: float = 10.0,
                 stem_channels: int = 8):
        super().__init__()
        if decoder not in DECODERS:
            raise ConfigError(f"model.head.name '{decoder}' is not one of {', '.join(DECODERS)}")
        if not 0 < min_depth < max_depth:
            raise ConfigError(f"depth range must satisfy 0 < min_depth < max_depth, got "
                              f"{min_depth} and {max_depth}")
        specs = list(feature_specs.items())
        strides = [s.stride for _, s in specs]
        if strides != sorted(strides):
            raise ConfigError(f"the depth decoder needs backbone stages of increasing stride, got {strides}")
        self.names = [n for n, _ in specs]
        self.decoder = decoder
        self.log_min, self.log_max = math.log(min_depth), math.log(max_depth)
        if decoder == "unet":
            deepest = specs[-1][1]
            width = _width(deepest.stride, channels)
            self.bottleneck = conv_bn_relu(deepest.channels, width)
            self.ups = nn.ModuleList()
            for _, spec in reversed(specs[:-1]):
                out = _width(spec.stride, channels)
                self.ups.append(UpFuse(width, spec.channels, out))
                width = out
        else:
            if len(specs) < 2:
                raise ConfigError(f"decoder 'fpn' needs at least two backbone stages, got {self.names}; "
                                  "use name: unet or widen model.backbone.out_stages")
            self.fpn = FeaturePyramidNetwork([s.channels for _, s in specs], channels)
            self.merge = conv_bn_relu(channels, channels)
            width = channels
        self.stem = nn.Sequential(conv_bn_relu(in_channels, stem_channels),
                                  conv_bn_relu(stem_channels, stem_channels))
        # full resolution is the costliest place: half the decoder width there
        fine = max(8, channels // 2)
        self.refine = UpFuse(width, stem_channels, fine)
        self.predict = nn.Conv2d(fine, 1, 3, padding=1)

    def decode(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.decoder == "unet":
            feats = [features[n] for n in self.names]
            x = self.bottleneck(feats[-1])
            for up, skip in zip(self.ups, reversed(feats[:-1])):
                x = up(x, skip)
            return x
        pyramid = list(self.fpn(OrderedDict((n, features[n]) for n in self.names)).values())
        size = pyramid[0].shape[-2:]
        x = sum(F.interpolate(p, size=size, mode="bilinear", align_corners=False) if p.shape[-2:] != size
                else p for p in pyramid)
        return self.merge(x)

    def forward(self, images: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.refine(self.decode(features), self.stem(images))
        logits = self.predict(x)[:, 0].float()
        return torch.exp(self.log_min + torch.sigmoid(logits) * (self.log_max - self.log_min))


for _decoder in DECODERS:  # the heads are one class; the decoder is its argument
    HEADS.register(f"depth.{_decoder}", functools.partial(DepthHead, decoder=_decoder))


# ---------------------------------------------------------------------------------------------
# Losses on valid pixels only. ``valid`` is a bool mask of the pixels with a measurement inside
# the configured range; images with no valid pixel add nothing (their count is returned by
# ``valid_images``), and a batch without any valid pixel gives a zero loss that still has a graph.


def l1_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in metres over every valid pixel of the batch."""
    if not valid.any():
        return pred.sum() * 0.0
    return (pred[valid] - target[valid]).abs().mean()


def silog_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
               lam: float = 0.85, scale: float = 10.0) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014, eq. 4), per image then averaged over images:
    ``scale * sqrt(mean(g^2) - lam * mean(g)^2)`` with ``g = log d - log d*`` over the image's valid
    pixels. ``lam`` = 1 is fully scale invariant, 0 is an RMSE in log space; 0.85 and the x10 scale
    are the settings of BTS (Lee et al. 2019)."""
    terms = []
    for p, t, v in zip(pred, target, valid):
        if not v.any():
            continue
        g = torch.log(p[v]) - torch.log(t[v])
        var = (g.pow(2).mean() - lam * g.mean().pow(2)).clamp_min(1e-12)
        terms.append(scale * var.sqrt())
    return torch.stack(terms).mean() if terms else pred.sum() * 0.0


def berhu_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
               threshold: float = 0.2) -> torch.Tensor:
    """Reverse Huber (Laina et al. 2016, eq. 1): ``|x|`` for ``|x| <= c``, ``(x^2 + c^2) / 2c``
    above, with ``c = threshold * max |x|`` over the batch's valid pixels; mean over them."""
    if not valid.any():
        return pred.sum() * 0.0
    x = (pred[valid] - target[valid]).abs()
    c = (threshold * x.max()).detach().clamp_min(1e-6)
    return torch.where(x <= c, x, (x * x + c * c) / (2 * c)).mean()


def depth_loss(name: str, pred, target, valid, *, silog_lambda: float = 0.85, silog_scale: float = 10.0,
               berhu_threshold: float = 0.2) -> torch.Tensor:
    if name == "l1":
        return l1_loss(pred, target, valid)
    if name == "silog":
        return silog_loss(pred, target, valid, silog_lambda, silog_scale)
    if name == "berhu":
        return berhu_loss(pred, target, valid, berhu_threshold)
    raise ConfigError(f"model.head.loss '{name}' is not one of {', '.join(LOSSES)}")
