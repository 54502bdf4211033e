"""Benchmark row: our default Mask R-CNN head settings vs torchvision's ``maskrcnn_resnet50_fpn`` ones.

Both models are built by this toolkit on the same backbone (ResNet-18 + FPN) and fed the same
batch of shapes scenes at the same size; only the ``model.head`` values differ. The baseline takes
torchvision's values: a 256-wide FPN, anchors 8 x stride, RPN 256 sampled anchors and 2000/2000
proposals before/after NMS in training (1000/1000 testing), 512 sampled RoIs, a 1024-wide box
head, a 4 x 256 mask head, RoIAlign sampling ratio 2 and 100 detections. Training and inference
steps of the two alternate (ours, baseline, ours, ...) and each side's median counts, so load from
other processes hits both alike. The accuracy side of the comparison (AP on shapes) needs full
training runs and is reported in the README, not measured here.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from visionkit.bench import common
from visionkit.registry import BENCHMARKS

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "detection" / "mask_rcnn_resnet18_fpn_shapes.yaml"

#: torchvision's maskrcnn_resnet50_fpn values for our head keys
TORCHVISION_HEAD = {
    "fpn_channels": 256, "anchor_scales": [8.0], "rpn_batch_size_per_image": 256,
    "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
    "box_batch_size_per_image": 512, "box_representation": 1024, "detections_per_img": 100,
    "mask_convs": 4, "mask_channels": 256, "roi_sampling_ratio": 2,
}


def _task(root: Path, head: dict, tmp: Path):
    from visionkit.config import load_config
    from visionkit.registry import TASKS
    from visionkit.data.datasets.synthetic import SHAPE_CLASSES

    over = [f"data.root={root}", "data.synth.num_images=64", "train.device=cpu"]
    over += [f"model.head.{k}={v}" for k, v in head.items()]
    cfg = load_config(CONFIG, over)
    return TASKS.get("detection").from_config(cfg, {"classes": list(SHAPE_CLASSES)}), cfg


def _batch(cfg, n: int) -> dict:
    from visionkit.data.collate import collate_samples
    from visionkit.data.datasets.coco import ShapesInstances

    ds = ShapesInstances(Path(cfg.data.root))
    return collate_samples([ds[i] for i in range(n)])


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _alternate(ours, base, repeats: int) -> tuple[float, float]:
    """Median seconds of each side, run in alternation after one warm-up call each."""
    ours(), base()
    a, b = common.alternate(lambda: _time(ours), lambda: _time(base), repeats)
    return statistics.median(a), statistics.median(b)


def _row(figure, ours, baseline, target, unit, info) -> dict:
    ratio = ours / baseline if baseline else None
    bound = float(target.split()[-1].rstrip("x"))
    return {"figure": figure, "ours": ours, "baseline": baseline, "ratio": ratio, "target": target,
            "met": None if ratio is None else ratio >= bound, "unit": unit, "details": info}


@BENCHMARKS.register("detection")
def detection(quick: bool, batch_size: int = 8, repeats: int | None = None) -> list[dict]:
    """``batch_size`` and ``repeats`` (8 and 8; quick: 3 repeats) shrink it for tests."""
    from visionkit.data.datasets.synthetic import generate_shapes

    repeats = repeats or (3 if quick else 8)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_shapes(Path(tmp) / "shapes", num_images=64, size=64, seed=0)
        ours, cfg = _task(root, {}, Path(tmp))
        base, _ = _task(root, TORCHVISION_HEAD, Path(tmp))
        batch = _batch(cfg, batch_size)

        def train_step(task, opt):
            def step():
                b = task.preprocess({k: (list(v) if isinstance(v, list) else v) for k, v in batch.items()})
                losses = task.loss(b)
                opt.zero_grad()
                sum(losses.values()).backward()
                opt.step()
            return step

        def infer_step(task):
            def step():
                with torch.no_grad():
                    task.predict(task.preprocess({"images": batch["images"]}))
            return step

        torch.manual_seed(0)
        ours.train(), base.train()
        opt_o = torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9)
        opt_b = torch.optim.SGD(base.parameters(), lr=1e-3, momentum=0.9)
        t_ours, t_base = _alternate(train_step(ours, opt_o), train_step(base, opt_b), repeats)
        ours.eval(), base.eval()
        i_ours, i_base = _alternate(infer_step(ours), infer_step(base), repeats)
    info = {"model": "mask_rcnn resnet18 fpn (ours: configs/detection/mask_rcnn_resnet18_fpn_shapes.yaml; "
                     "baseline: the same with torchvision maskrcnn_resnet50_fpn head values)",
            "image_size": f"64 px scenes, resized to {cfg.model.head.min_size or cfg.data.image_size} "
                          "inside the detector",
            "precision": "fp32 on both sides (the recipe's train.amp applies to both alike)",
            "batch": batch_size, "threads": torch.get_num_threads(), "device": "cpu",
            "repeats": repeats, "baseline_head": TORCHVISION_HEAD}
    return [
        _row("detection training images/s: our Mask R-CNN head defaults vs torchvision's "
             "(same backbone, images)",
             batch_size / t_ours, batch_size / t_base, ">= 4x", "images/s", info),
        _row("detection inference images/s: our Mask R-CNN head defaults vs torchvision's "
             "(same backbone, images)",
             batch_size / i_ours, batch_size / i_base, ">= 2x", "images/s", info),
    ]
