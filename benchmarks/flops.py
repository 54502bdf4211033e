"""Row 4: achieved FLOP/s of ResNet-50 training over the machine's measured fp32 matmul peak.

The FLOPs of one training step (forward and backward) are counted by
``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls and convolutions, the work a
peak figure is about; the step time is our trainer's (see :mod:`benchmarks.trainer_step`).
The peak is the best of several large fp32 matrix products on the same device, so the ratio says
how much of what this device can do our training step uses.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import BENCHMARKS, common

TARGET = ">= 0.85"


def matmul_peak(dev, n: int, repeats: int) -> tuple[float, list[float]]:
    """fp32 FLOP/s of an ``n x n`` matrix product: the best of ``repeats`` (each a few products)."""
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    a @ b  # warm-up
    runs = []
    for _ in range(repeats):
        seconds = common.timed(lambda: [a @ b for _ in range(3)], dev)
        runs.append(3 * 2 * n**3 / seconds)
    return max(runs), runs


def step_flops(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of one forward + backward of ``model`` on this batch."""
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


@BENCHMARKS.register("flops")
def flops(quick: bool) -> list[dict]:
    from benchmarks.trainer_step import TrainerSteps, batch_for

    dev = common.device()
    size, batch, steps, repeats = (96, 2, 1, 2) if quick else (224, 4 if dev.type == "cpu" else 64, 3, 3)
    n = 1024 if quick else (2048 if dev.type == "cpu" else 8192)
    with common.workdir("flops") as tmp:
        folder = Path(tmp)
        cfg_path = common.classification_config(
            folder, backbone="resnet50", image_size=size, batch=batch, root=folder / "shapes",
            num_images=30, epochs=1000, dev=dev, **{"data.synth.size": 32, "data.num_workers": 0})
        images, labels = batch_for("resnet50", size, batch, dev)
        ours = TrainerSteps(cfg_path, folder / "run", images, labels, steps)
        per_step = step_flops(ours.model, ours.images, ours.labels)
        ours.run()  # warm-up
        achieved, peaks = [], []
        for _ in range(repeats):  # alternate so both see the same load
            achieved.append(per_step * steps / common.timed(ours.run, dev))
            peak, _ = matmul_peak(dev, n, 2)
            peaks.append(peak)
        ours.close()
    peak = max(peaks)
    info = common.details("resnet50", size, batch, repeats, dev, steps_per_repeat=steps,
                          gflop_per_step=round(per_step / 1e9, 2), matmul_n=n,
                          achieved_runs=achieved, peak_runs=peaks)
    return [common.row("4 ResNet-50 training FLOP/s / fp32 matmul peak", common.median(achieved), peak,
                       TARGET, "FLOP/s", info)]
