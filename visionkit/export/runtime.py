"""``visionkit predict MODEL.onnx INPUT...``: run an exported model with onnxruntime, no config needed.

Everything comes from the file's metadata: the eval preprocessing (``preprocess``: resize and
centre crop for classification, resize for depth), the channels, mean/std (applied here unless the
graph does it), the class names, and the task attributes its outputs need. The raw outputs are
turned into the task's own prediction format and written by the task's own ``describe``,
``record``, ``write_outputs`` and ``visualize``, so the lines, ``predictions.json`` and files match
``visionkit predict CONFIG --checkpoint`` on the same images.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.io import ImageReadMode
from torchvision.transforms import v2

from visionkit.errors import ConfigError, DataError
from visionkit.export.formats import Runner
from visionkit.export.graph import read_metadata
from visionkit.registry import TASKS


def output_task(meta: dict):
    """The exported task's class with only the attributes its output methods read: its
    ``describe``/``record``/``write_outputs``/``visualize`` run unchanged, without any weights."""
    import visionkit.schema  # noqa: F401  (registers the tasks)

    visionkit.schema.register_builtins()
    cls = TASKS.get(meta["task"])
    view = cls.__new__(cls)
    nn.Module.__init__(view)
    for key, value in meta["task_attrs"].items():
        setattr(view, key, value)
    if meta["task"] == "segmentation":
        view.palette = [tuple(c) for c in view.palette]
    return view


def transform(meta: dict):
    """The eval transform the metadata describes (the same torchvision ops as training's)."""
    spec = meta["preprocess"]
    steps: list = []
    if meta["task"] == "classification":
        steps = [v2.Resize(spec["resize_short_side"], antialias=True), v2.CenterCrop(spec["center_crop"])]
    elif meta["task"] == "depth":
        from visionkit.data.transforms.depth import BottomCenterCrop

        steps = ([BottomCenterCrop()] if spec.get("kb_crop") else []) + \
                ([v2.Resize(tuple(spec["resize"]), antialias=True)] if spec.get("resize") else [])
    return v2.Compose(steps) if steps else (lambda image: image)


def predictions(meta: dict, view, outputs: list[torch.Tensor]):
    """Raw graph outputs -> the task's ``predict`` format."""
    named = dict(zip(meta["outputs"], outputs))
    task = meta["task"]
    if task == "classification":
        scores = named["scores"].float()
        labels = scores >= 0.5 if view.multi_label else scores.argmax(1)
        return {"logits": named["logits"].float(), "scores": scores, "labels": labels}
    if task == "segmentation":
        best = named["logits"].float().softmax(1).max(1)
        return {"labels": best.indices, "confidence": best.values}
    if task == "depth":
        return {"depth": named["depth"].float()}
    p = {"boxes": named["boxes"].float(), "labels": named["labels"].long(), "scores": named["scores"].float()}
    if "masks" in named:
        p["masks"] = named["masks"] >= view.mask_threshold
    return [p]


def predict_onnx(model, inputs, out_dir=None, checkpoint=None, log=print) -> list[dict]:
    """Predict every input image with an exported ONNX model; the same lines, drawings and
    ``predictions.json`` as :func:`visionkit.api.predict`."""
    from visionkit.api import predict_images

    if checkpoint:
        raise ConfigError(f"'{model}' is an exported model; predict with it takes no --checkpoint")
    runner = Runner(model, "onnx")
    meta = read_metadata(runner.raw_meta, str(model))
    view = output_task(meta)
    prep = transform(meta)
    mode = ImageReadMode.GRAY if meta["channels"] == 1 else ImageReadMode.RGB
    c = meta["channels"]
    mean = torch.tensor(meta["mean"]).view(1, c, 1, 1)
    std = torch.tensor(meta["std"]).view(1, c, 1, 1)
    fixed = None if meta["dynamic"] or meta["task"] == "classification" else tuple(meta["input_size"])

    def infer(image, path):
        image = prep(image)
        if fixed is not None and tuple(image.shape[-2:]) != fixed:
            raise DataError(f"'{model}' was exported for {fixed[0]}x{fixed[1]} images but '{path}' is "
                            f"{image.shape[-2]}x{image.shape[-1]}; export with --dynamic to take any size")
        x01 = image[None].float() / 255
        normed = (x01 - mean) / std
        preds = predictions(meta, view, runner(x01 if meta["normalize_in_graph"] else normed))
        return {"images": [x01[0]] if meta["task"] == "detection" else normed}, preds

    return predict_images(view, inputs, mode, infer, out_dir, log)
