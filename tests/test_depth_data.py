"""Depth data: 16-bit PNG scales, sparse maps, file lists and folder pairs, joint transforms that
never invent a depth value, bad inputs, and the depth of the shapes scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from visionkit.data.datasets.depth import DepthPairs, folder_pairs, read_depth, read_list, write_depth_png
from visionkit.data.datasets.synthetic import (
    DEPTH_FAR,
    DEPTH_NEAR,
    ground_depth,
    load_annotations,
    render_depth,
    render_instance_masks,
)
from visionkit.data.transforms import depth_transforms
from visionkit.errors import DataError


def _rgb(path, h=6, w=8):
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path)


@pytest.mark.parametrize("scale", [1000.0, 256.0])
def test_16bit_png_round_trip_with_scale(tmp_path, scale):
    depth = np.array([[0.0, 1.5, 3.25], [9.999, 0.004, 65.535 * 1000 / scale]])
    write_depth_png(tmp_path / "d.png", depth, scale)
    with Image.open(tmp_path / "d.png") as img:
        stored = np.asarray(img)
    assert stored.dtype == np.uint16 and stored[0, 0] == 0 and stored[1, 2] == 65535
    back = read_depth(tmp_path / "d.png", scale).numpy()
    assert np.abs(back - depth).max() <= 0.5 / scale + 1e-6
    assert back[0, 0] == 0.0  # no measurement stays no measurement


def test_nyu_millimetres_and_kitti_256(tmp_path):
    Image.fromarray(np.array([[1000, 2500]], np.uint16)).save(tmp_path / "nyu.png")
    assert read_depth(tmp_path / "nyu.png", 1000).tolist() == [[1.0, 2.5]]
    Image.fromarray(np.array([[256, 0, 20480]], np.uint16)).save(tmp_path / "kitti.png")
    assert read_depth(tmp_path / "kitti.png", 256).tolist() == [[1.0, 0.0, 80.0]]


def test_npy_depth_in_metres_non_finite_is_none(tmp_path):
    np.save(tmp_path / "d.npy", np.array([[1.5, np.nan], [np.inf, -2.0]], np.float32))
    assert read_depth(tmp_path / "d.npy", 1000).tolist() == [[1.5, 0.0], [0.0, 0.0]]


def test_8bit_or_rgb_depth_maps_are_refused_by_name(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "gray8.png")
    _rgb(tmp_path / "rgb.png")
    for name in ("gray8.png", "rgb.png"):
        with pytest.raises(DataError, match=rf"{name}.*16-bit single-channel"):
            read_depth(tmp_path / name, 1000)
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4)))
    with pytest.raises(DataError, match="bad.npy.*2-D"):
        read_depth(tmp_path / "bad.npy", 1000)


def test_depth_of_wrong_size_names_both_files(tmp_path):
    _rgb(tmp_path / "a.png", 6, 8)
    write_depth_png(tmp_path / "a_d.png", np.ones((5, 8)), 1000)
    ds = DepthPairs([(str(tmp_path / "a.png"), str(tmp_path / "a_d.png"))], 1000)
    with pytest.raises(DataError, match=r"a_d.png' is 8x5 but its image '.*a.png' is 8x6"):
        ds[0]
    skip = DepthPairs(ds.pairs, 1000, on_error="skip")
    assert skip[0] is None


def _kitti_pair(folder, name, rng, h=12, w=16):
    _rgb(folder / "image" / f"{name}.png", h, w)
    d = np.zeros((h, w), np.uint16)
    idx = rng.choice(h * w, size=h * w // 10, replace=False)  # 10 % measured, like projected LiDAR
    d.flat[idx] = rng.integers(256, 80 * 256, idx.size)
    Image.fromarray(d).save(folder / "depth" / f"{name}.png")
    return d


def test_sparse_kitti_maps_load_and_transforms_keep_only_measured_values(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "image").mkdir()
    (tmp_path / "depth").mkdir()
    stored = _kitti_pair(tmp_path, "0001", rng)
    pairs = folder_pairs(tmp_path, "image", "depth")
    sample = DepthPairs(pairs, 256.0)[0]
    assert isinstance(sample["depth"], tv_tensors.Mask)
    assert int((sample["depth"] > 0).sum()) == int((stored > 0).sum())
    measured = set((stored[stored > 0] / 256.0).tolist()) | {0.0}

    class D(dict):
        __getattr__ = dict.__getitem__

    cfg = D(kb_crop=False, resize=[9, 21], crop=[8, 8], scale=[0.7, 1.6])
    torch.manual_seed(0)
    for _ in range(10):
        out = depth_transforms(True, cfg, hflip=0.5)(dict(sample))
        assert out["image"].shape[-2:] == out["depth"].shape == (8, 8)
        assert set(out["depth"].flatten().tolist()) <= measured  # nearest resampling, 0 padding


def test_file_list_and_missing_depth(tmp_path):
    rng = np.random.default_rng(1)
    for d in ("image", "depth"):
        (tmp_path / d).mkdir()
    _kitti_pair(tmp_path, "a", rng)
    _kitti_pair(tmp_path, "b", rng)
    lst = tmp_path / "train.txt"
    lst.write_text("# rgb depth focal\nimage/a.png depth/a.png 721.5\nimage/b.png depth/b.png 721.5\n")
    pairs = read_list(lst, tmp_path)
    assert [p[0].endswith(n) for p, n in zip(pairs, ("a.png", "b.png"))] == [True, True]
    lst.write_text("image/a.png depth/zzz.png\n")
    with pytest.raises(DataError, match=r"train.txt:1: file '.*zzz.png' does not exist"):
        read_list(lst, tmp_path)
    _rgb(tmp_path / "image" / "c.png")
    with pytest.raises(DataError, match=r"c.png' has no depth map"):
        folder_pairs(tmp_path, "image", "depth")


# -- the shapes scenes ------------------------------------------------------------------------------

def test_ground_plane_spans_near_to_far():
    assert ground_depth(0, 64) == pytest.approx(DEPTH_FAR)
    assert ground_depth(64, 64) == pytest.approx(DEPTH_NEAR)
    rows = ground_depth(np.arange(64) + 0.5, 64)
    assert np.all(np.diff(rows) < 0)  # farther towards the top


def test_shapes_depth_follows_the_layout(shapes_root):
    records = load_annotations(shapes_root)
    for rec in records[:20]:
        depth = render_depth(rec)
        h = rec["height"]
        masks = render_instance_masks(rec)
        background = ~masks.any(0)
        rows = np.nonzero(background)[0]
        assert np.allclose(depth[background], ground_depth(rows + 0.5, h), rtol=1e-5)
        for obj, mask in zip(rec["objects"], masks):
            if mask.any():  # an object is one depth: the ground's where it stands
                foot = max(obj["polygon"][1::2])
                assert np.allclose(depth[mask], ground_depth(foot, h), rtol=1e-5)
        assert DEPTH_NEAR <= depth.min() and depth.max() <= DEPTH_FAR


def test_shapes_images_are_unchanged_by_depth(shapes_root):
    """Depth is rendered from the annotations: generating the scenes is untouched (VERSION 1)."""
    import json

    assert json.loads((shapes_root / "meta.json").read_text())["version"] == 1
    assert not list(shapes_root.rglob("*depth*"))
