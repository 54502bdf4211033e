"""Registered dataset sources: what ``data.dataset`` may name."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from visionkit.data.build import Source, target_kind
from visionkit.data.datasets.folder import ImageFolderDataset, has_own_splits, read_image, split_roots
from visionkit.data.datasets.synthetic import SHAPE_CLASSES, ensure_shapes, load_annotations
from visionkit.errors import DataError
from visionkit.registry import DATASETS, SHAPES_VIEWS


@DATASETS.register("image_folder")
def image_folder(cfg) -> Source:
    """One folder per class under ``data.root``; ``train/ val/ [test/]`` below it are its own splits."""
    d = cfg.data
    root = Path(d.root)
    kw = {"channels": d.channels, "on_error": d.on_error}
    if has_own_splits(root):
        splits = {name: ImageFolderDataset(p, **kw) for name, p in split_roots(root).items()}
        _need_two_classes(cfg, splits["train"])
        return Source(classes=splits["train"].classes, splits=splits,
                      split_home=f"the folder '{root / '{split}'}' of class folders")
    pool = ImageFolderDataset(root, **kw)
    _need_two_classes(cfg, pool)
    return Source(classes=pool.classes, pool=pool, targets=pool.targets)


def _need_two_classes(cfg, dataset: ImageFolderDataset) -> None:
    """A single-label classifier of one class learns nothing (100 % accuracy from the start), so a
    folder tree with one class folder is a mistake, e.g. data.root set one level too deep. A
    multi-label head scores each class on its own (present or not), so one class is a task there."""
    if target_kind(cfg) != "label":
        return
    if len(dataset.classes) < 2:
        root = dataset.root
        raise DataError(
            f"only one class ('{dataset.classes[0]}') under '{root}'; classification needs two or "
            f"more class folders ('{Path(root) / '<class>' / '<image>.png'}'); add the other classes' "
            "folders, or point data.root at the folder that holds them"
        )


class MultiHotLabels(Dataset):
    """Replaces each sample's label by a multi-hot vector of every class present in the scene."""

    def __init__(self, base: ImageFolderDataset, label_sets: list[list[int]], num_classes: int):
        self.base, self.label_sets, self.num_classes = base, label_sets, num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        sample = self.base[i]
        if sample is not None:
            hot = torch.zeros(self.num_classes)
            hot[self.label_sets[i]] = 1.0
            sample["labels"] = hot
        return sample


class ShapesScenes(Dataset):
    """The shapes scenes of a generated root, one record of ``annotations.json`` per item: the
    base of the views that give detection, segmentation and depth their targets."""

    def __init__(self, root: Path, channels: int = 3):
        self.root, self.channels = Path(root), channels
        self.records = load_annotations(root)

    def __len__(self) -> int:
        return len(self.records)

    def scene(self, index: int) -> tuple[dict, str, torch.Tensor]:
        """The record, image path and decoded image of scene ``index``."""
        rec = self.records[index]
        path = str(self.root / rec["file"])
        return rec, path, read_image(path, self.channels)


@DATASETS.register("shapes")
def shapes(cfg) -> Source:
    """The built-in synthetic scenes (generated into ``data.root`` on first use).

    Each task reads the targets it needs (``Task.target_kind``: class labels, boxes and masks, class
    maps, depth) of the same scenes through the view registered for them in ``SHAPES_VIEWS``.
    """
    d = cfg.data
    view = _shapes_view(cfg)  # a task the scenes have no targets for fails before generating
    fix = (f"point data.root at another folder for these settings (e.g. data.root={d.root}-{d.synth.num_images}-"
           f"{d.synth.size}px-seed{d.synth.seed}) or delete '{d.root}' to generate it anew")
    root = ensure_shapes(d.root, d.synth.num_images, d.synth.size, d.synth.seed, keys="data.synth.", fix=fix)
    return view(cfg, Path(root))


def shapes_outline(cfg) -> Source:
    """The shapes data set's classes and info (what building a model needs) without generating or
    reading its scenes: ``visionkit info`` and ``config show`` write nothing."""
    return _shapes_view(cfg)(cfg, None)


shapes.outline = shapes_outline  # build_source(cfg, write=False) asks for it


def _shapes_view(cfg):
    kind = target_kind(cfg)
    if kind not in SHAPES_VIEWS:
        raise DataError(f"the shapes data set has no targets for task '{cfg.task}' ({kind}); it has "
                        f"{', '.join(SHAPES_VIEWS)}")
    return SHAPES_VIEWS.get(kind)


@SHAPES_VIEWS.register("label")
def shapes_labels(cfg, root: Path | None) -> Source:
    """The scenes in the ImageFolder layout: one folder per main shape (sorted, as SHAPE_CLASSES is);
    ``root`` None: the classes alone."""
    if root is None:
        return Source(classes=list(SHAPE_CLASSES))
    pool = ImageFolderDataset(root, channels=cfg.data.channels, on_error=cfg.data.on_error)
    return Source(classes=pool.classes, pool=pool, targets=pool.targets)


@SHAPES_VIEWS.register("multi_label")
def shapes_multi_labels(cfg, root: Path | None) -> Source:
    """The ImageFolder layout with every shape kind in the scene as a multi-hot label; split by
    the main shape, as single-label classification splits it."""
    src = shapes_labels(cfg, root)
    if root is None:
        return src
    pool = src.pool
    images = load_annotations(root)
    # annotation kinds index SHAPE_CLASSES; folder labels index the sorted folder names
    to_label = {k: pool.classes.index(name) for k, name in enumerate(SHAPE_CLASSES)}
    by_file = {im["file"]: sorted({to_label[o["kind"]] for o in im["objects"]}) for im in images}
    label_sets = [by_file[str(Path(p).relative_to(root))] for p, _ in pool.samples]
    src.pool = MultiHotLabels(pool, label_sets, len(pool.classes))
    return src
