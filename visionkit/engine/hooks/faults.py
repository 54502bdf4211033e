"""The reliability tests' step faults (``VISIONKIT_FAULTS``, see :mod:`visionkit.engine.faults`)
as a hook; the trainer adds it only when that variable is set."""

from __future__ import annotations

from visionkit.engine import faults
from visionkit.engine.hooks.base import Hook
from visionkit.engine.hooks.guards import SignalStop


class FaultInjection(Hook):
    def after_optimizer_step(self, trainer) -> None:
        stop = trainer.hook(SignalStop)
        faults.after_step(trainer.global_step, lambda: stop is not None and stop.signum is not None)
