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
from torchvision.io import ImageReadMode

from visionkit.errors import ConfigError, DataError
from visionkit.export.formats import Runner
from visionkit.export.graph import read_metadata
from visionkit.registry import TASKS


def output_task(meta: dict):
    """The exported task without weights, holding the attributes its output methods read
    (``Task.from_export_attrs``): its ``describe``/``record``/``write_outputs``/``visualize`` run
    unchanged."""
    return TASKS.get(meta["task"]).from_export_attrs(meta["task_attrs"])


def predictions(meta: dict, view, outputs: list[torch.Tensor]):
    """Raw graph outputs -> the task's ``predict`` format."""
    return view.from_export_outputs(dict(zip(meta["outputs"], outputs)))


def predict_onnx(model, inputs, out_dir=None, checkpoint=None, log=print, on_error: str = "skip"):
    """Predict every input image with an exported ONNX model; the same lines, drawings,
    ``predictions.json`` and skipped inputs as :func:`visionkit.api.predict`."""
    from visionkit.api import predict_images

    if checkpoint:
        raise ConfigError(f"'{model}' is an exported model; predict with it takes no --checkpoint")
    runner = Runner(model, "onnx")
    meta = read_metadata(runner.raw_meta, str(model))
    view = output_task(meta)
    prep = type(view).export_transform(meta["preprocess"])
    mode = ImageReadMode.GRAY if meta["channels"] == 1 else ImageReadMode.RGB
    c = meta["channels"]
    mean = torch.tensor(meta["mean"]).view(1, c, 1, 1)
    std = torch.tensor(meta["std"]).view(1, c, 1, 1)
    # a graph of one size takes what the transform makes, or (any_size tasks) the image as it is
    fixed = None if meta["dynamic"] or not view.export_any_size else tuple(meta["input_size"])

    def infer(image, path):
        image = prep(image)
        if fixed is not None and tuple(image.shape[-2:]) != fixed:
            raise DataError(f"'{model}' was exported for {fixed[0]}x{fixed[1]} images but '{path}' is "
                            f"{image.shape[-2]}x{image.shape[-1]}; export with --dynamic to take any size")
        x01 = image[None].float() / 255
        normed = (x01 - mean) / std
        preds = predictions(meta, view, runner(x01 if meta["normalize_in_graph"] else normed))
        images = x01 if view.export_normalizes else normed  # what the task's own preprocess gives
        return {"images": list(images) if view.export_single_image else images}, preds

    return predict_images(view, inputs, mode, infer, out_dir, log, on_error)
