"""What an exported file says about itself: the metadata written into it and read back.

Each task exports itself (``Task.export_graph``: one float image tensor in, a tuple of plain
tensors with fixed names out, since neither the ONNX exporter nor TorchScript tracing carries the
dicts and lists ``predict`` returns). What each output means, how to prepare an image and what the
task's output methods need is written into the file's metadata (:func:`metadata`), so a program
that only has the file knows how to feed it and read it.

Input: ``images`` float32 ``(B, C, H, W)``. With normalisation in the graph it is the image scaled
to 0..1; without, it is ``(x / 255 - mean) / std`` as the trainer feeds the model. Detection always
takes 0..1 images: torchvision's detector normalises (and resizes) inside its own transform.
"""

from __future__ import annotations

import json

from visionkit.registry import TASKS

METADATA_VERSION = "1"


def in_graph_normalization(task, normalize: bool) -> bool:
    """Whether the graph takes 0..1 images (``--normalize-in-graph``, or a task whose graph always
    normalises itself) rather than ``(x / 255 - mean) / std``."""
    return normalize or task.export_normalizes


def metadata(cfg, task, names: list[str], input_shape, normalize: bool, dynamic: bool,
             opset: int | None) -> dict[str, str]:
    """String key -> string value (JSON for structured values), the form ONNX ``metadata_props``
    takes; the TorchScript file carries the same dict as ``visionkit.json``."""
    in_graph = in_graph_normalization(task, normalize)
    attrs = {k: getattr(task, k) for k in task.export_attrs}
    meta = {
        "visionkit_metadata": METADATA_VERSION,
        "task": cfg.task,
        "backbone": cfg.model.backbone.name,
        "classes": json.dumps(list(getattr(task, "classes", []))),
        "input_name": "images",
        "input_size": json.dumps(list(input_shape[-2:])),
        "channels": str(cfg.data.channels),
        "mean": json.dumps([float(m) for m in cfg.data.mean]),
        "std": json.dumps([float(s) for s in cfg.data.std]),
        "normalize_in_graph": json.dumps(in_graph),
        "input": ("float32 NCHW, RGB scaled to 0..1" if in_graph
                  else "float32 NCHW, (RGB / 255 - mean) / std"),
        "outputs": json.dumps(names),
        "dynamic": json.dumps(dynamic),
        "batch": "1" if task.export_single_image else ("dynamic" if dynamic else str(input_shape[0])),
        "preprocess": json.dumps(type(task).export_preprocess(cfg)),
        "task_attrs": json.dumps(attrs),
    }
    if opset is not None:
        meta["opset"] = str(opset)
    return meta


def read_metadata(meta: dict[str, str], source: str) -> dict:
    """The metadata of an exported file, JSON values decoded; a named error when it has none."""
    from visionkit.errors import CheckpointError

    if meta.get("visionkit_metadata") is None or meta.get("task") not in TASKS:
        raise CheckpointError(f"'{source}' has no visionkit metadata (task, classes, mean/std); export it "
                              "with `visionkit export`")
    out = dict(meta)
    for key in ("classes", "input_size", "mean", "std", "normalize_in_graph", "outputs", "dynamic",
                "preprocess", "task_attrs"):
        out[key] = json.loads(meta[key])
    out["channels"] = int(meta["channels"])
    return out
