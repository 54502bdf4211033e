"""ResNet, ResNeXt and SE-ResNet(-ResNeXt) as one staged backbone; variants are rows of a table.

- ResNet (He et al., 2016, Table 1): a 7x7/2 conv + 3x3/2 max-pool stem, then four stages
  ``layer1..layer4`` of basic (two 3x3) or bottleneck (1x1-3x3-1x1, expansion 4) blocks at
  strides 4, 8, 16, 32. As in torchvision, the bottleneck strides in its 3x3 conv ("v1.5").
- ResNeXt (Xie et al., 2017, Table 1): the bottleneck's 3x3 conv is grouped; ``32x4d`` means
  cardinality 32 with 4 channels per group at the first stage (torchvision's ``groups`` and
  ``width_per_group``).
- SE (Hu et al., 2018, Sec. 3 and Fig. 3): a squeeze-and-excitation block on the residual branch
  after its last BN and before the addition, reduction ratio r = 16 (Sec. 6.1).

The blocks and the stage builder are torchvision's, and parameter names are torchvision's
(``conv1``, ``bn1``, ``layer1.0.conv1`` ...), so a torchvision ResNet/ResNeXt state dict without
``fc.*`` loads strictly; ``fc.*`` loads into :meth:`build_classifier`'s head (attribute ``fc``).
SE blocks add ``layerN.M.se.fc1`` / ``se.fc2`` (torchvision's ``SqueezeExcitation`` names).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.ops import SqueezeExcitation

from visionkit.models.backbones.base import Backbone, BackboneBuildError, norm_layer
from visionkit.registry import BACKBONES

#: SE reduction ratio r (Hu et al., Sec. 6.1: r = 16 balances accuracy and parameters)
SE_REDUCTION = 16


class SEBottleneck(tv_resnet.Bottleneck):
    """torchvision's bottleneck with SE on the residual branch (Hu et al., Fig. 3)."""

    def __init__(self, inplanes: int, planes: int, *args, **kwargs) -> None:
        super().__init__(inplanes, planes, *args, **kwargs)
        channels = planes * self.expansion
        self.se = SqueezeExcitation(channels, channels // SE_REDUCTION)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class _StageBuilder:
    """Holds the state torchvision's ``ResNet._make_layer`` reads, so that builder (blocks,
    projection shortcut, dilation bookkeeping) is reused as is rather than rewritten; torchvision's
    ``ResNet.__init__`` itself cannot be reused because it fixes the stem width and input channels.
    """

    _make_layer = tv_resnet.ResNet._make_layer

    def __init__(self, inplanes: int, groups: int, width_per_group: int, norm) -> None:
        self.inplanes = inplanes
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group  # torchvision's name for the per-group width
        self._norm_layer = norm

    def stage(self, block, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        return self._make_layer(block, planes, blocks, stride=stride, dilate=dilate)


class ResNet(Backbone):
    """A ResNet-family backbone with stages ``layer1..layer4`` (strides 4, 8, 16, 32), and
    ``stem`` (conv1 after BN and ReLU, stride 2) when ``out_stages`` names it.

    ``block``/``layers``/``groups``/``width_per_group`` pick the architecture (see the table at
    the bottom). ``base_width`` scales every stage: 64 is the paper's (stage widths 64..512 before
    the block expansion), 32 gives a quarter of the parameters for quick CPU runs.
    ``dilate`` replaces the stride of layer2..layer4 by dilation (DeepLab-style output stride
    8 or 16); the declared strides follow. ``zero_init_residual`` zeroes each block's last BN
    gamma (Goyal et al., 2017, Sec. 5.1), as torchvision's option does.
    """

    # below the total stride of 32, layer4 would be computed from padding alone
    min_input_size = 32
    classifier_prefixes = ("fc",)

    def __init__(
        self,
        block: type[nn.Module] = tv_resnet.BasicBlock,
        layers: Sequence[int] = (2, 2, 2, 2),
        groups: int = 1,
        width_per_group: int = 64,
        base_width: int = 64,
        in_channels: int = 3,
        dilate: Sequence[bool] = (False, False, False),
        zero_init_residual: bool = False,
        out_stages: Sequence[str] | None = None,
        frozen_stages: int = -1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(dilate) != 3:
            raise BackboneBuildError(
                f"ResNet needs 4 block counts and 3 dilate flags (layer2..4), got layers={list(layers)}"
                f" dilate={list(dilate)}"
            )
        if base_width < 1:
            raise BackboneBuildError(f"ResNet base_width={base_width} must be a positive integer")
        if issubclass(block, tv_resnet.BasicBlock) and (groups != 1 or width_per_group != 64):
            raise BackboneBuildError(
                "ResNet basic blocks have no groups; groups/width_per_group (ResNeXt) need bottlenecks"
            )
        if issubclass(block, tv_resnet.BasicBlock) and any(dilate):
            raise BackboneBuildError(
                "ResNet basic blocks (resnet18/34) cannot dilate; use a bottleneck ResNet (resnet50 on)"
            )
        make_norm = norm_layer(norm)

        # the stem (He et al., Table 1, conv1 and the 3x3 max-pool of conv2_x)
        self.conv1 = nn.Conv2d(in_channels, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # conv1/bn1/relu (stride 2, before the max-pool) is the optional stage "stem"
        self.add_stem(["conv1", "bn1", "relu", "maxpool"], tap=3, channels=base_width, stride=2)

        builder = _StageBuilder(base_width, groups, width_per_group, make_norm)
        stride = 4
        for i, n in enumerate(layers):
            name, planes = f"layer{i + 1}", base_width * 2**i
            step = 1 if i == 0 else 2
            dilated = i > 0 and bool(dilate[i - 1])
            setattr(self, name, builder.stage(block, planes, n, step, dilated))
            stride *= 1 if dilated else step
            self.add_stage(name, [name], planes * block.expansion, stride)
        self._init_weights(zero_init_residual)
        if norm == "sync_batch":
            nn.SyncBatchNorm.convert_sync_batchnorm(self)  # converts children in place
        self.finish(out_stages, frozen_stages)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's ResNet initialisation (He et al., 2015 for convs; unit-gamma norms)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, "bn3" if isinstance(m, tv_resnet.Bottleneck) else "bn2", None)
                if isinstance(m, (tv_resnet.Bottleneck, tv_resnet.BasicBlock)):
                    with torch.no_grad():
                        last.weight.zero_()  # FrozenBatchNorm2d holds gamma as a buffer


_B, _BB, _SEB = tv_resnet.BasicBlock, tv_resnet.Bottleneck, SEBottleneck
#: registered name -> architecture (He et al. Table 1 depths; Xie et al. and Hu et al. widths)
VARIANTS: dict[str, dict] = {
    "resnet18": {"block": _B, "layers": (2, 2, 2, 2)},
    "resnet34": {"block": _B, "layers": (3, 4, 6, 3)},
    "resnet50": {"block": _BB, "layers": (3, 4, 6, 3)},
    "resnet101": {"block": _BB, "layers": (3, 4, 23, 3)},
    "resnet152": {"block": _BB, "layers": (3, 8, 36, 3)},
    "resnext50_32x4d": {"block": _BB, "layers": (3, 4, 6, 3), "groups": 32, "width_per_group": 4},
    "resnext101_32x8d": {"block": _BB, "layers": (3, 4, 23, 3), "groups": 32, "width_per_group": 8},
    "resnext101_64x4d": {"block": _BB, "layers": (3, 4, 23, 3), "groups": 64, "width_per_group": 4},
    "se_resnet50": {"block": _SEB, "layers": (3, 4, 6, 3)},
    "se_resnet101": {"block": _SEB, "layers": (3, 4, 23, 3)},
    "se_resnet152": {"block": _SEB, "layers": (3, 8, 36, 3)},
    "se_resnext50_32x4d": {"block": _SEB, "layers": (3, 4, 6, 3), "groups": 32, "width_per_group": 4},
    "se_resnext101_32x4d": {"block": _SEB, "layers": (3, 4, 23, 3), "groups": 32, "width_per_group": 4},
    # half width (stages 32/64/128/256): 2.8M parameters instead of 11.2M, trains on a CPU
    "resnet18_w32": {"block": _B, "layers": (2, 2, 2, 2), "base_width": 32},
    # reduced bottleneck networks for CPU recipes: 26 layers (2 blocks a stage), half width
    "resnext26_32x2d_w32": {"block": _BB, "layers": (2, 2, 2, 2), "base_width": 32, "groups": 32,
                            "width_per_group": 2},
    "se_resnet26_w32": {"block": _SEB, "layers": (2, 2, 2, 2), "base_width": 32},
}

for _name, _arch in VARIANTS.items():
    BACKBONES.register(_name, partial(ResNet, **_arch))
