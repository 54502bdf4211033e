"""Multi-process training under torchrun (CPU, gloo, 2 processes, a tiny model, no augmentation).

Every run is a real ``python -m torch.distributed.run`` subprocess of ``visionkit``, as a user
starts it. Marked ``distributed`` (deselect with ``-m 'not distributed'``).

The training runs use SGD at lr 1e-3: the tiny net on 32 px scenes is chaotic at higher rates
(one process against itself with 1e-7 added to the weights drifts apart by 1e-2 in eight steps at
lr 1e-2), and two processes sum their gradients in another order than one process does, so a
1e-5 comparison needs a rate at which rounding differences do not grow.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, tiny_config_dict

pytestmark = pytest.mark.distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # two processes on a 2-core machine: one thread each
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def torchrun_cmd(*args, nproc: int = 2, launcher=None) -> list[str]:
    launcher = launcher or ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), *launcher, *map(str, args)]


def torchrun(*args, nproc: int = 2, launcher=None, timeout: int = 300, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(*args, nproc=nproc, launcher=launcher), capture_output=True, text=True,
                          cwd=ROOT, env=env(**extra_env), timeout=timeout, check=False)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def train_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == "train"]


@pytest.fixture(scope="module")
def ddp_config(tmp_path_factory, shapes_root) -> Path:
    """DenseNet-BC (BatchNorm throughout), SyncBN, global batch 16, 4 steps per epoch, a
    checkpoint after every step (kept), augmentation off."""
    cfg = tiny_config_dict(shapes_root, **{
        "model.backbone.name": "densenet_bc_k12_tiny", "data.split.counts": [64, 16, 16],
        "data.batch_size": 16, "data.augment": {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 0.0},
        "train.sync_bn": True, "train.optimizer": {"name": "sgd", "lr": 1e-3, "weight_decay": 0.0},
        "train.schedule.name": "constant", "train.checkpoint_every_steps": 1, "train.keep_checkpoints": 20,
        "train.vis_images": 0})
    path = tmp_path_factory.mktemp("ddp") / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def runs(ddp_config) -> dict:
    """The same config trained by one process and by two (2 epochs, 8 steps)."""
    base = ddp_config.parent
    one = subprocess.run([sys.executable, "-m", "visionkit", "train", ddp_config, "--run-dir", base / "one"],
                         capture_output=True, text=True, cwd=ROOT, env=env(), timeout=300, check=False)
    two = torchrun("-m", "visionkit", "train", ddp_config, "--run-dir", base / "two")
    return {"one": base / "one", "two": base / "two", "procs": {"one": ok(one), "two": ok(two)}}


def test_two_processes_with_syncbn_and_global_batch_match_one_process(runs):
    one, two = runs["one"], runs["two"]
    la, lb = train_losses(one), train_losses(two)
    assert len(la) == len(lb) == 8  # rank 0 alone writes metrics.jsonl: one record per step
    assert max(abs(a - b) for a, b in zip(la, lb)) < 1e-5, (la, lb)
    assert max_diff(weights(one / "checkpoints" / "last.pt"), weights(two / "checkpoints" / "last.pt")) < 1e-5
    out = runs["procs"]["two"].stdout
    assert out.count("final val:") == 1  # rank 0 reports for the group
    assert "2 processes (torchrun); data.batch_size 16 is the global batch, 8 per process" in out
    assert not list(two.glob("*rank1*"))


def test_gradient_accumulation_under_torchrun_matches_one_process(ddp_config):
    """Two processes keep the first batch's gradients of each window local (no_sync) and average
    the sum at the second: the same weights as one process accumulating the global batches."""
    base = ddp_config.parent
    one = subprocess.run([sys.executable, "-m", "visionkit", "train", ddp_config, "--run-dir", base / "acc_one",
                          "train.accumulate=2"], capture_output=True, text=True, cwd=ROOT, env=env(), timeout=300,
                         check=False)
    ok(one)
    ok(torchrun("-m", "visionkit", "train", ddp_config, "--run-dir", base / "acc_two", "train.accumulate=2"))
    a, b = weights(base / "acc_one" / "checkpoints" / "last.pt"), weights(base / "acc_two" / "checkpoints" / "last.pt")
    assert max_diff(a, b) < 1e-5
    first = weights(base / "acc_one" / "checkpoints" / "epoch_0001.pt")
    assert max_diff(a, first) > 1e-4  # it trained: 4 optimizer steps of 8 batches
    assert len(train_losses(base / "acc_one")) == len(train_losses(base / "acc_two")) == 8


def test_a_rank_killed_mid_run_is_restarted_and_resumes_to_the_same_weights(runs, ddp_config, tmp_path):
    """Rank 1 SIGKILLs itself after step 3 (before that step's checkpoint); torchrun restarts the
    group, which resumes from step 2 and ends epoch 1 with the uninterrupted run's weights."""
    port = free_port()
    proc = ok(torchrun("-m", "visionkit", "train", ddp_config, "train.epochs=1", "--run-dir", tmp_path / "run",
                       launcher=["--max-restarts", "1", "--rdzv-backend", "c10d",
                                 "--rdzv-endpoint", f"127.0.0.1:{port}"],
                       VISIONKIT_FAULTS="kill_after_step=3", VISIONKIT_FAULT_RANK="1"))
    assert "exitcode: -9" in proc.stderr  # the kill was real
    assert "step_00000002.pt at epoch 0 batch 2 (step 2)" in proc.stdout
    reference = weights(runs["two"] / "checkpoints" / "epoch_0001.pt")
    assert max_diff(weights(tmp_path / "run" / "checkpoints" / "last.pt"), reference) == 0.0


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_after_a_checkpoint(ddp_config, tmp_path):
    marker = tmp_path / "paused"
    run = tmp_path / "run"
    p = subprocess.Popen(torchrun_cmd("-m", "visionkit", "train", ddp_config, "--run-dir", run), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env(VISIONKIT_FAULTS="pause_after_step=2", VISIONKIT_FAULT_RANK="1",
                                 VISIONKIT_FAULT_MARKER=str(marker)))
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), p.communicate()
        os.kill(int(marker.read_text()), signal.SIGTERM)  # rank 1 only
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode != 0
    # both ranks stopped after step 2, rank 0 (which got no signal) included
    assert (out + err).count("stopped by SIGTERM at epoch 1 batch 2 (step 2)") == 2, out + err
    manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
    assert manifest["checkpoints"][-1]["global_step"] == 2
    assert train_losses(run) and max(json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()) == 2


def test_two_nodes_of_one_process_on_loopback(runs, ddp_config, tmp_path):
    """Two torchrun agents (--nnodes 2) meet through the c10d rendezvous on 127.0.0.1 and train
    as one group: epoch 1 ends with the weights of the single-node 2-process run."""
    port = free_port()
    procs = [subprocess.Popen(
        torchrun_cmd("-m", "visionkit", "train", ddp_config, "train.epochs=1", "--run-dir", tmp_path / "run", nproc=1,
                     launcher=["--nnodes", "2", "--node-rank", str(node), "--rdzv-backend", "c10d",
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "loopback"]),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()) for node in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out[-2000:] + err[-2000:]
    reference = weights(runs["two"] / "checkpoints" / "epoch_0001.pt")
    assert max_diff(weights(tmp_path / "run" / "checkpoints" / "last.pt"), reference) == 0.0


def _task_configs(shapes_root: Path, tmp_path: Path) -> dict[str, Path]:
    """Tiny segmentation, detection and depth configs on the shapes scenes."""
    common = {"data.split.counts": [16, 21, 0], "data.batch_size": 8, "data.eval_batch_size": 6,
              "model.backbone.name": "resnet18_w32", "train.epochs": 1, "train.vis_images": 0}
    over = {
        "segmentation": {"task": "segmentation",
                         "model.head": {"name": "semantic_fpn", "channels": 16, "fpn_channels": 16}},
        "detection": {"task": "detection", "data.batch_size": 4,
                      "model.head": {"name": "mask_rcnn", "fpn_channels": 16, "box_representation": 32,
                                     "mask_channels": 16, "mask_convs": 1, "box_batch_size_per_image": 16,
                                     "rpn_batch_size_per_image": 32, "box_score_thresh": 0.0}},
        "depth": {"task": "depth", "model.head": {"channels": 8},
                  "data.depth": {"min_depth": 1.0, "max_depth": 16.0}},
    }
    paths = {}
    for name, o in over.items():
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(tiny_config_dict(shapes_root, **{**common, **o})))
    return paths


def test_sharded_evaluation_gives_one_process_metrics_for_every_task(runs, ddp_config, shapes_root, tmp_path):
    """Each rank scores its shard (no sample twice: 21 images over 2 ranks), rank 0 merges them:
    the eval JSON (metrics, confusion matrices, per-class tables) and the COCO detections json
    equal one process's on the same checkpoint (depth's float metrics to 1e-9)."""
    from visionkit import api

    pairs = {"classification": (ddp_config, runs["one"] / "checkpoints" / "last.pt")}
    for name, config in _task_configs(shapes_root, tmp_path).items():
        trainer = api.train(config, run_dir=tmp_path / f"run_{name}", log=lambda *a: None)
        pairs[name] = (config, trainer.run_dir / "checkpoints" / "last.pt")
    items = [f"{n}={c}::{k}" for n, (c, k) in pairs.items()]
    script = ROOT / "tests" / "ddp_evaluate.py"
    ok(subprocess.run([sys.executable, script, tmp_path / "one", *items], capture_output=True, text=True,
                      cwd=ROOT, env=env(), timeout=300, check=False))
    ok(torchrun(script, tmp_path / "two", *items))
    for name in pairs:
        a = json.loads((tmp_path / "one" / name / "eval_val.json").read_text())
        b = json.loads((tmp_path / "two" / name / "eval_val.json").read_text())
        a.pop("files", None), b.pop("files", None)
        assert a["metrics"] and a["samples"] == (16 if name == "classification" else 21), name
        if name == "depth":
            # per-image float sums: the depth maps of a forward of 3 images (a rank's share of the
            # eval batch of 6) and of 6 differ in the last bits (CPU kernels chosen by batch size)
            assert a.pop("metrics") == pytest.approx(b.pop("metrics"), rel=1e-9, abs=1e-12)
        assert a == b, name
    det_a = json.loads((tmp_path / "one" / "detection" / "detections_val.json").read_text())
    det_b = json.loads((tmp_path / "two" / "detection" / "detections_val.json").read_text())
    assert det_a == det_b and len(det_a) > 0
    classification = json.loads((tmp_path / "one" / "classification" / "eval_val.json").read_text())
    assert sum(map(sum, classification["confusion_matrix"])) == 16  # every val image once
