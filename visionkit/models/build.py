"""Turn the ``model.backbone`` config section into a backbone (the one place that does this)."""

from __future__ import annotations

from visionkit.errors import ConfigError
from visionkit.models.backbones.base import BackboneBuildError
from visionkit.registry import BACKBONES


def build_backbone(cfg):
    b = cfg.model.backbone
    try:
        return BACKBONES.get(b.name)(
            in_channels=cfg.data.channels, out_stages=b.out_stages,
            frozen_stages=b.frozen_stages, norm=b.norm,
        )
    except BackboneBuildError as e:
        raise ConfigError(f"{cfg.where('model.backbone')}: model.backbone: {e}") from None
