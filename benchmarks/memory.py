"""Row 7: peak memory of the quickstart training (``configs/quickstart.yaml``) and of the default
Mask R-CNN training (``configs/detection/mask_rcnn_resnet18_fpn_shapes.yaml``).

``visionkit train`` runs in a child process; a sampler reads ``/proc`` every 0.1 s and sums the
proportional set size (PSS) of the process and its DataLoader workers -- PSS splits pages the
workers share with their parent (the decoded-image cache, the libraries) among them, so the sum is
the memory the run really holds, where a sum of RSS would count shared pages once per process.
The row also gives the summed RSS and the main process's own peak RSS. The full run is one epoch
of the real quickstart (20,000 scenes, generated into ``data/shapes20k`` once, as the quickstart
does); ``--quick`` trains one epoch on 120 scenes. The Mask R-CNN row trains one epoch of its
recipe's 3000 scenes (2400 training images, then the val split; ``--quick``: 40 scenes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import BENCHMARKS, common

GIB = 2**30
CONFIG = common.ROOT / "configs" / "quickstart.yaml"
MASK_RCNN = common.ROOT / "configs" / "detection" / "mask_rcnn_resnet18_fpn_shapes.yaml"


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            out += [int(c) for c in text]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += _children(p)
    return found


def _memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of ``pid`` in bytes, (0, 0) once it is gone."""
    try:
        pss = rss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
        return pss, rss
    except (OSError, ValueError):
        return 0, 0


class TreeSampler(threading.Thread):
    """Peak summed PSS and RSS of a process tree, and the peak number of processes in it."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_pss = self.peak_rss = self.peak_main_rss = self.processes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _tree(self.pid)
            mems = [_memory(p) for p in pids]
            self.peak_pss = max(self.peak_pss, sum(m[0] for m in mems))
            self.peak_rss = max(self.peak_rss, sum(m[1] for m in mems))
            self.peak_main_rss = max(self.peak_main_rss, mems[0][1])
            self.processes = max(self.processes, len([m for m in mems if m[1]]))
            time.sleep(self.every)


def peak_memory(config: Path, overrides: list[str], run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "visionkit", "train", str(config), *overrides, "--run-dir", str(run_dir)]
    start = time.perf_counter()
    import torch

    # the child uses as many threads as this process (--threads)
    env = common.child_env(OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    output, _ = proc.communicate()
    sampler.done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {output.strip()[-500:]}")
    return {"peak_pss_gib": sampler.peak_pss / GIB, "peak_rss_sum_gib": sampler.peak_rss / GIB,
            "peak_main_rss_gib": sampler.peak_main_rss / GIB, "processes": sampler.processes,
            "wall_s": round(time.perf_counter() - start, 1), "command": " ".join(cmd)}


def _measure(config: Path, tmp: Path, quick_scenes: int, quick: bool) -> tuple[dict, object]:
    from visionkit.config import load_config
    from visionkit.data.build import build_source

    overrides = ["train.epochs=1", "train.progress=false", "train.device=cpu"]
    if quick:
        overrides += [f"data.root={tmp / 'shapes'}", f"data.synth.num_images={quick_scenes}"]
    cfg = load_config(config, overrides)
    build_source(cfg)  # generate the scenes first (once): that is not training's memory
    return peak_memory(config, overrides, tmp / "run"), cfg


@BENCHMARKS.register("memory")
def memory(quick: bool) -> list[dict]:
    rows = []
    for figure, config, scenes, target in [
            ("7 peak memory of quickstart training (PSS, workers included)", CONFIG, 120, "<= 2"),
            ("7 peak memory of default Mask R-CNN training (PSS, workers included)", MASK_RCNN, 40, "<= 4")]:
        with common.workdir("mem") as tmp:
            m, cfg = _measure(config, Path(tmp), scenes, quick)
        info = common.details(f"{cfg.task} {cfg.model.backbone.name}", cfg.data.image_size, cfg.data.batch_size, 1,
                              "cpu", scenes=cfg.data.synth.num_images, num_workers=cfg.data.num_workers,
                              cache=cfg.data.cache, **m)
        rows.append(common.row(figure, m["peak_pss_gib"], None, target, "GiB", info, judge="ours"))
    return rows
