"""Row 2: ``visionkit train`` from image files against the same model on in-memory tensors.

"Ours" is the whole training command -- the trainer built from a config on the built-in shapes
scenes (PNG files), with the default loader (workers, decoded-image cache), augmentation,
collation, device normalisation, logging, validation and checkpoints. Its throughput is timed per
epoch from the first batch request to the last step (validation and checkpointing are outside
that window). The baseline is the textbook loop on one in-memory batch of the same model, size
and batch, run for as many steps next to each epoch -- right after it in even epochs, right
before it in odd ones (ABBA), so neither side always runs first. Each steady epoch and its
baseline pass, seconds apart, give one ratio; the row's ratio is the median of those pairs (a
shared machine's speed drifts over minutes, which cancels within a pair). The ratio is what
the input side costs on top of the model's own compute.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks import BENCHMARKS, common
from visionkit.engine.hooks import Hook

#: (backbone, image size, batch, train images, target)
CASES = [("resnet18", 64, 32, 512, ">= 0.90"), ("resnet18", 224, 8, 32, ">= 0.90"),
         ("lenet5", 32, 64, 4096, ">= 0.50")]
QUICK_CASES = [("resnet18", 32, 8, 16, ">= 0.90"), ("lenet5", 32, 32, 128, ">= 0.50")]


class EpochTimer(Hook):
    """Times each training epoch from its start to its last step and, next to it, one pass of the
    in-memory baseline over as many batches: after even epochs, before odd ones (ABBA)."""

    def __init__(self, baseline):
        self.baseline = baseline
        self.epochs: list[tuple[float, int]] = []
        self.base: list[float] = []
        self.epoch_start = self.last_step = 0.0
        self.epoch_images = 0

    def before_epoch(self, trainer) -> None:
        if trainer.epoch % 2:
            self.base.append(self.baseline(trainer))
        self.epoch_start, self.epoch_images = time.perf_counter(), 0

    def after_step(self, trainer, logs: dict) -> None:
        common.sync(trainer.device)
        self.epoch_images += logs["batch_size"]
        self.last_step = time.perf_counter()

    def after_epoch(self, trainer) -> None:
        self.epochs.append((self.last_step - self.epoch_start, self.epoch_images))
        if (trainer.epoch - 1) % 2 == 0:  # the trainer has counted the epoch already
            self.base.append(self.baseline(trainer))


def measure(backbone: str, size: int, batch: int, train: int, epochs: int, folder: Path, dev):
    from benchmarks.trainer_step import batch_for
    from visionkit.config import load_config
    from visionkit.engine.optim import build_optimizer
    from visionkit.engine.trainer import Trainer

    val = batch
    cfg_path = common.classification_config(
        folder, backbone=backbone, image_size=size, batch=batch, root=folder / f"shapes_{backbone}_{size}",
        num_images=train + val, counts=[train, val, 0], epochs=epochs, dev=dev)
    cfg = load_config(cfg_path)
    from visionkit.data.build import build_source

    build_source(cfg)  # generate the files first: making the data set is not part of training
    steps = train // batch
    state = {}

    def baseline(trainer) -> float:
        """Images/s of the textbook loop on one in-memory batch, for ``steps`` steps."""
        if not state:  # an identical model (same config and seed), with its own optimizer
            state["model"] = twin.task
            state["opt"] = build_optimizer(state["model"], cfg.train.optimizer)
            state["batch"] = batch_for(backbone, size, batch, trainer.device)
            common.textbook_loop(state["model"], state["opt"], *state["batch"], 1)  # warm-up
        def run():
            common.textbook_loop(state["model"], state["opt"], *state["batch"], steps)

        return batch * steps / common.timed(run, trainer.device)

    timer = EpochTimer(baseline)
    start = time.perf_counter()
    trainer = Trainer(cfg, folder / f"run_{backbone}_{size}", hooks=[timer], log=lambda *a, **k: None)
    # built the way the trainer's model is, not deep-copied (see trainer_step.compare)
    twin = Trainer(cfg, folder / f"run_{backbone}_{size}_baseline", log=lambda *a, **k: None)
    trainer.fit()
    wall = time.perf_counter() - start  # includes the baseline passes; reported for orientation
    # the first epoch pays for starting the workers once (they persist); steady epochs are the rest
    steady = timer.epochs[1:] or timer.epochs
    ours_runs = [n / s for s, n in steady]
    base_runs = timer.base[1:] or timer.base
    paired = [x / y for x, y in zip(ours_runs, base_runs)]
    data_share = _data_share(trainer.run_dir)
    info = {"epochs": epochs, "train_images": train, "ours_runs": ours_runs, "baseline_runs": base_runs,
            "paired_ratios": paired,
            "first_epoch_images_per_s": timer.epochs[0][1] / timer.epochs[0][0],
            "total_wall_s_with_baseline": round(wall, 2), "num_workers": cfg.data.num_workers,
            "cache": cfg.data.cache, "mean_data_share": data_share}
    return common.median(ours_runs), common.median(base_runs), len(steady), info


def _data_share(run_dir: Path) -> float | None:
    """The mean ``data_share`` the trainer logged: how much of each step waited for input."""
    import json

    shares = [json.loads(line).get("data_share") for line in (Path(run_dir) / "metrics.jsonl").open()]
    shares = [s for s in shares if s is not None]
    return sum(shares) / len(shares) if shares else None


@BENCHMARKS.register("end_to_end")
def end_to_end(quick: bool) -> list[dict]:
    dev = common.device()
    rows = []
    epochs = 2 if quick else 6
    with common.workdir("e2e") as tmp:
        for backbone, size, batch, train, target in (QUICK_CASES if quick else CASES):
            ours, base, repeats, extra = measure(backbone, size, batch, train, epochs, Path(tmp), dev)
            info = common.details(backbone, size, batch, repeats, dev, **extra)
            rows.append(common.row(f"2 visionkit train from files vs in-memory, {backbone} @ {size}px",
                                   ours, base, target, "images/s", info, ratio=common.median(extra["paired_ratios"])))
    return rows
