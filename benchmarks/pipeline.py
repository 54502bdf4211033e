"""Row 3: the default classification input pipeline against torchvision's classic one.

Both read the same JPEG files (shapes scenes re-encoded at quality 90) with the same DataLoader
settings (workers, batch, prefetch, persistent workers) and the same augmentation parameters:
random resized crop and horizontal flip. The baseline is ``torchvision.datasets.ImageFolder`` +
PIL + ``transforms`` v1 ending in ``ToTensor`` + ``Normalize``; ours is what ``visionkit train``
builds from a config (``torchvision.io`` decoding, ``transforms.v2`` on uint8 tensors, normalising
left to the device, the decoded-image cache when it fits). Throughput is images per second over
whole epochs once the workers run; the row with ``data.cache: false`` shows what the pipeline
gains without the cache, decoding every image every epoch like the baseline.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks import BENCHMARKS, common

TARGET = ">= 1.5"
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
SCALE = (0.5, 1.0)


def make_jpegs(root: Path, count: int, size: int) -> Path:
    """An ImageFolder tree ``root/{train,val}/<class>/*.jpg`` of shapes scenes at ``size`` px."""
    from PIL import Image

    from visionkit.data.datasets.synthetic import generate_shapes

    pngs = generate_shapes(root.parent / f"{root.name}_png", num_images=count, size=size, seed=0)
    for i, png in enumerate(sorted(Path(pngs).glob("*/*.png"))):
        split = "val" if i % 8 == 0 else "train"
        out = root / split / png.parent.name / (png.stem + ".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").save(out, quality=90)
    return root


def our_loader(folder: Path, root: Path, size: int, batch: int, workers: int, cache):
    from visionkit.config import load_config
    from visionkit.data.build import build_datasets, build_loader
    from visionkit.registry import TASKS

    tree = {"task": "classification", "model": {"backbone": {"name": "resnet18"}},
            "data": {"dataset": "image_folder", "root": str(root), "image_size": size, "batch_size": batch,
                     "num_workers": workers, "cache": cache, "mean": MEAN, "std": STD,
                     "augment": {"scale": list(SCALE)}},
            "train": {"device": "cpu"}}
    cfg = load_config(common.write_config(folder, f"pipeline_{cache}.yaml", tree))
    start = time.perf_counter()
    datasets, _ = build_datasets(cfg, TASKS.get("classification"), None, ("train",))
    setup = time.perf_counter() - start
    return build_loader(datasets["train"], cfg, True, torch.device("cpu")), setup


def torchvision_loader(root: Path, size: int, batch: int, workers: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    t = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=SCALE), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    data = datasets.ImageFolder(str(root / "train"), transform=t)
    kw = {"prefetch_factor": 4, "persistent_workers": True} if workers else {}
    return DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, **kw)


class EpochRunner:
    """Iterates a loader one epoch per call and returns images/s (the first call starts workers)."""

    def __init__(self, loader):
        self.loader, self.epoch = loader, 0

    def __call__(self) -> float:
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(self.epoch)
        self.epoch += 1
        start, n = time.perf_counter(), 0
        for batch in self.loader:
            n += len(batch["images"] if isinstance(batch, dict) else batch[0])
        return n / (time.perf_counter() - start)


@BENCHMARKS.register("pipeline")
def pipeline(quick: bool) -> list[dict]:
    count, size, crop, batch = (96, 64, 56, 16) if quick else (384, 256, 224, 32)
    repeats = 2 if quick else 4
    workers = 2  # the default data.num_workers
    rows = []
    with common.workdir("pipe") as tmp:
        folder = Path(tmp)
        root = make_jpegs(folder / "jpegs", count, size)
        base = EpochRunner(torchvision_loader(root, crop, batch, workers))
        for cache in ("auto", False):
            loader, setup = our_loader(folder, root, crop, batch, workers, cache)
            ours = EpochRunner(loader)
            ours(), base()  # warm-up: start the workers
            a, b = common.alternate(ours, base, repeats)
            cached = type(loader.dataset.base).__name__ == "DecodedCache"
            info = common.details("-", crop, batch, repeats, "cpu", files=f"{count} JPEG, {size} px",
                                  train_images=len(loader.dataset), num_workers=workers,
                                  cache=cache, cached=cached, cache_fill_s=round(setup, 2),
                                  ours_runs=a, baseline_runs=b)
            label = "default (cache auto)" if cache == "auto" else "data.cache false"
            rows.append(common.row(f"3 input pipeline vs ImageFolder+PIL+v1, {label}",
                                   common.median(a), common.median(b), TARGET, "images/s", info))
            del loader, ours  # stops its workers
    return rows
