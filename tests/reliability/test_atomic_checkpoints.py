"""Guarantees 1 and 4: a kill in the middle of a checkpoint write leaves no partial file under a
final name and resume loads the previous checkpoint; a full disk (ENOSPC injected in the writer)
leaves the previous checkpoint loadable, no temp file, and a non-zero exit with a clear message."""

from __future__ import annotations

import json
import signal

from relhelp import Paused, run_cli

from visionkit.engine.checkpoint import load_checkpoint


def final_files(ckpt_dir):
    return sorted(p.name for p in ckpt_dir.iterdir() if not p.name.startswith("."))


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(cli_config, tmp_path):
    cfg = cli_config(**{"data.num_workers": 0})
    run = tmp_path / "run"
    ckpt = run / "checkpoints"
    # the second checkpoint write (epoch 2) pauses with half its bytes in the temp file
    code, _, _ = Paused(tmp_path, "train", cfg, "--run-dir", run, pause_in_write=2).wait().signal(signal.SIGKILL)
    assert code == -signal.SIGKILL
    temps = [p for p in ckpt.iterdir() if p.name.startswith(".epoch_0002.pt.tmp-")]
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # the write was really cut halfway
    assert final_files(ckpt) == ["best.pt", "epoch_0001.pt", "last.pt", "manifest.json"]
    for name in ("epoch_0001.pt", "last.pt", "best.pt"):  # every file under a final name is whole
        assert load_checkpoint(ckpt / name)["epoch"] == 1
    assert [e["file"] for e in json.loads((ckpt / "manifest.json").read_text())["checkpoints"]] == ["epoch_0001.pt"]

    r = run_cli("train", cfg, "--run-dir", run, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"resumed from {ckpt / 'epoch_0001.pt'} at epoch 1" in r.stdout
    assert not any(p.name.startswith(".") for p in ckpt.iterdir())  # the stale temp file is gone
    assert load_checkpoint(ckpt / "last.pt")["epoch"] == 2


def test_disk_full_during_a_checkpoint_write(cli_config, tmp_path):
    cfg = cli_config(**{"data.num_workers": 0})
    run = tmp_path / "run"
    ckpt = run / "checkpoints"
    r = run_cli("train", cfg, "--run-dir", run, enospc_in_write=2)
    assert r.returncode == 1
    assert f"cannot write checkpoint '{ckpt / 'epoch_0002.pt'}': the disk is full" in r.stderr, r.stderr
    assert "previous checkpoint is intact" in r.stderr and "Traceback" not in r.stderr
    # every file, hidden temp files included: none is left behind
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.pt", "epoch_0001.pt", "last.pt", "manifest.json"]
    assert load_checkpoint(ckpt / "last.pt")["epoch"] == 1
