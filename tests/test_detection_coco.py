"""COCO instances files as a user brings them: parsing, label mapping, clean-up and named errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from visionkit.data.datasets.coco import CocoDetection, ShapesInstances, find_coco_splits, write_shapes_coco
from visionkit.errors import DataError


def _rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode()}


def _write(tmp_path, annotations, images=None, categories=None, files=True):
    """A COCO file over 40x30 images a.png, b.png, c.png (c has no annotations)."""
    images = images or [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                        {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
                        {"id": 5, "file_name": "c.png", "width": 40, "height": 30}]
    categories = categories or [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    (tmp_path / "img").mkdir(exist_ok=True)
    if files:
        for im in images:
            pixels = np.zeros((im["height"], im["width"], 3), np.uint8)
            Image.fromarray(pixels).save(tmp_path / "img" / im["file_name"])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _square(y0, y1, x0, x1, h=30, w=40):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_polygon_rle_crowd_and_empty_images_parse_with_contiguous_labels(tmp_path):
    rle_mask = _square(5, 15, 20, 30)
    uncompressed = {"size": [30, 40], "counts": _runs(_square(0, 4, 0, 8))}
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0,
         "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20, 5, 10, 10], "area": 100, "iscrowd": 0,
         "segmentation": _rle(rle_mask)},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 8, 4], "area": 32, "iscrowd": 1,
         "segmentation": uncompressed},
    ]
    ds = CocoDetection(_write(tmp_path, anns), tmp_path / "img")
    assert ds.classes == ["cat", "dog"] and ds.category_ids == [3, 7]  # ordered by id
    assert len(ds) == 3  # the image without annotations is kept by default
    s = ds[0]
    assert s["labels"].tolist() == [0, 1]  # category 3 -> 0, category 7 -> 1
    assert s["boxes"].tolist() == [[2, 2, 12, 12], [20, 5, 30, 15]]
    assert s["masks"].shape == (2, 30, 40)
    assert bool((s["masks"][1].bool() == torch.from_numpy(rle_mask)).all())
    poly = s["masks"][0].bool()
    assert 90 <= int(poly.sum()) <= 121 and bool(poly[5, 5]) and not bool(poly[20, 20])
    crowd = ds[1]
    assert crowd["iscrowd"].tolist() == [True] and int(crowd["masks"][0].sum()) == 32
    empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 30, 40) and empty["image_id"] == 5


def _runs(m: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts (column-major runs, starting with zeros)."""
    flat = m.T.reshape(-1).astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return counts


def test_images_without_annotations_are_dropped_on_request_and_counted(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 2, 10, 10], "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 8, 4], "iscrowd": 1,
             "segmentation": [[0, 0, 8, 0, 8, 4, 0, 4]]}]
    lines = []
    ds = CocoDetection(_write(tmp_path, anns), tmp_path / "img", keep_empty=False, log=lines.append)
    assert len(ds) == 1  # image 2 holds only a crowd region, image 5 nothing
    assert any("left out 2 image(s) without annotations" in line for line in lines)


def test_unknown_category_id_is_a_named_error(tmp_path):
    anns = [{"id": 11, "image_id": 1, "category_id": 99, "bbox": [2, 2, 10, 10], "iscrowd": 0}]
    with pytest.raises(DataError, match=r"annotation 11 .*category_id 99.*ids \[3, 7\]"):
        CocoDetection(_write(tmp_path, anns), tmp_path / "img")


@pytest.mark.parametrize("content,needle", [
    ({"images": []}, "has no images: its 'images' list is missing or empty; list each image as"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}], "annotations": []},
     "has no categories: its 'categories' list is missing or empty; list each class as"),
    ([], ("is not a COCO instances file: its top level is a list, but must be an object with 'images', "
          "'annotations' and 'categories' lists")),
])
def test_a_file_without_images_or_categories_or_not_an_object_is_a_named_error(tmp_path, content, needle):
    path = tmp_path / "instances_train.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError) as err:
        CocoDetection(path, tmp_path)
    assert str(err.value).startswith(f"{path} ") and needle in str(err.value)


def test_a_file_left_without_usable_images_is_a_named_error(tmp_path):
    path = _write(tmp_path, [])  # three images, none annotated
    with pytest.raises(DataError, match=r"none of its 3 image\(s\) is left .*keep_empty: false") as err:
        CocoDetection(path, tmp_path / "img", keep_empty=False, log=lambda line: None)
    assert str(path) in str(err.value)
    for f in (tmp_path / "img").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="their files are missing"):
        CocoDetection(path, tmp_path / "img", on_error="skip", log=lambda line: None)


def test_missing_root_is_named_before_the_annotations(tmp_path):
    with pytest.raises(DataError) as err:
        find_coco_splits(tmp_path / "no-such-root")
    assert str(err.value).startswith(f"data root '{tmp_path / 'no-such-root'}' does not exist; point "
                                     "data.root at a COCO folder holding annotations/instances_train")
    with pytest.raises(DataError, match="no COCO training annotations under"):
        find_coco_splits(tmp_path)  # the root is there, its annotations are not


def test_boxes_outside_or_of_zero_area_are_clipped_or_dropped_with_a_count(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [30, 20, 20, 20], "iscrowd": 0},  # clipped
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [50, 40, 5, 5], "iscrowd": 0}]  # outside
    lines = []
    ds = CocoDetection(_write(tmp_path, anns), tmp_path / "img", log=lines.append)
    assert ds[0]["boxes"].tolist() == [[30, 20, 40, 30]]
    assert any("dropped 2 annotation(s)" in line for line in lines)


def test_rle_mask_of_the_wrong_size_is_a_named_error(tmp_path):
    anns = [{"id": 4, "image_id": 1, "category_id": 3, "bbox": [2, 2, 10, 10], "iscrowd": 0,
             "segmentation": _rle(np.ones((20, 20), bool))}]
    with pytest.raises(DataError, match=r"annotation 4 .*size \[20, 20\] but the image is 30x40"):
        CocoDetection(_write(tmp_path, anns), tmp_path / "img")


def test_missing_image_files_raise_or_are_skipped_with_a_count(tmp_path):
    path = _write(tmp_path, [], files=False)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    with pytest.raises(DataError, match=r"2 image file\(s\) missing, first '.*b\.png'"):
        CocoDetection(path, tmp_path / "img")
    lines = []
    ds = CocoDetection(path, tmp_path / "img", on_error="skip", log=lines.append)
    assert len(ds) == 1 and any("skipped 2 image(s)" in line for line in lines)


def test_image_of_another_size_than_its_record_is_a_named_error(tmp_path):
    path = _write(tmp_path, [])
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    with pytest.raises(DataError, match=r"a\.png' is 10x10 but .* says 30x40"):
        CocoDetection(path, tmp_path / "img")[0]


def test_shapes_write_coco_and_read_back_gives_the_same_instances(shapes_root, tmp_path):
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(shapes_root, root)
    paths = write_shapes_coco(root)
    assert [p.name for p in paths] == ["instances_train.json", "instances_val.json", "instances_test.json"]
    splits = find_coco_splits(root)
    test = CocoDetection(*splits["test"])
    assert len(test) == 24 and test.classes[0] == "circle" and test.category_ids == [1, 2, 3, 4, 5, 6]
    view = ShapesInstances(root)
    counts = []
    for k in range(len(test)):
        a = test[k]
        b = view[a["image_id"]]
        assert a["labels"].tolist() == b["labels"].tolist()
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])
        counts.append(len(a["labels"]))
    assert max(counts) >= 2  # several instances per image
