"""Reading each step's losses for the ``after_step`` hooks: at once, or deferred on a GPU.

On a GPU, reading the loss (finite? its value for the log) after every step makes the CPU wait for
the GPU, which then idles while the next step is queued. With ``train.on_nonfinite: stop`` nothing
needs the answer at once: the steps' losses stay on the device and are read together every
``log_every`` steps and before any checkpoint (:meth:`StepLosses.flush`), so a non-finite loss
still stops the run, naming its step, before it is saved.
"""

from __future__ import annotations

import time

import torch

from visionkit.engine import distributed
from visionkit.errors import NonFiniteLossError


def nonfinite_stop(where: str, terms: str) -> NonFiniteLossError:
    """The error of ``train.on_nonfinite: stop``, whether the loss was read at once or later."""
    return NonFiniteLossError(
        f"non-finite loss at {where} ({terms}); no checkpoint was written with it; lower "
        "train.optimizer.lr or set train.clip_grad_norm (or train.on_nonfinite: skip)")


class StepLosses:
    """Turns each trained batch into the ``logs`` dict the hooks get: ``step`` (the optimizer
    steps done after it), ``epoch``, ``loss``, ``losses`` (per term), ``lr``, ``batch_size`` (the
    global batch), ``time`` (data wait included) and ``data_wait``, all plain floats."""

    def __init__(self, group: distributed.Group, deferred: bool, every: int):
        self.group, self.deferred, self.every = group, deferred, every
        self._unread: list[dict] = []

    def add(self, losses: dict, total: torch.Tensor, *, epoch: int, step: int, stepped: bool, lr: float,
            batch_size: int, start: float, data_wait: float) -> list[dict]:
        """Record one batch; returns the logs that are ready (none while deferred reads wait)."""
        record = {"epoch": epoch, "step": step, "ran_at": step - stepped, "lr": lr,
                  "batch_size": batch_size * self.group.world, "data_wait": data_wait}
        if self.deferred:
            self._unread.append({**record, "losses": {k: v.detach() for k, v in losses.items()},
                                 "total": total.detach(), "time": time.perf_counter() - start + data_wait})
            return self.flush() if len(self._unread) >= self.every else []
        # .item() waits for the step's device work, so the step time covers it on a GPU too
        if self.group.enabled:  # the global batch's loss: the mean of the ranks' equal shares
            values, loss = distributed.mean_losses(self.group, losses, total)
        else:
            values, loss = {k: v.item() for k, v in losses.items()}, total.item()
        return [self._logs(record, loss, values, time.perf_counter() - start + data_wait)]

    def flush(self) -> list[dict]:
        """The deferred steps' logs, read in one device sync; a non-finite loss raises, naming its step."""
        unread, self._unread = self._unread, []
        if not unread:
            return []
        wait = time.perf_counter()
        finite = torch.isfinite(torch.stack([u["total"].float() for u in unread])).tolist()
        values = torch.stack([torch.stack([v.float() for v in u["losses"].values()]) for u in unread]).tolist()
        unread[-1]["time"] += time.perf_counter() - wait  # the GPU work still queued: booked to the last step
        for u, ok, vals in zip(unread, finite, values):
            if not ok:
                terms = ", ".join(f"{k}={v:.4g}" for k, v in zip(u["losses"], vals))
                raise nonfinite_stop(f"epoch {u['epoch'] + 1} step {u['ran_at']}", terms)
        return [self._logs(u, sum(vals), dict(zip(u["losses"], vals)), u["time"]) for u, vals in zip(unread, values)]

    @staticmethod
    def _logs(record: dict, loss: float, values: dict, seconds: float) -> dict:
        return {"step": record["step"], "epoch": record["epoch"], "loss": loss, "losses": values,
                "lr": record["lr"], "batch_size": record["batch_size"], "time": seconds,
                "data_wait": record["data_wait"]}
