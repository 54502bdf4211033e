"""Every per-sample transform, one module per kind of target: ``classification`` (an image),
``detection`` (boxes + instance masks), ``segmentation`` (a label map), ``depth`` (a depth map).
All are ``torchvision.transforms.v2`` pipelines over tv_tensors, so one flip moves every target."""

from visionkit.data.transforms.classification import OnImage, RandomResizedCropFlip, classification_transforms
from visionkit.data.transforms.depth import BottomCenterCrop, depth_transforms
from visionkit.data.transforms.detection import detection_transforms
from visionkit.data.transforms.segmentation import (
    ImageAndMask,
    RandomScale,
    Resize,
    resize_masks,
    segmentation_transforms,
)

__all__ = ["BottomCenterCrop", "ImageAndMask", "OnImage", "RandomResizedCropFlip", "RandomScale", "Resize",
           "classification_transforms", "depth_transforms", "detection_transforms", "resize_masks",
           "segmentation_transforms"]
