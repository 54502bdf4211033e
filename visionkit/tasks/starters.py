"""Starter configs for a user's own data (``visionkit config init TASK --data PATH``).

Each task points at its starter (``Task.starter``): a function that reads the data the way the
task's reader will (the same layout checks, so a wrong layout fails here with the reader's
message), measures it (classes, image count, typical image size) and returns a complete,
commented YAML body sized for the machine: on a CPU a half-width backbone and small images, on
a GPU the full-width one and larger images. ``visionkit.config_init`` adds the header and writes
the file.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from visionkit.errors import DataError

#: how many files are opened to measure image sizes and label values (headers only for sizes)
SAMPLE = 32


@dataclass(frozen=True)
class Machine:
    """What the config is sized for: a GPU or not, and the cores the process may use."""

    gpu: bool
    cores: int

    @classmethod
    def detect(cls) -> Machine:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return cls(gpu=torch.cuda.is_available(), cores=cores)

    @property
    def workers(self) -> int:
        """Loader processes: the cores beside the training process (it needs one), at most 8."""
        return max(0, min(8, self.cores - 1))

    @property
    def backbone(self) -> str:
        return "resnet18" if self.gpu else "resnet18_w32"

    @property
    def what(self) -> str:
        return "a GPU" if self.gpu else f"a CPU ({self.cores} cores): a half-width backbone and small images"

    def side(self, short: int, cpu_cap: int, gpu_cap: int) -> int:
        """The training side: the images' short side in steps of 32 (the backbones' stride), capped."""
        cap = gpu_cap if self.gpu else cpu_cap
        return max(32, min(cap, short) // 32 * 32)


@dataclass
class Starter:
    """What a starter found (comment lines for the header) and the YAML body it wrote."""

    found: list[str]
    body: str
    test_split: bool = False


def typical_size(paths: list[str | Path]) -> tuple[int, int]:
    """The median (height, width) of a spread-out sample of ``paths`` (image headers only)."""
    step = max(1, len(paths) // SAMPLE)
    sizes = []
    for p in list(paths)[::step][:SAMPLE]:
        try:
            with Image.open(p) as im:
                sizes.append(im.size)
        except OSError:
            continue  # an unreadable file is for `visionkit data check` to report
    if not sizes:
        raise DataError(f"none of the {min(len(paths), SAMPLE)} sampled images could be read (e.g. '{paths[0]}'); "
                        "run `visionkit data check` on a config for this data to see why")
    return int(statistics.median(h for _, h in sizes)), int(statistics.median(w for w, _ in sizes))


def align_comments(text: str, column: int = 30) -> str:
    """Start every trailing ``# comment`` of a YAML body at one column, for reading."""
    out = []
    for line in text.splitlines():
        code, sep, comment = line.partition("  # ")
        if sep and code.strip() and not code.lstrip().startswith("#"):
            line = f"{code.rstrip():<{column - 1}} # {comment.strip()}"
        out.append(line)
    return "\n".join(out) + "\n"


def _q(value) -> str:
    """A YAML scalar or flow list for ``value`` (JSON is valid YAML; paths get quoted)."""
    return json.dumps(value)


def _names(classes: list[str], limit: int = 8) -> str:
    shown = ", ".join(classes[:limit])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > limit else "")


def _splits_line(splits: list[str]) -> str:
    if "val" in splits:
        return f"# the data set's own splits: {', '.join(splits)} (data.split is not used)"
    return "# one pool, split by data.split below"


def _train_block(epochs: int, lr: float, test: bool, extra: str = "") -> str:
    return f"""
train:
  epochs: {epochs}
  device: auto            # cuda when present, else cpu
  optimizer:
    name: adamw
    lr: {lr}
    weight_decay: 0.05
  schedule:
    name: cosine
    warmup_epochs: 1
  early_stopping: 5       # stop after 5 validations without a better val score{extra}
  final_test: {str(test).lower()}       # score the test split with the best checkpoint at the end
"""


# -- classification: ImageFolder ---------------------------------------------------------------
def classification(root: Path, machine: Machine) -> Starter:
    from visionkit.data.datasets.folder import find_classes, has_own_splits, is_image, split_roots

    roots = split_roots(root) if has_own_splits(root) else {"pool": str(root)}
    classes = find_classes(roots.get("train", str(root)))
    if len(classes) < 2:
        raise DataError(f"'{roots.get('train', root)}' holds one class folder ({classes[0]}); "
                        "a classifier needs two or more, one folder per class")
    files = []
    for path in roots.values():
        for c in classes:
            folder = Path(path) / c
            files += sorted(str(folder / n) for n in os.listdir(folder) if is_image(n)) if folder.is_dir() else []
    if not files:
        raise DataError(f"no images in the class folders of '{root}'; expected '{root}/<class>/<image>.png'")
    h, w = typical_size(files)
    side = machine.side(min(h, w), 128, 224)
    found = [f"{len(classes)} classes: {_names(classes)}", f"{len(files)} images, typically {h}x{w} px"]
    splits = [s for s in ("train", "val", "test") if s in roots]
    body = f"""task: classification

model:
  backbone:
    name: {machine.backbone}{'          # half-width ResNet-18: quick on a CPU' if not machine.gpu else ''}
    weights: null         # or ImageNet weights to fine-tune, e.g. name resnet18 + weights ResNet18_Weights.IMAGENET1K_V1
  head:
    label_smoothing: 0.1

data:
  dataset: image_folder   # root/<class>/*.png, or root/train|val|test/<class>/*.png
  root: {_q(str(root))}
  {_splits_line(splits)}
  image_size: {side}          # random crops of this side for training; center crop for evaluation
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  batch_size: {64 if machine.gpu else 32}
  num_workers: {machine.workers}        # loader processes beside the training one
  split:
    ratios: [8, 1, 1]     # train / val / test shares of the pool
    seed: 0
  augment:
    scale: [0.5, 1.0]     # the crop's share of the image area
    hflip: 0.5
""" + _train_block(30, 2.0e-3, "test" in splits or not splits)
    return Starter(found, body, "test" in splits or not splits)


# -- detection: COCO -------------------------------------------------------------------------------
def detection(root: Path, machine: Machine) -> Starter:
    from visionkit.data.datasets.coco import find_coco_splits

    splits = find_coco_splits(root)
    ann_file = splits["train"][0]
    try:
        data = json.loads(ann_file.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read '{ann_file}' as JSON: {e}") from None
    images, anns, cats = (data.get(k) or [] for k in ("images", "annotations", "categories"))
    if not images or not cats:
        raise DataError(f"'{ann_file}' lists no {'images' if not images else 'categories'}; "
                        "a COCO instances file needs both")
    heights = [int(i.get("height", 0)) for i in images if i.get("height")]
    widths = [int(i.get("width", 0)) for i in images if i.get("width")]
    if heights and widths:
        h, w = int(statistics.median(heights)), int(statistics.median(widths))
    else:  # sizes missing from the records: measure the files
        h, w = typical_size([splits["train"][1] / i["file_name"] for i in images])
    masks = any(a.get("segmentation") for a in anns)
    names = [c.get("name", str(c.get("id"))) for c in sorted(cats, key=lambda c: c["id"])]
    side = machine.side(min(h, w), 320, 800)
    found = [f"{len(names)} categories: {_names(names)}",
             f"{len(images)} training images, typically {h}x{w} px, {len(anns)} annotations"
             + ("" if masks else " (boxes only: Faster R-CNN)"),
             "splits: " + ", ".join(f"{k} ({splits[k][0].name})" for k in ("train", "val", "test") if k in splits)]
    head = "mask_rcnn" if masks else "faster_rcnn"
    body = f"""task: detection

model:
  backbone:
    name: {machine.backbone}
    weights: null
  head:
    name: {head}{'        # boxes and instance masks' if masks else '      # boxes only (no segmentation in the annotations)'}
    scale_jitter: [0.75, 1.25]   # large-scale jitter of the training images

data:
  dataset: coco           # root/annotations/instances_<split>.json, images in root/<split>/ or root/
  root: {_q(str(root))}
  image_size: {side}          # the short side inside the detector (model.head.min_size)
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  batch_size: {8 if machine.gpu else 4}
  num_workers: {machine.workers}
  augment:
    hflip: 0.5
""" + _train_block(12, 1.0e-3, "test" in splits, "\n  clip_grad_norm: 10.0")
    body = body.replace("weight_decay: 0.05", "weight_decay: 1.0e-4")
    return Starter(found, body, "test" in splits)


# -- segmentation: image + label-map folders -------------------------------------------------------
def segmentation(root: Path, machine: Machine) -> Starter:
    from visionkit.data.datasets.segmentation import find_pairs, read_label

    s = SimpleNamespace(image_suffix="", label_suffix="")  # the reader's defaults
    image_dir, label_dir = root / "images", root / "labels"
    own = (image_dir / "train").is_dir() and (image_dir / "val").is_dir()
    splits = [k for k in ("train", "val", "test") if (image_dir / k).is_dir()] if own else []
    pairs = [p for k in splits for p in find_pairs(image_dir / k, label_dir / k, s)] if own else \
        find_pairs(image_dir, label_dir, s)
    h, w = typical_size([img for img, _ in pairs])
    step = max(1, len(pairs) // SAMPLE)
    values: set[int] = set()
    for _, label in pairs[::step][:SAMPLE]:
        values |= set(torch.unique(read_label(label)).tolist())
    values.discard(255)
    if not values:
        raise DataError(f"the sampled label maps under '{label_dir}' hold only 255 (ignored); "
                        "a label map holds one class id per pixel")
    classes = [f"class_{i}" for i in range(max(values) + 1)]
    side = machine.side(min(h, w), 256, 512)
    found = [f"{len(pairs)} image + label-map pairs, typically {h}x{w} px",
             (f"label values seen in {min(len(pairs), SAMPLE)} maps: {sorted(values)} -> {len(classes)} classes "
              "(rename them below; 255 is ignored)")]
    body = f"""task: segmentation

model:
  backbone:
    name: {machine.backbone}
    weights: null
  head:
    name: semantic_fpn
    fpn_channels: {128 if machine.gpu else 64}
    channels: {128 if machine.gpu else 64}

data:
  dataset: segmentation_folder   # root/images/<name>.png + root/labels/<name>.png (class id per pixel)
  root: {_q(str(root))}
  {_splits_line(splits)}
  image_size: {side}          # the training crop's side
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  batch_size: {16 if machine.gpu else 8}
  num_workers: {machine.workers}
  split:
    ratios: [8, 1, 1]
    seed: 0
  augment:
    hflip: 0.5
  segmentation:
    classes: {_q(classes)}   # names in id order: class_0 is label value 0, ...
    scale: [0.5, 2.0]     # random rescale before the crop
""" + _train_block(30, 2.0e-3, "test" in splits or not splits)
    return Starter(found, body, "test" in splits or not splits)


# -- depth: image + depth-map folders --------------------------------------------------------------
def depth(root: Path, machine: Machine) -> Starter:
    from visionkit.data.datasets.depth import FORMAT_SCALES, folder_pairs, read_depth

    splits = [k for k in ("train", "val", "test") if (root / k).is_dir()] if (root / "train").is_dir() else []
    pairs = [p for k in splits for p in folder_pairs(root / k, "image", "depth")] if splits else \
        folder_pairs(root, "image", "depth")
    h, w = typical_size([img for img, _ in pairs])
    step = max(1, len(pairs) // SAMPLE)
    sample = [read_depth(d, 1.0).numpy() for _, d in pairs[::step][:SAMPLE]]  # stored units
    valid = np.concatenate([d[np.isfinite(d) & (d > 0)].ravel() for d in sample])
    if valid.size == 0:
        raise DataError(f"the {len(sample)} sampled depth maps under '{root}' hold no measurement (all 0)")
    measured = float(valid.size) / sum(d.size for d in sample)
    is_npy = pairs[0][1].endswith(".npy")
    # 16-bit PNGs: sparse maps are KITTI's (metres x 256), dense ones NYU's (millimetres)
    fmt = "nyu" if is_npy or measured > 0.5 else "kitti"
    scale = 1.0 if is_npy else FORMAT_SCALES[fmt]
    far = float(np.percentile(valid, 99.9)) / scale
    max_depth = float(math.ceil(far * 1.2))
    cap = 512 if machine.gpu else 128
    f = min(1.0, cap / min(h, w))
    resize = [max(32, round(h * f / 32) * 32), max(32, round(w * f / 32) * 32)]
    stored = "float metres (.npy)" if is_npy else f"16-bit PNG, read as {fmt} (1 m = {scale:g})"
    found = [f"{len(pairs)} image + depth pairs, typically {h}x{w} px",
             f"depth maps: {stored}, {measured:.0%} of pixels measured, up to {far:.2f} m"]
    body = f"""task: depth

model:
  backbone:
    name: {machine.backbone}
    weights: null
  head:
    name: unet
    channels: 32
    loss: silog

data:
  dataset: depth_pairs    # root/[<split>/]image/<name>.png + root/[<split>/]depth/<name>.png
  root: {_q(str(root))}
  {_splits_line(splits)}
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  batch_size: {16 if machine.gpu else 8}
  num_workers: {machine.workers}
  split:
    ratios: [8, 1, 1]
    seed: 0
  augment:
    hflip: 0.5
  depth:
    format: {fmt}           # nyu: 16-bit PNG in millimetres; kitti: 16-bit PNG of metres x 256, sparse
    min_depth: 0.001
    max_depth: {max_depth:g}        # metres: the head predicts up to this (1.2x the farthest sampled value)
    resize: {_q(resize)}    # [H, W] every image and depth map is resized to (multiples of 32)
""" + _train_block(30, 2.0e-3, "test" in splits or not splits)
    return Starter(found, body, "test" in splits or not splits)
