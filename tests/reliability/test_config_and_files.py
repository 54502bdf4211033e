"""Guarantees 7 and 8: a config mistake fails before any data is read (exit 2), naming the key
and a suggestion; only registered names build objects. A checkpoint whose pickle would run code
is refused and the code never runs; weights for another architecture are refused with the keys
that do not fit, unless the config names the ones to skip."""

from __future__ import annotations

import os

import pytest
import torch

from visionkit import Trainer
from visionkit.cli import main
from visionkit.errors import CheckpointError


@pytest.mark.parametrize("text,needle", [
    ("train:\n  optimizer:\n    lrr: 0.1\n", "unknown key 'train.optimizer.lrr'; did you mean 'lr'?"),
    ("model:\n  head:\n    dropot: 0.5\n", "unknown key 'model.head.dropot'; did you mean 'dropout'?"),
    ("train:\n  epochs: 2\n  epochs: 3\n", "duplicate key"),
    ("train: !!python/object/apply:os.system ['touch PWNED']\n", "python"),
    ("model:\n  backbone:\n    name: torchvision.models.resnet18\n", "not one of"),
])
def test_config_mistakes_fail_before_any_data_is_read(tmp_path, capsys, text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"data:\n  dataset: image_folder\n  root: {tmp_path / 'no-data'}\n" + text)
    code = main(["train", str(cfg), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert str(cfg) in err and "no-data" not in err  # about the config, not the data
    assert not (tmp_path / "run").exists() and not (tmp_path / "PWNED").exists()


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused(tiny_cfg, make_config, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "run" / "checkpoints" / "last.pt"
    evil.parent.mkdir(parents=True)
    torch.save({"format": "visionkit-checkpoint", "model": {}, "payload": RunsCode(marker)}, evil)
    cfg = make_config(**{"train.epochs": 1})

    assert main(["eval", str(cfg), "--checkpoint", str(evil)]) == 1
    assert f"checkpoint '{evil}' was refused" in capsys.readouterr().err
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run"), "--resume", str(evil)]) == 1
    assert f"checkpoint '{evil}' was refused" in capsys.readouterr().err
    assert main(["predict", str(cfg), str(cfg), "--checkpoint", str(evil)]) == 1
    assert f"checkpoint '{evil}' was refused" in capsys.readouterr().err
    assert not marker.exists()  # the code never ran
    torch.load(evil, weights_only=False)  # the file really is malicious: an unsafe load runs it
    assert marker.exists()


def test_files_that_are_not_checkpoints_are_named_as_such(make_config, tmp_path, capsys):
    """torch.load reports a text file as `KeyError: 101`, an empty one as an IndexError and a
    folder as missing; each gets one line saying what the file is instead."""
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({"format": "visionkit-checkpoint"}, run / "best.pt")
    (run / "manifest.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.pt").write_bytes(b"")
    cfg = make_config(**{"train.epochs": 1})
    cases = {
        tmp_path / "notes.txt": "is not a PyTorch file (torch.save writes a zip archive",
        tmp_path / "empty.pt": "is empty (0 bytes)",
        run / "manifest.json": "it is the manifest of the checkpoints beside it",
        run: "is a folder; pass a .pt file in it (best.pt)",
    }
    for path, needle in cases.items():
        assert main(["eval", str(cfg), "--checkpoint", str(path)]) == 1
        err = capsys.readouterr().err
        assert f"'{path}'" in err and needle in err and "Error:" not in err, err


def test_weights_for_another_architecture_are_refused_listing_the_keys(tiny_cfg, tmp_path):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer9.0.conv1.weight"] = torch.zeros(1)  # a key the model has no place for
    del state["layer4.1.bn2.bias"]  # a key the file lacks
    path = tmp_path / "other.pth"
    torch.save(state, path)
    cfg = tiny_cfg(**{"model.backbone.name": "resnet18", "model.backbone.weights": str(path)})
    with pytest.raises(CheckpointError) as e:
        Trainer(cfg, tmp_path / "r0", log=lambda *a: None)
    msg = str(e.value)
    assert "fc.weight: (1000, 512) -> (6, 512)" in msg and "layer9.0.conv1.weight" in msg, msg
    assert "weights_skip" in msg and not (tmp_path / "r0").exists()

    logs = []
    cfg = tiny_cfg(**{"model.backbone.name": "resnet18", "model.backbone.weights": str(path),
                      "model.backbone.weights_skip": ["fc", "layer9"]})
    Trainer(cfg, tmp_path / "r1", log=logs.append)
    assert any("backbone.layer4.1.bn2.bias" in m for m in logs), logs  # the missing key is named


def _task_checkpoint(tiny_cfg, tmp_path, task: str, backbone: str, head: dict, classes: list[str]):
    """A checkpoint of ``task`` on ``backbone`` with seeded random weights, as the trainer writes it."""
    from visionkit.engine.checkpoint import FORMAT
    from visionkit.registry import TASKS

    cfg = tiny_cfg(**{"task": task, "model.backbone.name": backbone, "model.head": head})
    torch.manual_seed(1)
    model = TASKS.get(task).from_config(cfg, {"classes": classes})
    path = tmp_path / f"{task}_{backbone}.pt"
    torch.save({"format": FORMAT, "model": model.state_dict(),
                "meta": {"task": task, "backbone": backbone, **model.metadata()}}, path)
    return path, model.state_dict()


@pytest.mark.parametrize("task,head", [
    ("segmentation", {"name": "semantic_fpn", "channels": 8, "fpn_channels": 8}),
    ("detection", {"name": "mask_rcnn", "fpn_channels": 16, "box_representation": 32, "mask_channels": 16}),
])
def test_another_tasks_checkpoint_gives_its_backbone(tiny_cfg, tmp_path, task, head):
    """A segmentation or detection best.pt as model.backbone.weights of a classifier: the backbone
    loads, the other task's heads are skipped and said to be (they were refused as having no
    place, and a detection checkpoint's `model.*` keys made even its backbone keys misread)."""
    path, state = _task_checkpoint(tiny_cfg, tmp_path, task, "resnet18_w32", head, ["a", "b", "c"])
    logs = []
    cfg = tiny_cfg(**{"model.backbone.name": "resnet18_w32", "model.backbone.weights": str(path)})
    trainer = Trainer(cfg, tmp_path / "r", log=logs.append)
    line = next(m for m in logs if "loaded backbone weights" in m)
    assert f"(a {task} checkpoint: its backbone only)" in line and "missing: head.fc.weight" in line, line
    loaded = trainer.task.state_dict()["backbone.layer4.1.conv2.weight"]
    assert torch.equal(loaded, state["backbone.layer4.1.conv2.weight"])


def test_a_checkpoint_on_another_backbone_is_refused_naming_it(tiny_cfg, tmp_path):
    path, _ = _task_checkpoint(tiny_cfg, tmp_path, "classification", "resnet18_w32", {}, ["a", "b"])
    cfg = tiny_cfg(**{"model.backbone.name": "resnet18", "model.backbone.weights": str(path)})
    with pytest.raises(CheckpointError) as e:
        Trainer(cfg, tmp_path / "r", log=lambda *a: None)
    assert "(this checkpoint was trained on backbone 'resnet18_w32')" in str(e.value), e.value


def test_a_classifier_checkpoint_starts_a_segmenter_but_another_class_count_is_refused(tiny_cfg, tmp_path):
    """Another task's checkpoint gives its backbone to a model with heads of its own; one of the
    same task whose head does not fit is still refused (no silent skip), without blaming the backbone."""
    path, state = _task_checkpoint(tiny_cfg, tmp_path, "classification", "resnet18_w32", {}, ["a", "b"])
    logs = []
    cfg = tiny_cfg(**{"task": "segmentation", "model.backbone.name": "resnet18_w32",
                      "model.backbone.weights": str(path),
                      "model.head": {"name": "semantic_fpn", "channels": 8, "fpn_channels": 8}})
    trainer = Trainer(cfg, tmp_path / "seg", log=logs.append)
    line = next(m for m in logs if "loaded backbone weights" in m)
    assert "(a classification checkpoint: its backbone only)" in line, line
    assert "skipped: head.fc.weight" in line, line
    assert torch.equal(trainer.task.state_dict()["backbone.conv1.weight"], state["backbone.conv1.weight"])

    # the shapes classifier has 6 classes, the checkpoint's head 2
    cfg = tiny_cfg(**{"model.backbone.name": "resnet18_w32", "model.backbone.weights": str(path)})
    with pytest.raises(CheckpointError) as e:
        Trainer(cfg, tmp_path / "cls", log=lambda *a: None)
    assert "head.fc.weight: (2, " in str(e.value) and "trained on backbone" not in str(e.value), e.value


def test_a_config_file_with_no_settings_exits_2_before_any_directory(tmp_path, capsys):
    cfg = tmp_path / "new.yaml"
    cfg.write_text("# fill in later\n")
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"'{cfg}' holds no settings" in err and "task=classification" in err, err
    assert not (tmp_path / "run").exists()
