"""Every recipe in configs/ loads and validates, and its backbone builds."""

from pathlib import Path

import pytest

from visionkit import load_config
from visionkit.models.build import build_backbone

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")
                 if "_base_" not in p.parts)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_validates_and_builds(path):
    cfg = load_config(path)
    backbone = build_backbone(cfg, aux_classes=2)  # the class count a classification task gives (aux_logits)
    assert backbone.min_input_size <= cfg.data.image_size


def test_quickstart_scores_the_test_split_at_the_end():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    assert cfg.train.final_test and cfg.data.dataset == "shapes"


def test_coco_recipe_keeps_torchvision_head_values():
    """The standard 1x COCO recipe states torchvision's head, not our CPU defaults, key by key."""
    from benchmarks.detection import TORCHVISION_HEAD

    head = load_config(Path(__file__).resolve().parents[1] / "configs" / "detection"
                       / "mask_rcnn_resnet50_fpn_coco.yaml").model.head
    assert {k: head[k] for k in TORCHVISION_HEAD} == TORCHVISION_HEAD
