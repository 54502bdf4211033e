"""Row 8 (GPU only): ResNet-50 training with bf16 autocast + channels_last against fp32.

Both sides train torchvision's ``resnet50`` with SGD on one in-memory batch on the same card.
The reference uses torchvision's reference-script settings (fp32, contiguous NCHW); ours runs
the step through our trainer with ``train.amp: bf16`` and its default ``train.channels_last:
auto``, which on CUDA puts the model and every batch in channels_last. The full run adds a second
row with ``torch.compile`` on top (compiling takes a minute, so ``--quick`` leaves it out). On a
machine without CUDA it reports a row saying so.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks import BENCHMARKS, common

TARGET = ">= 2"
FIGURE = "8 GPU ResNet-50 training, bf16 + channels_last vs fp32 reference"


@BENCHMARKS.register("gpu")
def gpu(quick: bool) -> list[dict]:
    dev = common.device()
    if dev.type != "cuda":
        return [common.unavailable(FIGURE, TARGET, "images/s",
                                   "skipped: no CUDA device (run with --device cuda on a GPU machine)",
                                   {"device": str(dev)})]
    if quick:
        return compare(dev, size=128, batch=32, steps=3, repeats=2, with_compile=False)
    return compare(dev, size=224, batch=128, steps=10, repeats=5, with_compile=True)


def compare(dev, *, size: int, batch: int, steps: int, repeats: int, with_compile: bool) -> list[dict]:
    import torchvision

    from benchmarks.trainer_step import TrainerSteps, batch_for

    rows = []
    with common.workdir("gpu") as tmp:
        folder = Path(tmp)
        # channels_last spelled out, though auto means the same on CUDA, so the row never loses it
        cfg_path = common.classification_config(
            folder, backbone="resnet50", image_size=size, batch=batch, root=folder / "shapes",
            num_images=30, epochs=1000, dev=dev, **{"data.synth.size": 32, "data.num_workers": 0,
                                                   "train.amp": "bf16", "train.channels_last": True})
        images, labels = batch_for("resnet50", size, batch, dev)
        ours = TrainerSteps(cfg_path, folder / "run", images, labels, steps)

        ref = torchvision.models.resnet50(num_classes=6).to(dev)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

        def run_ours() -> float:
            return batch * steps / common.timed(ours.run, dev)

        def run_ref() -> float:
            return batch * steps / common.timed(
                lambda: common.textbook_loop(ref, ref_opt, images, labels, steps), dev)

        run_ours(), run_ref()
        a, b = common.alternate(run_ours, run_ref, repeats)
        info = common.details("resnet50", size, batch, repeats, dev, steps_per_repeat=steps,
                              ours_runs=a, baseline_runs=b, amp="bf16", channels_last=True)
        rows.append(common.row(FIGURE, common.median(a), common.median(b), TARGET, "images/s", info))
        if with_compile:
            ours.trainer.task.compile()
            run_ours()  # compiles
            c, b2 = common.alternate(run_ours, run_ref, repeats)
            info = dict(info, ours_runs=c, baseline_runs=b2, compile=True)
            rows.append(common.row(FIGURE + " + torch.compile", common.median(c), common.median(b2),
                                   TARGET, "images/s", info))
        ours.close()
    return rows
