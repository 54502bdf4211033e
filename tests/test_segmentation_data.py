"""Segmentation data: label-map formats (folder, VOC palette PNG, Cityscapes ids), checks of bad
maps, joint transforms, and the shapes class maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision import tv_tensors

from visionkit import load_config
from visionkit.data.build import build_datasets, build_source
from visionkit.data.datasets.segmentation import (
    SHAPES_SEGMENTATION_CLASSES,
    read_label,
    save_palette_png,
    voc_palette,
)
from visionkit.data.datasets.synthetic import load_annotations
from visionkit.data.transforms import segmentation_transforms
from visionkit.errors import ConfigError, DataError
from visionkit.registry import TASKS

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path, data: dict, base: str | None = None, **head) -> Path:
    cfg = {"task": "segmentation", "model": {"backbone": {"name": "resnet18_w32"}, "head": head},
           "data": {"num_workers": 0, "image_size": 32, "cache": False, **data},
           "train": {"device": "cpu", "progress": False}}
    if base:
        cfg["_base_"] = base
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def save_ids(path: Path, ids: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        img.putpalette([v for c in voc_palette() for v in c])
    img.save(path)


def save_rgb(path: Path, h: int, w: int, suffix=".png") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb(h, w)).save(path.with_suffix(suffix) if suffix != path.suffix else path)


def test_voc_palette_png_gives_class_ids_and_split_lists(tmp_path):
    root = tmp_path / "VOC2012"
    ids = np.zeros((40, 48), dtype=np.uint8)
    ids[5:20, 5:30] = 15  # person
    ids[4, :] = 255  # object border
    ids[30:, 30:] = 1
    for stem in ("2007_000032", "2007_000039", "2007_000063"):
        save_rgb(root / "JPEGImages" / f"{stem}.jpg", 40, 48, ".jpg")
        save_ids(root / "SegmentationClass" / f"{stem}.png", ids, palette=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2007_000039\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000063\n")
    # the shipped VOC data set config, pointed at this copy
    cfg = load_config(write_config(tmp_path, {"root": str(root)},
                                   base=str(ROOT / "configs/_base_/datasets/voc_segmentation.yaml")))
    source = build_source(cfg)
    assert len(source.classes) == 21 and source.classes[15] == "person"
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 2, "val": 1}
    sample = source.splits["val"][0]
    assert torch.equal(sample["semantic"], torch.from_numpy(ids))  # indices, not colours
    assert sample["image"].shape == (3, 40, 48) and sample["path"].endswith("2007_000063.jpg")


def test_palette_png_written_by_predict_reads_back_as_ids(tmp_path):
    labels = torch.tensor([[0, 1, 2], [6, 6, 0]])
    save_palette_png(labels, voc_palette(7), tmp_path / "m.png")
    img = Image.open(tmp_path / "m.png")
    assert img.mode == "P" and img.getpalette()[3:6] == [128, 0, 0]  # VOC colour of class 1
    assert torch.equal(read_label(str(tmp_path / "m.png")), labels)


def cityscapes_tree(root: Path, label_ids: np.ndarray) -> None:
    for split in ("train", "val"):
        name = f"aachen_000000_00001{split == 'val'}"
        save_rgb(root / "leftImg8bit" / split / "aachen" / f"{name}_leftImg8bit.png", *label_ids.shape)
        save_ids(root / "gtFine" / split / "aachen" / f"{name}_gtFine_labelIds.png", label_ids)


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    ids = np.array([[7, 8, 26, 0], [1, 23, 33, 9], [11, 24, 31, 3]] * 8, dtype=np.uint8)  # 24x4
    ids = np.repeat(ids, 8, axis=1)  # 24x32
    cityscapes_tree(tmp_path / "cs", ids)
    cfg = load_config(write_config(tmp_path, {"root": str(tmp_path / "cs")},
                                   base=str(ROOT / "configs/_base_/datasets/cityscapes.yaml")))
    source = build_source(cfg)
    assert len(source.classes) == 19 and set(source.splits) == {"train", "val"}
    sem = source.splits["train"][0]["semantic"]
    # road 7->0, sidewalk 8->1, car 26->13, unlabeled 0->255, ego vehicle 1->255, sky 23->10,
    # bicycle 33->18, parking 9->255, building 11->2, person 24->11, train 31->16, out of roi 3->255
    assert sem[0, ::8].tolist() == [0, 1, 13, 255]
    assert sem[1, ::8].tolist() == [255, 10, 18, 255]
    assert sem[2, ::8].tolist() == [2, 11, 16, 255]
    assert source.classes[13] == "car" and source.classes[18] == "bicycle"


def test_cityscapes_id_missing_from_the_table_is_named(tmp_path):
    ids = np.full((32, 32), 7, dtype=np.uint8)
    ids[0, 0] = 40
    cityscapes_tree(tmp_path / "cs", ids)
    cfg = load_config(write_config(tmp_path, {"root": str(tmp_path / "cs")},
                                   base=str(ROOT / "configs/_base_/datasets/cityscapes.yaml")))
    with pytest.raises(DataError, match=r"gtFine_labelIds\.png' has ids \[40\].*id_map"):
        build_source(cfg).splits["train"][0]


def folder_config(tmp_path, classes=("bg", "a", "b"), **head):
    return load_config(write_config(tmp_path, {"dataset": "segmentation_folder", "root": str(tmp_path / "d"),
                                               "segmentation": {"classes": list(classes)}}, **head))


def test_folder_pairs_pool_is_split(tmp_path):
    for i in range(10):
        save_rgb(tmp_path / "d" / "images" / "sub" / f"{i}.png", 32, 32)
        save_ids(tmp_path / "d" / "labels" / "sub" / f"{i}.png", np.full((32, 32), i % 3))
    cfg = folder_config(tmp_path)
    datasets, source = build_datasets(cfg, TASKS.get("segmentation"), tmp_path / "run")
    assert sum(len(d) for d in datasets.values()) == 10 and source.classes == ["bg", "a", "b"]
    sample = datasets["val"][0]
    assert sample["semantic"].dtype == torch.uint8 and sample["semantic"].shape == (32, 32)


def test_label_map_of_another_size_is_named(tmp_path):
    save_rgb(tmp_path / "d" / "images" / "x.png", 32, 40)
    save_ids(tmp_path / "d" / "labels" / "x.png", np.zeros((32, 32)))
    with pytest.raises(DataError, match=r"labels/x\.png' is 32x32 \(WxH\) but its image is 40x32"):
        build_source(folder_config(tmp_path)).pool[0]


def test_values_beyond_the_classes_are_named(tmp_path):
    save_rgb(tmp_path / "d" / "images" / "x.png", 32, 32)
    ids = np.zeros((32, 32))
    ids[0, 0], ids[1, 1], ids[2, 2] = 3, 7, 255  # 255 is the ignore value: allowed
    save_ids(tmp_path / "d" / "labels" / "x.png", ids)
    with pytest.raises(DataError, match=r"labels/x\.png' has values \[3, 7\] that are neither a class id \(0\.\.2\)"):
        build_source(folder_config(tmp_path)).pool[0]


def test_missing_label_and_rgb_label_are_named(tmp_path):
    save_rgb(tmp_path / "d" / "images" / "x.png", 32, 32)
    (tmp_path / "d" / "labels").mkdir(parents=True)
    with pytest.raises(DataError, match=r"images/x\.png' has no label map"):
        build_source(folder_config(tmp_path))
    save_rgb(tmp_path / "d" / "labels" / "x.png", 32, 32)
    with pytest.raises(DataError, match=r"labels/x\.png' is an RGB image"):
        build_source(folder_config(tmp_path)).pool[0]


def test_folder_needs_class_names_and_a_free_ignore_value(tmp_path):
    with pytest.raises(ConfigError, match="data.segmentation.classes"):
        build_source(load_config(write_config(tmp_path, {"dataset": "segmentation_folder", "root": str(tmp_path)})))


def test_folder_of_label_maps_refuses_a_task_that_reads_other_targets(tmp_path):
    """A depth config naming segmentation_folder is told what the data set holds, in one line (its
    config has no data.segmentation section to read, so the check comes first)."""
    path = tmp_path / "depth.yaml"
    path.write_text(yaml.safe_dump({"task": "depth", "data": {"dataset": "segmentation_folder",
                                                              "root": str(tmp_path)}}))
    with pytest.raises(ConfigError, match="'segmentation_folder' holds label maps .* not the depth targets "
                                          "of task 'depth'"):
        build_source(load_config(path))


def test_train_transform_moves_image_and_labels_together_and_pads_with_ignore():
    torch.manual_seed(0)
    t = segmentation_transforms(True, crop_size=48, ignore_index=255, scale=(0.5, 0.5), hflip=1.0)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, :, :16] = 200  # left half bright
    labels = torch.zeros(32, 32, dtype=torch.uint8)
    labels[:, :16] = 2  # left half class 2
    img, sem = t(tv_tensors.Image(image), tv_tensors.Mask(labels))
    assert img.shape == (3, 48, 48) and sem.shape == (48, 48)
    assert set(torch.unique(sem).tolist()) == {0, 2, 255}  # nearest: no blended label values
    padded = sem == 255
    assert padded.sum() == 48 * 48 - 16 * 16 and (img[:, padded] == 0).all()
    # after the flip the bright half is on the right, and class 2 with it
    assert ((img[0] > 100) == (sem == 2)).all()
    cols = (~padded).nonzero()[:, 1]
    assert (sem[:, cols.max()] == 2).any() and not (sem[:, cols.min()] == 2).any()


def test_shapes_class_maps_follow_the_annotations(shapes_root, tmp_path):
    cfg = load_config(write_config(tmp_path, {"root": str(shapes_root),
                                              "synth": {"num_images": 240, "size": 32, "seed": 0}}))
    source = build_source(cfg)
    assert source.classes == list(SHAPES_SEGMENTATION_CLASSES) and source.classes[0] == "background"
    rec = load_annotations(shapes_root)[7]
    sem = source.pool[7]["semantic"]
    main = next(o for o in rec["objects"] if o["main"])
    assert sem.shape == (32, 32) and int(torch.bincount(sem.flatten().long()).argmax()) in (0, main["kind"] + 1)
    assert (sem == main["kind"] + 1).sum() > 20 and sem.max() <= 6
    assert source.targets[7] == rec["label"]
