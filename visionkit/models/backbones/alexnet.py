"""AlexNet (Krizhevsky et al., 2012; torchvision's single-GPU "one weird trick" layout) as a
staged backbone, one stage per max-pool.

torchvision's ``AlexNet`` hard-codes its widths and always builds the 58M-parameter classifier,
so the 13 feature layers are laid out here from a small table instead, at the same
``features.N`` indices with the same default initialisation; a test checks that torchvision's
state dict loads strictly and gives identical outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn

from visionkit.models.backbones.base import Backbone, BackboneBuildError
from visionkit.models.backbones.vgg import FCHead, require_no_norm
from visionkit.registry import BACKBONES

#: (out channels at base width 64, kernel, stride, padding, max-pool after)
LAYERS = (
    (64, 11, 4, 2, True),
    (192, 5, 1, 2, True),
    (384, 3, 1, 1, False),
    (256, 3, 1, 1, False),
    (256, 3, 1, 1, True),
)


class AlexNetBackbone(Backbone):
    """AlexNet's five convolutions with stages ``pool1`` (stride 8), ``pool2`` (16), ``pool3`` (32).

    ``base_width`` scales every layer (64 is the original; 16 is a CPU-sized model). The stem
    is empty: ``frozen_stages=0`` freezes nothing.
    """

    # three unpadded 3x3/2 max-pools: pool3 needs a 3x3 input, so pool2 a 7x7 and pool1 a 15x15
    # one, which conv1 (k11 s4 p2) makes from (15 - 1) * 4 + 11 - 2 * 2 = 63 px
    min_input_size = 63
    classifier_prefixes = ("classifier",)

    def __init__(
        self,
        base_width: int = 64,
        in_channels: int = 3,
        out_stages: Sequence[str] | None = None,
        frozen_stages: int = -1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        require_no_norm("AlexNet", norm, "use a family that has them (e.g. vgg11_bn)")
        if base_width < 1:
            raise BackboneBuildError(f"AlexNet base_width={base_width} must be a positive integer")
        layers: list[nn.Module] = []
        stages: list[tuple[list[str], int]] = []  # (modules, channels) per pool
        start, c_in = 0, in_channels
        for width, k, s, p, pool in LAYERS:
            c_out = width * base_width // 64
            conv = nn.Conv2d(c_in, c_out, kernel_size=k, stride=s, padding=p)
            layers += [conv, nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
                stages.append(([f"features.{j}" for j in range(start, len(layers))], c_out))
                start = len(layers)
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.final_channels = c_in

        self.add_stem([])
        for i, (mods, channels) in enumerate(stages):
            self.add_stage(f"pool{i + 1}", mods, channels, 8 * 2**i)  # conv1's 4 x pool1's 2 = 8
        self.finish(out_stages, frozen_stages)

    def build_classifier(self, num_classes: int, dropout: float = 0.5) -> nn.Module:
        """AlexNet's head: 6x6 pooling, then dropout-fc-4096 twice and fc-classes, at
        torchvision's indices ``classifier.1/4/6`` (hidden width scales with ``base_width``)."""
        hidden = 4096 * self.final_channels // 256
        return FCHead(self.final_channels, 6, hidden, num_classes, dropout, dropout_first=True)


BACKBONES.register("alexnet", AlexNetBackbone)
# quarter width: ~0.15M conv parameters (2.5M at the original width), trains on a CPU
BACKBONES.register("alexnet_w16", partial(AlexNetBackbone, base_width=16))
