"""Stride-2 decoding: ResNet's optional ``stem`` stage (conv1/bn1/relu output) and the two ways
semantic_fpn uses it (an FPN level, or ``refine``: DeepLabV3+-style fusion after the FPN)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_segmentation import CLASSES, batch, seg_config

from visionkit import load_config
from visionkit.errors import ConfigError
from visionkit.models.backbones import densenet, resnet  # noqa: F401  (registers)
from visionkit.models.backbones.base import BackboneBuildError, FeatureSpec
from visionkit.models.heads.segmentation import SegmentationSettings
from visionkit.registry import BACKBONES, TASKS
from visionkit.tasks.segmentation import SegmentationTask

ALL = ["stem", "layer1", "layer2", "layer3", "layer4"]


def test_resnet_stem_stage_is_conv1_output_at_stride_2_and_only_when_asked():
    torch.manual_seed(0)
    net = BACKBONES.build("resnet18_w32", out_stages=["layer2", "stem"]).eval()
    assert net.feature_specs == {"stem": FeatureSpec(32, 2), "layer2": FeatureSpec(64, 8)}  # shallow first
    x = torch.randn(2, 3, 48, 48)
    feats = net(x)
    assert list(feats) == ["stem", "layer2"]
    assert torch.equal(feats["stem"], net.relu(net.bn1(net.conv1(x))))  # before the max-pool
    assert feats["stem"].shape == (2, 32, 24, 24) and feats["layer2"].shape == (2, 64, 6, 6)
    assert list(BACKBONES.build("resnet18_w32", out_stages=["stem"])(x)) == ["stem"]
    # by default nothing changes: the four stages, and stage_specs never lists the stem
    default = BACKBONES.build("resnet18_w32")
    assert list(default.feature_specs) == list(default.stage_specs) == ALL[1:]
    assert BACKBONES.build("resnet50", out_stages=["stem", "layer1"]).feature_specs["stem"] == FeatureSpec(64, 2)
    # frozen_stages still counts the stem as 0 and layer1 as 1
    frozen = BACKBONES.build("resnet18_w32", out_stages=ALL, frozen_stages=0)
    assert {n for n, p in frozen.named_parameters() if not p.requires_grad} == {"conv1.weight", "bn1.weight",
                                                                                 "bn1.bias"}
    with pytest.raises(BackboneBuildError, match=r"\['stem', 'layer1'"):
        BACKBONES.build("resnet18_w32", out_stages=["stme"])
    with pytest.raises(BackboneBuildError, match="not available"):  # families without a stem tap
        BACKBONES.build("densenet_bc_k12_tiny", out_stages=["stem"])


def make(**kw):
    kw.setdefault("channels", 16)
    kw.setdefault("fpn_channels", 16)
    stages = kw.pop("stages", ALL)
    backbone = BACKBONES.build("resnet18_w32", out_stages=stages)
    return SegmentationTask(backbone, CLASSES, SegmentationSettings(**kw))


@pytest.mark.parametrize(("refine", "width"), [(None, None), ("stem", None), ("stem", 8)])
def test_semantic_fpn_with_the_stem_decodes_at_stride_2_and_learns(refine, width):
    torch.manual_seed(0)
    task = make(refine=refine, refine_channels=width, aux=True)
    assert task.head.stride == 2
    b = batch()
    task.train()
    head_out = task.head(task.backbone(b["images"]))
    assert head_out.shape == (2, 3, 16, 16)  # 32 px input: logits on the stride-2 grid
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = sum(task.loss(b).values())
        opt.zero_grad()
        loss.backward()
        assert task.backbone.conv1.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    if refine:  # the fusion convs train too, at the width asked for
        assert task.head.fuse.low[0].weight.grad.abs().sum() > 0
        assert task.head.classifier.in_channels == (width or 16)
        assert isinstance(task.head.fuse.narrow, torch.nn.Conv2d) == (width is not None)
    task.eval()
    assert task(b["images"]).shape == (2, 3, 32, 32)
    assert task.predict({"images": b["images"]})["labels"].shape == (2, 32, 32)


def test_refine_needs_a_returned_stage_at_half_the_fpn_stride_and_the_fpn_head():
    with pytest.raises(BackboneBuildError, match="'stem' is not a stage.*out_stages"):
        make(refine="stem", stages=ALL[1:])
    with pytest.raises(BackboneBuildError, match="stride 2; it must be half the finest FPN stride \\(8\\)"):
        make(refine="stem", stages=["stem", "layer2", "layer3", "layer4"])
    with pytest.raises(BackboneBuildError, match="refine is a semantic_fpn option"):
        make(name="deeplabv3", refine="stem")


def test_refine_from_the_config_and_its_error_names_the_key(tmp_path, shapes_root):
    over = {"model.backbone.out_stages": ALL, "model.head.refine": "stem"}
    task = TASKS.get("segmentation").from_config(load_config(seg_config(tmp_path, shapes_root, **over)),
                                                 {"classes": CLASSES})
    assert task.head.stride == 2 and task.head.fuse is not None
    cfg = load_config(seg_config(tmp_path, shapes_root, **{"model.head.refine": "stem"}))
    with pytest.raises(ConfigError, match="head 'semantic_fpn' on backbone 'resnet18_w32'.*model.backbone.out_stages"):
        TASKS.get("segmentation").from_config(cfg, {"classes": CLASSES})


STRIDE2_RECIPE = (Path(__file__).resolve().parents[1] / "configs" / "segmentation"
                  / "semantic_fpn_resnet18_w32_stride2_shapes.yaml")


def test_stride2_recipe_builds_a_stride_2_head_and_scores_the_test_split():
    cfg = load_config(STRIDE2_RECIPE)
    task = TASKS.get("segmentation").from_config(cfg, {"classes": ["background", *"abcdef"]})
    assert task.head.stride == 2
    assert cfg.train.final_test


@pytest.mark.parametrize("factor", [0.8, 0.85, 1.1, 1.25])
def test_random_scale_keeps_labels_on_the_images_edges(factor):
    """A label is the class that covers most of its pixel in the resized image, so object rims
    are labelled as the image shows them (plain 'nearest' shifted them by up to half a pixel)."""
    from torchvision import tv_tensors

    from visionkit.data.transforms import RandomScale

    image = torch.zeros(1, 64, 64, dtype=torch.uint8)
    labels = torch.zeros(64, 64, dtype=torch.uint8)
    for edge in range(9, 60, 10):  # vertical stripes: edges at many sub-pixel phases after the resize
        image[:, :, edge:edge + 5], labels[:, edge:edge + 5] = 255, 1
    img, sem = RandomScale((factor, factor))(tv_tensors.Image(image), tv_tensors.Mask(labels))
    assert set(sem.unique().tolist()) <= {0, 1}
    bright = img[0].float() / 255
    sure = (bright - 0.5).abs() > 0.1  # pixels the image itself does not leave at a coin toss
    assert torch.equal((bright > 0.5)[sure], (sem == 1)[sure])
