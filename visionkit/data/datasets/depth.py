"""Depth data: image + metric depth map pairs, from files (NYU / KITTI style) or the shapes scenes.

File formats (``data.depth.format``):

- ``nyu``: the depth map is a 16-bit single-channel PNG in millimetres (``depth_scale`` 1000),
  dense, 0 where the sensor gave nothing.
- ``kitti``: a 16-bit PNG holding metres x 256 (``depth_scale`` 256), sparse (projected LiDAR):
  0 means "no measurement" and most pixels are 0.
- a ``.npy`` file (float metres, 0 or non-finite = none) is read in either format.

Pairs come from file lists (``data.depth.<split>_list``: lines ``image depth``, paths relative to
``data.root``; extra columns such as a focal length are ignored, as in the BTS lists) or from
folder pairs ``root/[<split>/]image/*`` + ``root/[<split>/]depth/*`` matched by file stem.

Bad pairs raise :class:`~visionkit.errors.DataError` naming the file: a depth map that is not
16-bit single-channel, or whose size differs from its image's. A depth map without any valid
pixel is *not* an error (KITTI crops may contain none); the loss and the evaluator skip such
images and the evaluator reports how many it skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from visionkit.data.build import Source
from visionkit.data.datasets.folder import IMAGE_EXTENSIONS, read_image, unreadable_fix
from visionkit.data.datasets.sources import ShapesScenes
from visionkit.data.datasets.synthetic import render_depth
from visionkit.errors import DataError
from visionkit.registry import DATASETS, SHAPES_VIEWS

#: ``data.depth.format`` -> stored value per metre
FORMAT_SCALES = {"nyu": 1000.0, "kitti": 256.0}
DEPTH_EXTENSIONS = (".png", ".npy")


def depth_scale(cfg) -> float:
    """Stored units per metre: ``data.depth.depth_scale``, or the format's (NYU 1000, KITTI 256)."""
    d = cfg.data.depth
    return float(d.depth_scale) if d.depth_scale is not None else FORMAT_SCALES[d.format]


def read_depth(path: str | os.PathLike, scale: float) -> torch.Tensor:
    """Metric depth ``(H, W)`` float32 from a 16-bit PNG (stored / ``scale``) or a float ``.npy``
    (metres). 0 stays 0 (no measurement); non-finite ``.npy`` values become 0."""
    path = str(path)
    if path.lower().endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read depth map '{path}': {e}") from None
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"depth map '{path}' holds a {arr.dtype} array of shape {arr.shape}; "
                            "expected a 2-D array of metres (H, W)")
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        return torch.from_numpy(np.maximum(arr, 0.0))
    try:
        with Image.open(path) as img:
            mode = img.mode
            arr = np.asarray(img) if mode in ("I;16", "I;16B", "I;16L", "I") else None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read depth map '{path}': {e}") from None
    if arr is None or arr.ndim != 2:
        raise DataError(
            f"depth map '{path}' is a {mode} image; depth maps must be 16-bit single-channel PNGs "
            f"(NYU: millimetres, depth_scale 1000; KITTI: metres x 256, depth_scale 256) or .npy")
    if arr.dtype == np.int32 and arr.max(initial=0) > 65535:  # mode "I": must still be 16-bit values
        raise DataError(f"depth map '{path}' holds values above 65535; expected a 16-bit PNG")
    return torch.from_numpy(arr.astype(np.float32) / scale)


def write_depth_png(path: str | os.PathLike, depth, scale: float) -> None:
    """Save metric depth as a 16-bit PNG of ``round(depth * scale)`` (0 = none), clipped to 65535."""
    arr = np.asarray(depth.detach().cpu() if isinstance(depth, torch.Tensor) else depth, dtype=np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    stored = np.clip(np.rint(arr * scale), 0, 65535).astype(np.uint16)
    Image.fromarray(stored).save(path, format="PNG")  # uint16 2-D -> mode I;16


class DepthPairs(Dataset):
    """``{"image", "depth", "path"}`` samples from ``(image path, depth path)`` pairs.

    ``on_error="skip"`` turns an unreadable pair into ``None`` (dropped by the collate).
    """

    def __init__(self, pairs: list[tuple[str, str]], scale: float, channels: int = 3,
                 on_error: str = "raise"):
        self.pairs, self.scale, self.channels, self.on_error = list(pairs), scale, channels, on_error

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        image_path, depth_path = self.pairs[i]
        try:
            image = read_image(image_path, self.channels, fix=unreadable_fix(self.on_error))
            depth = read_depth(depth_path, self.scale)
            if tuple(depth.shape) != tuple(image.shape[-2:]):
                raise DataError(
                    f"depth map '{depth_path}' is {depth.shape[1]}x{depth.shape[0]} but its image "
                    f"'{image_path}' is {image.shape[-1]}x{image.shape[-2]}; they must be the same size")
        except DataError:
            if self.on_error == "skip":
                return None
            raise
        return {"image": image, "depth": tv_tensors.Mask(depth), "path": image_path}


def read_list(list_file: Path, root: Path) -> list[tuple[str, str]]:
    """Pairs from a file list: one ``image depth [anything]`` line each; ``#`` starts a comment."""
    if not list_file.is_file():
        raise DataError(f"depth file list '{list_file}' does not exist")
    pairs = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            raise DataError(f"{list_file}:{n}: expected 'image_path depth_path', got {line!r}")
        image, depth = (root / parts[0], root / parts[1])
        for p in (image, depth):
            if not p.is_file():
                raise DataError(f"{list_file}:{n}: file '{p}' does not exist")
        pairs.append((str(image), str(depth)))
    if not pairs:
        raise DataError(f"depth file list '{list_file}' lists no pairs")
    return pairs


def folder_pairs(folder: Path, image_dir: str, depth_dir: str) -> list[tuple[str, str]]:
    """Pairs ``folder/<image_dir>/X.*`` + ``folder/<depth_dir>/X.(png|npy)`` matched by path
    below the two folders, without extension; an image without a depth map is an error."""
    images_root, depths_root = folder / image_dir, folder / depth_dir
    for p in (images_root, depths_root):
        if not p.is_dir():
            raise DataError(f"depth data folder '{p}' does not exist; expected '{folder}/{image_dir}/' "
                            f"and '{folder}/{depth_dir}/' (or set data.depth.train_list)")
    depths = {str(p.relative_to(depths_root).with_suffix("")): p for p in sorted(depths_root.rglob("*"))
              if p.suffix.lower() in DEPTH_EXTENSIONS}
    pairs = []
    for img in sorted(images_root.rglob("*")):
        if img.suffix.lower() not in IMAGE_EXTENSIONS or img.name.startswith("."):
            continue
        key = str(img.relative_to(images_root).with_suffix(""))
        if key not in depths:
            raise DataError(f"image '{img}' has no depth map '{depths_root / key}.png' (or .npy)")
        pairs.append((str(img), str(depths[key])))
    if not pairs:
        raise DataError(f"no images in '{images_root}'")
    return pairs


@DATASETS.register("depth_pairs")
def depth_pairs(cfg) -> Source:
    """Image + depth pairs under ``data.root``: file lists per split, ``train/ val/ [test/]``
    folder pairs (the data set's own splits), or one pair of folders split by ``data.split``."""
    d, dd = cfg.data, cfg.data.depth
    root = Path(d.root)
    if not root.is_dir():
        raise DataError(f"data root '{root}' does not exist; set data.root")
    scale = depth_scale(cfg)
    make = lambda pairs: DepthPairs(pairs, scale, d.channels, d.on_error)
    lists = {s: dd.get(f"{s}_list") for s in ("train", "val", "test")}
    if any(lists.values()):
        splits = {s: make(read_list(root / f, root)) for s, f in lists.items() if f}
        return Source(classes=[], splits=splits, split_home="the file list that data.depth.{split}_list names")
    if (root / "train").is_dir():
        splits = {s: make(folder_pairs(root / s, dd.image_dir, dd.depth_dir))
                  for s in ("train", "val", "test") if (root / s).is_dir()}
        return Source(classes=[], splits=splits, split_home=f"the folder '{root / '{split}'}' (with "
                      f"{dd.image_dir}/ and {dd.depth_dir}/ inside)")
    pool = make(folder_pairs(root, dd.image_dir, dd.depth_dir))
    return Source(classes=[], pool=pool, targets=[0] * len(pool))


class ShapesDepth(ShapesScenes):
    """The shapes scenes with the depth maps of their 3D layout (:func:`render_depth`)."""

    def __getitem__(self, i: int):
        rec, path, image = self.scene(i)
        depth = torch.from_numpy(render_depth(rec))
        return {"image": image, "depth": tv_tensors.Mask(depth), "path": path}


@SHAPES_VIEWS.register("depth")
def shapes_depth(cfg, root: Path | None) -> Source:
    """Depth on the shapes scenes, split like classification (stratified by the main object)."""
    pool = ShapesDepth(root, cfg.data.channels) if root else None  # None: the outline only
    return Source(classes=[], pool=pool, targets=pool and [r["label"] for r in pool.records])
