"""Monocular depth estimation: metric depth for every pixel of one image.

The backbone's stages feed a decoder (:class:`~visionkit.models.heads.depth.DepthHead`) that
predicts depth at input resolution inside ``[data.depth.min_depth, max_depth]``. Training and
scoring use only the valid pixels of the ground truth (a measurement, inside the range); the
metrics are those of :mod:`visionkit.evaluation.depth`.

Image and depth map move together through the joint transforms of
:mod:`visionkit.data.transforms.depth`, which never invent a depth value by interpolation.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.utils import make_grid

from visionkit.data.datasets.depth import depth_scale, write_depth_png
from visionkit.data.transforms import depth_transforms
from visionkit.data.transforms.depth import BottomCenterCrop
from visionkit.errors import ConfigError, DataError
from visionkit.evaluation.depth import CROPS, DepthEvaluator, valid_mask
from visionkit.models.build import build_backbone
from visionkit.models.heads.depth import DepthSettings, depth_loss
from visionkit.models.heads.settings import build_head
from visionkit.registry import TASKS
from visionkit.schema import Field
from visionkit.tasks import starters
from visionkit.tasks.base import ExportNormalize, Task
from visionkit.visualize import denormalize

# a perceptually ordered colour map (dark purple -> orange -> pale yellow), sampled at 6 stops
_STOPS = torch.tensor([[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109],
                       [252, 253, 191]], dtype=torch.float32)


def colorize(values: torch.Tensor, lo: float, hi: float, invalid: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 ``(3, H, W)``: ``values`` mapped from [lo, hi] onto the colour map; ``invalid`` grey."""
    t = ((values.float().cpu() - lo) / max(hi - lo, 1e-12)).clamp(0, 1) * (len(_STOPS) - 1)
    i = t.floor().long().clamp(max=len(_STOPS) - 2)
    f = (t - i)[..., None]
    rgb = _STOPS[i] * (1 - f) + _STOPS[i + 1] * f
    if invalid is not None:
        rgb[invalid.cpu()] = 96.0
    return rgb.round().to(torch.uint8).permute(2, 0, 1)


@TASKS.register("depth")
class DepthTask(Task):
    monitor = ("abs_rel", "min")
    starter = staticmethod(starters.depth)

    settings = DepthSettings
    renamed_head_keys: ClassVar[dict[str, str]] = {"decoder": "name"}

    @classmethod
    def data_schema(cls) -> dict:
        size = {"nullable": True, "length": 2, "min": 1}
        return {"depth": {
            "format": Field(str, "nyu", choices=("nyu", "kitti"),
                            help="nyu: 16-bit PNG mm; kitti: 16-bit PNG m*256, sparse"),
            "depth_scale": Field(float, None, nullable=True, min=1e-9,
                                 help="stored value per metre; null: 1000 (nyu) or 256 (kitti)"),
            "min_depth": Field(float, 1e-3, min=0, help="metres; ground truth at or below is no measurement"),
            "max_depth": Field(float, 10.0, min=0,
                               help="metres; the valid range's top and the head's output range"),
            "train_list": Field(str, None, nullable=True,
                                help="file of 'image depth' lines, relative to root"),
            "val_list": Field(str, None, nullable=True, help="as train_list, for val"),
            "test_list": Field(str, None, nullable=True, help="as train_list, for test"),
            "image_dir": Field(str, "image", help="folder pairs: the image folder's name"),
            "depth_dir": Field(str, "depth", help="folder pairs: the depth folder's name"),
            "resize": Field([int], None, help="[H, W] every image is resized to first; null: kept",
                            **size),
            "crop": Field([int], None, help="[H, W] random training crop; null: none", **size),
            "scale": Field([float], [1.0, 1.0], length=2, min=0.05, help="random training rescale range"),
            "kb_crop": Field(bool, False, help="KITTI benchmark crop (bottom 352x1216) first"),
            "eval_crop": Field(str, "none", choices=("none", *CROPS),
                               help="evaluation crop: garg, eigen (KITTI), eigen_nyu"),
            "median_scaling": Field(bool, False, help="scale each prediction by median(gt)/median(pred)"),
            "average": Field(str, "image", choices=("image", "pixel"), help="metric averaging"),
        }}

    def __init__(self, backbone, settings: DepthSettings | None = None, *, min_depth=1e-3, max_depth=10.0,
                 depth_scale=1000.0, eval_crop="none", median_scaling=False, average="image",
                 in_channels=3, mean=(0.0,), std=(1.0,)):
        super().__init__()
        s = settings or DepthSettings()
        self.backbone = backbone
        self.head = build_head("depth", s.name, backbone.feature_specs, in_channels, channels=s.channels,
                               min_depth=min_depth, max_depth=max_depth)
        self.loss_name, self.silog_lambda, self.silog_scale = s.loss, s.silog_lambda, s.silog_scale
        self.berhu_threshold = s.berhu_threshold
        self.min_depth, self.max_depth, self.depth_scale = min_depth, max_depth, depth_scale
        self.eval_crop, self.median_scaling, self.average = eval_crop, median_scaling, average
        self.set_normalization(mean, std)

    @classmethod
    def check_sample(cls, sample: dict, data_info: dict) -> list[str]:
        """A depth map of the image's size, finite and not negative (0 = no measurement)."""
        depth, image = sample.get("depth"), sample.get("image")
        if not isinstance(depth, torch.Tensor):
            return ["no depth map"]
        problems = []
        if isinstance(image, torch.Tensor) and tuple(depth.shape[-2:]) != tuple(image.shape[-2:]):
            problems.append(f"depth map is {tuple(depth.shape[-2:])} but the image is {tuple(image.shape[-2:])}")
        d = depth.as_subclass(torch.Tensor).float()
        if not torch.isfinite(d).all():
            problems.append("depth map holds NaN or Inf values")
        elif (d < 0).any():
            problems.append(f"depth map holds negative values (min {float(d.min()):g})")
        return problems

    @classmethod
    def from_config(cls, cfg, data_info: dict) -> DepthTask:
        d = cfg.data.depth
        if not 0 < d.min_depth < d.max_depth:
            raise ConfigError(f"{cfg.where('data.depth')}: data.depth.min_depth ({d.min_depth}) must be > 0 "
                              "and below "
                              f"data.depth.max_depth ({d.max_depth})")
        if d.scale[0] > d.scale[1]:
            raise ConfigError(f"{cfg.where('data.depth.scale')}: data.depth.scale must be [min, max] "
                              "with min <= max")
        return cls(build_backbone(cfg), cls.head_settings(cfg), min_depth=d.min_depth, max_depth=d.max_depth, depth_scale=depth_scale(cfg),
                   eval_crop=d.eval_crop, median_scaling=d.median_scaling, average=d.average,
                   in_channels=cfg.data.channels, mean=cfg.data.mean, std=cfg.data.std)

    @classmethod
    def sample_transform(cls, cfg, train: bool):
        return depth_transforms(train, cfg.data.depth, cfg.data.augment.hflip if train else 0.0)

    def preprocess(self, batch: dict) -> dict:
        if isinstance(batch["images"], list):
            sizes = sorted({tuple(i.shape[-2:]) for i in batch["images"]})
            raise DataError(f"depth images of different sizes {sizes[:3]} in one batch; set "
                            "data.depth.resize (or kb_crop for KITTI) so that they share one size")
        return super().preprocess(batch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Metric depth ``(B, H, W)`` at the input's resolution."""
        return self.head(images, self.backbone(images))

    def valid(self, target: torch.Tensor) -> torch.Tensor:
        return valid_mask(target, self.min_depth, self.max_depth)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        pred = self(batch["images"])
        target = batch["depth"].float()
        if target.shape != pred.shape:
            raise DataError(f"depth targets of shape {tuple(target.shape)} do not match the images "
                            f"{tuple(pred.shape)}")
        loss = depth_loss(self.loss_name, pred, target, self.valid(target), silog_lambda=self.silog_lambda,
                          silog_scale=self.silog_scale, berhu_threshold=self.berhu_threshold)
        return {f"loss_{self.loss_name}": loss}

    @torch.no_grad()
    def predict(self, batch: dict) -> dict:
        """``depth``: (B, H, W) metres at the input's resolution."""
        return {"depth": self(batch["images"]).float()}

    def evaluator(self) -> DepthEvaluator:
        return DepthEvaluator(min_depth=self.min_depth, max_depth=self.max_depth, crop=self.eval_crop,
                              median_scaling=self.median_scaling, average=self.average)

    def describe(self, predictions: dict, i: int) -> str:
        d = predictions["depth"][i]
        return f"depth {float(d.min()):.2f}-{float(d.max()):.2f} m, median {float(d.median()):.2f} m"

    def record(self, predictions: dict, i: int) -> dict:
        d = predictions["depth"][i].float().cpu()
        return {"height": d.shape[0], "width": d.shape[1], "min": float(d.min()), "max": float(d.max()),
                "median": float(d.median()), "depth_scale": self.depth_scale}

    def write_outputs(self, predictions: dict, i: int, out_dir, stem: str) -> list[str]:
        """``<stem>_depth.png``: 16-bit PNG of metres x depth_scale (the training data's format);
        ``<stem>_depth.npy``: float32 metres."""
        d = predictions["depth"][i].float().cpu()
        png, npy = f"{stem}_depth.png", f"{stem}_depth.npy"
        write_depth_png(Path(out_dir) / png, d, self.depth_scale)
        np.save(Path(out_dir) / npy, d.numpy().astype(np.float32))
        return [png, npy]

    def visualize(self, batch: dict, predictions: dict, max_images: int = 16) -> torch.Tensor:
        """One row per image: input | predicted depth | ground truth | abs. relative error.

        Depths share one colour scale per image (log, over prediction and valid ground truth; near
        is dark). The error panel maps |d - d*| / d* from 0 to 0.5 (and above) on the same colours;
        pixels without ground truth are grey. Without ground truth: input | prediction.
        """
        images = denormalize(batch["images"][:max_images], self.mean, self.std)
        preds = predictions["depth"][:max_images].float().cpu()
        targets = batch.get("depth")
        tiles = []
        for k, img in enumerate(images):
            p = preds[k]
            row = [img]
            if targets is not None:
                t = targets[k].float().cpu()
                valid = self.valid(t)
                ref = torch.cat([p.flatten(), t[valid]])
                lo, hi = ref.log().min().item(), ref.log().max().item()
                row.append(colorize(p.log(), lo, hi))
                row.append(colorize(t.clamp_min(1e-6).log(), lo, hi, ~valid))
                err = (p - t).abs() / t.clamp_min(1e-6)
                row.append(colorize(err, 0.0, 0.5, ~valid))
            else:
                row.append(colorize(p.log(), p.log().min().item(), p.log().max().item()))
            tiles.extend(row)
        ncol = 4 if targets is not None else 2
        grid = make_grid(tiles, nrow=ncol, padding=2)
        return self.zoom(grid, self.zoom_factor(images.shape[-1]))[None]

    def metadata(self) -> dict:
        return {"classes": [], "min_depth": self.min_depth, "max_depth": self.max_depth,
                "depth_scale": self.depth_scale}

    @classmethod
    def target_kind(cls, cfg) -> str:
        return "depth"

    # -- export: ``depth`` in metres at the input size ---------------------------------------------
    export_outputs = ("depth",)
    export_attrs = ("min_depth", "max_depth", "depth_scale", "mean", "std")

    def export_graph(self, normalize: bool) -> nn.Module:
        return _DepthGraph(self, normalize).eval()

    def export_dynamic_axes(self, names, dynamic: bool) -> dict[str, dict[int, str]]:
        if not dynamic:
            return {}
        return {"images": {0: "batch", 2: "height", 3: "width"}, **{n: {0: "batch", 1: "height", 2: "width"}
                                                                     for n in names}}

    @classmethod
    def export_preprocess(cls, cfg) -> dict:
        d = cfg.data.depth
        return {"kb_crop": bool(d.kb_crop), "resize": list(d.resize) if d.resize else None}

    @classmethod
    def export_transform(cls, spec: dict):
        steps = ([BottomCenterCrop()] if spec.get("kb_crop") else []) + \
                ([v2.Resize(tuple(spec["resize"]), antialias=True)] if spec.get("resize") else [])
        return v2.Compose(steps) if steps else super().export_transform(spec)

    @classmethod
    def example_image_size(cls, cfg) -> tuple[int, int]:
        resize = cfg.data.depth.resize
        return tuple(resize) if resize else super().example_image_size(cfg)

    def from_export_outputs(self, outputs: dict[str, torch.Tensor]) -> dict:
        return {"depth": outputs["depth"].float()}


class _DepthGraph(nn.Module):
    """``depth`` (B, H, W) in metres at the input size."""

    def __init__(self, task: DepthTask, normalize: bool):
        super().__init__()
        self.task, self.norm = task, ExportNormalize(task.mean, task.std, normalize)

    def forward(self, images: torch.Tensor):
        return (self.task(self.norm(images)).float(),)
