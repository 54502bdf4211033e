"""Guarantee 9: checkpoint names are generated, every write stays inside the run directory, and
a moved run directory still resumes (the manifest holds bare file names)."""

from __future__ import annotations

import json
import shutil

from visionkit import Trainer, load_config
from visionkit.cli import main
from visionkit.engine.hooks import Hook


class StopAfter(Hook):
    def __init__(self, n):
        self.n = n

    def after_epoch(self, trainer):
        trainer.should_stop = trainer.epoch >= self.n


def tree(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_a_moved_run_directory_resumes_and_writes_only_inside_it(make_config, tmp_path, capsys):
    cfg = make_config(**{"train.epochs": 2, "train.checkpoint_every_steps": 4})
    first = tmp_path / "a" / "run"
    Trainer(load_config(cfg), first, hooks=[StopAfter(1)], log=lambda *a: None).fit()
    manifest = json.loads((first / "checkpoints" / "manifest.json").read_text())
    assert [e["file"] for e in manifest["checkpoints"]] == ["step_00000004.pt", "epoch_0001.pt"]
    assert "/" not in json.dumps(manifest).replace("\\/", "")  # bare names, no directories

    moved = tmp_path / "b" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)
    outside = {k: v for k, v in tree(tmp_path).items() if not k.startswith("b/moved")}
    assert main(["train", str(cfg), "--run-dir", str(moved), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {moved / 'checkpoints' / 'epoch_0001.pt'} at epoch 1" in out
    assert json.loads((moved / "checkpoints" / "manifest.json").read_text())["checkpoints"][-1]["file"] == "epoch_0002.pt"
    # nothing outside the run directory was written (the data set lives elsewhere)
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("b/moved")} == outside
    assert not (tmp_path / "a" / "run").exists()
