"""Semantic segmentation data: image + label-map pairs, and the ``shapes`` scenes' class maps.

One reader covers the three on-disk styles; the ``data.segmentation`` config keys say where
images and label maps lie and how label values become class ids:

- folder pairs: ``root/<images>/<name>.<ext>`` with ``root/<labels>/<name>.png`` holding one class
  id per pixel (8-bit grey or palette PNG); ``train/ val/ [test/]`` under both are the data set's
  own splits, otherwise one pool is split by ``data.split``;
- VOC style: palette PNGs (``SegmentationClass``) whose palette *indices* are the class ids and
  255 marks the object borders; the split lists of ``ImageSets/Segmentation`` (``split_lists``);
- Cityscapes style: ``*_gtFine_labelIds.png`` with the 34 label ids, mapped to the 19 train ids
  through ``id_map`` (ids mapped to 255 are ignored); ``image_suffix``/``label_suffix`` pair
  ``X_leftImg8bit.png`` with ``X_gtFine_labelIds.png``.

Every label map is checked when read: its size must equal its image's, and every value must be
a class id or the ignore value, else a DataError names the file and the values found.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from visionkit.data.build import Source, target_kind
from visionkit.data.datasets.folder import IMAGE_EXTENSIONS, read_image, unreadable_fix
from visionkit.data.datasets.sources import ShapesScenes
from visionkit.data.datasets.synthetic import SHAPE_CLASSES, render_semantic
from visionkit.errors import ConfigError, DataError
from visionkit.registry import DATASETS, SHAPES_VIEWS

SPLIT_NAMES = ("train", "val", "test")
#: the ``shapes`` class maps: 0 is the background, k + 1 the shape kind k
SHAPES_SEGMENTATION_CLASSES = ("background", *SHAPE_CLASSES)


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map (bits of the class id spread over R, G, B from the high bit
    down), the palette of VOC's label PNGs; used whenever a config names no palette."""
    out = []
    for c in range(n):
        r = g = b = 0
        cid = c
        for shift in range(7, -1, -1):
            r |= (cid & 1) << shift
            g |= ((cid >> 1) & 1) << shift
            b |= ((cid >> 2) & 1) << shift
            cid >>= 3
        out.append((r, g, b))
    return out


def parse_palette(colours: list[str] | None, num_classes: int, where: str = "data.segmentation.palette"):
    """``["#rrggbb", ...]`` (one per class) -> RGB tuples; the VOC colour map when None."""
    if colours is None:
        return voc_palette(num_classes)
    if len(colours) != num_classes:
        raise ConfigError(f"'{where}' has {len(colours)} colours for {num_classes} classes; give one per class")
    out = []
    for c in colours:
        text = c.lstrip("#")
        if len(text) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in text):
            raise ConfigError(f"'{where}': colour {c!r} is not '#rrggbb' hex")
        out.append(tuple(int(text[i:i + 2], 16) for i in (0, 2, 4)))
    return out


def id_lookup(id_map: dict | None, ignore_index: int) -> torch.Tensor | None:
    """``{label id: train id}`` -> a 256-entry table; ids not in the map get -1 (an error when read)."""
    if not id_map:
        return None
    table = torch.full((256,), -1, dtype=torch.int16)
    for k, v in id_map.items():
        try:
            k, v = int(k), int(v)
        except (TypeError, ValueError):
            raise ConfigError(f"'data.segmentation.id_map' must map integers to integers, got {k!r}: {v!r}") from None
        if not 0 <= k <= 255 or not (0 <= v <= 255):
            raise ConfigError(f"'data.segmentation.id_map' entry {k}: {v} is outside 0..255")
        table[k] = v
    return table


def read_label(path: str, lookup: torch.Tensor | None = None) -> torch.Tensor:
    """One label map as a ``(H, W)`` uint8 tensor of class ids (before validation).

    Read with PIL because a palette PNG must give its *indices* (the class ids); decoders that
    expand the palette to RGB would give colours. 8/16-bit grey maps give their values.
    """
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("RGB", "RGBA"):
                raise DataError(f"label map '{path}' is an {mode} image; label maps hold one class id per "
                                "pixel (8-bit grey or palette PNG), not colours")
            data = np.asarray(img.convert("L") if mode == "1" else img)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read label map '{path}': {e}") from None
    if data.ndim != 2:
        raise DataError(f"label map '{path}' has shape {data.shape}; expected one channel")
    values = torch.from_numpy(data.astype(np.int64))
    if lookup is not None:
        if values.max() > 255:
            raise DataError(f"label map '{path}' has ids above 255; data.segmentation.id_map maps 0..255")
        values = lookup[values].long()
        unmapped = torch.unique(torch.from_numpy(data.astype(np.int64))[values < 0])
        if unmapped.numel():
            raise DataError(f"label map '{path}' has ids {unmapped.tolist()[:20]} that "
                            "data.segmentation.id_map does not list; add them (map to 255 to ignore)")
    return values


def check_label(label: torch.Tensor, image_size: tuple[int, int], num_classes: int, ignore_index: int,
                path: str) -> torch.Tensor:
    """The label map as uint8 after the checks every sample passes (see the module docstring)."""
    if tuple(label.shape) != tuple(image_size):
        raise DataError(f"label map '{path}' is {label.shape[1]}x{label.shape[0]} (WxH) but its image is "
                        f"{image_size[1]}x{image_size[0]}; label maps must have their image's size")
    bad = (label >= num_classes) & (label != ignore_index) | (label < 0)
    if bad.any():
        found = torch.unique(label[bad]).tolist()
        raise DataError(f"label map '{path}' has values {found[:20]} that are neither a class id "
                        f"(0..{num_classes - 1}) nor the ignore value {ignore_index}; fix the file, "
                        "data.segmentation.classes, or data.segmentation.id_map")
    return label.to(torch.uint8)


class SegmentationPairs(Dataset):
    """``(image path, label path)`` pairs -> ``{"image", "semantic", "path", "index"}`` samples."""

    def __init__(self, pairs: list[tuple[str, str]], num_classes: int, *, ignore_index: int = 255,
                 lookup: torch.Tensor | None = None, channels: int = 3, on_error: str = "raise"):
        self.pairs, self.num_classes, self.ignore_index = pairs, num_classes, ignore_index
        self.lookup, self.channels, self.on_error = lookup, channels, on_error

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict | None:
        image_path, label_path = self.pairs[index]
        try:
            image = read_image(image_path, self.channels, fix=unreadable_fix(self.on_error))
            label = check_label(read_label(label_path, self.lookup), tuple(image.shape[-2:]),
                                self.num_classes, self.ignore_index, label_path)
        except DataError:
            if self.on_error == "skip":
                return None
            raise
        return {"image": image, "semantic": tv_tensors.Mask(label), "path": image_path, "index": index}


def _images_below(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and p.stem.endswith(suffix) and not p.name.startswith("."))


def _label_for(image: Path, image_dir: Path, label_dir: Path, s) -> Path:
    rel = image.relative_to(image_dir)
    name = rel.name[: len(rel.name) - len(rel.suffix)]
    if s.image_suffix and name.endswith(s.image_suffix):
        name = name[: -len(s.image_suffix)]
    return label_dir / rel.parent / f"{name}{s.label_suffix}.png"


def find_pairs(image_dir: Path, label_dir: Path, s) -> list[tuple[str, str]]:
    """Every image below ``image_dir`` with its label map below ``label_dir`` (same relative path)."""
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DataError(f"segmentation folder '{d}' does not exist; check data.root and "
                            "data.segmentation.images / labels")
    images = _images_below(image_dir, s.image_suffix)
    if not images:
        raise DataError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found below '{image_dir}'")
    pairs = []
    for img in images:
        lab = _label_for(img, image_dir, label_dir, s)
        if not lab.is_file():
            raise DataError(f"image '{img}' has no label map (looked for '{lab}'); add it or remove the image")
        pairs.append((str(img), str(lab)))
    return pairs


def pairs_from_list(root: Path, list_file: Path, s) -> list[tuple[str, str]]:
    """VOC style: one image stem per line of ``list_file``."""
    image_dir, label_dir = root / s.images, root / s.labels
    pairs = []
    for line in list_file.read_text().split():
        stem = line.strip()
        found = [image_dir / f"{stem}{s.image_suffix}{e}" for e in (".jpg", ".png", ".jpeg")]
        img = next((p for p in found if p.is_file()), None)
        if img is None:
            raise DataError(f"'{list_file}' lists '{stem}' but no image '{found[0]}' exists")
        lab = label_dir / f"{stem}{s.label_suffix}.png"
        if not lab.is_file():
            raise DataError(f"'{list_file}' lists '{stem}' but its label map '{lab}' does not exist")
        pairs.append((str(img), str(lab)))
    return pairs


@DATASETS.register("segmentation_folder")
def segmentation_folder(cfg) -> Source:
    """Image + label-map pairs (folder, VOC or Cityscapes style; see the module docstring)."""
    kind = target_kind(cfg)  # checked first: data.segmentation exists only for tasks that read label maps
    if kind != "semantic":
        raise ConfigError(f"{cfg.source}: data set 'segmentation_folder' holds label maps (semantic targets, "
                          f"as task 'segmentation' reads), not the {kind} targets of task '{cfg.task}'")
    d, s = cfg.data, cfg.data.segmentation
    if not s.classes:
        raise ConfigError(f"{cfg.source}: 'data.segmentation.classes' is needed for segmentation_folder "
                          "(the class names, in class-id order)")
    root = Path(d.root)
    if not root.is_dir():
        raise DataError(f"data root '{root}' does not exist; set data.root")
    ignore = cfg.model.head.ignore_index
    kw = {"ignore_index": ignore, "lookup": id_lookup(s.id_map, ignore), "channels": d.channels,
          "on_error": d.on_error}
    n = len(s.classes)
    info = {"palette": parse_palette(s.palette, n)}
    if s.split_lists:
        lists = {k: root / s.split_lists / f"{k}.txt" for k in SPLIT_NAMES}
        lists = {k: p for k, p in lists.items() if p.is_file()}
        if "train" not in lists:
            raise DataError(f"no split list '{root / s.split_lists / 'train.txt'}'; check data.segmentation.split_lists")
        splits = {k: SegmentationPairs(pairs_from_list(root, p, s), n, **kw) for k, p in lists.items()}
        return Source(classes=list(s.classes), splits=splits, info=info,
                      split_home=f"the list '{root / s.split_lists / '{split}.txt'}'")
    image_dir, label_dir = root / s.images, root / s.labels
    if (image_dir / "train").is_dir() and (image_dir / "val").is_dir():
        splits = {k: SegmentationPairs(find_pairs(image_dir / k, label_dir / k, s), n, **kw)
                  for k in SPLIT_NAMES if (image_dir / k).is_dir()}
        return Source(classes=list(s.classes), splits=splits, info=info,
                      split_home=f"the folders '{image_dir / '{split}'}' and '{label_dir / '{split}'}'")
    pool = SegmentationPairs(find_pairs(image_dir, label_dir, s), n, **kw)
    # no per-image class to stratify by without reading every map: a plain seeded split
    return Source(classes=list(s.classes), pool=pool, targets=[0] * len(pool), info=info)


class ShapesSemantic(ShapesScenes):
    """The ``shapes`` scenes with class maps rendered from their annotations (exact to the pixel)."""

    def __init__(self, root: Path, channels: int, ignore_index: int, ignore_boundaries: bool):
        super().__init__(root, channels)
        self.ignore_index, self.ignore_boundaries = ignore_index, ignore_boundaries

    def __getitem__(self, index: int) -> dict:
        rec, path, image = self.scene(index)
        semantic = render_semantic(rec, self.ignore_index, ignore_boundaries=self.ignore_boundaries)
        return {"image": image, "semantic": tv_tensors.Mask(torch.from_numpy(semantic)), "path": path,
                "index": index}


@SHAPES_VIEWS.register("semantic")
def shapes_segmentation(cfg, root: Path | None) -> Source:
    """Class 0 = background, 1..6 = the shape kinds (``SHAPES_SEGMENTATION_CLASSES``); split
    stratified by each scene's main shape, as classification splits it."""
    s = cfg.data.segmentation
    classes = list(SHAPES_SEGMENTATION_CLASSES)
    if s.classes and list(s.classes) != classes:
        raise ConfigError(f"{cfg.source}: the shapes data set's classes are {classes}; "
                          "set data.segmentation.classes to null")
    pool = ShapesSemantic(root, cfg.data.channels, cfg.model.head.ignore_index, s.ignore_boundaries) if root else None
    return Source(classes=classes, pool=pool, targets=pool and [r["label"] for r in pool.records],
                  info={"palette": parse_palette(s.palette, len(classes))})


def save_palette_png(labels: torch.Tensor, palette: list[tuple[int, int, int]], path: str | os.PathLike) -> None:
    """Write a ``(H, W)`` class map as a palette PNG: the pixel values are the class ids, and
    viewers show the colours (VOC's own label format, so the file reads back as ids)."""
    img = Image.fromarray(labels.to(torch.uint8).cpu().numpy(), mode="P")
    flat = [v for rgb in palette for v in rgb]
    img.putpalette(flat + [0] * (768 - len(flat)))
    img.save(path, format="PNG")
