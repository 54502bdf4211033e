"""Synchronised BatchNorm over the process group, on CUDA and on CPU.

BatchNorm normalises with the statistics of the batch it sees; under DDP that is each process's
share, so with small per-process batches the statistics get noisy and the run no longer equals
one process with the global batch. SyncBN computes them over the global batch instead (Peng et
al. 2018, MegDet, sec. 4.2). On CUDA torch's ``nn.SyncBatchNorm`` does it; it refuses CPU
tensors, so on CPU (gloo) :class:`CpuSyncBatchNorm` does the same with two differentiable
all-reduces (sum, then sum of squared deviations), whose backward all-reduces the gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of every rank's input is the sum of all ranks' output
    gradients (each rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm of any dimension whose training statistics are all-reduced over the group.

    Not an ``nn.SyncBatchNorm`` subclass: DistributedDataParallel refuses those on CPU."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sync = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not sync:
            return super().forward(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0] + list(range(2, x.ndim))
        shape = [1, -1] + [1] * (x.ndim - 2)
        xd = x.double()  # float64 sums: the statistics match one process's to rounding
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)
        total = _AllReduceSum.apply(torch.cat([xd.sum(dims), count]))
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = xd - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n  # biased: what normalises
        out = (centred * torch.rsqrt(var + self.eps).view(shape)).to(x.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():  # running variance is unbiased, as in nn.BatchNorm
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(x.dtype), alpha=factor)
                unbiased = var.detach() * n / max(float(n) - 1, 1.0)
                self.running_var.mul_(1 - factor).add_(unbiased.to(x.dtype), alpha=factor)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm of ``module`` in place by a synchronised one (same parameters and
    buffers, so state dicts and the optimizer's parameters are unchanged)."""
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if converted is not module:
        raise TypeError("convert_sync_batchnorm needs a model that contains its BatchNorm layers")
    if device.type != "cuda":
        for m in module.modules():
            if type(m) is nn.SyncBatchNorm:
                m.__class__ = CpuSyncBatchNorm
    return module
