"""Row 9: 2-process CPU scaling of DDP training under torchrun.

Both sides run ``visionkit train`` for real (loader, DDP, logging, checkpoints) on a narrow
ResNet-18 at 32 px with one thread per process: one process with batch ``b``, and
``torchrun --nproc-per-node 2`` with the global batch ``2 b`` (so each process does the same work
per step as the single one). The figure is the scaling efficiency, images/s of the two processes
over twice the images/s of one; the images/s are the medians of the per-step figures the runs log
to ``metrics.jsonl`` (the first steps, which include start-up, left out). Each side runs
``repeats`` times in alternation. On a machine with fewer than 2 cores it reports a row saying so.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks import BENCHMARKS, common

TARGET = ">= 0.8"
FIGURE = "9 DDP 2-process CPU scaling efficiency (images/s of 2 / 2 x 1)"
#: steps left out of each run's median: start-up, first allocation, DDP's bucket rebuild
WARMUP_STEPS = 3


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(cfg: Path, run_dir: Path, batch: int, nproc: int) -> float:
    """Median images/s of one ``visionkit train`` run (``nproc`` processes, one thread each)."""
    env = common.child_env(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = [sys.executable, "-m", "visionkit"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(_port()), "-m", "visionkit"]
    proc = subprocess.run([*launcher, "train", str(cfg), f"data.batch_size={batch}", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, env=env, timeout=1200, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the {nproc}-process run failed: {(proc.stdout + proc.stderr)[-2000:]}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per_step = [r["images_per_s"] for r in records if r["split"] == "train"]
    return common.median(per_step[WARMUP_STEPS:] or per_step)


@BENCHMARKS.register("ddp")
def ddp(quick: bool) -> list[dict]:
    if (os.cpu_count() or 1) < 2:
        return [common.unavailable(FIGURE, TARGET, "images/s", "skipped: needs 2 CPU cores")]
    batch, steps, repeats = (16, 12, 1) if quick else (32, 30, 3)
    with common.workdir("ddp") as tmp:
        folder = Path(tmp)
        # one epoch of `steps` steps for both sides: 2 b x steps training images
        n = 2 * batch * steps
        cfg = common.classification_config(
            folder, backbone="resnet18_w32", image_size=32, batch=batch, root=folder / "shapes",
            num_images=n + 20, counts=[n, 10, 10], dev=torch.device("cpu"),
            **{"data.num_workers": 0, "train.log_every": 1, "train.vis_images": 0, "train.val_every": 1000,
               "train.epochs": 1})
        runs = iter(range(10**6))

        def one() -> float:
            return _train(cfg, folder / f"one{next(runs)}", batch, 1)

        def two() -> float:
            return _train(cfg, folder / f"two{next(runs)}", 2 * batch, 2)

        a, b = common.alternate(two, one, repeats)
        ours, single = common.median(a), common.median(b)
        info = common.details("resnet18_w32", 32, f"{2 * batch} global ({batch} per process)", repeats, "cpu",
                              threads=1, processes=2, backend="gloo", two_process_runs=a, one_process_runs=b,
                              cores=os.cpu_count())
        return [common.row(FIGURE, ours, 2 * single, TARGET, "images/s", info)]
