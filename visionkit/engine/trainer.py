"""The shared trainer: a short loop that dispatches events to hooks (see :mod:`visionkit.engine.hooks`).

The loop runs epochs of :meth:`Trainer.run_step` (one batch: forward, loss, backward, and the
optimizer step at the close of an accumulation window) and validation; checkpoints, logs, early
stopping, EMA, signal stops, the final test and the rest are hooks that own their state. It never
asks which task it runs: the Task gives losses, predictions, an evaluator and drawings.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from visionkit.advice import config_advice
from visionkit.data.build import build_datasets, build_loader, build_source
from visionkit.engine import distributed
from visionkit.engine.checkpoint import CheckpointManager
from visionkit.engine.evaluate import EvalResult, evaluate, move_to_device
from visionkit.engine.hooks import Hook, default_hooks
from visionkit.engine.hooks.checkpointing import resolve_monitor
from visionkit.engine.loading import load_weights
from visionkit.engine.loading import model_settings_hint as _model_settings_hint  # noqa: F401 (tests)
from visionkit.engine.lock import RunDirLock, claim_run_dir, create_run_dir
from visionkit.engine.optim import build_optimizer, build_scheduler, scaled_lr
from visionkit.engine.resume import hook_states, locate_run, note_changed_settings
from visionkit.engine.runtime import (
    AMP_DTYPES,
    autocast,
    new_run_dir,
    prepare_task,
    resolve_amp,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    stop_workers,
    use_deterministic_kernels,
)
from visionkit.engine.step_losses import StepLosses, check_finite_weights
from visionkit.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, TrainingInterrupted  # noqa: F401 (raised by hooks; imported from here by callers)
from visionkit.models.weights import load_backbone_weights
from visionkit.registry import TASKS

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

# what torch's DataLoader raises when a worker dies (killed for memory, segfault) or hangs
_LOADER_FAILURE = re.compile(r"DataLoader (worker \(pid|timed out)")


class Trainer:
    """Builds data, task, optimizer and hooks from a config, and runs the loop.

    ``Trainer(cfg).fit()`` trains into a new run directory (or ``run_dir``); ``resume=True``
    continues ``run_dir`` from its newest checkpoint that verifies, ``resume=PATH`` from that one.
    ``hooks`` are added after the built-in ones; ``loaders`` ({split: iterable of batches}) stand in
    for the ones the config describes. ``test()`` scores the test split; ``close()`` (or
    ``with Trainer(cfg) as t:``) stops the loader workers and closes the logs.
    """

    def __init__(self, cfg, run_dir: str | Path | None = None, *, resume: bool | str | Path = False,
                 hooks: list[Hook] | None = None, loaders: dict | None = None, log=print):
        self.cfg = cfg
        # under torchrun: this process's rank and device (cuda:LOCAL_RANK); rank 0 speaks for all
        self.group, self.device = distributed.setup(resolve_device(cfg.train.device))
        self.log = log if self.group.is_main else (lambda *a, **k: None)
        self.task_cls = TASKS.get(cfg.task)
        # torchrun restarted the group after a failure (--max-restarts): continue the run
        self.restarted = not resume and distributed.restarted_run(run_dir)
        if self.restarted and distributed.has_checkpoint(run_dir):
            resume = True
        if self.group.enabled:
            distributed.local_batch(cfg.data.batch_size, self.group.world)  # refuse an uneven split early
        self.resume_path, self.run_dir, self._resume_state = locate_run(self.group, run_dir, resume, self.log)
        self.resumed = self.resume_path is not None or self.restarted
        seed_everything(cfg.train.seed)
        use_deterministic_kernels(cfg.train.deterministic)
        self.lock: RunDirLock | None = None  # rank 0's, taken once the run directory is known
        # refuse to clobber before anything is read; everything that can fail on the user's data or
        # weights runs before the run directory is made, so a failed start leaves nothing behind
        self.run_dir = self.group.on_main(self._claim_run_dir)
        self.source = source = build_source(cfg)  # also answers where a missing split would come from
        self.classes = source.classes
        self.task = self.task_cls.from_config(cfg, {**source.info, "classes": self.classes})
        self.monitor = resolve_monitor(cfg, self.task)
        self.channels_last = prepare_task(self.task, cfg, self.device)
        if cfg.model.backbone.weights and self.resume_path is None:
            b = cfg.model.backbone
            report = load_backbone_weights(self.task, b.weights, skip=b.weights_skip, task=cfg.task, backbone_name=b.name)
            self.log(f"loaded backbone {report.summary()}")
        self.group.on_main(lambda: create_run_dir(self.run_dir, self.lock, cfg))
        # rank 0 first: it writes split.json, which the others then read
        self.datasets = self.group.main_first(lambda: build_datasets(
            cfg, self.task_cls, self.run_dir if self.group.is_main or (self.run_dir / "split.json").exists()
            else None, source=source)[0])
        self.has_val = "val" in self.datasets
        self.epoch = self.global_step = self.step_in_epoch = 0  # completed epochs, optimizer steps, batches
        self.should_stop = False  # a hook asks the loop to end after this epoch (early stopping, ...)
        self.last_metrics: dict = {}  # the last validation's
        self.last_eval: EvalResult | None = None  # the last validate()'s, for hooks that need more
        self.eval_task = self.task  # what validation scores and checkpoints save as the model (EMA swaps it)
        self._loaders: dict = dict(loaders or {})
        self._fitting = False
        self._pending, self._synced = False, True  # gradients since the last optimizer step; averaged (DDP)
        amp, self.amp_said = resolve_amp(cfg.train.amp, self.device)
        self.amp_dtype = AMP_DTYPES.get(amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.steps_per_epoch = len(self.loader("train"))
        self.optimizer, self.scheduler, self.ddp = self._build_optim()
        self.losses = StepLosses(self.group, deferred=(self.device.type == "cuda" and cfg.train.on_nonfinite == "stop"
                                                       and not self.group.enabled), every=cfg.train.log_every)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
        self._saved_at: tuple[int, int] | None = None  # (step, batch) of the newest checkpoint
        self.hooks = [*default_hooks(cfg, main=self.group.is_main, has_val=self.has_val), *(hooks or [])]
        self.call("setup")

    # -- set-up ------------------------------------------------------------------------------------
    def _claim_run_dir(self) -> Path:
        self.run_dir, self.lock = claim_run_dir(self.run_dir or new_run_dir(self.cfg), self.resumed)
        return self.run_dir

    def _build_optim(self):
        t = self.cfg.train
        optimizer = build_optimizer(self.task, t.optimizer)
        if t.scale_lr != "none":  # opt-in: lr for the global batch (data.batch_size x accumulate)
            lr = scaled_lr(self.cfg, self.log)
            for group in optimizer.param_groups:
                group["lr"] = lr
        ddp = distributed.wrap_for_training(self.task, self.group, self.device, t.sync_bn)
        scheduler = build_scheduler(optimizer, t.schedule, math.ceil(self.steps_per_epoch / t.accumulate), t.epochs)
        return optimizer, scheduler, ddp

    def loader(self, split: str):
        if split not in self._loaders:
            if split not in self.datasets:
                raise ConfigError(self.source.no_split(split))
            data, train = self.datasets[split], split == "train"
            self._loaders[split] = build_loader(data, self.cfg, train, self.device,
                                                **distributed.loader_args(len(data), self.cfg, train, self.group))
        return self._loaders[split]

    def hook(self, cls: type) -> Hook | None:
        """The first hook of type ``cls``, or None."""
        return next((h for h in self.hooks if isinstance(h, cls)), None)

    def call(self, event: str, *args) -> None:
        for h in self.hooks:
            getattr(h, event)(self, *args)

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "model": self.eval_task.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "global_step": self.global_step,
            "step_in_epoch": self.step_in_epoch,  # batches of the current epoch already trained
            "rng": rng_state(), "config": self.cfg.to_dict(),
            "meta": {"task": self.cfg.task, "backbone": self.cfg.model.backbone.name, **self.task.metadata()},
            "hooks": {h.name: s for h in self.hooks if (s := h.state_dict()) is not None},
        }
        if self.eval_task is not self.task:  # the weights being trained, for resume
            state["train_model"] = self.task.state_dict()
        return state

    def save_checkpoint(self, is_best: bool = False, mid_epoch: bool = False) -> Path | None:
        """Commit a checkpoint of the whole training state, once per point of the run (hooks may
        all ask); mid-epoch ones also hold the sampler position, so a resume continues with the
        next batch. Deferred losses are read first: no checkpoint is written with a non-finite one."""
        if self._saved_at == (self.global_step, self.step_in_epoch):
            return None
        for logs in self.losses.flush():
            self.call("after_step", logs)
        check_finite_weights(self.task, f"epoch {self.epoch + 1} step {self.global_step}")
        self._saved_at = (self.global_step, self.step_in_epoch)
        if not self.group.enabled:
            return self.ckpt.save(self.state_dict(), self.epoch, self.global_step, is_best, mid_epoch)
        # rank 0 writes (with every rank's RNG state); the others go on once it is committed
        rngs = self.group.gather(rng_state())
        return self.group.on_main(lambda: self.ckpt.save({**self.state_dict(), "rng_ranks": rngs}, self.epoch,
                                                         self.global_step, is_best, mid_epoch))

    def _restore(self) -> None:
        state, self._resume_state = self._resume_state, None
        load_weights(self.task, state, self.cfg, self.classes, self.resume_path,
                     key="train_model" if "train_model" in state else "model")
        if self.eval_task is not self.task:
            self.eval_task.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.step_in_epoch = state.get("step_in_epoch", 0)
        saved = hook_states(state)
        for h in self.hooks:
            if h.name in saved:
                h.load_state_dict(saved[h.name])
        ranks = state.get("rng_ranks")
        set_rng_state(ranks[self.group.rank] if ranks and len(ranks) == self.group.world else state["rng"])
        where = f" batch {self.step_in_epoch}" if self.step_in_epoch else ""
        self.log(f"resumed from {self.resume_path} at epoch {self.epoch}{where} (step {self.global_step})")
        note_changed_settings(state.get("config"), self.cfg, self.run_dir / f"config_resumed_step{self.global_step}.yaml",
                              self.log, write=self.group.is_main)

    # -- the loop ----------------------------------------------------------------------------------
    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def to_device(self, batch: dict) -> dict:
        return move_to_device(batch, self.task, self.device, self.channels_last)

    def fit(self) -> dict:
        """Train for ``train.epochs``; returns the last validation metrics."""
        t = self.cfg.train
        for stale in self.ckpt.remove_stale_temp_files() if self.group.is_main else []:
            self.log(f"removed '{stale}', left by a run killed while writing a checkpoint")
        if self.resume_path is not None and self._resume_state is not None:
            self._restore()
        if self.epoch >= t.epochs:
            self.log(f"run '{self.run_dir}' already finished {self.epoch}/{t.epochs} epochs; nothing to do")
            return {}
        self._fitting = True
        try:
            with loader_failures(self), config_advice(self.log):
                self.call("before_fit")
                while self.epoch < t.epochs and not self.should_stop:
                    self.call("before_epoch")
                    self.train_one_epoch()
                    self.epoch += 1
                    self.step_in_epoch = 0
                    if self.has_val and (self.epoch % t.val_every == 0 or self.epoch == t.epochs):
                        self.last_metrics = self.validate("val")
                    self.call("after_epoch")
                self.call("after_train")
        finally:
            self._fitting = False
            self.call("after_fit")
            self._stop_workers()
            if self.lock is not None:
                self.lock.release()
        return self.last_metrics

    def train_one_epoch(self) -> None:
        self.task.train()
        loader = self.loader("train")
        # a resumed epoch starts at the first batch the interrupted run had not trained on
        loader.sampler.set_epoch(self.epoch, self.step_in_epoch * loader.batch_size)
        accum, end = self.cfg.train.accumulate, time.perf_counter()
        for i, batch in enumerate(loader, start=self.step_in_epoch):
            start = time.perf_counter()
            self.call("before_step", batch)
            closes = (i + 1) % accum == 0 or i + 1 == self.steps_per_epoch  # the optimizer steps after it
            trained, stepped = self.run_step(batch, closes)
            self.step_in_epoch = i + 1
            if trained is not None:
                ready = self.losses.add(*trained, epoch=self.epoch, step=self.global_step, stepped=stepped,
                                        lr=self.optimizer.param_groups[0]["lr"], batch_size=len(batch["images"]),
                                        start=start, data_wait=start - end)
                for logs in ready:
                    self.call("after_step", logs)
            if stepped:
                self.call("after_optimizer_step")
            end = time.perf_counter()  # the hooks' own time (logging, checkpoints) is neither
        for logs in self.losses.flush():  # before the epoch's checkpoint
            self.call("after_step", logs)

    def run_step(self, batch: dict | None, closes: bool) -> tuple[tuple | None, bool]:
        """One batch: forward, loss and backward; and the optimizer step when the batch ``closes``
        an accumulation window. Returns ``(losses, total)`` of a batch that was trained on (None for
        a skipped or non-finite one) and whether the optimizer stepped."""
        trained, finite = None, False
        # under torchrun a batch that does not close its window keeps its gradients local (DDP's
        # no_sync): the closing batch's backward averages the window's sum once
        with distributed.gradient_sync(self.ddp, closes):
            if batch is not None:  # None: every sample of the batch was unreadable (on_error: skip)
                batch = self.to_device(batch)
                with self.autocast():
                    losses = self.ddp(batch) if self.ddp is not None else self.task.loss(batch)
                total = sum(losses.values())
                finite = self.losses.deferred or bool(torch.isfinite(total))
            skip, own_finite = batch is None, finite
            if self.group.enabled:  # every rank steps or none does
                skip, finite = distributed.agree_on_batch(self.group, skip, finite)
            if not skip and finite:
                self.scaler.scale(total / self.cfg.train.accumulate).backward()
                self._pending, self._synced, trained = True, closes, (losses, total)
            elif not skip:
                self.call("after_nonfinite", losses, own_finite)
        if not (closes and self._pending):
            return trained, False
        if not self._synced:  # the window's closing batch was skipped on every rank: average here
            distributed.average_gradients(self.group, self.task.parameters())
        if self.cfg.train.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.task.parameters(), self.cfg.train.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        self._pending, self._synced = False, True
        return trained, True

    def validate(self, split: str = "val") -> dict:
        """Score ``split`` with the evaluation weights and tell the hooks; returns the metrics.
        When those are not the trained weights (EMA), the trained ones' metrics come beside as ``raw_*``."""
        try:
            with config_advice(self.log):
                result = self._score(self.eval_task, split)
                if self.eval_task is not self.task:
                    result.metrics.update({f"raw_{k}": v for k, v in self._score(self.task, split).metrics.items()})
        finally:
            if not self._fitting:  # test() on its own: nothing else will use this loader
                stop_workers(self._loaders.pop(split, None))
        if self.group.is_main:
            result.evaluator.write(self.run_dir, split)  # e.g. detections_val.json
        self.last_eval = result
        self.call("after_validate", split, result.metrics, result.vis)
        return result.metrics

    def _score(self, task, split: str) -> EvalResult:
        vis = self.cfg.train.vis_images if task is self.eval_task else 0
        return evaluate(task, self.loader(split), task.evaluator(), self.device, autocast=self.autocast,
                        channels_last=self.channels_last, group=self.group, vis_images=vis, log=self.log, split=split)

    def test(self) -> dict:
        """Score the test split (the only place the trainer touches it)."""
        return self.validate("test")

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the loader workers, close the logs and release the run directory."""
        self._stop_workers()
        self.call("close")
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stop_workers(self) -> None:
        for loader in self._loaders.values():
            stop_workers(loader)
        self._loaders.clear()


@contextlib.contextmanager
def loader_failures(trainer: Trainer):
    """torch's loader: a worker died (killed for memory, a crash) or hung; a dead worker shows as
    its message, or as a broken pipe while its batch was being received. Said as a DataError."""
    try:
        yield
    except (RuntimeError, ConnectionError, EOFError) as e:
        if isinstance(e, (ConnectionError, EOFError)) or _LOADER_FAILURE.search(str(e)):
            trainer._stop_workers()
            raise DataError(
                f"data loading failed at epoch {trainer.epoch + 1} batch {trainer.step_in_epoch + 1}: "
                f"{type(e).__name__}: {str(e).strip().splitlines()[0]}; the checkpoints are untouched, "
                "continue with --resume (a worker killed for memory: lower data.num_workers or "
                "data.batch_size)") from e
        raise
