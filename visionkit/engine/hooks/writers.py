"""What a run writes for people to read: TensorBoard events and ``metrics.jsonl`` (:class:`MetricsWriter`),
and the lines and progress bar on the console (:class:`Console`). Rank 0 alone has them."""

from __future__ import annotations

import json
import math
import time

from visionkit.engine.hooks.base import Hook
from visionkit.engine.runlog import truncate_metrics


def _average(window: list[dict]) -> dict:
    """The train record of a window of step logs: mean losses, last lr, throughput, data wait."""
    total_time = sum(x["time"] for x in window)
    out = {k: sum(x["losses"][k] for x in window) / len(window) for k in window[0]["losses"]}
    out["loss"] = sum(x["loss"] for x in window) / len(window)
    out["lr"] = window[-1]["lr"]
    out["images_per_s"] = sum(x["batch_size"] for x in window) / max(total_time, 1e-9)
    out["data_wait_s"] = sum(x["data_wait"] for x in window) / len(window)
    out["step_s"] = sum(x["time"] - x["data_wait"] for x in window) / len(window)
    out["data_share"] = sum(x["data_wait"] for x in window) / max(total_time, 1e-9)
    return out


class MetricsWriter(Hook):
    """TensorBoard scalars and images, and the same scalars as JSON lines in ``metrics.jsonl``:
    train losses averaged over ``log_every`` steps (with every hook's counters), each validation's
    metrics, the config as text and the final metrics as hparams. A resumed run first drops what
    the interrupted one wrote after its checkpoint, so no step repeats or goes back."""

    def __init__(self, log_every: int):
        self.log_every = log_every
        self.window: list[dict] = []
        self.tb = self.jsonl = None

    def _open(self, trainer, purge_step: int | None = None) -> None:
        if self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(trainer.run_dir), purge_step=purge_step)
            self.jsonl = open(trainer.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (open for the whole run)

    def write(self, prefix: str, values: dict, step: int, epoch: int) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        for k, v in clean.items():
            self.tb.add_scalar(f"{prefix}/{k}", v, step)
        self.jsonl.write(json.dumps({"split": prefix, "step": step, "epoch": epoch, "time": time.time(), **clean}) + "\n")
        self.jsonl.flush()

    def before_fit(self, trainer) -> None:
        if trainer.resumed:
            truncate_metrics(trainer.run_dir / "metrics.jsonl", trainer.global_step)
        self._open(trainer, purge_step=trainer.global_step + 1 if trainer.resumed else None)
        self.tb.add_text("config", "    " + trainer.cfg.to_yaml().replace("\n", "\n    "), trainer.global_step)

    def after_step(self, trainer, logs: dict) -> None:
        self.window.append(logs)
        if len(self.window) >= self.log_every:
            self._flush(trainer)

    def _flush(self, trainer) -> None:
        if not self.window:
            return
        window, self.window = self.window, []
        record = _average(window)
        for hook in trainer.hooks:  # skipped batches, bad samples (cumulative)
            record.update(hook.scalars())
        self.write("train", record, window[-1]["step"], trainer.epoch)

    def after_epoch(self, trainer) -> None:
        self._flush(trainer)

    def after_validate(self, trainer, split, metrics, vis) -> None:
        self._open(trainer)  # test() after fit(), or without it
        self.write(split, metrics, trainer.global_step, trainer.epoch)
        if vis is not None:
            self.tb.add_images(f"{split}/samples", vis, trainer.global_step)
        self.tb.flush()

    def after_fit(self, trainer) -> None:
        if self.tb is None:
            return
        c = trainer.cfg
        hparams = {"backbone": c.model.backbone.name, "task": c.task, "optimizer": c.train.optimizer.name,
                   "lr": c.train.optimizer.lr, "batch_size": c.data.batch_size, "epochs": c.train.epochs,
                   "image_size": c.data.image_size}
        final = {f"hparam/{k}": v for k, v in trainer.last_metrics.items() if isinstance(v, float) and math.isfinite(v)}
        if final:
            self.tb.add_hparams(hparams, final, run_name="hparams")
        self.tb.flush()

    def close(self, trainer) -> None:
        if self.tb is not None:
            self.tb.close()
            self.jsonl.close()
            self.tb = self.jsonl = None


class Console(Hook):
    """The run's lines on the console: where it is and on what device; then, per epoch, one lasting
    train line (the mean of each loss term over the epoch, the last lr, images/s, the share of the
    time spent waiting for data) followed by that epoch's validation line. ``progress`` draws a bar
    per epoch on a terminal (cleared before each lasting line, so none is glued to it); without a
    terminal (CI logs, nohup) a plain progress line every ``log_every`` steps stands in for it."""

    #: above this share of the step time spent waiting for batches, the epoch line says so
    SLOW_INPUT = 0.3

    def __init__(self, progress: bool, terminal: bool = True, log_every: int = 10):
        self.bar_on = progress and terminal
        self.lines_every = log_every if progress and not terminal else 0
        self.bar = None
        self.totals = self._zero()

    @staticmethod
    def _zero() -> dict:
        return {"images": 0, "time": 0.0, "data_wait": 0.0, "steps": 0, "loss": 0.0, "terms": {}, "lr": None}

    def before_fit(self, trainer) -> None:
        log, cfg = trainer.log, trainer.cfg
        log(f"run directory: {trainer.run_dir}")
        log(f"watch it with: tensorboard --logdir {trainer.run_dir}")
        n = ", ".join(f"{k} {len(v)}" for k, v in trainer.datasets.items())
        log(f"device {trainer.device}, {trainer.amp_said}; samples {n}")
        if trainer.group.enabled:
            log(f"{trainer.group.world} processes (torchrun); data.batch_size {cfg.data.batch_size} is the "
                f"global batch, {cfg.data.batch_size // trainer.group.world} per process")

    def before_epoch(self, trainer) -> None:
        self.totals = self._zero()
        if self.bar_on:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=trainer.steps_per_epoch, initial=trainer.step_in_epoch,
                            desc=f"epoch {trainer.epoch + 1}/{trainer.cfg.train.epochs}",
                            dynamic_ncols=True, leave=False)

    def after_step(self, trainer, logs: dict) -> None:
        t = self.totals
        t["images"] += logs["batch_size"]
        t["time"] += logs["time"]
        t["data_wait"] += logs["data_wait"]
        t["steps"] += 1
        t["loss"] += logs["loss"]
        for k, v in logs["losses"].items():
            t["terms"][k] = t["terms"].get(k, 0.0) + v
        t["lr"] = logs["lr"]
        rate = logs["batch_size"] / max(logs["time"], 1e-9)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.3g}", img_s=f"{rate:.0f}",
                                 data=f"{logs['data_wait'] / max(logs['time'], 1e-9):.0%}")
        elif self.lines_every and t["steps"] % self.lines_every == 0:
            trainer.log(f"epoch {trainer.epoch + 1}/{trainer.cfg.train.epochs} step {trainer.step_in_epoch}/"
                        f"{trainer.steps_per_epoch}: loss {logs['loss']:.4f}, lr {logs['lr']:.3g}, "
                        f"{_rate(rate)} images/s")

    def _train_line(self, trainer) -> None:
        """The epoch's lasting train line, once: when its validation starts reporting, or at its end."""
        self._close_bar()
        t, self.totals = self.totals, self._zero()
        if not t["steps"] or t["time"] <= 0:
            return
        n = t["steps"]
        share = t["data_wait"] / t["time"]
        hint = (" -- the input is the bottleneck: raise data.num_workers, keep data.cache on, "
                "or use smaller image files") if share > self.SLOW_INPUT else ""
        terms = ", ".join(f"{k} {v / n:.4f}" for k, v in t["terms"].items())
        trainer.log(f"epoch {trainer.epoch}/{trainer.cfg.train.epochs} train: loss {t['loss'] / n:.4f} ({terms}), "
                    f"lr {t['lr']:.3g}, {_rate(t['images'] / t['time'])} images/s, "
                    f"{share:.0%} of the time waiting for data{hint}")

    def after_validate(self, trainer, split, metrics, vis) -> None:
        self._train_line(trainer)  # validation runs before after_epoch: the train line comes first
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k)
        trainer.log(f"epoch {trainer.epoch}/{trainer.cfg.train.epochs} {split}: {shown}")

    def after_epoch(self, trainer) -> None:
        self._train_line(trainer)

    def after_fit(self, trainer) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _rate(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"  # a slow run's 0.55 is not "0"
