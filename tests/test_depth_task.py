"""The depth task end to end: config keys, a training step on two backbone families, and the CLI
(train, eval, predict writing drawings, 16-bit PNG and .npy depth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli as _run
from conftest import tiny_config_dict
from PIL import Image

from visionkit import load_config
from visionkit.data.build import build_datasets
from visionkit.data.collate import collate_samples
from visionkit.errors import ConfigError
from visionkit.registry import TASKS

ROOT = Path(__file__).resolve().parents[1]


def depth_config(shapes_root, tmp_path, name="depth.yaml", **over) -> Path:
    cfg = tiny_config_dict(shapes_root, **{
        "task": "depth", "model.backbone.name": "resnet18_w32",
        "model.head": {"channels": 8}, "data.depth": {"min_depth": 1.0, "max_depth": 16.0},
        "data.batch_size": 16, "train.epochs": 1, **over})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_depth_keys_live_under_data_depth_only(shapes_root, tmp_path, make_config):
    cfg = load_config(depth_config(shapes_root, tmp_path))
    assert cfg.data.depth.format == "nyu" and cfg.data.depth.max_depth == 16.0
    assert cfg.model.head.name == "unet" and cfg.model.head.loss == "silog"
    classification = load_config(make_config())
    assert "depth" not in classification.data  # other tasks' configs are undisturbed
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_config_dict(shapes_root, **{"task": "depth",
                                                                   "data.depth": {"eval_crop": "gar"}})))
    with pytest.raises(ConfigError, match="did you mean 'garg'"):
        load_config(bad)


@pytest.mark.parametrize("backbone,decoder,loss", [("resnet18_w32", "unet", "silog"),
                                                   ("vgg11_bn_w16", "fpn", "berhu"),
                                                   ("densenet_bc_k12_tiny", "unet", "l1")])
def test_a_training_step_on_backbone_families(shapes_root, tmp_path, backbone, decoder, loss):
    cfg = load_config(depth_config(shapes_root, tmp_path, **{
        "model.backbone.name": backbone, "model.head": {"name": decoder, "loss": loss, "channels": 8}}))
    task = TASKS.get("depth").from_config(cfg, {"classes": []})
    data, _ = build_datasets(cfg, type(task), None, splits=("train",))
    batch = task.preprocess(collate_samples([data["train"][(0, i)] for i in range(8)]))
    assert batch["depth"].shape == (8, 32, 32)
    opt = torch.optim.Adam(task.parameters(), 1e-3)
    task.train()
    first = None
    for _ in range(4):
        value = task.loss(batch)[f"loss_{loss}"]
        opt.zero_grad()
        value.backward()
        opt.step()
        first = value.item() if first is None else first
    assert value.item() < first  # the same batch: four steps must lower the loss
    grads = [p.grad for p in task.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)  # the backbone learns too
    task.eval()
    pred = task.predict(batch)["depth"]
    assert pred.shape == (8, 32, 32) and pred.min() >= 1.0 and pred.max() <= 16.0




def test_cli_train_eval_predict_write_depth_files(shapes_root, tmp_path):
    cfg = depth_config(shapes_root, tmp_path, **{"train.final_test": True})
    run_dir = tmp_path / "run"
    r = _run("train", cfg, "--run-dir", run_dir)
    assert r.returncode == 0, r.stderr
    assert "abs_rel" in r.stdout and "delta1" in r.stdout
    test = json.loads((run_dir / "test_metrics.json").read_text())
    assert 0 < test["abs_rel"] and 0 <= test["delta1"] <= 1 and test["skipped_images"] == 0

    out = tmp_path / "eval.json"
    r = _run("eval", cfg, "--checkpoint", run_dir / "checkpoints" / "best.pt", "--split", "test",
             "--output", out)
    assert r.returncode == 0, r.stderr
    record = json.loads(out.read_text())
    assert record["samples"] == 24 and record["images"] == 24 and record["average"] == "image"
    assert record["metrics"]["abs_rel"] == pytest.approx(test["abs_rel"], rel=1e-4)

    inputs = sorted(shapes_root.glob("star/*.png"))[:2]
    pred_dir = tmp_path / "pred"
    r = _run("predict", cfg, *inputs, "--checkpoint", run_dir / "checkpoints" / "best.pt", "--out", pred_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(" m, median ") == 2
    preds = json.loads((pred_dir / "predictions.json").read_text())
    assert [len(p["files"]) for p in preds] == [2, 2]
    for p in preds:
        png, npy = (pred_dir / f for f in p["files"])
        metres = np.load(npy)
        assert metres.shape == (32, 32) and 1.0 <= metres.min() and metres.max() <= 16.0
        with Image.open(png) as img:
            stored = np.asarray(img)
        assert stored.dtype == np.uint16  # millimetres (data.depth.format nyu)
        assert np.abs(stored / 1000.0 - metres).max() <= 0.0005 + 1e-6
        assert p["median"] == pytest.approx(float(np.median(metres)), rel=0.05)
    drawings = sorted(f.name for f in pred_dir.glob("*.png") if not f.name.endswith("_depth.png"))
    assert len(drawings) == 2
    with Image.open(pred_dir / drawings[0]) as img:  # input | depth, side by side
        assert img.width > 1.8 * img.height


def test_depth_pairs_data_set_through_the_cli(tmp_path):
    """NYU-style folder pairs (RGB + 16-bit millimetre PNGs) with an image-size mismatch named."""
    root = tmp_path / "nyu"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for d in ("image", "depth"):
            (root / split / d).mkdir(parents=True)
        for i in range(n):
            rgb = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / split / "image" / f"{i}.png")
            millimetres = rng.integers(500, 9000, (40, 48), dtype=np.uint16)
            Image.fromarray(millimetres).save(root / split / "depth" / f"{i}.png")
    cfg = tiny_config_dict(tmp_path, **{"task": "depth", "model.backbone.name": "resnet18_w32",
                                        "data.dataset": "depth_pairs", "data.root": str(root),
                                        "data.depth": {"crop": [32, 32]}, "model.head": {"channels": 8},
                                        "data.batch_size": 4, "train.epochs": 1})
    path = tmp_path / "nyu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = _run("train", path, "--run-dir", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    assert "samples train 6, val 2" in r.stdout and "skipped_images 0.0000" in r.stdout
    # a map without any measurement is skipped and counted, not an error
    Image.fromarray(np.zeros((40, 48), np.uint16)).save(root / "val" / "depth" / "0.png")
    r = _run("train", path, "--run-dir", tmp_path / "r1")
    assert r.returncode == 0, r.stderr
    assert "skipped_images 1.0000" in r.stdout
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(root / "val" / "depth" / "1.png")
    r = _run("train", path, "--run-dir", tmp_path / "r2")
    assert r.returncode == 1
    assert str(root / "val" / "depth" / "1.png") in r.stderr and "same size" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "depth").glob("*.yaml")), ids=lambda p: p.name)
def test_depth_recipes_build_their_task(path):
    cfg = load_config(path, ["model.backbone.weights=null"])  # weights are the user's download
    task = TASKS.get("depth").from_config(cfg, {"classes": []})
    assert task.max_depth == cfg.data.depth.max_depth
    size = cfg.data.depth.crop or [cfg.data.image_size] * 2
    with torch.no_grad():
        assert task.eval()(torch.zeros(1, 3, *size)).shape == (1, *size)


def test_visualize_shows_input_prediction_truth_and_error(shapes_root, tmp_path):
    cfg = load_config(depth_config(shapes_root, tmp_path))
    task = TASKS.get("depth").from_config(cfg, {"classes": []}).eval()
    images = torch.zeros(2, 3, 32, 32)
    depth = torch.full((2, 32, 32), 4.0)
    depth[:, :8] = 0.0  # top quarter has no measurement
    pred = {"depth": torch.full((2, 32, 32), 4.0)}
    grid = task.visualize({"images": images, "depth": depth}, pred, 8)
    # 2 rows x 4 panels of 32 px with 2 px padding, scaled x4 to reach 128 px panels
    assert grid.shape == (1, 3, 4 * (2 + 2 * 34), 4 * (2 + 4 * 34)) and grid.dtype == torch.uint8
    truth = grid[0, :, 4 * 2:4 * 34, 4 * (2 + 2 * 34):4 * (2 + 3 * 34) - 8]  # row 1, panel 3
    assert (truth[:, :4 * 8] == 96).all()  # no ground truth: grey
    error = grid[0, :, 4 * 2 + 4 * 8:4 * 34, 4 * (2 + 3 * 34):4 * (2 + 4 * 34) - 8]
    assert (error == torch.tensor([0, 0, 4]).view(3, 1, 1)).all()  # exact prediction: zero error colour
    only_pred = task.visualize({"images": images}, pred, 8)
    assert only_pred.shape[-1] == 4 * (2 + 2 * 34)  # input | prediction


def _stripes():
    """A 64 px image and depth map of bright stripes near the camera (2 m) before a far wall (8 m),
    their edges at many sub-pixel phases once resized."""
    from torchvision import tv_tensors

    image = torch.zeros(1, 64, 64, dtype=torch.uint8)
    depth = torch.full((1, 64, 64), 8.0)
    for edge in range(9, 60, 10):
        image[:, :, edge:edge + 5], depth[:, :, edge:edge + 5] = 255, 2.0
    return tv_tensors.Image(image), tv_tensors.Mask(depth)


def _assert_rims_agree(img, dep):
    """Depth values were never blended, and wherever the image is clearly stripe or wall the
    depth says the same."""
    assert set(dep.unique().tolist()) <= {2.0, 8.0}
    bright = img[0].float() / 255
    sure = (bright - 0.5).abs() > 0.1
    assert torch.equal((bright > 0.5)[sure], (dep[0] == 2.0)[sure])


@pytest.mark.parametrize("factor", [0.8, 0.85, 1.1, 1.25])
def test_random_scale_keeps_depth_edges_on_the_images_edges(factor):
    """Depth is resampled at pixel centres like the image (plain 'nearest' put object rims up to
    half a pixel off, giving them the depth of the other side); values are never blended."""
    from visionkit.data.transforms import RandomScale

    _assert_rims_agree(*RandomScale((factor, factor))(*_stripes()))


@pytest.mark.parametrize("size", [(51, 51), (54, 54), (70, 70), (80, 80)])
@pytest.mark.parametrize("train", [False, True])
def test_fixed_resize_keeps_depth_edges_on_the_images_edges(size, train):
    """``data.depth.resize`` (applied in training and evaluation alike) resamples depth at pixel
    centres too: v2's Resize samples masks with plain 'nearest', which at 0.8x put stripe rims on
    the wrong side of the image's edge, so the scores compared predictions with a shifted truth."""
    from visionkit.data.transforms import depth_transforms

    class D(dict):
        __getattr__ = dict.__getitem__

    image, depth = _stripes()
    cfg = D(kb_crop=False, resize=list(size), crop=None, scale=[1.0, 1.0])
    out = depth_transforms(train, cfg, hflip=0.0)({"image": image, "depth": depth})
    assert out["depth"].shape[-2:] == size
    _assert_rims_agree(out["image"], out["depth"])
