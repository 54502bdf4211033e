"""Row 1: the trainer's step against the textbook loop, both on the same in-memory batch.

"Ours" is the real :class:`~visionkit.engine.trainer.Trainer` built from a config -- its
``train_one_epoch`` with the LR schedule, the finite-loss check, the grad scaler and the logging
hook writing ``metrics.jsonl`` and TensorBoard -- with only its DataLoader swapped for
:class:`~benchmarks.common.TensorBatches`, so input cost is zero on both sides and the ratio
is the loop's own overhead. The baseline trains an identical model (built by a second Trainer
from the same config and seed) with the same optimizer in five lines.
"""

from __future__ import annotations

import torch

from benchmarks import BENCHMARKS, common

TARGET = ">= 0.97"
#: (backbone, image size, batch, steps per timed run) of the full run; --quick runs small ones.
#: A timed run is one pass of ``train_one_epoch``, so it holds enough steps that the per-epoch
#: work (the logging flush) weighs on the step time as little as in real training.
CASES = [("resnet18", 64, 32, 5), ("resnet18", 224, 8, 2), ("lenet5", 32, 64, 40)]
QUICK_CASES = [("resnet18", 32, 4, 2), ("lenet5", 32, 16, 10)]


class TrainerSteps:
    """A Trainer built from ``cfg_path`` whose training loader is ``steps`` copies of one batch,
    with one hook: the metrics writer (no checkpoints, no validation: the loop's own cost)."""

    def __init__(self, cfg_path, run_dir, images: torch.Tensor, labels: torch.Tensor, steps: int):
        from visionkit.config import load_config
        from visionkit.engine.hooks import MetricsWriter
        from visionkit.engine.trainer import Trainer

        cfg = load_config(cfg_path)
        batches = common.TensorBatches(images, labels, steps)
        self.trainer = t = Trainer(cfg, run_dir, loaders={"train": batches}, log=lambda *a, **k: None)
        self.images, self.labels = images.to(t.device), labels.to(t.device)
        batches.images, batches.labels = self.images, self.labels
        t.hooks = [h for h in t.hooks if isinstance(h, MetricsWriter)]
        t.call("before_fit")  # opens the writer

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.task

    def run(self) -> None:
        """One pass over the in-memory loader: exactly the loop ``fit`` runs each epoch."""
        self.trainer.train_one_epoch()
        self.trainer.call("after_epoch")  # flushes the logging window like fit does
        self.trainer.epoch += 1

    def close(self) -> None:
        self.trainer.call("after_fit")
        self.trainer.close()


def batch_for(backbone: str, size: int, batch: int, dev, classes: int = 6):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (batch,), generator=g)
    return images.to(dev), labels.to(dev)


def compare(backbone: str, size: int, batch: int, steps: int, repeats: int, folder, dev):
    """(ours images/s, baseline images/s, trainer) for one case, measured in alternation."""
    from visionkit.engine.optim import build_optimizer

    cfg_path = common.classification_config(
        folder, backbone=backbone, image_size=size, batch=batch, root=folder / "shapes",
        num_images=30, epochs=1000, dev=dev, **{"data.synth.size": 32, "data.num_workers": 0})
    images, labels = batch_for(backbone, size, batch, dev)
    ours = TrainerSteps(cfg_path, folder / f"run_{backbone}_{size}", images, labels, steps)
    # The baseline's model is built the way the trainer's was (a second Trainer from the same
    # config and seed: the same weights), not deep-copied from it: a deep copy's freshly packed
    # parameters trained 1-4 % faster than the model as built, in the textbook loop and in ours
    # alike (ResNet-18 @ 64 px, one thread), which is no overhead of the loop.
    twin = TrainerSteps(cfg_path, folder / f"run_{backbone}_{size}_baseline", images, labels, steps)
    model = twin.model
    optimizer = build_optimizer(model, ours.trainer.cfg.train.optimizer)
    # the trainer's batches are float already, so its preprocess leaves them as they are
    base_images = ours.images

    def run_ours() -> float:
        return batch * steps / common.timed(ours.run, dev)

    def run_base() -> float:
        return batch * steps / common.timed(
            lambda: common.textbook_loop(model, optimizer, base_images, ours.labels, steps), dev)

    run_ours(), run_base()  # warm-up: allocator, oneDNN/cuDNN primitives, first-call costs
    a, b = common.alternate(run_ours, run_base, repeats)
    ours.close()
    twin.close()
    # the ratio is the median of each repeat's ours / baseline: the two runs of a repeat are
    # seconds apart, so a shared machine's slow drift (10 % over minutes here) cancels in each
    # pair, where it would not between two medians taken over the whole run
    paired = [x / y for x, y in zip(a, b)]
    return common.median(a), common.median(b), {"ours_runs": a, "baseline_runs": b, "paired_ratios": paired}


@BENCHMARKS.register("trainer_step")
def trainer_step(quick: bool) -> list[dict]:
    dev = common.device()
    cases = QUICK_CASES if quick else CASES
    repeats = 2 if quick else 11
    rows = []
    with common.workdir("step") as tmp:
        from pathlib import Path

        for backbone, size, batch, steps in cases:
            ours, base, runs = compare(backbone, size, batch, steps, repeats, Path(tmp), dev)
            info = common.details(backbone, size, batch, repeats, dev, steps_per_repeat=steps, **runs)
            rows.append(common.row(f"1 trainer step vs textbook loop, {backbone} @ {size}px",
                                   ours, base, TARGET, "images/s", info,
                                   ratio=common.median(runs["paired_ratios"])))
    return rows
