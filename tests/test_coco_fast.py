"""The fast COCO backend (faster-coco-eval) against the reference, plain pycocotools COCOeval.

Every number the fast path gives must equal pycocotools' within 1e-4 on data that has crowd
regions, images without ground truth, detections that match nothing, classes without
detections and detections of classes absent from the ground truth. Also: the config key
``data.coco_eval.backend`` is checked, ``auto`` falls back to pycocotools, and the benchmark rows
(COCO evaluation, detection heads) run at tiny sizes and report their figures.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from benchmarks.coco_eval import coco_eval, pycocotools_stats, synthetic
from visionkit import load_config
from visionkit.errors import ConfigError, DataError
from visionkit.evaluation import coco_backend
from visionkit.evaluation.coco import CocoEvaluator

needs_fast = pytest.mark.skipif(not coco_backend.fast_available(), reason="faster-coco-eval not installed")
TOL = 1e-4


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def _rect(h, w, x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def edge_cases() -> tuple[dict, list[dict]]:
    """Four 64 x 48 images: (1) a cat-1 object matched well, one matched badly, a duplicate and a
    detection on a crowd region; (2) no ground truth but two detections; (3) a cat-2 object that
    nobody detects; (4) nothing at all. Category 3 has detections but no ground truth."""
    h, w = 48, 64
    images = [{"id": i, "width": w, "height": h} for i in (1, 2, 3, 4)]
    gt_masks = [(1, 1, _rect(h, w, 2, 2, 20, 20), 0), (1, 1, _rect(h, w, 30, 5, 60, 40), 0),
                (1, 1, _rect(h, w, 0, 30, 25, 48), 1), (3, 2, _rect(h, w, 10, 10, 14, 14), 0)]
    anns = []
    for image_id, cat, m, crowd in gt_masks:
        rle = _rle(m)
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "iscrowd": crowd,
                     "bbox": mask_utils.toBbox(rle).tolist(), "area": float(mask_utils.area(rle)),
                     "segmentation": rle})
    dets = [(1, 1, (2, 2, 21, 20), 0.9), (1, 1, (32, 8, 60, 44), 0.8), (1, 1, (2, 3, 20, 20), 0.7),
            (1, 1, (1, 31, 24, 47), 0.95), (2, 1, (5, 5, 30, 30), 0.6), (2, 3, (0, 0, 10, 10), 0.5),
            (1, 3, (40, 0, 50, 9), 0.4)]
    results = []
    for image_id, cat, (x0, y0, x1, y1), score in dets:
        results.append({"image_id": image_id, "category_id": cat, "score": score,
                        "bbox": [x0 + 0.5, y0, x1 - x0, y1 - y0 + 0.25],
                        "segmentation": _rle(_rect(h, w, x0, y0, x1, y1))})
    cats = [{"id": c, "name": n} for c, n in ((1, "ring"), (2, "dot"), (3, "ghost"))]
    return {"images": images, "annotations": anns, "categories": cats}, results


def scored(dataset, results, backend):
    cats = dataset["categories"]
    ev = CocoEvaluator([c["name"] for c in cats], [c["id"] for c in cats], backend=backend)
    ev.add_coco(dataset["images"], dataset["annotations"], results)
    metrics = ev.compute()
    return ev, metrics


def assert_equal_to_pycocotools(dataset, results, backend):
    reference = pycocotools_stats(dataset, results)
    ev, metrics = scored(dataset, results, backend)
    for iou_type in ("bbox", "segm"):
        ours, ref = ev.scores[iou_type], reference[iou_type]
        assert ours.stats.shape == (12,)
        np.testing.assert_allclose(ours.stats, ref[0], atol=TOL, rtol=0)
        np.testing.assert_allclose(ours.precision, ref[1], atol=TOL, rtol=0)
        assert metrics[f"{iou_type}_AP"] == pytest.approx(ref[0][0], abs=TOL)
        # per-class AP: the mean of that class's precision slice, where pycocotools has one
        per_class = ev.details()[f"{iou_type}_per_class_AP"]
        for k, cat in enumerate(dataset["categories"]):
            p = ref[1][:, :, k, 0, -1]
            p = p[p > -1]
            if p.size:
                assert per_class[cat["name"]] == pytest.approx(float(p.mean()), abs=TOL)
            else:
                assert cat["name"] not in per_class
    return ev, metrics, reference


@needs_fast
def test_fast_backend_equals_pycocotools_on_edge_cases():
    dataset, results = edge_cases()
    ev, metrics, ref = assert_equal_to_pycocotools(dataset, results, "faster_coco_eval")
    assert ev.backend == "faster_coco_eval" and ev.details()["coco_backend"] == "faster_coco_eval"
    # the detection on the crowd region is ignored, not a false positive: cat 1 has both objects
    # found at IoU .5, so AP50 of ring is 1 only if the crowd hit and the duplicate cost nothing
    assert ref["bbox"][1][0, :, 0, 0, -1].min() == pytest.approx(1.0)
    # the undetected dot scores 0, the ghost class (no ground truth) is left out
    assert ev.details()["segm_per_class_AP"]["dot"] == 0.0
    assert "ghost" not in ev.details()["segm_per_class_AP"]
    assert 0 < metrics["segm_AP"] < 1


@needs_fast
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_backend_equals_pycocotools_on_synthetic_scenes(seed):
    dataset, results = synthetic(40, seed=seed)
    crowd = sum(a["iscrowd"] for a in dataset["annotations"])
    with_gt = {a["image_id"] for a in dataset["annotations"]}
    assert crowd > 0 and len(with_gt) < len(dataset["images"])  # the cases the test is about
    _, metrics, _ = assert_equal_to_pycocotools(dataset, results, "faster_coco_eval")
    assert 0 < metrics["bbox_AP"] < 1 and 0 < metrics["segm_AP"] < 1


def test_pycocotools_backend_equals_plain_pycocotools():
    """Our result loader (masks' areas in one call) changes nothing in pycocotools' numbers."""
    dataset, results = synthetic(25, seed=3)
    ev, _, _ = assert_equal_to_pycocotools(dataset, results, "pycocotools")
    assert ev.details()["coco_backend"] == "pycocotools"


@needs_fast
def test_backends_agree_on_the_trainers_tensor_path():
    """process() from batches of tensors (masks, crowd flags) gives the same metrics either way."""
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 3, 40, 40, dtype=torch.bool)
    boxes = torch.tensor([[[2, 2, 15, 15], [20, 4, 38, 30], [5, 25, 18, 39]]] * 2, dtype=torch.float)
    for i in range(2):
        for k, (x0, y0, x1, y1) in enumerate(boxes[i].int().tolist()):
            masks[i, k, y0:y1, x0:x1] = True
    batch = {"images": [torch.zeros(3, 40, 40)] * 2, "boxes": list(boxes), "masks": list(masks),
             "labels": [torch.tensor([0, 1, 0]), torch.tensor([1, 1, 0])],
             "iscrowd": [torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0])]}
    preds = []
    for i in range(2):
        shift = torch.randint(-2, 3, (3, 4), generator=g).float()
        preds.append({"boxes": boxes[i] + shift, "labels": batch["labels"][i].flip(0),
                      "scores": torch.rand(3, generator=g), "masks": masks[i].roll(1, dims=-1)})
    out = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        ev = CocoEvaluator(["a", "b"], backend=backend)
        ev.process(batch, preds)
        out[backend] = (ev.compute(), ev.details())
    assert out["pycocotools"][0].keys() == out["faster_coco_eval"][0].keys()
    for key, value in out["pycocotools"][0].items():
        assert out["faster_coco_eval"][0][key] == pytest.approx(value, abs=TOL), key
    assert out["pycocotools"][1]["segm_per_class_AP"] == pytest.approx(
        out["faster_coco_eval"][1]["segm_per_class_AP"], abs=TOL)


def test_results_for_unknown_images_are_a_named_error():
    dataset, results = edge_cases()
    results.append({**results[0], "image_id": 99})
    with pytest.raises(DataError, match=r"image ids \[99\]"):
        scored(dataset, results, "auto")
    with pytest.raises(DataError, match=r"category ids \[7\]"):
        scored(dataset, [{**results[0], "category_id": 7}], "auto")


def test_auto_falls_back_to_pycocotools_and_a_missing_fast_package_is_a_config_error(monkeypatch):
    monkeypatch.setattr(coco_backend, "fast_available", lambda: False)
    assert coco_backend.resolve("auto") == "pycocotools"
    with pytest.raises(ConfigError, match="pip install faster-coco-eval"):
        coco_backend.resolve("faster_coco_eval")
    with pytest.raises(ConfigError, match="auto, pycocotools, faster_coco_eval"):
        coco_backend.resolve("fastest")
    monkeypatch.setattr(coco_backend, "fast_available", lambda: True)
    assert coco_backend.resolve("auto") == "faster_coco_eval"


def _detection_yaml(tmp_path, shapes_root, coco_eval: dict):
    import yaml

    cfg = {"task": "detection", "data": {"dataset": "shapes", "root": str(shapes_root), "image_size": 32,
                                         "coco_eval": coco_eval}}
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_backend_key_is_validated(tmp_path, shapes_root):
    with pytest.raises(ConfigError, match=r"data\.coco_eval\.backend.*pycocotools"):
        load_config(_detection_yaml(tmp_path, shapes_root, {"backend": "fastest"}))
    with pytest.raises(ConfigError, match="did you mean 'backend'"):
        load_config(_detection_yaml(tmp_path, shapes_root, {"bakend": "auto"}))
    cfg = load_config(_detection_yaml(tmp_path, shapes_root, {"backend": "pycocotools"}))
    assert cfg.data.coco_eval.backend == "pycocotools"


def test_task_passes_the_backend_to_its_evaluator(tmp_path, shapes_root, monkeypatch):
    from visionkit.registry import TASKS

    info = {"classes": ["circle", "crescent", "cross", "square", "star", "triangle"]}
    head = ["model.backbone.name=resnet18_w32", "model.head.fpn_channels=16"]
    cfg = load_config(_detection_yaml(tmp_path, shapes_root, {"backend": "pycocotools"}), head)
    assert TASKS.get("detection").from_config(cfg, info).evaluator().backend == "pycocotools"
    monkeypatch.setattr(coco_backend, "fast_available", lambda: False)
    cfg = load_config(_detection_yaml(tmp_path, shapes_root, {"backend": "faster_coco_eval"}), head)
    with pytest.raises(ConfigError, match=r"det\.yaml.*pip install faster-coco-eval"):
        TASKS.get("detection").from_config(cfg, info)


def test_coco_eval_benchmark_row_runs_small():
    (row,) = coco_eval(True, images=20, repeats=1)
    d = row["details"]
    assert row["ours"] > 0 and row["baseline"] > 0 and math.isfinite(row["ratio"])
    assert row["ratio"] == pytest.approx(row["ours"] / row["baseline"])
    assert d["images"] == 20 and d["detections"] == 400 and d["repeats"] == 1
    assert d["max_abs_stat_difference"] <= TOL and "max |AP difference|" in row["note"]
    assert row["met"] in (True, False)
    assert d["backend"] == ("faster_coco_eval" if coco_backend.fast_available() else "pycocotools")
    assert len(d["bbox_stats"]) == 12 and len(d["segm_stats"]) == 12


def test_detection_benchmark_row_runs_small():
    from benchmarks.detection import detection

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = detection(True, batch_size=1, repeats=1)
    finally:
        torch.set_num_threads(threads)
    assert len(rows) == 2
    assert "training" in rows[0]["figure"] and "inference" in rows[1]["figure"]
    for r, target in zip(rows, (">= 4x", ">= 2x")):
        assert r["ours"] > 0 and r["baseline"] > 0 and r["ratio"] == pytest.approx(r["ours"] / r["baseline"])
        assert r["target"] == target and r["met"] in (True, False)
        assert r["details"]["batch"] == 1 and r["details"]["repeats"] == 1


def test_detection_ap_row_trains_both_head_settings_and_scores_the_test_split(tmp_path):
    import yaml

    from benchmarks.detection import TORCHVISION_HEAD, detection_ap

    over = (f"data.root={tmp_path / 'shapes'}", "data.synth.num_images=20", "train.epochs=1",
            "model.head.min_size=64", "data.batch_size=4", "train.vis_images=0", "train.amp=none",
            "train.channels_last=false")
    rows = detection_ap(False, overrides=over, keep=tmp_path)
    assert [r["figure"].split()[3] for r in rows] == ["bbox_AP", "segm_AP"]
    for r, key in zip(rows, ("bbox_AP", "segm_AP")):
        d = r["details"]
        assert d["epochs"] == 1 and d["test_metrics_ours"][key] == r["ours"]
        assert d["test_metrics_baseline"][key] == r["baseline"]
        assert 0 <= r["ours"] <= 1 and 0 <= r["baseline"] <= 1 and r["target"] == ">= 1.0"
    for side, head in (("ours", {}), ("torchvision_head", TORCHVISION_HEAD)):
        cfg = yaml.safe_load((tmp_path / side / "config.yaml").read_text())
        assert (tmp_path / side / "test_metrics.json").exists()
        assert cfg["train"]["epochs"] == 1
        for k, v in head.items():  # the baseline run really trained torchvision's head values
            assert cfg["model"]["head"][k] == v
    assert yaml.safe_load((tmp_path / "ours" / "config.yaml").read_text())["model"]["head"]["box_batch_size_per_image"] != 512
    assert rows[0]["details"]["sides_trained"] == "one after the other"  # the CPU default

    # the GPU default, forced here: torchvision's side in a spawned process beside ours, same numbers
    at_once = detection_ap(False, overrides=over, keep=tmp_path / "at_once", at_once=True)
    assert [(r["ours"], r["baseline"]) for r in at_once] == [(r["ours"], r["baseline"]) for r in rows]
    assert at_once[0]["details"]["sides_trained"] == "at once"
    assert (tmp_path / "at_once" / "torchvision_head" / "test_metrics.json").exists()

