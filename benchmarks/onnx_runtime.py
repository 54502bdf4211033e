"""Row 10: inference of an exported ResNet-18 classifier in onnxruntime vs PyTorch eager, on the CPU.

The model is our ResNet-18 classification task, trained one short epoch on a few shapes scenes
(speed does not depend on the weights) and exported by ``visionkit export``'s own function
(:func:`visionkit.api.export`: the task's export wrapper, the TorchScript-based ONNX exporter,
opset 17, dynamic batch), then run by onnxruntime's CPU provider with its default graph
optimisations. The baseline is the trained task in PyTorch eager under ``torch.inference_mode()``,
returning what the exported graph returns (logits and their softmax). Both use
``torch.get_num_threads()`` threads (``--threads``), take the same normalised float batch, and are
timed in alternation; each side reports the median images per second. Batch 1 (the deployment
case the target is about) and batch 16, at 224 px.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from benchmarks import BENCHMARKS, common

TARGET = ">= 1.3"


def _exported(folder: Path, size: int):
    """(the trained task, its ONNX file), both through the public API: train, then export."""
    from visionkit import api

    def quiet(*args, **kwargs):
        pass

    cfg = common.classification_config(
        folder, backbone="resnet18", image_size=size, batch=4, root=folder / "shapes", num_images=12,
        counts=[8, 4, 0], dev=torch.device("cpu"),
        **{"data.synth.size": 32, "data.num_workers": 0, "train.vis_images": 0})
    trainer = api.train(cfg, run_dir=folder / "run", log=quiet)
    out = folder / "resnet18.onnx"
    api.export(cfg, trainer.run_dir / "checkpoints" / "last.pt", "onnx", out, opset=17, dynamic=True, log=quiet)
    return trainer.task.float().cpu().eval(), out


def _rate(fn, images: torch.Tensor, runs: int) -> float:
    seconds = common.timed(lambda: [fn(images) for _ in range(runs)], torch.device("cpu"))
    return runs * len(images) / seconds


@BENCHMARKS.register("onnx_runtime")
def onnx_runtime(quick: bool) -> list[dict]:
    try:
        from visionkit.export import formats

        formats.require_onnx()
    except Exception as e:  # noqa: BLE001  (onnx/onnxruntime are the optional [export] extra)
        return [common.unavailable("10 onnxruntime vs PyTorch eager, ResNet-18", TARGET, "img/s",
                                   f"skipped: {e}")]
    size = 96 if quick else 224
    batches = (1, 4) if quick else (1, 16)
    repeats = 3 if quick else 5
    rows = []
    with common.workdir("onnx") as tmp:
        folder = Path(tmp)
        task, out = _exported(folder, size)
        runner = formats.Runner(out, "onnx", threads=torch.get_num_threads())

        def eager(x):
            with torch.inference_mode():
                logits = task(x).float()
                return logits, logits.softmax(1)

        for batch in batches:
            images = torch.randn(batch, 3, size, size)
            runs = max(1, (16 if not quick else 4) // batch)
            # warm-up both, and check they agree before timing anything
            got, want = runner(images)[0], eager(images)[0]
            err = float((got - want).abs().max())
            ours, base = common.alternate(partial(_rate, runner, images, runs), partial(_rate, eager, images, runs),
                                          repeats)
            info = common.details("resnet18 classification", size, batch, repeats, "cpu", runs_per_repeat=runs,
                                  ours_runs=ours, baseline_runs=base, max_abs_logit_difference=err,
                                  onnxruntime=__import__("onnxruntime").__version__)
            figure = ("10 onnxruntime vs PyTorch eager inference, ResNet-18 (`onnx_runtime`)" if batch == 1
                      else f"10 same, batch {batch}")
            rows.append(common.row(figure, common.median(ours), common.median(base),
                                   TARGET if batch == 1 else "-", "img/s", info))
    return rows
