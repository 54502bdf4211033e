"""Guarantee 10: a DataLoader worker killed mid-run (as the OOM killer would) makes the run fail
within seconds instead of hanging, leaves the checkpoint directory as it was, and resume works."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

from relhelp import Paused, run_cli


def children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def snapshot(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_killed_worker_fails_fast_and_resume_works(cli_config, tmp_path):
    cfg = cli_config()  # two workers
    run = tmp_path / "run"
    paused = Paused(tmp_path, "train", cfg, "--run-dir", run, pause_after_step=8).wait()  # in epoch 2
    before = snapshot(run / "checkpoints")
    assert "epoch_0001.pt" in before
    workers = children(paused.proc.pid)
    assert workers, "no loader workers found"
    start = time.monotonic()
    os.kill(workers[0], signal.SIGKILL)
    paused.marker.unlink()  # let the main process go on
    code, _, err = paused.signal(0, timeout=60)  # signal 0: just wait for it to end
    assert time.monotonic() - start < 60
    assert code == 1 and "data loading failed at epoch 2" in err, err
    assert "--resume" in err and "Traceback" not in err
    assert snapshot(run / "checkpoints") == before

    r = run_cli("train", cfg, "--run-dir", run, "--resume")
    assert r.returncode == 0, r.stderr
    assert "at epoch 1 (step 6)" in r.stdout
