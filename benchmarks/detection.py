"""Benchmark row: our default Mask R-CNN head settings vs torchvision's ``maskrcnn_resnet50_fpn`` ones.

Both models are built by this toolkit on the same backbone (ResNet-18 + FPN) and fed the same
batch of shapes scenes at the same size; only the ``model.head`` values differ. The baseline takes
torchvision's values: a 256-wide FPN, anchors 8 x stride, RPN 256 sampled anchors and 2000/2000
proposals before/after NMS in training (1000/1000 testing), 512 sampled RoIs, a 1024-wide box
head, a 4 x 256 mask head, RoIAlign sampling ratio 2 and 100 detections. Training and inference
steps of the two alternate (ours, baseline, ours, ...) and each side's median counts, so load from
other processes hits both alike. The accuracy side of the comparison (AP on shapes) needs training
runs: ``detection_ap`` trains the recipe with each side's head values and scores both on the test
split (run only when named, ``--only detection_ap``).
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from benchmarks import BENCHMARKS, common

CONFIG = common.ROOT / "configs" / "detection" / "mask_rcnn_resnet18_fpn_shapes.yaml"

#: torchvision's maskrcnn_resnet50_fpn values for our head keys
TORCHVISION_HEAD = {
    "fpn_channels": 256, "anchor_scales": [8.0], "rpn_batch_size_per_image": 256,
    "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
    "box_batch_size_per_image": 512, "box_representation": 1024, "detections_per_img": 100,
    "mask_convs": 4, "mask_channels": 256, "roi_sampling_ratio": 2, "mask_sampling_ratio": 2,
    "fpn_norm": "none", "head_norm": "none", "box_convs": 0,
}


def _task(root: Path, head: dict, tmp: Path):
    from visionkit.config import load_config
    from visionkit.data.datasets.synthetic import SHAPE_CLASSES
    from visionkit.registry import TASKS

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
    """Row 5: training and inference images/s of our Mask R-CNN head defaults vs torchvision's.

    ``batch_size`` and ``repeats`` (8 and 8; quick: 3 repeats) shrink it for tests."""
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


#: epochs of each side's training run in the AP comparison (``None``: the recipe's own); on a CPU
#: torchvision's head values train many times slower than ours, so the full row there is 2 epochs
AP_EPOCHS = {"cpu": 2, "cuda": None}


def _config(head: dict, over: list[str], dev):
    from visionkit.config import load_config

    return load_config(CONFIG, [f"train.device={dev}", "train.progress=false", *over]
                       + [f"model.head.{k}={v}" for k, v in head.items()])


def _train_run(run_dir: Path, head: dict, over: list[str], dev) -> tuple[dict, float, int]:
    """Train the default recipe with ``head`` values; (test metrics from best.pt, wall seconds, epochs)."""
    from visionkit.engine.trainer import Trainer

    cfg = _config(head, over, dev)
    start = time.perf_counter()
    trainer = Trainer(cfg, run_dir, log=lambda *a, **k: None)
    trainer.fit()
    wall = time.perf_counter() - start
    test = json.loads((run_dir / "test_metrics.json").read_text())
    val = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    test["val_bbox_segm_AP_by_epoch"] = [[round(v["bbox_AP"], 4), round(v["segm_AP"], 4)]
                                         for v in val if v.get("split") == "val" and "bbox_AP" in v]
    return test, wall, cfg.train.epochs


def _both_sides(folder: Path, over: list[str], dev, at_once: bool):
    """(ours, torchvision's) :func:`_train_run` results. ``at_once`` trains torchvision's side in a
    spawned process while ours trains here: on a GPU each run is bound by its own host process,
    so two at once take about the time of the slower one; on a CPU they would only split the cores."""
    tv_dir = folder / "torchvision_head"
    if not at_once:
        return _train_run(folder / "ours", {}, over, dev), _train_run(tv_dir, TORCHVISION_HEAD, over, dev)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        base = pool.submit(_train_run, tv_dir, TORCHVISION_HEAD, over, dev)
        ours = _train_run(folder / "ours", {}, over, dev)
        return ours, base.result()


@BENCHMARKS.register("detection_ap")
def detection_ap(quick: bool, overrides: tuple[str, ...] = (), keep: Path | None = None,
                 at_once: bool | None = None) -> list[dict]:
    """Row 5's accuracy side: test AP of the default Mask R-CNN recipe with our head defaults vs torchvision's.

    The recipe is trained twice from the same seed on the same scenes, with our head defaults and
    with torchvision's head values, then scored on the test split (COCO AP from each run's
    best.pt). Run only when named (``--only detection_ap``): full, it trains 2 epochs per side on
    a CPU (about two hours on two cores) and the recipe's epochs on a GPU; ``--quick`` trains 1
    epoch on 96 scenes. ``overrides`` (config ``key=value``) and ``keep`` (a folder for the run
    directories) are for tests and for reading the runs afterwards. ``at_once`` (default: on a GPU) trains the two sides
    side by side (:func:`_both_sides`), so the recipe's epochs on both fit in a short GPU lease;
    their times are then each measured beside the other."""
    dev = common.device()
    with common.workdir("det-ap") as tmp:
        folder = Path(keep) if keep is not None else Path(tmp)
        over = []
        if quick:
            over += [f"data.root={folder / 'shapes_det'}", "data.synth.num_images=96", "train.epochs=1"]
        elif AP_EPOCHS.get(dev.type) is not None:
            over += [f"train.epochs={AP_EPOCHS[dev.type]}"]
        over += list(overrides)
        at_once = dev.type == "cuda" if at_once is None else at_once
        (ours, t_ours, epochs), (base, t_base, _) = _both_sides(folder, over, dev, at_once)
    info = common.details(
        "mask_rcnn resnet18 fpn (ours: configs/detection/mask_rcnn_resnet18_fpn_shapes.yaml; baseline: the "
        "same with torchvision maskrcnn_resnet50_fpn head values)", "64 px scenes at the config's min_size",
        "the recipe's", 1, dev, epochs=epochs, overrides=over, seconds_ours=round(t_ours, 1),
        seconds_baseline=round(t_base, 1), test_metrics_ours=ours, test_metrics_baseline=base,
        baseline_head=TORCHVISION_HEAD, sides_trained="at once" if at_once else "one after the other")
    return [common.row(f"5 detection test {k} after {epochs} epoch(s) each: our head defaults vs "
                       "torchvision's head values (same recipe, seed, scenes)",
                       ours[k], base[k], ">= 1.0", "AP", info)
            for k in ("bbox_AP", "segm_AP")]
