"""On a GPU: every task trains and evaluates on CUDA, with bf16/fp16 autocast and channels_last, and
what it saves evaluates the same on the CPU. Skipped where torch sees no CUDA device (CI has none);
run them with ``pytest tests/test_cuda.py`` on a machine with a GPU."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import run_cli

from visionkit import api

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def read_metrics(run_dir, split):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_classification_trains_on_cuda_and_its_checkpoint_scores_the_same_on_cpu(make_config, tmp_path, amp):
    cfg = make_config(**{"model.backbone.name": "resnet18_w32", "train.device": "cuda", "train.amp": amp,
                         "train.epochs": 3, "data.num_workers": 2})
    trainer = api.train(cfg, run_dir=tmp_path / "run", log=lambda *_: None)
    assert trainer.device.type == "cuda"
    assert trainer.channels_last  # train.channels_last: auto turns it on on CUDA
    conv = next(p for p in trainer.task.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run", "train")]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    cuda_acc = read_metrics(tmp_path / "run", "val")[-1]["accuracy"]
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    if amp == "fp16":  # the loss scaler's state travels in the checkpoint
        assert torch.load(ckpt, map_location="cpu", weights_only=True)["scaler"]["scale"] > 0
    cpu_metrics, _, _ = api.evaluate(cfg, ckpt, split="val", overrides=["train.device=cpu"], log=lambda *_: None)
    # autocast rounds activations to 8 (bf16) or 11 (fp16) mantissa bits: a sample or two may flip
    assert abs(cpu_metrics["accuracy"] - cuda_acc) <= 0.05, (cpu_metrics, cuda_acc)


def _write(tmp_path, name, cfg) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_segmentation_depth_and_mask_rcnn_train_eval_and_predict_on_cuda(tmp_path, shapes_root):
    from test_depth_task import depth_config
    from test_detection_cli import tiny_detection_config
    from test_segmentation import seg_config

    seg = seg_config(tmp_path, shapes_root, **{"train.device": "cuda", "train.amp": "bf16", "train.epochs": 2})
    det = tiny_detection_config(tmp_path, shapes_root)
    cfg = yaml.safe_load(det.read_text())
    cfg["train"].update(device="cuda", amp="bf16", epochs=2)
    det = _write(tmp_path, "det.yaml", cfg)
    depth = depth_config(shapes_root, tmp_path, **{"train.device": "cuda", "train.amp": "bf16", "train.epochs": 2})
    for name, path, key in [("seg", seg, "mIoU"), ("det", det, "bbox_AP"), ("depth", depth, "abs_rel")]:
        run_dir = tmp_path / name
        r = run_cli("train", path, "--run-dir", run_dir)
        assert r.returncode == 0, f"{name}: {r.stderr[-3000:]}"
        assert "device cuda" in r.stdout, r.stdout[-2000:]
        val = read_metrics(run_dir, "val")[-1]
        assert key in val and val[key] == val[key], val  # present and not NaN
        # the CUDA-trained checkpoint evaluates on the CPU to the same score
        out = tmp_path / f"{name}_cpu.json"
        r = run_cli("eval", path, "--checkpoint", run_dir / "checkpoints" / "last.pt", "--split", "val",
                    "--output", out, "train.device=cpu")
        assert r.returncode == 0, f"{name}: {r.stderr[-3000:]}"
        cpu = json.loads(out.read_text())["metrics"][key]
        assert cpu == pytest.approx(val[key], abs=0.03), (name, cpu, val[key])
        images = sorted(shapes_root.rglob("*.png"))[:2]
        r = run_cli("predict", path, *images, "--checkpoint", run_dir / "checkpoints" / "last.pt",
                    "--out", tmp_path / f"{name}_pred")
        assert r.returncode == 0, f"{name}: {r.stderr[-3000:]}"
        assert json.loads((tmp_path / f"{name}_pred" / "predictions.json").read_text())


def test_deterministic_cuda_runs_repeat_bitwise(make_config, tmp_path):
    cfg = make_config(**{"model.backbone.name": "resnet18_w32", "train.device": "cuda", "train.epochs": 1,
                         "train.deterministic": True, "model.head.dropout": 0.3})
    a = api.train(cfg, run_dir=tmp_path / "a", log=lambda *_: None)
    b = api.train(cfg, run_dir=tmp_path / "b", log=lambda *_: None)
    sa, sb = a.task.state_dict(), b.task.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"'{k}' differs between two deterministic CUDA runs"
