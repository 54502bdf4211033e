"""Drawing helpers shared by the tasks."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize(mean, std)``: float (B, C, H, W) -> uint8 (B, 3, H, W) for drawing."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    x = (images.detach().float() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
