"""Everything around the training loop, one hook per feature (see :mod:`.base` for the events)."""

from __future__ import annotations

import os
import sys

from visionkit.engine.hooks.base import EVENTS, Hook
from visionkit.engine.hooks.checkpointing import BestCheckpoint, CheckpointHook
from visionkit.engine.hooks.ema import EMA
from visionkit.engine.hooks.faults import FaultInjection
from visionkit.engine.hooks.final_test import FinalTest
from visionkit.engine.hooks.guards import BadSamples, NonFiniteGuard, SignalStop
from visionkit.engine.hooks.writers import Console, MetricsWriter

__all__ = ["EMA", "EVENTS", "BadSamples", "BestCheckpoint", "CheckpointHook", "Console", "FaultInjection",
           "FinalTest", "Hook", "MetricsWriter", "NonFiniteGuard", "SignalStop", "default_hooks"]


def default_hooks(cfg, *, main: bool, has_val: bool) -> list[Hook]:
    """The hooks a config asks for, in the order they must run: faults strike before anything
    sees the step; the average is updated before a checkpoint saves it; the best is known before
    the epoch's checkpoint; a signal stop comes after that checkpoint. ``main``: rank 0, which
    alone writes logs."""
    t = cfg.train
    hooks: list[Hook] = []
    if os.environ.get("VISIONKIT_FAULTS"):
        hooks.append(FaultInjection())
    if t.ema.decay is not None:
        hooks.append(EMA(t.ema.decay, t.ema.every, t.ema.warmup))
    hooks += [NonFiniteGuard(t.on_nonfinite, t.max_nonfinite_steps), BadSamples()]
    if main:
        hooks += [MetricsWriter(t.log_every), Console(t.progress, sys.stderr.isatty(), t.log_every)]
    if has_val:
        hooks.append(BestCheckpoint(t.early_stopping))
    hooks += [CheckpointHook(t.checkpoint_every_steps), SignalStop()]
    if t.final_test:
        hooks.append(FinalTest())
    return hooks
