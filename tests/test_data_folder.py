"""ImageFolderDataset, the classification transforms and the collate, on a tiny tree written here."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from visionkit.data.collate import collate_samples
from visionkit.data.datasets.folder import ImageFolderDataset, has_own_splits, split_roots
from visionkit.data.transforms import classification_transforms
from visionkit.errors import DataError

H, W = 20, 24


def _write(path, mode="RGB", seed=0):
    """A random image in PIL ``mode``, saved in the format its extension names."""
    rng = np.random.default_rng(seed)
    shape = (H, W, 3) if mode == "RGB" else (H, W)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def _make_tree(root):
    """Three classes: PNG cats, JPEG dogs, grayscale (L) PNG/JPEG birds, plus files to ignore."""
    for i in range(3):
        _write(root / "cat" / f"c{i}.png", seed=i)
        _write(root / "dog" / f"d{i}.JPG", seed=10 + i)
    _write(root / "bird" / "b0.png", mode="L", seed=20)
    _write(root / "bird" / "nested" / "b1.jpeg", mode="L", seed=21)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "._c0.png").write_bytes(b"macOS resource fork")
    (root / ".cache").mkdir()
    _write(root / ".cache" / "x.png")
    return root


@pytest.fixture
def tree(tmp_path):
    return _make_tree(tmp_path / "shapes")


def test_classes_labels_and_samples(tree):
    ds = ImageFolderDataset(tree)
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.root == str(tree)
    assert len(ds) == 8
    assert ds.targets == [0, 0, 1, 1, 1, 2, 2, 2]
    assert [label for _, label in ds.samples] == ds.targets
    assert all(isinstance(p, str) and os.path.isfile(p) for p, _ in ds.samples)
    assert not any("notes.txt" in p or "._" in p or ".cache" in p for p, _ in ds.samples)
    assert os.path.join("bird", "nested", "b1.jpeg") in ds.samples[1][0]


@pytest.mark.parametrize("channels", [3, 1])
def test_items_have_the_requested_channels(tree, channels):
    ds = ImageFolderDataset(tree, channels=channels)
    for i in range(len(ds)):  # grayscale birds, RGB cats (PNG) and dogs (JPEG)
        item = ds[i]
        assert isinstance(item["image"], tv_tensors.Image)
        assert item["image"].dtype == torch.uint8
        assert tuple(item["image"].shape) == (channels, H, W)
        assert item["labels"].item() == ds.targets[i] and item["labels"].dtype == torch.long
        assert item["path"] == ds.samples[i][0] and item["index"] == i


def test_grayscale_file_repeats_its_channel(tree):
    image = ImageFolderDataset(tree, channels=3)[0]["image"]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    png = np.array(Image.open(tree / "bird" / "b0.png"))
    assert torch.equal(image[0], torch.from_numpy(png))


def test_fixed_class_list_sets_label_ids(tree):
    ds = ImageFolderDataset(tree, classes=["dog", "cat", "bird", "fish"])
    assert ds.targets[0] == 2 and ds.targets[-1] == 0
    with pytest.raises(DataError, match="dog"):
        ImageFolderDataset(tree, classes=["bird", "cat"])


def test_transforms_give_size_and_normalized_values(tree):
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    train = classification_transforms(True, size=16, mean=mean, std=std)
    evaluate = classification_transforms(False, size=16, mean=mean, std=std)
    torch.manual_seed(0)
    for tf in (train, evaluate):
        ds = ImageFolderDataset(tree, transform=tf)
        image = ds[3]["image"]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        # uint8 [0, 255] -> [0, 1] -> (x - 0.5) / 0.25 lies in [-2, 2]
        assert image.min() >= -2.0 - 1e-5 and image.max() <= 2.0 + 1e-5
        assert image.min() < -0.5 and image.max() > 0.5  # random pixels span the range

    # evaluation is deterministic and equals a hand-made resize + centre crop + normalise
    raw = ImageFolderDataset(tree)[3]["image"]
    expected = raw.float() / 255.0
    expected = F.center_crop(F.resize(expected, [16], antialias=True), [16, 16])
    got = ImageFolderDataset(tree, transform=evaluate)[3]["image"]
    assert torch.allclose(got, (expected - 0.5) / 0.25, atol=0.05)


def test_eval_resize_ratio_and_single_channel():
    tf = classification_transforms(False, size=8, mean=[0.5], std=[0.5], resize_ratio=1 / 0.5)
    resize, crop = tf.transforms[:2]
    assert resize.size == [16] and list(crop.size) == [8, 8]
    out = tf(tv_tensors.Image(torch.full((1, 30, 40), 255, dtype=torch.uint8)))
    assert out.shape == (1, 8, 8) and torch.allclose(out, torch.ones_like(out))


def test_missing_root(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        ImageFolderDataset(root)
    # a user's own data: the layout it needs, no suggestion to generate synthetic images there
    assert str(err.value) == (f"data root '{root}' does not exist; point data.root at a folder of class "
                              f"folders ('{root / '<class>' / '<image>.png'}')")


def test_missing_default_root_suggests_generating_shapes(tmp_path, monkeypatch):
    from visionkit import load_config
    from visionkit.data.datasets.folder import SHAPES_DEFAULT_ROOT

    (tmp_path / "c.yaml").write_text("data:\n  dataset: image_folder\n")
    assert load_config(tmp_path / "c.yaml").data.root == SHAPES_DEFAULT_ROOT  # the schema's default
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        ImageFolderDataset(SHAPES_DEFAULT_ROOT)
    assert f"`visionkit data synth shapes --out {SHAPES_DEFAULT_ROOT}`" in str(err.value)


def test_root_without_class_folders(tmp_path):
    _write(tmp_path / "loose.png")
    with pytest.raises(DataError, match="no class folders") as err:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_empty_class_folder(tree):
    (tree / "fish").mkdir()
    (tree / "fish" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="has no images") as err:
        ImageFolderDataset(tree)
    assert str(tree / "fish") in str(err.value)


def test_corrupt_image_raises_naming_the_file(tree):
    bad = tree / "dog" / "d9.jpg"
    bad.write_bytes(b"definitely not a jpeg" * 10)
    ds = ImageFolderDataset(tree)
    index = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(DataError, match="cannot decode image") as err:
        ds[index]
    assert str(bad) in str(err.value)
    assert ".cpp" not in str(err.value)  # torchvision's source location is trimmed
    assert "not a JPEG, PNG, WEBP, GIF or BMP file; replace or delete the file" in str(err.value)


def test_skip_mode_returns_none_and_collate_drops_it(tree):
    bad = tree / "cat" / "zz.png"
    bad.write_bytes(b"")
    ds = ImageFolderDataset(tree, on_error="skip", transform=classification_transforms(
        False, size=8, mean=[0.0] * 3, std=[1.0] * 3))
    index = [p for p, _ in ds.samples].index(str(bad))
    assert ds[index] is None and ds[index] is None
    assert ds.bad_samples == [str(bad)]
    batch = collate_samples([ds[0], ds[index], ds[1]])
    assert batch["images"].shape == (2, 3, 8, 8) and batch["images"].dtype == torch.float32
    assert batch["labels"].tolist() == [0, 0]
    assert batch["indices"].tolist() == [0, 1]
    assert batch["paths"] == [ds.samples[0][0], ds.samples[1][0]]
    assert collate_samples([None, None]) is None


def test_bmp_gif_webp_are_read(tmp_path):
    for ext in ("bmp", "gif", "webp"):
        _write(tmp_path / ext / f"a.{ext}")
    for channels in (1, 3):
        ds = ImageFolderDataset(tmp_path, channels=channels)
        assert [tuple(ds[i]["image"].shape) for i in range(3)] == [(channels, H, W)] * 3


def test_collate_keeps_ragged_values_as_lists():
    samples = [
        {"image": torch.zeros(3, 4, 4), "labels": torch.tensor([1, 2]), "boxes": torch.zeros(2, 4),
         "name": "a"},
        {"image": torch.ones(3, 5, 4), "labels": torch.tensor([3]), "boxes": torch.zeros(1, 4),
         "name": "b"},
    ]
    batch = collate_samples(samples)
    assert isinstance(batch["images"], list) and len(batch["images"]) == 2
    assert isinstance(batch["labels"], list) and isinstance(batch["boxes"], list)
    assert batch["name"] == ["a", "b"]
    same = collate_samples([{"semantic": torch.zeros(4, 4)}, {"semantic": torch.ones(4, 4)}])
    assert same["semantic"].shape == (2, 4, 4)


def test_own_splits(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val", "test"):
        _make_tree(root / split)
    assert has_own_splits(root)
    assert not has_own_splits(root / "train")
    assert split_roots(root) == {s: str(root / s) for s in ("train", "val", "test")}
    assert ImageFolderDataset(split_roots(root)["val"]).classes == ["bird", "cat", "dog"]
    with pytest.raises(DataError, match="own train/ and val/"):
        ImageFolderDataset(root)

    _write(root / "val" / "fish" / "f.png")
    with pytest.raises(DataError, match="fish") as err:
        split_roots(root)
    assert str(root / "val") in str(err.value)


def test_train_only_is_not_own_splits(tmp_path):
    _make_tree(tmp_path / "train")
    assert not has_own_splits(tmp_path)
    with pytest.raises(DataError):
        split_roots(tmp_path)
