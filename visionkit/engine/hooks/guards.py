"""Hooks that keep a run safe: a non-finite loss (:class:`NonFiniteGuard`), SIGTERM/SIGINT
(:class:`SignalStop`) and unreadable samples (:class:`BadSamples`)."""

from __future__ import annotations

import signal
import threading

from visionkit.engine.hooks.base import Hook
from visionkit.engine.runlog import BadSampleLog
from visionkit.engine.step_losses import nonfinite_stop
from visionkit.errors import NonFiniteLossError, TrainingInterrupted


class NonFiniteGuard(Hook):
    """A batch whose loss is NaN/Inf is never trained on. ``on_nonfinite: stop`` (default) stops
    the run naming the step and the loss terms; ``skip`` drops the batch and counts it, and stops
    after ``max_in_a_row`` such batches in a row."""

    name = "nonfinite"

    def __init__(self, mode: str, max_in_a_row: int):
        self.mode, self.max_in_a_row = mode, max_in_a_row
        self.streak = 0
        self.skipped = 0

    def after_step(self, trainer, logs) -> None:
        self.streak = 0

    def after_nonfinite(self, trainer, losses, elsewhere) -> None:
        terms = "on another process" if elsewhere else ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        where = f"epoch {trainer.epoch + 1} step {trainer.global_step}"
        self.streak += 1
        if self.mode == "stop":
            raise nonfinite_stop(where, terms)
        if self.streak >= self.max_in_a_row:
            raise NonFiniteLossError(
                f"non-finite loss at {where} ({terms}), {self.streak} batches in a row "
                f"(train.max_nonfinite_steps is {self.max_in_a_row}); no checkpoint was written with "
                "it; lower train.optimizer.lr or set train.clip_grad_norm")
        self.skipped += 1
        trainer.log(f"warning: skipped a batch with a non-finite loss at {where} ({terms})")

    def scalars(self) -> dict:
        return {"skipped_steps": self.skipped}

    def state_dict(self) -> dict:
        return {"streak": self.streak, "skipped_steps": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.streak, self.skipped = state["streak"], state["skipped_steps"]


class SignalStop(Hook):
    """SIGTERM/SIGINT ask for a checkpoint after the current optimizer step, then a stop
    (:class:`TrainingInterrupted`, exit 130); a second SIGINT stops at once. Under torchrun the
    ranks agree on the stop (a signal may reach one of them only). Handlers are installed in the
    main thread only, for the time of ``fit``."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def before_fit(self, trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if self.signum is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signum = signum
            trainer.log(f"received {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping")

        self._previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def after_fit(self, trainer) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def _agree(self, trainer) -> None:
        if trainer.group.enabled:  # all take the highest signal number any rank received
            self.signum = trainer.group.max(self.signum or 0)[0] or None

    def after_optimizer_step(self, trainer) -> None:
        self._agree(trainer)
        if self.signum is not None and trainer.step_in_epoch < trainer.steps_per_epoch:
            trainer.save_checkpoint(mid_epoch=True)
            self._stop(trainer)

    def after_epoch(self, trainer) -> None:  # after the epoch's checkpoint
        self._agree(trainer)
        if self.signum is not None and trainer.epoch < trainer.cfg.train.epochs:
            self._stop(trainer)

    def _stop(self, trainer):
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(self.signum).name} at epoch {trainer.epoch + 1} batch "
            f"{trainer.step_in_epoch} (step {trainer.global_step}) after saving a checkpoint; continue with: "
            f"visionkit train CONFIG --run-dir {trainer.run_dir} --resume")


class BadSamples(Hook):
    """``bad_samples.jsonl``: each unreadable sample once, with the reason (``data.on_error: skip``);
    the count goes with every train record."""

    name = "bad_samples"

    def __init__(self):
        self.log: BadSampleLog | None = None
        self.count = 0

    def setup(self, trainer) -> None:
        rank = f".rank{trainer.group.rank}" if not trainer.group.is_main else ""
        self.log = BadSampleLog(trainer.run_dir / f"bad_samples{rank}.jsonl")

    def before_step(self, trainer, batch) -> None:
        if isinstance(batch, dict) and "bad_samples" in batch:
            self.log.add(batch.pop("bad_samples"), trainer.epoch)
            self.count = len(self.log)

    def after_validate(self, trainer, split, metrics, vis) -> None:
        if trainer.last_eval.bad and trainer.group.is_main:
            self.log.add([trainer.last_eval.bad], trainer.epoch)

    def scalars(self) -> dict:
        return {"bad_samples": self.count}

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]
