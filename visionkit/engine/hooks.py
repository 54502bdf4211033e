"""Trainer hooks: everything around the loop (logging, checkpoints, early stopping).

A hook overrides only the events it needs; the base class's methods do nothing, so a hook that
is off costs nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch


class Hook:
    def before_fit(self, trainer) -> None: ...
    def before_epoch(self, trainer) -> None: ...
    def after_step(self, trainer, logs: dict) -> None: ...
    def after_epoch(self, trainer) -> None: ...
    def after_validate(self, trainer, split: str, metrics: dict, vis: torch.Tensor | None) -> None: ...
    def after_fit(self, trainer) -> None: ...


class MetricsWriter:
    """TensorBoard scalars and images plus the same scalars as JSON lines in ``metrics.jsonl``."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        # purge_step: a resumed run hides the events the interrupted one wrote after its checkpoint
        self.tb = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        self.jsonl = open(self.run_dir / "metrics.jsonl", "a")

    def scalars(self, prefix: str, values: dict, step: int, epoch: int) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        for k, v in clean.items():
            self.tb.add_scalar(f"{prefix}/{k}", v, step)
        record = {"split": prefix, "step": step, "epoch": epoch, "time": time.time(), **clean}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        self.tb.flush()
        self.tb.close()
        self.jsonl.close()


class LoggerHook(Hook):
    """Averages the step logs over ``log_every`` steps and writes them; draws the progress bar."""

    #: above this share of the step time spent waiting for batches, the epoch line says so
    SLOW_INPUT = 0.3

    def __init__(self, writer: MetricsWriter, log_every: int, progress: bool):
        self.writer, self.log_every, self.progress = writer, log_every, progress
        self.window: list[dict] = []
        self.bar = None
        self.epoch_totals = {"images": 0, "time": 0.0, "data_wait": 0.0}

    def before_fit(self, trainer) -> None:
        cfg_text = "    " + trainer.cfg.to_yaml().replace("\n", "\n    ")
        self.writer.tb.add_text("config", cfg_text, trainer.global_step)

    def before_epoch(self, trainer) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=trainer.steps_per_epoch, initial=trainer.step_in_epoch,
                            desc=f"epoch {trainer.epoch + 1}/{trainer.cfg.train.epochs}",
                            dynamic_ncols=True, leave=False)

    def after_step(self, trainer, logs: dict) -> None:
        self.window.append(logs)
        t = self.epoch_totals
        t["images"] += logs["batch_size"]
        t["time"] += logs["time"]
        t["data_wait"] += logs["data_wait"]
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.3g}",
                                 img_s=f"{logs['batch_size'] / max(logs['time'], 1e-9):.0f}",
                                 data=f"{logs['data_wait'] / max(logs['time'], 1e-9):.0%}")
        if len(self.window) >= self.log_every:
            self.flush(trainer)

    def flush(self, trainer) -> None:
        if not self.window:
            return
        w, self.window = self.window, []
        total_time = sum(x["time"] for x in w)
        out = {k: sum(x["losses"][k] for x in w) / len(w) for k in w[0]["losses"]}
        out["loss"] = sum(x["loss"] for x in w) / len(w)
        out["lr"] = w[-1]["lr"]
        out["images_per_s"] = sum(x["batch_size"] for x in w) / max(total_time, 1e-9)
        out["data_wait_s"] = sum(x["data_wait"] for x in w) / len(w)
        out["step_s"] = sum(x["time"] - x["data_wait"] for x in w) / len(w)
        out["data_share"] = sum(x["data_wait"] for x in w) / max(total_time, 1e-9)
        out.update(getattr(trainer, "counters", {}))  # skipped batches, bad samples (cumulative)
        self.writer.scalars("train", out, trainer.global_step, trainer.epoch)

    def after_epoch(self, trainer) -> None:
        self.flush(trainer)
        t, self.epoch_totals = self.epoch_totals, {"images": 0, "time": 0.0, "data_wait": 0.0}
        if t["time"] > 0:
            share = t["data_wait"] / t["time"]
            hint = (" -- the input is the bottleneck: raise data.num_workers, keep data.cache on, "
                    "or use smaller image files") if share > self.SLOW_INPUT else ""
            rate = t["images"] / t["time"]
            rate = f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"  # a slow run's 0.55 is not "0"
            trainer.log(f"epoch {trainer.epoch}/{trainer.cfg.train.epochs} train: {rate} images/s, "
                        f"{share:.0%} of the time waiting for data{hint}")
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def after_validate(self, trainer, split, metrics, vis) -> None:
        self.writer.scalars(split, metrics, trainer.global_step, trainer.epoch)
        if vis is not None:
            self.writer.tb.add_images(f"{split}/samples", vis, trainer.global_step)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k)
        trainer.log(f"epoch {trainer.epoch}/{trainer.cfg.train.epochs} {split}: {shown}")

    def after_fit(self, trainer) -> None:
        hparams = {
            "backbone": trainer.cfg.model.backbone.name,
            "task": trainer.cfg.task,
            "optimizer": trainer.cfg.train.optimizer.name,
            "lr": trainer.cfg.train.optimizer.lr,
            "batch_size": trainer.cfg.data.batch_size,
            "epochs": trainer.cfg.train.epochs,
            "image_size": trainer.cfg.data.image_size,
        }
        final = {f"hparam/{k}": v for k, v in trainer.last_metrics.items()
                 if isinstance(v, float) and math.isfinite(v)}
        if final:
            self.writer.tb.add_hparams(hparams, final, run_name="hparams")
        self.writer.close()


class CheckpointHook(Hook):
    """Saves after every epoch (``last``), tracks the best by the monitored metric, and stops
    early after ``patience`` validations without improvement."""

    def __init__(self, patience: int | None):
        self.patience = patience

    def after_validate(self, trainer, split, metrics, vis) -> None:
        if split != "val":
            return
        name, mode = trainer.monitor
        if name not in metrics:
            from visionkit.errors import ConfigError

            where = trainer.cfg.where("train.monitor")
            raise ConfigError(f"{where}: 'train.monitor' is '{name}', which is not a "
                              f"validation metric; choose one of {', '.join(metrics)}")
        value = metrics[name]
        best = trainer.best
        better = best["value"] is None or (value > best["value"] if mode == "max" else value < best["value"])
        if better:
            trainer.best = {"metric": name, "value": value, "epoch": trainer.epoch}
            trainer.stale = 0
        else:
            trainer.stale += 1
        trainer.improved = better
        if self.patience is not None and trainer.stale >= self.patience:
            trainer.log(f"early stopping: {name} has not improved for {trainer.stale} validations "
                        f"(best {best['value']:.4f} at epoch {best['epoch']})")
            trainer.should_stop = True

    def after_epoch(self, trainer) -> None:
        is_best = trainer.improved or not trainer.has_val
        trainer.save_checkpoint(is_best)
        trainer.improved = False
