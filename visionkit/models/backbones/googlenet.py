"""GoogLeNet (Inception v1; Szegedy et al., 2015) as a staged backbone, one stage per resolution.

The layers are torchvision's own blocks (``BasicConv2d``, ``Inception``, ``InceptionAux`` from
``torchvision.models.googlenet``) laid out from torchvision's table under its attribute names
(``conv1``, ``inception3a.branch2.1.conv.weight``, ``aux1.fc2.weight`` ...), so a torchvision
GoogLeNet state dict and ``GoogLeNet_Weights.IMAGENET1K_V1`` load; ``fc.*`` loads into
:meth:`GoogLeNetBackbone.build_classifier`'s head. torchvision's ``GoogLeNet`` itself is not
called: it fixes the input channels and always builds its 1000-class ``fc``.

torchvision's published weights were trained (ported from TensorFlow) on inputs scaled to
-1..1; torchvision's ``transform_input`` converts ImageNet-normalised images to that range. Here
the same is ``data.mean: [0.5, 0.5, 0.5]`` and ``data.std: [0.5, 0.5, 0.5]``.

As in torchvision, the 5x5 convolution of each Inception block's third branch is a 3x3
(torchvision issue 906); the published weights need it that way.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.googlenet import BasicConv2d, Inception, InceptionAux

from visionkit.models.backbones.base import Backbone, PoolLinear, convert_norms
from visionkit.registry import BACKBONES

#: stage name -> (the max-pool before it as (kernel, stride), its Inception blocks as
#: (name, in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj)); torchvision's table, which
#: is the paper's Table 1
STAGES: dict[str, tuple[tuple[int, int], tuple[tuple, ...]]] = {
    "inception3": ((3, 2), (
        ("inception3a", 192, 64, 96, 128, 16, 32, 32),
        ("inception3b", 256, 128, 128, 192, 32, 96, 64),
    )),
    "inception4": ((3, 2), (
        ("inception4a", 480, 192, 96, 208, 16, 48, 64),
        ("inception4b", 512, 160, 112, 224, 24, 64, 64),
        ("inception4c", 512, 128, 128, 256, 24, 64, 64),
        ("inception4d", 512, 112, 144, 288, 32, 64, 64),
        ("inception4e", 528, 256, 160, 320, 32, 128, 128),
    )),
    "inception5": ((2, 2), (
        ("inception5a", 832, 256, 160, 320, 32, 128, 128),
        ("inception5b", 832, 384, 192, 384, 48, 128, 128),
    )),
}
#: the auxiliary classifiers (Szegedy et al., sec. 5): name -> the block whose output they read
AUX = {"aux1": "inception4a", "aux2": "inception4d"}
#: dropout of the auxiliary classifiers (the paper's 70 %, torchvision's default)
AUX_DROPOUT = 0.7


def init_like_torchvision(module: nn.Module) -> None:
    """torchvision's GoogLeNet initialisation (``init_weights=True``): convs and linear layers
    from a normal with std 0.01 truncated at +-2, unit-gamma batch norms."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class GoogLeNetBackbone(Backbone):
    """Stem ``conv1`` + ``maxpool1``, then stages ``conv3`` (stride 4: ``conv2``, ``conv3``),
    ``inception3`` (8: ``maxpool2``, 3a, 3b), ``inception4`` (16: ``maxpool3``, 4a-4e) and
    ``inception5`` (32: ``maxpool4``, 5a, 5b); ``stem`` (``conv1``'s output, stride 2) when
    ``out_stages`` names it.

    ``aux_classes``: build the two auxiliary classifiers ``aux1`` (after inception4a) and
    ``aux2`` (after inception4d) for that many classes; in training ``forward`` then also
    returns their logits under ``aux1`` and ``aux2`` (see :meth:`Backbone.add_aux`). They are
    not run in eval mode, so evaluation and export never see them.
    """

    # every max-pool is ceil-mode without padding: the 3x3 ones need 2 px in, so maxpool3 needs
    # inception3 at 2 px, maxpool2 a 4 px input, maxpool1 an 8 px one, i.e. conv1 (k7 s2 p3) 15 px
    min_input_size = 15
    classifier_prefixes = ("fc",)
    optional_parts = tuple(AUX)

    def __init__(
        self,
        in_channels: int = 3,
        aux_classes: int | None = None,
        out_stages: Sequence[str] | None = None,
        frozen_stages: int = -1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        # the stem and the stride-4 stage (the paper's conv1 7x7/2, max pool, conv2 1x1 + 3x3)
        self.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.add_stem(["conv1", "maxpool1"], tap=1, channels=64, stride=2)
        self.add_stage("conv3", ["conv2", "conv3"], 192, 4)

        stride, pools = 4, 2
        for stage, (pool, blocks) in STAGES.items():
            pool_name = f"maxpool{pools}"
            setattr(self, pool_name, nn.MaxPool2d(*pool, ceil_mode=True))
            pools, stride = pools + 1, stride * pool[1]
            for name, *widths in blocks:
                setattr(self, name, Inception(*widths))
            self.add_stage(stage, [pool_name, *(b[0] for b in blocks)], _width(blocks[-1]), stride)

        self.aux1 = self.aux2 = None  # torchvision's attributes, None when not built
        if aux_classes is not None:
            widths = {b[0]: _width(b) for _, blocks in STAGES.values() for b in blocks}
            for aux, after in AUX.items():
                setattr(self, aux, InceptionAux(widths[after], aux_classes, dropout=AUX_DROPOUT))
                self.add_aux(aux, after)
        init_like_torchvision(self)
        convert_norms(self, norm)
        self.finish(out_stages, frozen_stages)

    def build_classifier(self, num_classes: int, dropout: float = 0.2) -> nn.Module:
        """torchvision's head: global average pooling, dropout (torchvision's 0.2; the paper
        used 0.4), one Linear named ``fc``, initialised as torchvision does."""
        head = PoolLinear(self.stage_specs["inception5"].channels, num_classes, dropout)
        init_like_torchvision(head)
        return head


def _width(block: tuple) -> int:
    """An Inception block's output channels: its four branches concatenated."""
    _, _, c1, _, c3, _, c5, cp = block
    return c1 + c3 + c5 + cp


BACKBONES.register("googlenet", GoogLeNetBackbone)
