"""Parameter counts and FLOPs of a classification model, computed on the meta device.

FLOPs are counted by ``torch.utils.flop_counter`` and reported as multiply-accumulates (one
multiply and one add count once), the convention of the papers and of torchvision's model tables
(ResNet-50: 4.1 "GFLOPs").
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from visionkit.registry import BACKBONES


def classification_model(name: str, num_classes: int = 1000, in_channels: int = 3) -> torch.nn.Sequential:
    backbone = BACKBONES.get(name)(in_channels=in_channels)
    head = backbone.build_classifier(num_classes)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = backbone, head

        def forward(self, x):
            feats = self.backbone(x)
            return self.head(feats[next(reversed(feats))])

    return Model()


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, size: int, in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass at ``size`` x ``size`` (batch 1)."""
    x = torch.zeros(1, in_channels, size, size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2


def model_stats(name: str, size: int = 224, num_classes: int = 1000, in_channels: int = 3) -> dict:
    """Parameters and GMACs of backbone ``name`` with its classifier, built without real memory."""
    with torch.device("meta"):
        model = classification_model(name, num_classes, in_channels)
        macs = count_macs(model, size, in_channels)
        return {"name": name, "params": count_params(model), "macs": macs,
                "gflops": round(macs / 1e9, 3), "size": size}
