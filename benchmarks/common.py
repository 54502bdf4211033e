"""Shared pieces of the benchmark rows: timing, rows, configs and in-memory batches.

Every figure is a ratio of two measurements taken in the same run on the same machine, so the
speed of the machine (and whatever else runs on it) cancels as far as it can. The two sides are
timed in alternation (ours, baseline, ours, ...) and each side's median is reported, so a burst
of load from another process hits both sides alike instead of one.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

#: the checkout this harness belongs to (its configs, and the ``visionkit`` it times)
ROOT = Path(__file__).resolve().parents[1]
#: set by the harness from ``--device`` (auto: CUDA when present)
SETTINGS = {"device": "auto"}


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a ``python -m visionkit`` child process: this checkout first on its
    PYTHONPATH, so the child runs the same ``visionkit`` as the harness, plus ``extra``."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def device() -> torch.device:
    name = SETTINGS["device"]
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(dev: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock time covers it."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def details(model: str, image_size, batch, repeats: int, dev: torch.device | str | None = None,
            **extra) -> dict:
    """What a row was measured on: the keys every row carries, plus row-specific ones."""
    dev = torch.device(dev) if dev is not None else device()
    name = str(dev)
    if dev.type == "cuda":
        name = f"{dev} ({torch.cuda.get_device_name(dev)})"
    return {"model": model, "image_size": image_size, "batch": batch,
            "threads": torch.get_num_threads(), "device": name, "repeats": repeats, **extra}


_TARGET = re.compile(r"^\s*(>=|<=|>|<)\s*([0-9.]+)")


def meets(target: str, value: float | None) -> bool | None:
    """Whether ``value`` satisfies a target such as ``">= 0.97"``; None when there is nothing to judge."""
    m = _TARGET.match(target or "")
    if value is None or m is None:
        return None
    op, bound = m.group(1), float(m.group(2))
    return {">=": value >= bound, "<=": value <= bound, ">": value > bound, "<": value < bound}[op]


def row(figure: str, ours: float | None, baseline: float | None, target: str, unit: str, info: dict,
        *, ratio: float | None = None, judge: str = "ratio", note: str = "") -> dict:
    """One table row. ``judge`` says what the target bounds: the ratio ours/baseline (default)
    or ``ours`` itself (absolute targets such as memory)."""
    if ratio is None and ours is not None and baseline:
        ratio = ours / baseline
    value = ratio if judge == "ratio" else ours
    out = {"figure": figure, "ours": ours, "baseline": baseline, "ratio": ratio, "target": target,
           "met": meets(target, value), "unit": unit, "details": info}
    if note:
        out["note"] = note
    return out


def unavailable(figure: str, target: str, unit: str, why: str, info: dict | None = None) -> dict:
    """A row that could not be measured here, with the reason in place of numbers."""
    return {"figure": figure, "ours": None, "baseline": None, "ratio": None, "target": target,
            "met": None, "unit": unit, "details": info or {}, "note": why}


def alternate(ours: Callable[[], float], baseline: Callable[[], float], repeats: int) -> tuple[list, list]:
    """Call ``ours`` and ``baseline`` in turn ``repeats`` times; each returns its own measurement.

    The order flips every repeat (ours first, then the baseline first, ...: ABBA), so a
    systematic advantage of running first or second -- the other side's freed memory, caches, a
    clock that has just ramped up -- is shared instead of all landing on one side."""
    a, b = [], []
    for i in range(repeats):
        if i % 2:
            b.append(baseline())
            a.append(ours())
        else:
            a.append(ours())
            b.append(baseline())
    return a, b


def median(values) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], object], dev: torch.device) -> float:
    """Seconds ``fn`` takes, GPU work included."""
    sync(dev)
    start = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - start


def workdir(prefix: str) -> tempfile.TemporaryDirectory:
    """A scratch folder for a row's files (``VISIONKIT_BENCH_TMP`` picks where)."""
    where = os.environ.get("VISIONKIT_BENCH_TMP")
    return tempfile.TemporaryDirectory(prefix=f"vk-bench-{prefix}-", dir=where)


def write_config(folder: Path, name: str, tree: dict) -> Path:
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(tree))
    return path


def classification_config(folder: Path, *, backbone: str, image_size: int, batch: int, root: Path,
                          num_images: int, counts: list[int] | None = None, epochs: int = 1,
                          dev: torch.device | None = None, **over) -> Path:
    """A classification config on the built-in shapes scenes (files of ``image_size`` px)."""
    tree = {
        "task": "classification",
        "model": {"backbone": {"name": backbone}},
        "data": {"dataset": "shapes", "root": str(root), "image_size": image_size,
                 "synth": {"num_images": num_images, "size": image_size, "seed": 0},
                 "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "batch_size": batch},
        "train": {"epochs": epochs, "device": str(dev or device()), "progress": False, "vis_images": 0,
                  "log_every": 10, "optimizer": {"name": "sgd", "lr": 0.01}},
    }
    if counts is not None:
        tree["data"]["split"] = {"counts": counts}
    for key, value in over.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return write_config(folder, f"{backbone}_{image_size}.yaml", tree)


class TensorBatches:
    """A stand-in for the trainer's DataLoader that hands out the same in-memory batch ``steps``
    times: what the textbook loop reads too, so both loops see identical data at no input cost."""

    class _Sampler:
        def set_epoch(self, epoch: int, start: int = 0) -> None: ...

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int):
        self.images, self.labels, self.steps = images, labels, steps
        self.batch_size = len(images)
        self.sampler = self._Sampler()

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield {"images": self.images, "labels": self.labels}


def textbook_loop(model: torch.nn.Module, optimizer, images, labels, steps: int, autocast=None) -> None:
    """The loop of every PyTorch tutorial: zero_grad, forward, loss, backward, step."""
    model.train()
    ctx = autocast or contextlib.nullcontext
    for _ in range(steps):
        optimizer.zero_grad()
        with ctx():
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()


