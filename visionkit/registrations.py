"""Every built-in name a config may use, registered in one place.

Importing this module fills the registries of :mod:`visionkit.registry` with the built-in
backbones, necks, heads, data sets and tasks; ``import visionkit`` does it once, so any code of the
package that reads a registry finds them all, and no other module imports a registering module
for its side effect. A new backbone family, data reader or task adds its module here.

The order below is the order names are listed in (``visionkit info``, "choose one of" messages).
"""

# ruff: noqa: F401, I001  (each import is here for what it registers, in the order names are listed)
from visionkit.models import backbones  # BACKBONES: every family under models/backbones
from visionkit.models.necks import fpn  # NECKS
from visionkit.data.datasets import sources  # DATASETS image_folder and shapes
from visionkit.data.datasets import depth as depth_data  # DATASETS depth_pairs, the shapes depth view
from visionkit.data.datasets import segmentation as segmentation_data  # segmentation_folder, shapes view
from visionkit.data.datasets import coco as coco_data  # DATASETS coco, the shapes instances view
from visionkit.models.heads import classification as classification_heads, depth as depth_heads  # HEADS
from visionkit.models.heads import segmentation as segmentation_heads, rcnn  # HEADS
from visionkit.tasks import classification, depth, segmentation, detection  # TASKS
