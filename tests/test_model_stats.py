"""Parameter counts and FLOPs of the 1000-class models against the published figures, and every
backbone feeding a dense neck built from its feature_specs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops import SqueezeExcitation

from visionkit.models.backbones import BackboneBuildError
from visionkit.models.necks.fpn import FPN
from visionkit.models.stats import classification_model, count_macs, model_stats
from visionkit.registry import BACKBONES

TORCHVISION_NAMES = [n for n in BACKBONES.names() if n in torchvision.models.list_models()]


def test_every_family_has_torchvision_counterparts():
    assert {"alexnet", "vgg16_bn", "resnet50", "resnext101_64x4d", "densenet201"} <= set(TORCHVISION_NAMES)


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_params_and_flops_match_torchvision_published_figures(name):
    meta = torchvision.models.get_model_weights(name).DEFAULT.meta  # shipped with torchvision, no download
    stats = model_stats(name, size=224)
    assert stats["params"] == meta["num_params"]
    # torchvision's "_ops" are GFLOPs counted as multiply-adds, like ours
    assert stats["gflops"] == pytest.approx(meta["_ops"], rel=0.01)


@pytest.mark.parametrize("plain,se,paper_plain,paper_se", [
    # Hu et al., Squeeze-and-Excitation Networks, Table 2 (GFLOPs at 224 px)
    ("resnet50", "se_resnet50", 3.86, 3.87),
    ("resnet101", "se_resnet101", 7.58, 7.60),
    ("resnet152", "se_resnet152", 11.30, 11.32),
    ("resnext50_32x4d", "se_resnext50_32x4d", 4.24, 4.25),
])
def test_se_blocks_cost_what_the_paper_says(plain, se, paper_plain, paper_se):
    with torch.device("meta"):
        plain_model, se_model = classification_model(plain), classification_model(se)
        extra = count_macs(se_model, 224) - count_macs(plain_model, 224)
        shapes = []
        for m in se_model.modules():
            if isinstance(m, SqueezeExcitation):
                m.register_forward_hook(lambda mod, inp, out: shapes.append(inp[0].shape))
        se_model(torch.zeros(1, 3, 224, 224))
    # the counter sees the two fully connected layers of each SE block (C*C/16 multiply-adds each)
    fc = sum(2 * m.fc1.in_channels * m.fc1.out_channels for m in se_model.modules()
             if isinstance(m, SqueezeExcitation))
    assert extra == fc
    # with the excitation's channel-wise product (one operation per activation) the overhead is the
    # paper's, to the 0.01 GFLOPs its figures are rounded to on both sides
    elementwise = sum(s[1] * s[2] * s[3] for s in shapes)
    assert (extra + elementwise) / 1e9 == pytest.approx(paper_se - paper_plain, abs=0.007)
    assert 0 < extra < 0.01 * count_macs(plain_model, 224)


def test_lenet5_size():
    stats = model_stats("lenet5", size=32, num_classes=10, in_channels=1)
    assert stats["params"] == 61_706
    # C1 117,600 + C3 240,000 + C5 48,000 + F6 10,080 + output 840 multiply-adds (5x5 kernels)
    assert stats["macs"] == 416_520


@pytest.mark.parametrize("name", BACKBONES.names())
def test_fpn_neck_builds_from_feature_specs_of_every_backbone(name):
    with torch.device("meta"):
        backbone = BACKBONES.get(name)()
    size = max(64, backbone.min_input_size)
    with torch.device("meta"):
        neck = FPN(backbone.feature_specs, out_channels=32, extra_pool=True)
        feats = neck(backbone(torch.zeros(1, 3, size, size)))
    assert list(feats) == list(neck.feature_specs)
    for key, spec in neck.feature_specs.items():
        assert feats[key].shape[1] == spec.channels == 32


def test_fpn_on_a_single_stage_fails_naming_the_backbone():
    backbone = BACKBONES.get("resnet18_w32")(out_stages=["layer4"])
    with pytest.raises(BackboneBuildError, match="at least two backbone stages.*resnet18_w32"):
        FPN(backbone.feature_specs, owner="resnet18_w32")
