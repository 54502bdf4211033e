"""Each task as an exportable module: one float image tensor in, a tuple of plain tensors out.

The tasks' own ``predict`` methods return dicts and lists, which neither the ONNX exporter nor
TorchScript tracing can carry; the wrappers here call the same layers and return tensors with
fixed names. What each output means is written into the file's metadata (:func:`metadata`), so a
program that only has the file knows how to feed it and read it.

Input: ``images`` float32 ``(B, C, H, W)``. With normalisation in the graph it is the image scaled
to 0..1; without, it is ``(x / 255 - mean) / std`` as the trainer feeds the model. Detection always
takes 0..1 images: torchvision's detector normalises (and resizes) inside its own transform.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from visionkit.errors import ConfigError

METADATA_VERSION = "1"

# output names, in the order the graph returns them
OUTPUTS = {
    "classification": ("logits", "scores"),
    "segmentation": ("logits",),
    "depth": ("depth",),
    "detection": ("boxes", "labels", "scores", "masks"),
}

# the task attributes its describe/record/write_outputs/visualize read (kept in the metadata so
# ``visionkit predict MODEL.onnx`` writes the same files as predict with the checkpoint)
OUTPUT_ATTRS = {
    "classification": ("classes", "multi_label", "mean", "std"),
    "segmentation": ("classes", "palette", "mean", "std", "ignore_index"),
    "depth": ("min_depth", "max_depth", "depth_scale", "mean", "std"),
    "detection": ("classes", "category_ids", "variant", "mask_threshold", "vis_score"),
}


class _Normalize(nn.Module):
    """``(x - mean) / std`` on 0..1 images, or nothing."""

    def __init__(self, mean, std, active: bool):
        super().__init__()
        c = len(mean)
        self.active = active
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.active else x


class ClassificationGraph(nn.Module):
    """``logits`` (B, C) and ``scores`` (B, C): softmax, or sigmoid for multi-label models."""

    def __init__(self, task, normalize: bool):
        super().__init__()
        self.task, self.norm = task, _Normalize(task.mean, task.std, normalize)

    def forward(self, images: torch.Tensor):
        logits = self.task(self.norm(images)).float()
        return logits, (logits.sigmoid() if self.task.multi_label else logits.softmax(1))


class SegmentationGraph(nn.Module):
    """``logits`` (B, C, H, W) at the input size (whole-image inference; the task's sliding
    window is a loop over crops and is not part of the graph)."""

    def __init__(self, task, normalize: bool):
        super().__init__()
        self.task, self.norm = task, _Normalize(task.mean, task.std, normalize)

    def forward(self, images: torch.Tensor):
        return (self.task._logits(self.norm(images)).float(),)


class DepthGraph(nn.Module):
    """``depth`` (B, H, W) in metres at the input size."""

    def __init__(self, task, normalize: bool):
        super().__init__()
        self.task, self.norm = task, _Normalize(task.mean, task.std, normalize)

    def forward(self, images: torch.Tensor):
        return (self.task(self.norm(images)).float(),)


class DetectionGraph(nn.Module):
    """One image ``(1, 3, H, W)`` in 0..1 -> ``boxes`` (N, 4) XYXY input pixels, ``labels`` (N,)
    0-based class ids, ``scores`` (N,) and ``masks`` (N, H, W) mask probabilities (Mask R-CNN; a
    Faster R-CNN graph has no masks output). torchvision's detector takes a list of images and
    loops over it in Python, so an export holds exactly one image per run (batch 1)."""

    def __init__(self, task):
        super().__init__()
        self.task = task

    def forward(self, images: torch.Tensor):
        det = self.task.model([images[0]])[0]
        out = (det["boxes"].float(), det["labels"] - 1, det["scores"].float())
        if "masks" in det:
            out = out + (det["masks"][:, 0].float(),)
        return out


def build_graph(task, task_name: str, normalize: bool) -> nn.Module:
    if task_name == "classification":
        return ClassificationGraph(task, normalize).eval()
    if task_name == "segmentation":
        return SegmentationGraph(task, normalize).eval()
    if task_name == "depth":
        return DepthGraph(task, normalize).eval()
    if task_name == "detection":
        return DetectionGraph(task).eval()
    raise ConfigError(f"task '{task_name}' cannot be exported; exportable tasks: {', '.join(OUTPUTS)}")


def output_names(task_name: str, task) -> list[str]:
    names = list(OUTPUTS[task_name])
    if task_name == "detection" and not task.model.has_masks:
        names.remove("masks")
    return names


def dynamic_axes(task_name: str, names: list[str], dynamic: bool) -> dict[str, dict[int, str]]:
    """Which axes vary between runs. Detection outputs always have a data-dependent count.

    Classification: the batch (the input size is the eval transform's crop, fixed by the classifier's
    input). Segmentation and depth: batch, height and width. Detection: height and width (batch 1).
    """
    axes: dict[str, dict[int, str]] = {}
    if task_name == "detection":
        axes = {n: {0: "detections"} for n in names}
        if "masks" in axes:
            axes["masks"] = {0: "detections"}
        if dynamic:
            axes["images"] = {2: "height", 3: "width"}
            if "masks" in axes:
                axes["masks"] = {0: "detections", 1: "height", 2: "width"}
        return axes
    if not dynamic:
        return {}
    if task_name == "classification":
        return {"images": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    spatial = {0: "batch", 2: "height", 3: "width"}
    axes = {"images": spatial}
    for n in names:
        axes[n] = spatial if n == "logits" else {0: "batch", 1: "height", 2: "width"}
    return axes


def preprocess_spec(cfg) -> dict:
    """The eval transform as data: what a program must do to an image before the graph."""
    task = cfg.task
    if task == "classification":
        size = cfg.data.image_size
        return {"resize_short_side": round(size * cfg.data.augment.resize_ratio), "center_crop": size}
    if task == "depth":
        d = cfg.data.depth
        return {"kb_crop": bool(d.kb_crop), "resize": list(d.resize) if d.resize else None}
    return {}  # segmentation: the image's own size; detection: the model resizes inside


def metadata(cfg, task, task_name: str, names: list[str], input_shape, normalize: bool, dynamic: bool,
             opset: int | None) -> dict[str, str]:
    """String key -> string value (JSON for structured values), the form ONNX ``metadata_props``
    takes; the TorchScript file carries the same dict as ``visionkit.json``."""
    in_graph = normalize or task_name == "detection"
    attrs = {k: getattr(task, k) for k in OUTPUT_ATTRS[task_name]}
    if "palette" in attrs:
        attrs["palette"] = [list(c) for c in attrs["palette"]]
    meta = {
        "visionkit_metadata": METADATA_VERSION,
        "task": task_name,
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
        "batch": "1" if task_name == "detection" else ("dynamic" if dynamic else str(input_shape[0])),
        "preprocess": json.dumps(preprocess_spec(cfg)),
        "task_attrs": json.dumps(attrs),
    }
    if opset is not None:
        meta["opset"] = str(opset)
    return meta


def read_metadata(meta: dict[str, str], source: str) -> dict:
    """The metadata of an exported file, JSON values decoded; a named error when it has none."""
    from visionkit.errors import CheckpointError

    if meta.get("visionkit_metadata") is None or meta.get("task") not in OUTPUTS:
        raise CheckpointError(f"'{source}' has no visionkit metadata (task, classes, mean/std); export it "
                              "with `visionkit export`")
    out = dict(meta)
    for key in ("classes", "input_size", "mean", "std", "normalize_in_graph", "outputs", "dynamic",
                "preprocess", "task_attrs"):
        out[key] = json.loads(meta[key])
    out["channels"] = int(meta["channels"])
    return out
