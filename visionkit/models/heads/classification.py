"""Classification heads over the backbone's deepest returned stage, and their settings.

- ``auto``: the backbone family's own classifier (ResNet's pool + fc, VGG's three FC layers, ...),
  built by the backbone so torchvision's classifier weights load by name.
- ``linear``: global average pooling, optional dropout, one linear layer, on any stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from visionkit.models.backbones.base import BackboneBuildError, PoolLinear
from visionkit.models.heads.settings import head_choices, option
from visionkit.registry import HEADS


@dataclass
class ClassificationSettings:
    """``model.head`` of ``task: classification``."""

    num_classes: int | None = option(None, min=1, help="null: from the data set")
    name: str = option("auto", choices=head_choices("classification"),
                       help="auto: the backbone family's own head; linear: pool + fc")
    dropout: float | None = option(None, min=0, max=1,
                                   help="null: the family's own (0.5 in VGG/AlexNet, 0.2 in GoogLeNet, 0 elsewhere)")
    label_smoothing: float = option(0.0, min=0, max=1, help="softmax cross-entropy label smoothing")
    multi_label: bool = option(False, help="one sigmoid per class, binary cross-entropy")


@HEADS.register("classification.auto")
def family_head(backbone, num_classes: int, dropout: float | None = None) -> nn.Module:
    """The family's own head; it reads the family's last stage, so that stage must be returned."""
    deepest = list(backbone.feature_specs)[-1]
    if deepest != list(backbone.stage_specs)[-1]:
        raise BackboneBuildError(f"model.head.name 'auto' is the family's head on its last stage, but "
                                 f"model.backbone.out_stages ends at '{deepest}'; use name: linear")
    return backbone.build_classifier(num_classes, **({} if dropout is None else {"dropout": dropout}))


@HEADS.register("classification.linear")
def linear_head(backbone, num_classes: int, dropout: float | None = None) -> nn.Module:
    """Pool + (dropout) + fc on the deepest returned stage."""
    deepest = list(backbone.feature_specs)[-1]
    return PoolLinear(backbone.feature_specs[deepest].channels, num_classes, dropout or 0.0)
