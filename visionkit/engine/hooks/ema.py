"""``train.ema``: an exponential moving average of the weights, evaluated in place of the raw ones.

The average is updated every ``every`` optimizer steps with ``decay``; with ``warmup`` the decay
ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (timm's ``ModelEmaV3``), so the
first updates are not dominated by the random initial weights. Floating-point parameters and
buffers are averaged (BatchNorm's running statistics included); integer buffers are copied.

While it is on, ``trainer.eval_task`` is the averaged copy: validation scores it (the raw weights'
metrics are logged beside as ``raw_<metric>``), every checkpoint's ``model`` holds it (so
``best.pt``, eval, predict and export use it) and the raw weights go to ``train_model`` for resume.
"""

from __future__ import annotations

import copy

import torch

from visionkit.engine.hooks.base import Hook


class EMA(Hook):
    name = "ema"

    def __init__(self, decay: float, every: int = 1, warmup: bool = False):
        self.decay, self.every, self.warmup = decay, every, warmup
        self.updates = 0
        self.module: torch.nn.Module | None = None

    def setup(self, trainer) -> None:
        self.module = copy.deepcopy(trainer.task).eval().requires_grad_(False)
        trainer.eval_task = self.module

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def after_optimizer_step(self, trainer) -> None:
        if trainer.global_step % self.every:
            return
        d = self.current_decay()
        raw = trainer.task.state_dict()
        for name, avg in self.module.state_dict().items():
            if avg.is_floating_point():
                avg.lerp_(raw[name].to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(raw[name])
        self.updates += 1

    def state_dict(self) -> dict:
        # the averaged weights themselves are the checkpoint's ``model`` (the same tensors, stored once)
        return {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
