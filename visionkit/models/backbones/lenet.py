"""LeNet-5 (LeCun et al., 1998, Sec. II.B and Fig. 2) as a staged backbone.

Layers (paper names): C1 5x5 conv -> 6 maps, S2 2x2 subsampling, C3 5x5 conv -> 16 maps,
S4 2x2 subsampling (the backbone, stages ``s2`` at stride 2 and ``s4`` at stride 4), then
C5 5x5 conv -> 120, F6 fully connected -> 84 and the output layer (the classifier,
:meth:`LeNet5.build_classifier`). With 1 input channel (the paper's) and 10 classes it has
61,706 parameters. ``in_channels`` defaults to 3 because batches carry RGB images (grayscale
datasets are expanded to 3 channels); set it to 1 for a model fed single-channel images.

Every layer squashes with the paper's scaled tanh, ``1.7159 tanh(2a/3)`` (Appendix A;
:class:`ScaledTanh`). Modern simplifications, as in most re-implementations (no torchvision
model exists to match):
- S2/S4 are average pools without the paper's trainable coefficient and bias per map;
- C3 connects to all six S2 maps (the paper's Table I connects each to a subset);
- the output is a linear layer trained with cross entropy, not Euclidean RBF units.
There is no normalization layer, so ``norm`` accepts only its default.

Initialisation (:func:`init_lenet`): weights normal with standard deviation ``1/sqrt(fan_in)``
(LeCun et al., "Efficient BackProp", 1998, sec. 4.6: with the scaled tanh this keeps every
layer's outputs at unit variance) and biases uniform in [-1, 1]. The biases matter: with
(near-)zero biases a tanh network is an odd function of its input, ``f(-x) = -f(x)``, and on
data where a class appears in both contrast polarities (the shapes scenes: the main object is
brighter than its surroundings in about half the images) the gradients of the two polarities
cancel; PyTorch's default init (small weights and biases) left LeNet-5 at chance accuracy on
shapes for 30 epochs. Biases of order one put the units off-centre, where they can respond to
an edge of either sign. Neither the layout nor the parameter count changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from visionkit.models.backbones.base import Backbone, BackboneBuildError
from visionkit.registry import BACKBONES


class ScaledTanh(nn.Module):
    """LeCun's squashing function ``A tanh(S a)`` with A = 1.7159, S = 2/3 (paper, Appendix A):
    f(1) = 1 and f(-1) = -1, its gain is near 1 around 0, and it saturates at +-1.7159."""

    A, S = 1.7159, 2.0 / 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A * torch.tanh(self.S * x)


def init_lenet(module: nn.Module) -> None:
    """Weights ~ N(0, 1/fan_in), biases ~ U(-1, 1) for every conv and linear layer (see the
    module docstring for why the biases are not zero)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, m.weight[0].numel() ** -0.5)
            nn.init.uniform_(m.bias, -1.0, 1.0)


class LeNet5(Backbone):
    """C1-S2-C3-S4 with the scaled ``tanh``; the stages are the two subsampling layers."""

    # the paper's 32x32 input: C1 -> 28, S2 -> 14, C3 -> 10, S4 -> 5, exactly C5's 5x5 kernel
    # (28x28 MNIST digits are padded to 32, Sec. III.A)
    min_input_size = 32
    classifier_prefixes = ("c5", "f6", "output")

    def __init__(
        self,
        in_channels: int = 3,
        out_stages: Sequence[str] | None = None,
        frozen_stages: int = -1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if norm != "batch":
            raise BackboneBuildError(
                f"LeNet-5 has no normalization layers, so norm='{norm}' cannot apply; use "
                "norm='batch' (the default, meaning 'as built')"
            )
        self.c1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.tanh1 = ScaledTanh()
        self.s2 = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(6, 16, kernel_size=5)
        self.tanh3 = ScaledTanh()
        self.s4 = nn.AvgPool2d(2)
        init_lenet(self)
        self.add_stem([])  # nothing before C1: frozen_stages=0 freezes nothing
        self.add_stage("s2", ["c1", "tanh1", "s2"], channels=6, stride=2)
        self.add_stage("s4", ["c3", "tanh3", "s4"], channels=16, stride=4)
        self.finish(out_stages, frozen_stages)

    def build_classifier(self, num_classes: int, dropout: float = 0.0) -> nn.Module:
        """C5, F6 and the output layer over ``s4`` (see :class:`LeNetHead`)."""
        return LeNetHead(self.stage_specs["s4"].channels, num_classes, dropout)


class LeNetHead(nn.Module):
    """C5 (5x5 conv -> 120), F6 (-> 84) and the output layer, the scaled ``tanh`` between them.

    The input is average-pooled to 5x5 first. At the paper's 32 px the S4 maps are already
    5x5 and the pool is the identity, so C5 is exactly the paper's; a larger input (say 64 px,
    S4 13x13) is averaged down to 5x5 so the same 61,706 parameters classify it, instead of
    C5 sliding over the maps and the head's size depending on the image size.
    ``dropout`` > 0 adds dropout before the output layer (not in the paper).
    """

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(5)
        self.c5 = nn.Conv2d(channels, 120, kernel_size=5)
        self.f6 = nn.Linear(120, 84)
        self.tanh = ScaledTanh()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output = nn.Linear(84, num_classes)
        init_lenet(self)
        nn.init.zeros_(self.output.bias)  # no class favoured at the start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.tanh(self.c5(self.pool(x))), 1)
        return self.output(self.dropout(self.tanh(self.f6(x))))


BACKBONES.register("lenet5", LeNet5)
