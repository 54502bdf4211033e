"""Checkpoints: every epoch and every ``train.checkpoint_every_steps`` (:class:`CheckpointHook`),
and which one is best by the monitored metric, with early stopping (:class:`BestCheckpoint`)."""

from __future__ import annotations

from visionkit.config import suggestion
from visionkit.engine.hooks.base import Hook
from visionkit.errors import ConfigError


def resolve_monitor(cfg, task) -> tuple[str, str]:
    """``train.monitor`` / ``monitor_mode`` as (metric, "max" | "min"); ``auto`` takes the task's.
    A metric the task's evaluator cannot give fails now, not after an epoch."""
    name, mode = cfg.train.monitor, cfg.train.monitor_mode
    default_name, default_mode = task.monitor
    known = task.evaluator().metric_names() if name != "auto" else None
    if known is not None and name not in known | {"bad_samples"}:  # the unreadable-sample count
        known = sorted(known | {"bad_samples"})
        raise ConfigError(f"{cfg.where('train.monitor')}: 'train.monitor' is '{name}', which is not "
                          f"a validation metric of task {cfg.task}; choose one of "
                          f"{', '.join(known)}{suggestion(name, known)}")
    name = default_name if name == "auto" else name
    if mode == "auto":
        mode = default_mode if name == default_name else ("min" if "loss" in name else "max")
    return name, mode


class BestCheckpoint(Hook):
    """Tracks the best validation value of ``trainer.monitor``; the epoch's checkpoint becomes
    ``best.pt`` when it improved. Stops the run after ``patience`` validations without improvement."""

    name = "best"

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best = {"metric": None, "value": None, "epoch": None}
        self.stale = 0
        self.improved = False  # this epoch's validation improved the best; read by CheckpointHook

    def setup(self, trainer) -> None:
        self.best["metric"] = trainer.monitor[0]

    def before_epoch(self, trainer) -> None:
        self.improved = False

    def after_validate(self, trainer, split, metrics, vis) -> None:
        if split != "val":
            return
        name, mode = trainer.monitor
        if name not in metrics:
            raise ConfigError(f"{trainer.cfg.where('train.monitor')}: 'train.monitor' is '{name}', which is not a "
                              f"validation metric; choose one of {', '.join(metrics)}")
        value, best = metrics[name], self.best
        self.improved = best["value"] is None or (value > best["value"] if mode == "max" else value < best["value"])
        if self.improved:
            self.best = {"metric": name, "value": value, "epoch": trainer.epoch}
            self.stale = 0
        else:
            self.stale += 1
        if self.patience is not None and self.stale >= self.patience:
            trainer.log(f"early stopping: {name} has not improved for {self.stale} validations "
                        f"(best {best['value']:.4f} at epoch {best['epoch']})")
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": dict(self.best), "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.stale = dict(state["best"]), state["stale"]


class CheckpointHook(Hook):
    """Saves the whole training state after every epoch (``epoch_NNNN.pt``, ``last.pt``, and
    ``best.pt`` when :class:`BestCheckpoint` says so or there is no validation) and after every
    ``every_steps`` optimizer steps mid-epoch (``step_NNNNNNNN.pt``, with the sampler position)."""

    def __init__(self, every_steps: int | None):
        self.every_steps = every_steps

    def after_optimizer_step(self, trainer) -> None:
        every = self.every_steps
        # the epoch's last batch is left to the epoch-end checkpoint
        if every and trainer.global_step % every == 0 and trainer.step_in_epoch < trainer.steps_per_epoch:
            trainer.save_checkpoint(mid_epoch=True)

    def after_epoch(self, trainer) -> None:
        best = trainer.hook(BestCheckpoint)
        trainer.save_checkpoint(is_best=best.improved if best is not None else True)
