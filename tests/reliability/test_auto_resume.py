"""Guarantee 3: ``--resume`` takes the newest checkpoint that verifies (checksums in
``checkpoints/manifest.json``), naming each corrupt newer one it skips; an explicit corrupt or
missing checkpoint fails naming the path; a finished run does nothing and exits 0."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from relhelp import run_cli, tiny_config_dict

from visionkit import Trainer, load_config
from visionkit.engine.hooks import Hook
from visionkit.errors import CheckpointError


class StopAfter(Hook):
    def __init__(self, n):
        self.n = n

    def after_epoch(self, trainer):
        trainer.should_stop = trainer.epoch >= self.n


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, shapes_root):
    """A 3-epoch run stopped after epoch 2 (trained once for this file)."""
    root = tmp_path_factory.mktemp("stopped")
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(shapes_root, **{"train.epochs": 3})))
    Trainer(load_config(path), root / "run", hooks=[StopAfter(2)], log=lambda *a: None).fit()
    return path, root / "run"


@pytest.fixture
def two_of_three(stopped_run, tmp_path):
    """A fresh copy of the stopped run: checkpoints epoch_0001.pt and epoch_0002.pt."""
    path, run = stopped_run
    shutil.copytree(run, tmp_path / "run")
    return path, tmp_path / "run"


def flip_a_byte(path, offset_fraction=0.5):
    with open(path, "r+b") as f:  # in place: last.pt, a hard link to it, changes too
        f.seek(int(path.stat().st_size * offset_fraction))
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))


def test_manifest_lists_checkpoints_with_checksums(two_of_three):
    _, run = two_of_three
    manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
    files = [e["file"] for e in manifest["checkpoints"]]
    assert files == ["epoch_0001.pt", "epoch_0002.pt"]
    assert all(len(e["sha256"]) == 64 for e in manifest["checkpoints"])


def test_a_flipped_byte_in_the_newest_is_skipped_with_a_warning(two_of_three):
    cfg, run = two_of_three
    newest = run / "checkpoints" / "epoch_0002.pt"
    flip_a_byte(newest)  # torch.load alone would not notice a flipped tensor byte
    r = run_cli("train", cfg, "--run-dir", run, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"skipping checkpoint '{newest}'" in r.stdout and "SHA-256" in r.stdout
    assert f"resumed from {run / 'checkpoints' / 'epoch_0001.pt'} at epoch 1" in r.stdout

    # resuming the finished run does no step and exits 0
    last = run / "checkpoints" / "last.pt"
    before = (last.stat().st_mtime_ns, (run / "metrics.jsonl").read_text())
    r = run_cli("train", cfg, "--run-dir", run, "--resume")
    assert r.returncode == 0, r.stderr
    assert "already finished 3/3 epochs; nothing to do" in r.stdout
    assert (last.stat().st_mtime_ns, (run / "metrics.jsonl").read_text()) == before


def test_a_truncated_newest_is_skipped_with_a_warning(two_of_three):
    cfg, run = two_of_three
    newest = run / "checkpoints" / "epoch_0002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    logs = []
    trainer = Trainer(load_config(cfg), run, resume=True, log=logs.append)
    assert trainer.resume_path.name == "epoch_0001.pt"
    assert any(str(newest) in m and m.startswith("warning: skipping") for m in logs), logs


def test_an_explicit_corrupt_or_missing_checkpoint_fails_naming_it(two_of_three, tmp_path):
    cfg, run = two_of_three
    newest = run / "checkpoints" / "epoch_0002.pt"
    flip_a_byte(newest)
    r = run_cli("train", cfg, "--run-dir", run, "--resume", newest)
    assert r.returncode == 1 and f"checkpoint '{newest}' is corrupt" in r.stderr, r.stderr
    # a missing path never starts a fresh run
    with pytest.raises(CheckpointError, match="nope.pt' does not exist"):
        Trainer(load_config(cfg), tmp_path / "new", resume=str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        Trainer(load_config(cfg), tmp_path / "new", resume=True)
    assert not (tmp_path / "new").exists()
