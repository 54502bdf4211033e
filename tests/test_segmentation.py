"""The segmentation task: each head on two backbone families, losses, inference modes, and the
CLI end to end (train, eval, predict writing palette PNGs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli as run
from PIL import Image

from visionkit import load_config
from visionkit.errors import ConfigError
from visionkit.models.backbones import resnet  # noqa: F401  (registers)
from visionkit.models.heads.segmentation import SegmentationSettings, boundary_factor, cross_entropy_loss
from visionkit.registry import BACKBONES, TASKS
from visionkit.tasks.segmentation import SegmentationTask

CLASSES = ["bg", "a", "b"]


def batch(size=32, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    semantic = torch.zeros(n, size, size, dtype=torch.long)
    semantic[:, :, size // 2:] = 1  # right half class 1
    semantic[:, size // 2:, :size // 4] = 2  # a bottom-left block class 2
    semantic[:, :4] = 255  # an ignored band
    return {"images": images, "semantic": semantic}


def make_task(backbone="resnet18_w32", **kw):
    kw.setdefault("channels", 16)
    kw.setdefault("fpn_channels", 16)
    return SegmentationTask(BACKBONES.get(backbone)(in_channels=3), CLASSES, SegmentationSettings(**kw))


@pytest.mark.parametrize("backbone", ["resnet18_w32", "densenet_bc_k12_tiny"])
@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "semantic_fpn"])
def test_training_step_for_each_head_on_two_families(head, backbone):
    torch.manual_seed(0)
    task = make_task(backbone, name=head, aux=True, atrous_rates=[1, 2, 3])
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)
    b = batch()
    first = None
    for _ in range(3):
        losses = task.loss(b)
        assert set(losses) == {"loss_ce", "loss_aux"}
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        first = first if first is not None else total.item()
        # the gradient reaches the first stage of the backbone and the head
        stem = next(p for p in task.backbone.parameters() if p.requires_grad)
        assert stem.grad is not None and stem.grad.abs().sum() > 0
        opt.step()
    assert total.item() < first  # it learns the fixed batch
    task.eval()
    pred = task.predict({"images": b["images"]})
    assert pred["labels"].shape == (2, 32, 32) and pred["labels"].max() < 3
    assert task(b["images"]).shape == (2, 3, 32, 32)  # logits at the input size


def test_ignored_pixels_do_not_count_and_class_weights_and_dice_change_the_loss():
    torch.manual_seed(0)
    task = make_task(name="semantic_fpn")
    b = batch()
    base = task.loss(b)["loss_ce"]
    changed = {**b, "semantic": b["semantic"].clone()}
    changed["semantic"][:, :4] = 255  # already ignored: relabel with another ignore-only change
    assert torch.allclose(task.loss(changed)["loss_ce"], base)
    weighted = make_task(name="semantic_fpn", class_weights=[1.0, 0.0, 0.0])
    weighted.load_state_dict(task.state_dict())
    assert not torch.allclose(weighted.loss(b)["loss_ce"], base)
    dice = make_task(name="semantic_fpn", dice_weight=0.5)
    dice.load_state_dict(task.state_dict())
    terms = dice.loss(b)
    assert set(terms) == {"loss_ce", "loss_dice"} and 0 < terms["loss_dice"] <= 0.5


def test_label_boundaries_mark_both_sides_of_a_rim_and_not_the_image_border():
    from visionkit.models.heads.segmentation import label_boundaries

    t = torch.zeros(1, 6, 6, dtype=torch.long)
    t[0, 2:4, 2:4] = 1  # a 2x2 object: every pixel within 1 px (8-neighbourhood) of it is a rim
    expected = torch.zeros(1, 6, 6, dtype=torch.bool)
    expected[0, 1:5, 1:5] = True
    assert torch.equal(label_boundaries(t), expected)
    assert not label_boundaries(torch.ones(2, 5, 7, dtype=torch.long)).any()


def test_boundary_weight_is_a_weighted_mean_that_favours_rim_pixels():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 6, 6)
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[0, 2:4, 2:4] = 1
    target[0, 0, 0] = 255  # ignored: no weight, no loss
    plain = make_task(name="semantic_fpn")
    nll = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")[0]
    rim = torch.zeros(6, 6, dtype=torch.bool)
    rim[1:5, 1:5] = True
    rim[0:2, 0:2] = True  # the ignored corner is a label change for its neighbours
    w = torch.where(rim, 3.0, 1.0)
    w[0, 0] = 0
    heavy = make_task(name="semantic_fpn", boundary_weight=3.0)
    def ce(task):  # the task's cross-entropy term, with its settings
        factor = boundary_factor(target, task.boundary_weight)
        return cross_entropy_loss(logits, target, task.ignore_index, task.class_weights, factor)

    assert torch.allclose(ce(heavy), (nll * w).sum() / w.sum())
    assert torch.allclose(ce(plain), nll.sum() / 35)  # 1.0 is the plain mean
    # with class weights: each pixel's weight is class weight x rim factor, normalised by their sum
    cw = torch.tensor([0.5, 2.0, 1.0])
    both = make_task(name="semantic_fpn", boundary_weight=3.0, class_weights=cw.tolist())
    wc = w * cw[target[0].clamp(max=2)]
    assert torch.allclose(ce(both), (nll * wc).sum() / wc.sum())


def test_shuffle_upsampling_starts_as_the_bilinear_head_and_learns_sub_pixel_logits():
    torch.manual_seed(0)
    plain = make_task(name="semantic_fpn").eval()
    shuffle = make_task(name="semantic_fpn", upsample="shuffle")
    missing = shuffle.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["head.refine.0.weight", "head.refine.0.bias"]
    x = batch()["images"]
    assert torch.allclose(shuffle.eval()(x), plain(x), atol=1e-6)  # zero-initialised residual
    shuffle.train()
    opt = torch.optim.Adam(shuffle.parameters(), lr=1e-2)
    sum(shuffle.loss(batch()).values()).backward()
    opt.step()
    assert shuffle.head.refine[0].weight.abs().sum() > 0
    assert not torch.allclose(shuffle.eval()(x), plain(x), atol=1e-4)


def test_slide_inference_covers_the_image_and_matches_whole_on_one_window():
    torch.manual_seed(0)
    whole = make_task(name="fcn").eval()
    slide = make_task(name="fcn", inference="slide", window=64, stride=40).eval()
    slide.load_state_dict(whole.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(slide.predict({"images": x})["labels"], whole.predict({"images": x})["labels"])
    big = torch.randn(1, 3, 100, 150)
    assert slide.predict({"images": big})["labels"].shape == (1, 100, 150)
    small = make_task(name="fcn", inference="slide", window=64).eval()
    assert small.predict({"images": torch.randn(1, 3, 40, 48)})["labels"].shape == (1, 40, 48)
    # a list of differently sized images (evaluation at each image's own size)
    out = whole.predict({"images": [torch.randn(3, 32, 40), torch.randn(3, 48, 32)]})
    assert [tuple(t.shape) for t in out["labels"]] == [(32, 40), (48, 32)]


def seg_config(tmp_path, shapes_root, **over) -> Path:
    cfg = {
        "task": "segmentation",
        "model": {"backbone": {"name": "resnet18_w32"},
                  "head": {"name": "semantic_fpn", "channels": 16, "fpn_channels": 16}},
        "data": {"dataset": "shapes", "root": str(shapes_root), "image_size": 32,
                 "synth": {"num_images": 240, "size": 32, "seed": 0},
                 "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "batch_size": 32, "num_workers": 0,
                 "segmentation": {"scale": [0.75, 1.25]}},
        "train": {"epochs": 1, "device": "cpu", "log_every": 1, "vis_images": 2, "progress": False,
                  "optimizer": {"name": "adam", "lr": 3e-3, "weight_decay": 0.0}},
    }
    for key, value in over.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_head_that_cannot_fit_the_backbone_names_both(tmp_path, shapes_root):
    cfg = load_config(seg_config(tmp_path, shapes_root, **{"model.head.aux": True,
                                                           "model.backbone.out_stages": ["layer4"]}))
    with pytest.raises(ConfigError, match="head 'semantic_fpn' on backbone 'resnet18_w32'.*two"):
        TASKS.get("segmentation").from_config(cfg, {"classes": CLASSES})
    cfg = load_config(seg_config(tmp_path, shapes_root, **{"model.head.class_weights": [1.0, 2.0]}))
    with pytest.raises(ConfigError, match="class_weights' has 2 values for 3 classes"):
        TASKS.get("segmentation").from_config(cfg, {"classes": CLASSES})




def test_cli_train_eval_predict_writes_palette_pngs(tmp_path, shapes_root):
    cfg = seg_config(tmp_path, shapes_root)
    run_dir = tmp_path / "run"
    r = run("train", cfg, "--run-dir", run_dir)
    assert r.returncode == 0, r.stderr
    assert "mIoU" in r.stdout and "IoU/background" in r.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in records if x["split"] == "val"][-1]
    assert 0 <= val["mIoU"] <= 1 and 0 <= val["pixel_acc"] <= 1 and "fw_iou" in val and "mean_acc" in val

    ckpt = run_dir / "checkpoints" / "best.pt"
    out = tmp_path / "test.json"
    r = run("eval", cfg, "--checkpoint", ckpt, "--split", "test", "--output", out)
    assert r.returncode == 0, r.stderr
    assert "mIoU" in r.stdout
    rec = json.loads(out.read_text())
    assert rec["samples"] == 24 and len(rec["confusion_matrix"]) == 7
    assert sum(map(sum, rec["confusion_matrix"])) == 24 * 32 * 32  # every pixel of the split scored
    assert set(rec["per_class_iou"]) == {"background", "circle", "crescent", "cross", "square", "star", "triangle"}

    inputs = sorted(shapes_root.glob("star/*.png"))[:2]
    pred_dir = tmp_path / "pred"
    r = run("predict", cfg, *inputs, "--checkpoint", ckpt, "--out", pred_dir)
    assert r.returncode == 0, r.stderr
    assert sum("%" in line for line in r.stdout.splitlines()) == 2  # "background 80.1%, ..."
    preds = json.loads((pred_dir / "predictions.json").read_text())
    assert [p["path"] for p in preds] == [str(p) for p in inputs]
    for p in preds:
        assert abs(sum(p["pixel_share"].values()) - 1) < 1e-6 and p["files"][0].endswith("_mask.png")
        mask = Image.open(pred_dir / p["files"][0])
        assert mask.mode == "P" and mask.size == (32, 32) and int(np.asarray(mask).max()) < 7
        assert mask.getpalette()[3:6] == [128, 0, 0]  # class 1's VOC colour
    drawings = [f for f in pred_dir.glob("*.png") if not f.name.endswith("_mask.png")]
    assert len(drawings) == 2 and Image.open(drawings[0]).size[0] > 2 * 32  # image + overlay, enlarged
