"""``visionkit export``: checkpoint -> ONNX or TorchScript file with metadata, optionally verified."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from visionkit.config import as_config
from visionkit.engine.loading import task_from_checkpoint
from visionkit.errors import ConfigError, DataError
from visionkit.export import formats
from visionkit.export import graph as graphs
from visionkit.export.verify import DEFAULT_ATOL, DEFAULT_RTOL, load_samples, to_input, verify
from visionkit.registry import TASKS


def _example_images(cfg, task_cls, samples: int, run_dir, need_data: bool, log) -> list[torch.Tensor]:
    """The config's own eval images; without readable data (and no --verify) a grey image of the
    task's eval size (``Task.example_image_size``) stands in, since tracing needs one input."""
    try:
        return load_samples(cfg, task_cls, samples, run_dir)
    except (DataError, ConfigError) as e:
        if need_data:
            raise
        size = list(task_cls.example_image_size(cfg))
        log(f"note: {e}; tracing with a grey {size[0]}x{size[1]} image instead")
        return [torch.full((cfg.data.channels, *size), 128, dtype=torch.uint8)]


def export(config, checkpoint, fmt: str, out, *, opset: int | None = None, dynamic: bool = False,
           verify_export: bool = False, normalize_in_graph: bool = False, samples: int = 4,
           atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, overrides: Sequence[str] = (),
           log=print) -> dict:
    """Write ``checkpoint``'s model to ``out`` as ``fmt`` ('onnx' or 'torchscript'); returns a
    summary (file, metadata, and the verification checks when ``verify_export``)."""
    if fmt not in formats.FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; choose one of: {', '.join(formats.FORMATS)}")
    if fmt == "onnx":
        formats.require_onnx()
    if opset is not None and fmt != "onnx":
        raise ConfigError("--opset applies to --format onnx only")
    if opset is not None and opset < formats.MIN_OPSET:
        raise ConfigError(f"--opset {opset} is too old: the exported graphs need opset {formats.MIN_OPSET} or "
                          f"newer (default {formats.DEFAULT_OPSET})")
    if opset is not None and opset > formats.MAX_OPSET:
        raise ConfigError(f"--opset {opset} is newer than torch's exporter writes ({formats.MAX_OPSET}); "
                          f"use {formats.MIN_OPSET}..{formats.MAX_OPSET}")
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    cfg = as_config(config, overrides)
    if not TASKS.get(cfg.task).export_outputs:
        exportable = [name for name in TASKS if TASKS.get(name).export_outputs]
        raise ConfigError(f"task '{cfg.task}' cannot be exported; exportable: {', '.join(exportable)}")
    task, _ = task_from_checkpoint(cfg, checkpoint)
    task = task.float().cpu().eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(checkpoint).parent.parent
    run_dir = run_dir if (run_dir / "split.json").exists() else None
    images = _example_images(cfg, type(task), samples, run_dir, verify_export, log)

    graph = task.export_graph(normalize_in_graph)
    names = task.export_output_names()
    in_graph = graphs.in_graph_normalization(task, normalize_in_graph)
    first = images[0]
    export_size = tuple(first.shape[-2:])
    same = [im for im in images if tuple(im.shape[-2:]) == export_size]
    # a dynamic batch is traced with two images, so no size-1 batch axis is folded into constants
    batch = same[:2] if dynamic and not task.export_single_image else same[:1]
    example = to_input(batch, task_mean(task, cfg), task_std(task, cfg), in_graph)
    opset_used = (opset or formats.DEFAULT_OPSET) if fmt == "onnx" else None
    meta = graphs.metadata(cfg, task, names, example.shape, normalize_in_graph, dynamic, opset_used)
    if fmt == "onnx":
        formats.write_onnx(graph, example, out, names, task.export_dynamic_axes(names, dynamic), meta, opset_used)
    else:
        formats.write_torchscript(graph, example, out, meta)
    log(f"wrote {out} ({fmt}{f', opset {opset_used}' if opset_used else ''}, {cfg.task}, input "
        f"{list(example.shape[1:])}{', dynamic' if dynamic else ''}, {out.stat().st_size / 1e6:.2f} MB)")
    summary = {"file": str(out), "format": fmt, "metadata": meta}
    if verify_export:
        runner = formats.Runner(out, fmt)
        log(f"verifying against PyTorch eager on {len(images)} {cfg.task} images "
            f"(atol {atol:g}, rtol {rtol:g}):")
        checks = verify(runner, graph, task, names, images, task_mean(task, cfg), task_std(task, cfg),
                        in_graph, dynamic, export_size, atol, rtol, log=log)
        log(f"verified: {len(checks)} outputs within tolerance")
        summary["checks"] = checks
    return summary


def task_mean(task, cfg):
    return list(getattr(task, "mean", cfg.data.mean))


def task_std(task, cfg):
    return list(getattr(task, "std", cfg.data.std))
