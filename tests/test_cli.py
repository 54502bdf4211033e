"""The CLI as a user runs it: a subprocess, its exit code, its one-line errors, its files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli as run

ROOT = Path(__file__).resolve().parents[1]




def test_train_eval_predict_info_end_to_end(make_config, tmp_path):
    cfg = make_config(**{"train.epochs": 1})
    run_dir = tmp_path / "run"
    r = run("train", cfg, "train.optimizer.lr=1e-3", "--run-dir", run_dir)
    assert r.returncode == 0, r.stderr
    assert f"tensorboard --logdir {run_dir}" in r.stdout
    assert "run directory" in r.stdout
    assert (run_dir / "config.yaml").read_text().count("lr: 0.001") == 1

    ckpt = run_dir / "checkpoints" / "best.pt"
    out = tmp_path / "test.json"
    r = run("eval", cfg, "--checkpoint", ckpt, "--split", "test", "--output", out)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "top5" in r.stdout
    record = json.loads(out.read_text())
    assert record["split"] == "test" and record["samples"] == 24
    assert 0 <= record["metrics"]["accuracy"] <= 1 and len(record["confusion_matrix"]) == 6

    shapes_root = Path(__import__("yaml").safe_load(cfg.read_text())["data"]["root"])
    inputs = sorted(shapes_root.glob("star/*.png"))[:2]
    pred_dir = tmp_path / "pred"
    r = run("predict", cfg, *inputs, "--checkpoint", ckpt, "--out", pred_dir)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith(str(inputs[0].parent))]
    assert len(lines) == 2 and all(":" in line for line in lines)
    preds = json.loads((pred_dir / "predictions.json").read_text())
    assert [p["path"] for p in preds] == [str(p) for p in inputs]
    assert all(abs(sum(p["scores"].values()) - 1) < 1e-4 for p in preds)
    assert len(list(pred_dir.glob("*.png"))) == 2

    r = run("info", cfg, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["backbone"] == "lenet5" and info["params"] > 10_000 and info["gflops"] > 0


def test_config_show_prints_the_resolved_config(make_config):
    r = run("config", "show", make_config(), "train.epochs=5")
    assert r.returncode == 0
    assert "epochs: 5" in r.stdout and "num_workers: 0" in r.stdout


def test_info_lists_registries():
    r = run("info", "--json")
    assert r.returncode == 0, r.stderr
    reg = json.loads(r.stdout)
    assert set(reg["tasks"]) == {"classification", "detection", "segmentation", "depth"}
    assert {"shapes", "image_folder", "coco", "segmentation_folder", "depth_pairs"} <= set(reg["datasets"])
    assert {"lenet5", "alexnet", "vgg16", "resnet50", "resnext50_32x4d", "densenet121", "se_resnet50"} <= set(reg["backbones"])


def test_data_synth_writes_the_layout(tmp_path):
    r = run("data", "synth", "shapes", "--out", tmp_path / "s", "--num-images", "30", "--size", "32")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s" / "meta.json").exists() and len(list((tmp_path / "s").glob("*/*.png"))) == 30


@pytest.mark.parametrize("args,code,needle", [
    (["train"], 2, "usage"),
    (["train", "nope.yaml"], 2, "config file 'nope.yaml' does not exist"),
    (["frobnicate"], 2, "invalid choice"),
    (["export", "c.yaml", "--checkpoint", "x.pt", "--format", "onnx", "--out", "m.onnx", "--atol", "-1"], 2,
     "--atol: -1 is below 0; a tolerance is 0 or more"),
    (["data", "synth", "shapes", "--out", "x", "--num-images", "0"], 2, "--num-images: 0 is below 1"),  # was rc 1
])
def test_usage_errors_exit_2(args, code, needle):
    r = run(*args)
    assert r.returncode == code
    assert needle in r.stderr


def test_unknown_key_exits_2_with_suggestion_and_no_traceback(make_config):
    r = run("train", make_config(), "train.optimiser.lr=0.1")
    assert r.returncode == 2
    assert "unknown key 'train.optimiser'" in r.stderr and "did you mean 'optimizer'" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("override,needle", [
    ("trian.epochs=3", "command line: unknown key 'trian'; did you mean 'train'?"),  # was blamed on the file
    ("epochs=3", "command line: unknown key 'epochs'; did you mean 'train.epochs'?"),
    ("data.channels=2", "command line: 'data.channels' is 2, not one of: 1, 3"),  # was an AttributeError
    ("train.device=gpu", "command line: 'train.device' is 'gpu'; use auto, cpu, cuda or cuda:N"),  # was train only
])
def test_override_mistakes_are_blamed_on_the_command_line(make_config, override, needle):
    r = run("config", "show", make_config(), override)
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_an_input_too_small_for_the_backbone_fails_before_the_run_directory(make_config, tmp_path):
    r = run("train", make_config(), "model.backbone.name=resnet18", "data.image_size=16", "--run-dir", tmp_path / "r")
    assert r.returncode == 2, r.stderr  # was exit 1 at the first step, with the run directory made
    assert "command line: 'data.image_size' is 16, but resnet18 needs inputs of at least 32 pixels" in r.stderr
    assert not (tmp_path / "r").exists()


def test_a_monitor_the_task_does_not_report_fails_before_training(make_config, tmp_path):
    cfg = make_config(**{"train.epochs": 1})
    r = run("train", cfg, "train.monitor=acc", "--run-dir", tmp_path / "bad")
    assert r.returncode == 2, r.stderr  # was: one whole epoch trained, then this error
    assert ("command line: 'train.monitor' is 'acc', which is not a validation metric of task classification; "
            "choose one of accuracy, bad_samples, mean_class_accuracy, top5; did you mean 'accuracy'?") in r.stderr
    assert not (tmp_path / "bad").exists()
    r = run("train", cfg, "train.monitor=mean_class_accuracy", "--run-dir", tmp_path / "ok")
    assert r.returncode == 0, r.stderr
    best = json.loads((tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "mean_class_accuracy" in best


def test_every_task_evaluator_names_what_it_computes():
    """The up-front monitor check trusts metric_names(): it must cover compute()'s keys."""
    import torch

    from visionkit.evaluation.accuracy import AccuracyEvaluator, MultiLabelEvaluator
    from visionkit.evaluation.miou import MIoUEvaluator

    acc = AccuracyEvaluator(["a", "b", "c", "d", "e"])
    acc.process({"labels": torch.tensor([0, 1, 2])}, {"logits": torch.eye(5)[:3]})
    assert set(acc.compute()) == acc.metric_names()
    seg = MIoUEvaluator(["bg", "fg"], 255)
    seg.process({"semantic": torch.tensor([[[0, 1]]])}, {"labels": torch.tensor([[[0, 1]]])})
    assert set(seg.compute()) == seg.metric_names()
    multi = MultiLabelEvaluator(["a", "b"])
    multi.process({"labels": torch.tensor([[1.0, 0.0]])}, {"scores": torch.tensor([[0.9, 0.2]])})
    assert set(multi.compute()) == multi.metric_names()


def test_a_key_checked_against_the_data_names_where_it_was_set(make_config, tmp_path):
    cfg = make_config()
    r = run("train", cfg, "model.head.num_classes=10", "--run-dir", tmp_path / "r")
    assert r.returncode == 2
    assert "command line: 'model.head.num_classes' is 10 but the data set has 6 classes" in r.stderr, r.stderr
    cfg.write_text(cfg.read_text().replace("model:\n", "model:\n  head:\n    num_classes: 10\n", 1))
    r = run("train", cfg, "--run-dir", tmp_path / "r")
    assert f"{cfg}: 'model.head.num_classes' is 10" in r.stderr, r.stderr


def test_config_files_that_are_no_config_are_named(tmp_path):
    binary, base_dir = tmp_path / "binary.yaml", tmp_path / "base.yaml"
    binary.write_bytes(b"\xff\xfe\x00task")
    base_dir.write_text("_base_: .\ntask: classification\n")
    cases = {binary: "is not UTF-8 text", base_dir: f"{base_dir}: _base_ '.' is a folder"}
    for path, needle in cases.items():
        r = run("config", "show", path)
        assert r.returncode == 2 and needle in r.stderr and "Error:" not in r.stderr, r.stderr


def test_missing_data_root_names_the_path(make_config, tmp_path):
    missing = tmp_path / "no-such-dir"
    cfg = make_config(**{"data.dataset": "image_folder", "data.root": str(missing)})
    r = run("train", cfg, "--run-dir", tmp_path / "r")
    assert r.returncode == 1
    assert str(missing) in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()  # nothing written for a run that cannot start


def _write_folder(root: Path, classes=("a", "b"), per_class=6, empty=()):
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        if c in empty:
            continue
        for i in range(per_class):
            Image.new("RGB", (16, 16), (i * 20, 100, 50)).save(root / c / f"{i}.png")


def test_empty_class_folder_names_it(make_config, tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root, classes=("cat", "dog"), empty=("dog",))
    cfg = make_config(**{"data.dataset": "image_folder", "data.root": str(root)})
    r = run("train", cfg, "--run-dir", tmp_path / "r")
    assert r.returncode == 1
    assert str(root / "dog") in r.stderr and "no images" in r.stderr


def test_unreadable_image_names_the_file(make_config, tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root, classes=("cat", "dog"), per_class=20)
    bad = root / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    cfg = make_config(**{"data.dataset": "image_folder", "data.root": str(root), "data.image_size": 32,
                         "model.backbone.name": "resnet18_w32", "train.epochs": 1})
    r = run("train", cfg, "--run-dir", tmp_path / "r")
    assert r.returncode == 1
    assert str(bad) in r.stderr and "Traceback" not in r.stderr


def test_single_class_folder_is_refused_by_data_check_and_train(make_config, tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root, classes=("circle",))
    cfg = make_config(**{"data.dataset": "image_folder", "data.root": str(root)})
    needle = (f"only one class ('circle') under '{root}'; classification needs two or more class folders")
    for args in (["data", "check", cfg], ["train", cfg, "--run-dir", tmp_path / "r"]):
        r = run(*args)
        assert r.returncode == 1, r.stdout
        assert needle in r.stderr and "no problems found" not in r.stdout
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_predict_names_a_file_that_is_no_image_and_a_folder_without_images(make_config, tmp_path):
    cfg = make_config(**{"train.epochs": 1})
    assert run("train", cfg, "--run-dir", tmp_path / "r").returncode == 0
    ckpt = tmp_path / "r" / "checkpoints" / "last.pt"
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    r = run("predict", cfg, "--checkpoint", ckpt, fake, "--on-error", "raise")
    assert r.returncode == 1
    assert r.stderr.strip() == (f"error: cannot decode image '{fake}': not a JPEG, PNG, WEBP, GIF or BMP "
                                "file; replace the file, leave it out of the inputs, or use --on-error skip")
    empty = tmp_path / "emptydir"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    (empty / "sub" / "._photo.png").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork: not an image
    r = run("predict", cfg, "--checkpoint", ckpt, empty)
    assert r.returncode == 1
    assert r.stderr.strip() == (f"error: no input images found: folder '{empty}' holds no "
                                ".png/.jpg/.jpeg/.bmp/.gif/.webp files (sub-folders included); "
                                "pass image files or folders holding them")


def test_checkpoint_of_another_architecture_is_refused(make_config, tmp_path):
    cfg = make_config(**{"train.epochs": 1})
    assert run("train", cfg, "--run-dir", tmp_path / "r").returncode == 0
    ckpt = tmp_path / "r" / "checkpoints" / "last.pt"
    r = run("eval", cfg, "--checkpoint", ckpt, "model.backbone.name=resnet18_w32")
    assert r.returncode == 1
    assert str(ckpt) in r.stderr and "lenet5" in r.stderr and "resnet18_w32" in r.stderr


def test_existing_run_dir_is_never_overwritten(make_config, tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    r = run("train", make_config(), "--run-dir", run_dir)
    assert r.returncode == 2
    assert "--resume" in r.stderr and str(run_dir) in r.stderr
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_resume_without_checkpoint_fails_and_never_starts_fresh(make_config, tmp_path):
    r = run("train", make_config(), "--run-dir", tmp_path / "empty", "--resume")
    assert r.returncode == 1
    assert "no checkpoint to resume" in r.stderr
    assert not (tmp_path / "empty").exists()


def test_resume_followed_by_overrides_resumes_instead_of_reading_a_path(make_config, tmp_path):
    # argparse gives `--resume`'s optional PATH the next token: `--resume train.epochs=2` must
    # still mean "resume, with this override", not "checkpoint 'train.epochs=2' does not exist"
    cfg = make_config(**{"train.epochs": 1})
    run_dir = tmp_path / "r"
    assert run("train", cfg, "--run-dir", run_dir).returncode == 0
    r = run("train", cfg, "--run-dir", run_dir, "--resume", "train.epochs=2", "train.optimizer.lr=0.5")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in records if m["split"] == "val"] == [1, 2]  # the second epoch ran once
    # the changed keys are said, the optimizer's are said not to apply, and both configs are kept
    out = r.stdout + r.stderr
    assert "resuming with 2 setting(s) changed since the checkpoint: train.epochs 1 -> 2, " \
           "train.optimizer.lr 0.003 -> 0.5" in out, out
    assert "train.optimizer changes do not apply on resume" in out
    assert "epochs: 1" in (run_dir / "config.yaml").read_text()
    assert "epochs: 2" in (run_dir / "config_resumed_step6.yaml").read_text()


@pytest.mark.parametrize("args,needle", [
    (["train", "CFG", "--run-dir", "FILE"], "--run-dir 'FILE' is a file; give a folder"),
    (["eval", "CFG", "--checkpoint", "FILE", "--output", "DIR"], "--output 'DIR' is a folder; give a file path"),
    (["predict", "CFG", "FILE", "--checkpoint", "FILE", "--out", "FILE"], "--out 'FILE' is a file; give a folder"),
    (["export", "CFG", "--checkpoint", "FILE", "--format", "torchscript", "--out", "DIR"],
     "--out 'DIR' is a folder; give a file path, e.g. DIR/out.pt"),
    (["data", "synth", "shapes", "--out", "FILE"], "--out 'FILE' is a file; give a folder"),
])
def test_a_file_where_a_folder_is_written_or_the_reverse_is_a_usage_error(make_config, tmp_path, args, needle):
    """Before: FileExistsError / NotADirectoryError / IsADirectoryError tracebacks' first lines,
    exit 1, and for export only after tracing the model."""
    a_file, a_dir = tmp_path / "notes.txt", tmp_path / "somewhere"
    a_file.write_text("mine")
    a_dir.mkdir()
    swap = {"CFG": str(make_config()), "FILE": str(a_file), "DIR": str(a_dir)}
    r = run(*[swap.get(a, a) for a in args])
    assert r.returncode == 2
    for k, v in swap.items():
        needle = needle.replace(k, v) if k != "CFG" else needle
    assert needle in r.stderr, r.stderr
    assert a_file.read_text() == "mine" and not any(a_dir.iterdir())


def test_tools_wrappers_call_the_same_functions(make_config, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), str(make_config(**{"train.epochs": 1})),
                        "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "eval.py"), str(make_config(**{"train.epochs": 1})),
                        "--checkpoint", str(tmp_path / "r" / "checkpoints" / "last.pt")],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout
