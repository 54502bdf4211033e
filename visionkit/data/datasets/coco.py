"""Instance data: COCO json files (through pycocotools) and the ``shapes`` scenes as instances.

Both give the same sample, the detection task's input (see ``visionkit.data.transforms.detection``):
``image``, ``boxes`` (XYXY pixels), ``labels`` (0-based, contiguous), ``masks`` (``(N, H, W)``
uint8), ``iscrowd``, ``area`` and ``image_id``.

COCO layout under ``data.root`` (the one the COCO download unpacks to)::

    annotations/instances_train2017.json   one file per split: instances_<train|val|test><suffix>.json
    train2017/000000000009.jpg             images of a split in <split><suffix>/, else under root

Category ids are mapped to labels in increasing id order (``category_ids[label]`` maps back).
What a user can fix raises :class:`DataError` naming the file and the annotation: a file that is
no instances object or lists no images or no categories, an unknown category id, an RLE mask
whose size is not its image's, a missing image file (``on_error: skip`` drops those images
instead and says how many), no image left to use. Boxes partly outside their image are clipped and
boxes of zero area (before or after clipping) are dropped; the count is printed once per file.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from visionkit.data.build import SPLITS, Source
from visionkit.data.datasets.folder import read_image, unreadable_fix
from visionkit.data.datasets.sources import ShapesScenes
from visionkit.data.datasets.synthetic import SHAPE_CLASSES, load_annotations, render_instance_masks
from visionkit.errors import DataError
from visionkit.registry import DATASETS, SHAPES_VIEWS

#: shapes instances with fewer visible pixels are left out: too little is left to tell the kind
MIN_VISIBLE_PIXELS = 8


def _quiet(fn, *args):
    """Call a pycocotools function without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def instance_sample(image, boxes, labels, masks, iscrowd, area, image_id, path) -> dict:
    """The detection sample dict from plain arrays (shared by the COCO and shapes readers)."""
    h, w = image.shape[-2:]
    sample = {
        "image": image,
        "boxes": tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                          format="XYXY", canvas_size=(h, w)),
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
        "iscrowd": torch.as_tensor(iscrowd, dtype=torch.bool).reshape(-1),
        "area": torch.as_tensor(area, dtype=torch.float32).reshape(-1),
        "image_id": int(image_id),
        "path": str(path),
    }
    if masks is not None:
        sample["masks"] = tv_tensors.Mask(torch.as_tensor(masks, dtype=torch.uint8).reshape(-1, h, w))
    return sample


#: what each list of an instances file must hold (an empty one leaves nothing to train on)
_REQUIRED = {"images": 'each image as {"id", "file_name", "width", "height"}',
             "categories": 'each class as {"id", "name"}'}


def load_coco(ann_file: Path):
    """``pycocotools.coco.COCO`` of ``ann_file``; DataError naming the file when it is no COCO
    instances file or lists no images or no categories."""
    from pycocotools.coco import COCO

    try:
        coco = _quiet(COCO, str(ann_file))
    except AssertionError as e:  # pycocotools asserts that the top level is a dict
        if "not supported" not in str(e):
            raise
        raise DataError(f"{ann_file} is not a COCO instances file: its top level is a "
                        f"{type(json.loads(ann_file.read_text())).__name__}, but must be an object "
                        "with 'images', 'annotations' and 'categories' lists") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot read COCO annotations '{ann_file}': {e}") from None
    for key, entry in _REQUIRED.items():
        if not coco.dataset.get(key):
            raise DataError(f"{ann_file} has no {key}: its '{key}' list is missing or empty; "
                            f"list {entry} (or point data.root at the right annotations)")
    return coco


class CocoDetection(Dataset):
    """One COCO instances file with its images, checked and cleaned when opened.

    ``keep_empty=False`` drops images left without any (non-crowd) annotation, as detection
    recipes usually do for training. ``with_masks=False`` skips decoding masks (Faster R-CNN).
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path, *, keep_empty: bool = True,
                 with_masks: bool = True, on_error: str = "raise", channels: int = 3, log=print):
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        self.with_masks, self.channels = with_masks, channels
        self.fix = unreadable_fix(on_error)  # how an unreadable image's message ends
        self.coco = load_coco(self.ann_file)
        cats = sorted(self.coco.cats)
        self.category_ids = cats
        self.classes = [self.coco.cats[c]["name"] for c in cats]
        self.label_of = {c: i for i, c in enumerate(cats)}
        self.anns: dict[int, list[dict]] = {}
        dropped = 0
        for img_id in sorted(self.coco.imgs):
            kept = []
            for ann in self.coco.imgToAnns.get(img_id, []):
                box = self._check(ann)
                if box is None:
                    dropped += 1
                else:
                    kept.append({**ann, "_xyxy": box})
            self.anns[img_id] = kept
        if dropped:
            log(f"{self.ann_file}: dropped {dropped} annotation(s) whose box is of zero area or "
                "outside its image")
        ids = sorted(self.anns)
        missing = [i for i in ids if not self._path(i).is_file()]
        if missing:
            first = self._path(missing[0])
            if on_error != "skip":
                raise DataError(f"{self.ann_file}: {len(missing)} image file(s) missing, first "
                                f"'{first}'; restore them, or set data.on_error=skip to drop those images")
            log(f"{self.ann_file}: skipped {len(missing)} image(s) whose file is missing (first '{first}')")
            ids = [i for i in ids if i not in set(missing)]
        if not keep_empty:
            empty = [i for i in ids if not any(not a.get("iscrowd", 0) for a in self.anns[i])]
            if empty:
                log(f"{self.ann_file}: left out {len(empty)} image(s) without annotations "
                    "(data.coco.keep_empty: false)")
            ids = [i for i in ids if i not in set(empty)]
        if not ids:
            why = ("their files are missing" if len(missing) == len(self.coco.imgs)
                   else "none has a file and an annotation (data.coco.keep_empty: false)")
            raise DataError(f"{self.ann_file}: none of its {len(self.coco.imgs)} image(s) is left to use, "
                            f"{why}; restore the images or annotations")
        self.ids = ids

    def _check(self, ann: dict) -> list[float] | None:
        """The annotation's clipped XYXY box, None when nothing of it is left; DataError when wrong."""
        img = self.coco.imgs[ann["image_id"]]
        where = f"{self.ann_file}: annotation {ann.get('id')} (image {ann['image_id']})"
        if ann.get("category_id") not in self.coco.cats:
            raise DataError(f"{where} has category_id {ann.get('category_id')!r}, which is not in "
                            f"'categories' (ids {sorted(self.coco.cats)}); fix the id or add the category")
        seg = ann.get("segmentation")
        if isinstance(seg, dict) and list(seg.get("size", [])) != [img["height"], img["width"]]:
            raise DataError(f"{where}: its RLE mask has size {seg.get('size')} but the image is "
                            f"{img['height']}x{img['width']} (height x width); the mask belongs to "
                            "another image size")
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise DataError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
        x, y, w, h = map(float, bbox)
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(img["width"])), min(y + h, float(img["height"]))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            return None
        return [x0, y0, x1, y1]

    def _path(self, img_id: int) -> Path:
        return self.image_dir / self.coco.imgs[img_id]["file_name"]

    @property
    def targets(self) -> list[int]:
        """One label per image (its first object's, -1 when empty) for stratified splitting."""
        return [self.label_of[a[0]["category_id"]] if a else -1 for a in (self.anns[i] for i in self.ids)]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        path = self._path(img_id)
        image = read_image(str(path), self.channels, fix=self.fix)
        if tuple(image.shape[-2:]) != (info["height"], info["width"]):
            raise DataError(f"image '{path}' is {image.shape[-2]}x{image.shape[-1]} but "
                            f"{self.ann_file} says {info['height']}x{info['width']} (height x width)")
        anns = self.anns[img_id]
        masks = None
        if self.with_masks:
            masks = np.zeros((len(anns), info["height"], info["width"]), dtype=np.uint8)
            for k, a in enumerate(anns):
                if a.get("segmentation"):
                    masks[k] = self.coco.annToMask(a)
                else:  # a box-only annotation: its box is the best mask there is
                    x0, y0, x1, y1 = (round(v) for v in a["_xyxy"])
                    masks[k, y0:y1, x0:x1] = 1
        return instance_sample(
            image, [a["_xyxy"] for a in anns], [self.label_of[a["category_id"]] for a in anns], masks,
            [bool(a.get("iscrowd", 0)) for a in anns],
            [float(a.get("area") or (a["_xyxy"][2] - a["_xyxy"][0]) * (a["_xyxy"][3] - a["_xyxy"][1]))
             for a in anns],
            img_id, path)


_ANN_FILE = re.compile(r"^instances_(train|val|test)(.*)\.json$")


def find_coco_splits(root: Path) -> dict[str, tuple[Path, Path]]:
    """``split -> (annotation file, image directory)`` found under ``root/annotations``."""
    found: dict[str, tuple[Path, Path]] = {}
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data root '{root}' {state}; point data.root at a COCO folder holding "
                        "annotations/instances_train<suffix>.json (e.g. instances_train2017.json)")
    ann_dir = root / "annotations"
    for f in sorted(ann_dir.glob("instances_*.json")) if ann_dir.is_dir() else []:
        m = _ANN_FILE.match(f.name)
        if m and m.group(1) not in found:
            image_dir = root / f"{m.group(1)}{m.group(2)}"
            found[m.group(1)] = (f, image_dir if image_dir.is_dir() else root)
    if "train" not in found:
        raise DataError(f"no COCO training annotations under '{ann_dir}': expected "
                        "annotations/instances_train<suffix>.json (e.g. instances_train2017.json)")
    return found


@DATASETS.register("coco")
def coco(cfg) -> Source:
    """COCO instances files under ``data.root`` (see the module docstring for the layout)."""
    d = cfg.data
    with_masks = cfg.model.get("head", {}).get("name", "mask_rcnn") != "faster_rcnn"
    splits, classes, cat_ids = {}, None, None
    found = find_coco_splits(Path(d.root))
    suffix = _ANN_FILE.match(found["train"][0].name).group(2)  # instances_train2017.json: "2017"
    home = (f"'{Path(d.root) / 'annotations' / f'instances_{{split}}{suffix}.json'}' (its images in "
            f"'{Path(d.root) / f'{{split}}{suffix}'}')")
    for name, (ann, images) in found.items():
        ds = CocoDetection(ann, images, keep_empty=d.coco.keep_empty or name != "train",
                           with_masks=with_masks, on_error=d.on_error, channels=d.channels)
        if classes is None:
            classes, cat_ids = ds.classes, ds.category_ids
        elif ds.category_ids != cat_ids:
            raise DataError(f"{ann} has categories {ds.category_ids}, the training file has {cat_ids}; "
                            "every split must share one category list")
        splits[name] = ds
    return Source(classes=classes, splits=splits, info={"category_ids": cat_ids}, split_home=home)


# ---------------------------------------------------------------------------------------------
# The shapes scenes as instances


def shapes_instances(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes XYXY (N, 4), labels (N,), masks (N, H, W) bool)`` of a scene's visible objects.

    Masks are the visible pixels (occluders removed, ``render_instance_masks``), boxes their tight
    pixel extent, so a box is what one sees; objects with fewer than :data:`MIN_VISIBLE_PIXELS`
    visible pixels are left out.
    """
    masks = render_instance_masks(record)
    keep = masks.reshape(len(masks), -1).sum(1) >= MIN_VISIBLE_PIXELS
    masks = masks[keep]
    labels = np.array([o["kind"] for o, k in zip(record["objects"], keep) if k], dtype=np.int64)
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes, labels, masks


class ShapesInstances(ShapesScenes):
    """The shapes scenes with every visible object as an instance (several per image, overlapping)."""

    def __getitem__(self, index: int) -> dict:
        rec, path, image = self.scene(index)
        boxes, labels, masks = shapes_instances(rec)
        area = masks.reshape(len(masks), -1).sum(1)
        return instance_sample(image, boxes, labels, masks, np.zeros(len(labels), bool), area,
                               rec["id"], path)


@SHAPES_VIEWS.register("instances")
def shapes_detection(cfg, root: Path | None) -> Source:
    pool = ShapesInstances(root, cfg.data.channels) if root else None  # None: classes and info only
    return Source(classes=list(SHAPE_CLASSES), pool=pool, targets=pool and [r["label"] for r in pool.records],
                  info={"category_ids": list(range(1, len(SHAPE_CLASSES) + 1))})


def write_shapes_coco(root: str | Path, ratios=(8, 1, 1), seed: int = 0) -> list[Path]:
    """Write ``root/annotations/instances_{train,val,test}.json`` for a generated shapes root.

    The split is the one a ``shapes`` detection run with these ``data.split`` values uses, so a
    model trained on either reader is scored on the same test images. Masks are stored as RLE
    (the visible pixels; a polygon cannot describe an occluded shape), category ids are 1..6.
    """
    from pycocotools import mask as mask_utils

    from visionkit.data.splits import stratified_split

    root = Path(root)
    records = load_annotations(root)
    split = stratified_split([r["label"] for r in records], ratios=tuple(ratios), seed=seed)
    categories = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(SHAPE_CLASSES)]
    (root / "annotations").mkdir(exist_ok=True)
    written = []
    ann_id = 1
    for name in SPLITS:
        images, anns = [], []
        for i in split.get(name, []):
            rec = records[i]
            images.append({"id": rec["id"], "file_name": rec["file"], "width": rec["width"],
                           "height": rec["height"]})
            boxes, labels, masks = shapes_instances(rec)
            for box, label, m in zip(boxes, labels, masks):
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                x0, y0, x1, y1 = (float(v) for v in box)
                anns.append({"id": ann_id, "image_id": rec["id"], "category_id": int(label) + 1,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(m.sum()), "iscrowd": 0,
                             "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()}})
                ann_id += 1
        path = root / "annotations" / f"instances_{name}.json"
        path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
        written.append(path)
    return written
