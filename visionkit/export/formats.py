"""Writing and running the two export formats.

ONNX goes through torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``):
on torch 2.14 it exports all four tasks, Mask R-CNN included (torchvision's detection models are
written for it, see torchvision's ``test_onnx.py``), in about a second. The newer
``torch.export``-based exporter (``dynamo=True``) stops on torchvision's ``batched_nms`` with
``GuardOnDataDependentSymNode`` (the number of boxes is data-dependent), so it is not used.

TorchScript is made by tracing (``torch.jit.trace``): ``torch.jit.script`` refuses our detector's
FPN wrapper (its string return annotation ``"OrderedDict[str, torch.Tensor]"``), and tracing
records the same operators the ONNX export records. Both files carry the metadata of
:func:`visionkit.export.graph.metadata`: ONNX as ``metadata_props``, TorchScript as the extra
file ``visionkit.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from visionkit.errors import CheckpointError, ConfigError

FORMATS = ("onnx", "torchscript")
EXTRA_FILE = "visionkit.json"
DEFAULT_OPSET = 17
# opset 9/10: detection stops on Pad with non-constant sizes, and segmentation exports but its
# bilinear resize computes other values (max abs error ~2 in the logits, caught by --verify)
MIN_OPSET = 11
MAX_OPSET = 23  # the newest opset torch 2.14's exporter writes (torch.onnx._constants.ONNX_MAX_OPSET)


def require_onnx():
    """onnx and onnxruntime, or a named error saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ConfigError(f"ONNX export needs the onnx and onnxruntime packages ({e}); install them with "
                          "`pip install \"visionkit[export]\"`") from None
    return onnx, onnxruntime


def write_onnx(graph, example: torch.Tensor, path: Path, names: list[str], axes: dict, meta: dict,
               opset: int) -> None:
    onnx, _ = require_onnx()
    with warnings.catch_warnings():  # tracer warnings about Python ints in torchvision's code
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=names, dynamic_axes=axes or None,
                          do_constant_folding=True)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def write_torchscript(graph, example: torch.Tensor, path: Path, meta: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, (example,), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={EXTRA_FILE: json.dumps(meta)})


class Runner:
    """An exported file, run on float32 NCHW arrays; returns the outputs as CPU tensors."""

    def __init__(self, path: str | Path, fmt: str | None = None, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"exported model '{self.path}' does not exist")
        self.format = fmt or ("onnx" if self.path.suffix.lower() == ".onnx" else "torchscript")
        if self.format == "onnx":
            _, ort = require_onnx()
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
            try:
                self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 (onnxruntime raises its own Fail/InvalidGraph types)
                raise CheckpointError(f"'{self.path}' is not a loadable ONNX model: "
                                      f"{str(e).splitlines()[0][:200]}") from None
            self.raw_meta = dict(self.session.get_modelmeta().custom_metadata_map)
            self.output_names = [o.name for o in self.session.get_outputs()]
        else:
            extra = {EXTRA_FILE: ""}
            try:
                self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
            except RuntimeError as e:
                raise CheckpointError(f"'{self.path}' is not a loadable TorchScript model: "
                                      f"{str(e).splitlines()[0][:200]}") from None
            self.raw_meta = json.loads(extra[EXTRA_FILE]) if extra[EXTRA_FILE] else {}
            self.output_names = json.loads(self.raw_meta.get("outputs", "[]"))

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        images = images.detach().float().cpu().contiguous()
        if self.format == "onnx":
            outs = self.session.run(None, {"images": images.numpy()})
            return [torch.from_numpy(np.asarray(o)) for o in outs]
        with torch.no_grad():
            return [o.detach() for o in self.module(images)]
