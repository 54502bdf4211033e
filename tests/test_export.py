"""Export to ONNX and TorchScript: every task exports and verifies against PyTorch, one dynamic file
runs batches 1 and 3, the metadata reads back, predict from the ONNX file matches predict from the
checkpoint, and bad input is named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from visionkit import load_config
from visionkit.data.build import build_source
from visionkit.engine.checkpoint import FORMAT
from visionkit.errors import CheckpointError, ConfigError
from visionkit.export.api import export
from visionkit.export.formats import Runner
from visionkit.export.graph import read_metadata
from visionkit.export.verify import VerificationError
from visionkit.registry import TASKS

onnx = pytest.importorskip("onnx")  # the [export] extra (in [dev])
pytest.importorskip("onnxruntime")

ENV = {"OMP_NUM_THREADS": "1"}
SEG = {"task": "segmentation", "model.backbone.name": "resnet18_w32",
       "model.head": {"name": "semantic_fpn", "channels": 8, "fpn_channels": 8}}
DEPTH = {"task": "depth", "model.backbone.name": "resnet18_w32", "model.head": {"channels": 8},
         "data.depth": {"min_depth": 1.0, "max_depth": 16.0}}
DET = {"task": "detection", "model.backbone.name": "resnet18_w32", "data.split": {"counts": [16, 8, 8]},
       "model.head": {"name": "mask_rcnn", "fpn_channels": 16, "box_representation": 32, "mask_channels": 16,
                      "mask_convs": 1, "vis_score": 0.0}}


def checkpoint(cfg_path: Path, seed: int = 0) -> Path:
    """A checkpoint of the config's model with seeded random weights, as the trainer writes it."""
    cfg = load_config(cfg_path)
    source = build_source(cfg)
    torch.manual_seed(seed)
    task = TASKS.get(cfg.task).from_config(cfg, {**source.info, "classes": source.classes})
    path = cfg_path.with_suffix(".pt")
    torch.save({"format": FORMAT, "model": task.state_dict(),
                "meta": {"task": cfg.task, "backbone": cfg.model.backbone.name, **task.metadata()}}, path)
    return path


def quiet(*_):
    pass


def cli(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (a subprocess per call costs ~10 s on a loaded machine); the
    tests below still run one real subprocess each."""
    from visionkit.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("task,over", [("classification", {}), ("segmentation", SEG), ("depth", DEPTH)])
def test_each_dense_task_exports_and_verifies_at_batch_1_and_3_and_a_second_size(
        make_config, tmp_path, task, over, fmt):
    cfg = make_config(f"{task}.yaml", **over)
    lines: list[str] = []
    out = tmp_path / f"model.{fmt}"
    summary = export(cfg, checkpoint(cfg), fmt, out, dynamic=True, verify_export=True, samples=3,
                     log=lines.append)
    checks = summary["checks"]
    assert checks and all(c.ok for c in checks)
    cases = {c.case for c in checks}
    assert "image 0 32x32 batch 1" in cases and "images 32x32 batch 3" in cases
    if task != "classification":  # any image size: also a second one through the same file
        assert "images 64x64 batch 2" in cases
    assert max(c.max_abs for c in checks) < 1e-4
    assert any("max abs" in line and "max rel" in line for line in lines)
    # the one dynamic file runs batch 1 and batch 3 outside the verifier too
    runner = Runner(out)
    for b in (1, 3):
        outputs = runner(torch.rand(b, 3, 32, 32))
        assert outputs[0].shape[0] == b


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_mask_rcnn_exports_with_any_image_size_and_verifies(make_config, tmp_path, fmt):
    cfg = make_config("det.yaml", **DET)
    out = tmp_path / f"det.{fmt}"
    checks = export(cfg, checkpoint(cfg), fmt, out, dynamic=True, verify_export=True, samples=2,
                    log=quiet)["checks"]
    assert {c.output for c in checks} == {"boxes", "labels", "scores", "masks"}
    assert "image 0 64x64 batch 1" in {c.case for c in checks}
    boxes = [c for c in checks if c.output == "boxes"]
    assert all(c.ok for c in checks) and boxes[0].shape[0] > 0  # real detections were compared
    meta = read_metadata(Runner(out).raw_meta, str(out))
    assert meta["batch"] == "1" and meta["normalize_in_graph"] is True


def test_faster_rcnn_onnx_has_no_masks_output(make_config, tmp_path):
    cfg = make_config("frcnn.yaml", **{**DET, "model.head": {**DET["model.head"], "name": "faster_rcnn"}})
    out = tmp_path / "frcnn.onnx"
    export(cfg, checkpoint(cfg), "onnx", out, verify_export=True, samples=1, log=quiet)
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["boxes", "labels", "scores"]


def test_metadata_round_trip_onnx_and_torchscript(make_config, tmp_path):
    cfg = make_config("seg.yaml", **SEG)
    ckpt = checkpoint(cfg)
    for fmt in ("onnx", "torchscript"):
        out = tmp_path / f"seg.{fmt}"
        export(cfg, ckpt, fmt, out, normalize_in_graph=True, log=quiet)
        meta = read_metadata(Runner(out).raw_meta, str(out))
        assert meta["task"] == "segmentation" and meta["backbone"] == "resnet18_w32"
        assert meta["classes"][0] == "background" and len(meta["classes"]) == 7
        assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.25, 0.25, 0.25]
        assert meta["input_size"] == [32, 32] and meta["normalize_in_graph"] is True
        assert meta["outputs"] == ["logits"] and len(meta["task_attrs"]["palette"]) == 7
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "seg.onnx")).metadata_props}
    assert props["task"] == "segmentation" and props["opset"] == "17"  # plain ONNX metadata_props
    # normalisation in the graph: 0..1 input gives what the normalised input gives without it
    export(cfg, ckpt, "onnx", tmp_path / "plain.onnx", log=quiet)
    x = torch.rand(1, 3, 32, 32)
    inside = Runner(tmp_path / "seg.onnx")(x)[0]
    outside = Runner(tmp_path / "plain.onnx")((x - 0.5) / 0.25)[0]
    assert torch.allclose(inside, outside, atol=1e-4)


def test_verify_fails_beyond_the_tolerance(make_config, tmp_path):
    cfg = make_config("c.yaml")
    with pytest.raises(VerificationError, match="beyond atol 0 \\+ rtol 0"):
        # float32 kernels differ in the last bits: a zero tolerance must fail
        export(cfg, checkpoint(cfg), "onnx", tmp_path / "m.onnx", verify_export=True, atol=0, rtol=0,
               samples=4, log=quiet)


def _predictions(path: Path) -> list[dict]:
    return json.loads((path / "predictions.json").read_text())


def test_predict_from_onnx_matches_predict_from_the_checkpoint(make_config, tmp_path, shapes_root, capsys):
    images = sorted((shapes_root / "images").glob("*.png"))[:3] if (shapes_root / "images").exists() \
        else sorted(shapes_root.rglob("*.png"))[:3]
    from visionkit import api

    for name, over in (("cls", {}), ("seg", SEG), ("depth", DEPTH)):
        cfg = make_config(f"{name}.yaml", **over)
        if name == "cls":  # a checkpoint as training writes it (manifest, split.json beside it)
            api.train(cfg, ["train.epochs=1"], run_dir=tmp_path / "run", log=quiet)
            ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
        else:
            ckpt = checkpoint(cfg, seed=1)
        model = tmp_path / f"{name}.onnx"
        code, out, err = cli(capsys, "export", cfg, "--checkpoint", ckpt, "--format", "onnx", "--out", model,
                             "--dynamic")
        assert code == 0 and f"wrote {model}" in out, err
        a, b = tmp_path / f"{name}_ckpt", tmp_path / f"{name}_onnx"
        code, out1, err = cli(capsys, "predict", cfg, *images, "--checkpoint", ckpt, "--out", a)
        assert code == 0, err
        if name == "cls":  # once as a user runs it: a subprocess without the config
            r = run_cli("predict", model, *images, "--out", b, env=ENV)
            code, out2, err = r.returncode, r.stdout, r.stderr
        else:
            code, out2, err = cli(capsys, "predict", model, *images, "--out", b)
        assert code == 0, err
        assert out1.splitlines()[:3] == out2.splitlines()[:3]  # the same printed lines
        ref, got = _predictions(a), _predictions(b)
        assert [r["path"] for r in ref] == [r["path"] for r in got]
        for x, y in zip(ref, got):
            for key in ("label", "pixel_share", "height", "width"):
                assert x.get(key) == y.get(key)
            for key in ("score", "mean_confidence", "median", "min", "max"):
                if key in x:
                    assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5)
        assert sorted(f.name for f in a.iterdir()) == sorted(f.name for f in b.iterdir())
        if name == "seg":  # the palette PNGs hold the same class ids
            from PIL import Image

            for f in a.glob("*_mask.png"):
                assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(b / f.name)))


def test_predict_from_onnx_detection_matches_the_checkpoint(make_config, tmp_path, shapes_root):
    cfg = make_config("det.yaml", **DET)
    ckpt = checkpoint(cfg)
    model = tmp_path / "det.onnx"
    export(cfg, ckpt, "onnx", model, dynamic=True, log=quiet)
    images = sorted(shapes_root.rglob("*.png"))[:2]
    from visionkit import api
    from visionkit.export.runtime import predict_onnx

    ref = api.predict(cfg, ckpt, images, tmp_path / "a", log=quiet)
    got = predict_onnx(model, images, tmp_path / "b", log=quiet)
    for x, y in zip(ref, got):
        assert [d["label"] for d in x["detections"]] == [d["label"] for d in y["detections"]]
        assert len(x["detections"]) > 0
        for d, e in zip(x["detections"], y["detections"]):
            assert e["box"] == pytest.approx(d["box"], abs=0.02) and e["score"] == pytest.approx(d["score"], abs=1e-3)
            assert abs(e["mask_area"] - d["mask_area"]) <= 2


def test_bad_input_is_named(make_config, tmp_path, capsys):
    cfg = make_config("c.yaml")
    r = run_cli("export", cfg, "--checkpoint", tmp_path / "missing.pt", "--format", "onnx", "--out",
                tmp_path / "m.onnx", env=ENV)
    assert r.returncode == 1 and "missing.pt' does not exist" in r.stderr
    ckpt = checkpoint(cfg)
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; choose one of: onnx, torchscript"):
        export(cfg, ckpt, "tflite", tmp_path / "m.tflite", log=quiet)
    with pytest.raises(ConfigError, match="--opset 9 is too old: the exported graphs need opset 11"):
        export(cfg, ckpt, "onnx", tmp_path / "m.onnx", opset=9, log=quiet)
    with pytest.raises(ConfigError, match="--opset applies to --format onnx only"):
        export(cfg, ckpt, "torchscript", tmp_path / "m.pt", opset=13, log=quiet)
    other = make_config("seg.yaml", **SEG)
    with pytest.raises(CheckpointError, match="holds a classification model"):
        export(other, ckpt, "onnx", tmp_path / "m.onnx", log=quiet)
    not_ours = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 1, 1), (torch.rand(1, 3, 8, 8),), str(not_ours), dynamo=False,
                      input_names=["images"])
    code, _, err = cli(capsys, "predict", not_ours, tmp_path)
    assert code == 1 and "has no visionkit metadata" in err
    code, _, err = cli(capsys, "predict", cfg, tmp_path)
    assert code == 2 and "predict needs --checkpoint" in err
    with pytest.raises(SystemExit) as usage:  # argparse: usage error, exit 2
        cli(capsys, "export", cfg, "--checkpoint", ckpt, "--out", tmp_path / "x.onnx")
    assert usage.value.code == 2 and "--format" in capsys.readouterr().err
    # a static export refuses other image sizes by name
    static = tmp_path / "seg_static.onnx"
    export(other, checkpoint(other), "onnx", static, log=quiet)
    from PIL import Image

    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(big)
    code, out, err = cli(capsys, "predict", static, big)  # skipped (the default), its reason listed
    assert code == 1 and "exported for 32x32 images" in out and "--dynamic" in out and "could not be" in err
    code, _, err = cli(capsys, "predict", static, big, "--on-error", "raise")
    assert code == 1 and "exported for 32x32 images" in err and "--dynamic" in err


def test_benchmark_row_10_runs_quick(capsys, tmp_path, monkeypatch):
    from benchmarks.harness import main

    monkeypatch.setenv("VISIONKIT_BENCH_TMP", str(tmp_path))
    assert main(["--list"]) == 0
    assert "onnx_runtime" in capsys.readouterr().out
    threads = torch.get_num_threads()
    try:
        assert main(["--quick", "--threads", "1", "--only", "onnx_runtime",
                     "--out", str(tmp_path / "b.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["details"]["batch"] for r in rows] == [1, 4]
    for r in rows:  # timings are not asserted (the machine's speed is not the code's)
        assert r["ours"] > 0 and r["baseline"] > 0 and r["details"]["max_abs_logit_difference"] < 1e-4
    assert rows[0]["target"] == ">= 1.3" and rows[0]["met"] in (True, False)
