"""Detection through the CLI as a user runs it: train, eval, predict, and shapes as COCO json."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import run_cli


def run(*args, cwd=None):
    return run_cli(*args, cwd=cwd, env={"OMP_NUM_THREADS": "1"})


def tiny_detection_config(tmp_path, root, dataset="shapes", name="mask_rcnn") -> Path:
    cfg = {
        "task": "detection",
        "model": {"backbone": {"name": "resnet18_w32"},
                  "head": {"name": name, "fpn_channels": 16, "box_representation": 32, "mask_channels": 16,
                           "mask_convs": 1, "vis_score": 0.0}},
        "data": {"dataset": dataset, "root": str(root), "image_size": 32,
                 "synth": {"num_images": 240, "size": 32, "seed": 0}, "mean": [0.5] * 3,
                 "std": [0.25] * 3, "batch_size": 4, "num_workers": 0, "split": {"counts": [16, 8, 8]}},
        "train": {"epochs": 1, "device": "cpu", "progress": False, "vis_images": 2,
                  "optimizer": {"name": "adamw", "lr": 1e-3}},
    }
    path = tmp_path / f"{dataset}_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_eval_predict_end_to_end(tmp_path, shapes_root):
    cfg = tiny_detection_config(tmp_path, shapes_root)
    run_dir = tmp_path / "run"
    r = run("train", cfg, "--run-dir", run_dir)
    assert r.returncode == 0, r.stderr
    assert "segm_AP" in r.stdout and "bbox_AP" in r.stdout
    val = json.loads((run_dir / "detections_val.json").read_text())
    assert isinstance(val, list)  # COCO results list (maybe empty after one tiny epoch)

    out = tmp_path / "eval.json"
    ckpt = run_dir / "checkpoints" / "best.pt"
    r = run("eval", cfg, "--checkpoint", ckpt, "--split", "test", "--output", out,
            "data.coco_eval.backend=pycocotools")
    assert r.returncode == 0, r.stderr
    record = json.loads(out.read_text())
    assert record["coco_backend"] == "pycocotools"  # the override reached the evaluator
    assert record["samples"] == 8 and 0 <= record["metrics"]["bbox_AP"] <= 1
    assert set(record["bbox_per_class_AP"]) <= {"circle", "crescent", "cross", "square", "star", "triangle"}
    assert (tmp_path / "detections_test.json").exists() and record["files"]
    # a config that builds another head than the checkpoint's is refused with the overrides that fit
    trained = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["head"]["head_norm"]
    other = "group" if trained != "group" else "none"
    r = run("eval", cfg, "--checkpoint", ckpt, f"model.head.head_norm={other}")
    assert r.returncode != 0 and f"built with model.head.head_norm={trained}: pass those overrides" in r.stderr

    images = sorted(shapes_root.rglob("*.png"))[:2]
    pred_dir = tmp_path / "pred"
    r = run("predict", cfg, *images, "--checkpoint", run_dir / "checkpoints" / "best.pt", "--out", pred_dir)
    assert r.returncode == 0, r.stderr
    assert str(images[0]) in r.stdout and "object" in r.stdout
    records = json.loads((pred_dir / "predictions.json").read_text())
    assert len(records) == 2 and all("detections" in rec for rec in records)
    assert len(list(pred_dir.glob("*.png"))) == 2


def test_shapes_written_as_coco_train_through_the_coco_reader(tmp_path):
    root = tmp_path / "shapes"
    r = run("data", "synth", "shapes", "--out", root, "--num-images", "40", "--size", "32", "--coco")
    assert r.returncode == 0, r.stderr
    assert "instances_train.json" in r.stdout
    test = json.loads((root / "annotations" / "instances_test.json").read_text())
    assert len(test["images"]) == 4 and test["annotations"][0]["segmentation"]["size"] == [32, 32]

    cfg = tiny_detection_config(tmp_path, root, dataset="coco", name="faster_rcnn")
    r = run("train", cfg, "--run-dir", tmp_path / "run", "train.final_test=true")
    assert r.returncode == 0, r.stderr
    assert "samples train 32, val 4, test 4" in r.stdout
    assert (tmp_path / "run" / "detections_test.json").exists()


def test_coco_root_without_annotations_is_a_named_error(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = tiny_detection_config(tmp_path, tmp_path / "empty", dataset="coco")
    r = run("train", cfg, "--run-dir", tmp_path / "run")
    assert r.returncode == 1
    assert "no COCO training annotations" in r.stderr and "instances_train" in r.stderr
    assert "Traceback" not in r.stderr


def test_coco_file_without_images_fails_data_check_and_train(tmp_path):
    ann = tmp_path / "coco" / "annotations" / "instances_train.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps({"images": []}))
    cfg = tiny_detection_config(tmp_path, tmp_path / "coco", dataset="coco")
    for args in (["data", "check", cfg], ["train", cfg, "--run-dir", tmp_path / "run"]):
        r = run(*args)
        assert r.returncode == 1, r.stdout
        assert r.stderr.startswith(f"error: {ann} has no images: its 'images' list is missing or empty")
        assert "no problems found" not in r.stdout and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
