"""Turn the ``model.backbone`` config section into a backbone (the one place that does this)."""

from __future__ import annotations

import inspect

from visionkit.errors import ConfigError
from visionkit.models.backbones.base import BackboneBuildError
from visionkit.registry import BACKBONES


def has_aux_classifiers(name: str) -> bool:
    """Whether backbone ``name`` can build auxiliary classifiers (its builder takes ``aux_classes``)."""
    return "aux_classes" in inspect.signature(BACKBONES.get(name)).parameters


def build_backbone(cfg, aux_classes: int | None = None):
    """The configured backbone. ``aux_classes``: the class count of the auxiliary classifiers a
    task trains (classification does); ``model.backbone.aux_logits: true`` is refused where the
    task gives none, or where the backbone has no auxiliary classifiers."""
    b = cfg.model.backbone
    kwargs = {}
    if b.aux_logits:
        where = cfg.where("model.backbone.aux_logits")
        if aux_classes is None:
            raise ConfigError(f"{where}: 'model.backbone.aux_logits' is true, but task '{cfg.task}' trains no "
                              "auxiliary classifiers (only classification does); set it to false")
        if not has_aux_classifiers(b.name):
            having = [n for n in BACKBONES.names() if has_aux_classifiers(n)]
            raise ConfigError(f"{where}: 'model.backbone.aux_logits' is true, but backbone '{b.name}' has no "
                              f"auxiliary classifiers ({', '.join(having)} has); set it to false")
        kwargs["aux_classes"] = aux_classes
    try:
        return BACKBONES.get(b.name)(
            in_channels=cfg.data.channels, out_stages=b.out_stages,
            frozen_stages=b.frozen_stages, norm=b.norm, **kwargs,
        )
    except BackboneBuildError as e:
        raise ConfigError(f"{cfg.where('model.backbone')}: model.backbone: {e}") from None
