"""Row 10: inference of an exported ResNet-18 classifier in onnxruntime vs PyTorch eager, on the CPU.

The model is our ResNet-18 classification task (random weights; speed does not depend on them),
exported by ``visionkit export``'s own code path (the task's export wrapper, the TorchScript-based
ONNX exporter, opset 17, dynamic batch) and run by onnxruntime's CPU provider with its default
graph optimisations. The baseline is the same wrapper in PyTorch eager under
``torch.inference_mode()``. Both use ``torch.get_num_threads()`` threads (``--threads``), take the
same normalised float batch, and are timed in alternation; each side reports the median images
per second. Batch 1 (the deployment case the target is about) and batch 16, at 224 px.
"""

from __future__ import annotations

from pathlib import Path

import torch

from visionkit.bench import common
from visionkit.registry import BENCHMARKS

TARGET = ">= 1.3"


def _model(folder: Path, size: int):
    from visionkit import load_config
    from visionkit.registry import TASKS

    path = common.classification_config(folder, backbone="resnet18", image_size=size, batch=1,
                                        root=folder / "unused", num_images=10, dev=torch.device("cpu"))
    cfg = load_config(path)
    torch.manual_seed(0)
    task = TASKS.get("classification").from_config(cfg, {"classes": [f"c{i}" for i in range(10)]}).eval()
    return cfg, task, task.export_graph(normalize=False)


def _rate(fn, images: torch.Tensor, runs: int) -> float:
    seconds = common.timed(lambda: [fn(images) for _ in range(runs)], torch.device("cpu"))
    return runs * len(images) / seconds


@BENCHMARKS.register("onnx_runtime")
def onnx_runtime(quick: bool) -> list[dict]:
    try:
        from visionkit.export import formats, graph as graphs

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
        cfg, task, graph = _model(folder, size)
        names = task.export_output_names()
        example = torch.randn(2, 3, size, size)
        out = folder / "resnet18.onnx"
        meta = graphs.metadata(cfg, task, names, example.shape, False, True, 17)
        formats.write_onnx(graph, example, out, names, task.export_dynamic_axes(names, True), meta, 17)
        runner = formats.Runner(out, "onnx", threads=torch.get_num_threads())

        def eager(x):
            with torch.inference_mode():
                return graph(x)

        for batch in batches:
            images = torch.randn(batch, 3, size, size)
            runs = max(1, (16 if not quick else 4) // batch)
            # warm-up both, and check they agree before timing anything
            got, want = runner(images)[0], eager(images)[0]
            err = float((got - want).abs().max())
            ours, base = common.alternate(lambda: _rate(runner, images, runs), lambda: _rate(eager, images, runs),
                                          repeats)
            info = common.details("resnet18 classification", size, batch, repeats, "cpu", runs_per_repeat=runs,
                                  ours_runs=ours, baseline_runs=base, max_abs_logit_difference=err,
                                  onnxruntime=__import__("onnxruntime").__version__)
            figure = ("10 onnxruntime vs PyTorch eager inference, ResNet-18 (`onnx_runtime`)" if batch == 1
                      else "10 same, batch %d" % batch)
            rows.append(common.row(figure, common.median(ours), common.median(base),
                                   TARGET if batch == 1 else "-", "img/s", info))
    return rows
