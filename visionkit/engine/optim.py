"""Optimizers (SGD, Adam, AdamW) and per-iteration learning-rate schedules with linear warmup."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_norms: bool) -> list[dict]:
    """Two groups: weights that decay, and norms/biases that do not (unless ``decay_norms``).

    Decaying the scale and shift of normalization layers and the biases only shrinks them towards
    zero for no regularising benefit (Goyal et al. 2017, sec. 5.1; the usual AdamW recipe).
    """
    decay, no_decay = [], []
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if not decay_norms and (isinstance(module, norm_types) or name == "bias"):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _fused(groups: list[dict]) -> bool:
    """torch's fused kernels (one pass over all parameters) where they exist: float parameters
    on CPU or CUDA. On CPU they are the largest gain: torch's default there is the per-tensor
    loop (and ``foreach`` still makes several passes), which a fused step replaces with one."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def build_optimizer(model: nn.Module, opt_cfg) -> torch.optim.Optimizer:
    groups = param_groups(model, opt_cfg.weight_decay, opt_cfg.norm_weight_decay)
    name, fused = opt_cfg.name, _fused(groups)
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=opt_cfg.lr, momentum=opt_cfg.momentum, nesterov=opt_cfg.nesterov, fused=fused
        )
    if name == "adam":
        return torch.optim.Adam(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), fused=fused)
    raise ValueError(f"unknown optimizer {name}")  # the schema refuses it before this


def lr_factor(sched, it: int, iters_per_epoch: int, total_iters: int, base_lr: float) -> float:
    """The multiplier of the base LR at iteration ``it`` (0-based), warmup included."""
    epoch = it / max(1, iters_per_epoch)
    name = sched.name
    if name == "constant":
        f = 1.0
    elif name == "step":
        f = sched.gamma ** int(epoch // sched.step_size)
    elif name == "multistep":
        f = sched.gamma ** sum(1 for m in sched.milestones if epoch >= m)
    elif name == "cosine":
        floor = sched.min_lr / base_lr if base_lr > 0 else 0.0
        t = min(1.0, it / max(1, total_iters))
        f = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    elif name == "poly":
        t = min(1.0, it / max(1, total_iters))
        f = (1 - t) ** sched.power
    else:
        raise ValueError(f"unknown schedule {name}")
    warmup = round(sched.warmup_epochs * iters_per_epoch)
    if it < warmup:
        alpha = it / warmup
        f *= sched.warmup_factor * (1 - alpha) + alpha
    return f


def build_scheduler(optimizer, sched, iters_per_epoch: int, epochs: int):
    """A LambdaLR stepped once per optimizer step; its state is just the step count."""
    total = iters_per_epoch * epochs
    base = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(sched, it, iters_per_epoch, total, base)
    )


def scaled_lr(cfg, log) -> float:
    """``train.optimizer.lr`` scaled for the global batch (``data.batch_size * train.accumulate``)
    when ``train.scale_lr`` asks: ``linear`` (Goyal et al. 2017, sec. 2.1: lr x batch / reference)
    or ``sqrt`` (Krizhevsky 2014; Hoffer et al. 2017), with ``train.reference_batch`` the batch the
    given lr was tuned for. ``none`` (the default) keeps it as written."""
    t = cfg.train
    lr = t.optimizer.lr
    if t.scale_lr == "none":
        return lr
    batch = cfg.data.batch_size * t.accumulate
    ratio = batch / t.reference_batch
    new = lr * (ratio if t.scale_lr == "linear" else ratio ** 0.5)
    log(f"learning rate {lr:g} scaled {t.scale_lr} for a global batch of {batch} "
        f"(train.reference_batch {t.reference_batch}): {new:g}")
    return new
