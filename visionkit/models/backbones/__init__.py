"""Backbone families; importing this package registers every one in ``BACKBONES``."""

from visionkit.models.backbones import alexnet, densenet, googlenet, lenet, resnet, vgg  # noqa: F401  (registers)
from visionkit.models.backbones.base import Backbone, BackboneBuildError, FeatureSpec

__all__ = ["Backbone", "BackboneBuildError", "FeatureSpec"]
