"""The synthetic shapes data set: layout, determinism, annotation consistency, safe regeneration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from visionkit.data.datasets.synthetic import (
    SHAPE_CLASSES,
    ShapesDataError,
    ensure_shapes,
    generate_shapes,
    load_annotations,
    render_instance_masks,
    render_semantic,
)

NUM, SIZE, SEED = 390, 32, 3  # 65 images per class at 32 px: the hardest size we promise


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "root", NUM, SIZE, SEED)


def _polygon(obj) -> np.ndarray:
    return np.asarray(obj["polygon"], dtype=float).reshape(-1, 2)


def _area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and p.name != ".shapes.lock"}


def test_layout_counts_and_meta(root):
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == sorted(SHAPE_CLASSES) == list(SHAPE_CLASSES)  # ImageFolder order = label
    counts = {c: len(list((root / c).glob("*.png"))) for c in SHAPE_CLASSES}
    assert sum(counts.values()) == NUM
    assert min(counts.values()) >= 60
    meta = json.loads((root / "meta.json").read_text())
    assert meta == {"generator": "shapes", "version": 1, "num_images": NUM, "size": SIZE,
                    "seed": SEED, "classes": list(SHAPE_CLASSES)}
    records = load_annotations(root)
    assert [r["id"] for r in records] == list(range(NUM))
    for r in records[:20]:
        cls, name = r["file"].split("/")
        assert cls == SHAPE_CLASSES[r["label"]] and name == f"{r['id']:05d}.png"
        with Image.open(root / r["file"]) as im:
            assert im.mode == "RGB" and im.size == (r["width"], r["height"]) == (SIZE, SIZE)


def test_annotations_consistent(root):
    for r in load_annotations(root):
        objects = r["objects"]
        assert [o["z"] for o in objects] == list(range(len(objects)))
        mains = [o for o in objects if o["main"]]
        assert len(mains) == 1 and mains[0]["kind"] == r["label"]
        assert 1 <= len(objects) <= 3
        distances = [o["distance"] for o in objects]
        assert distances == sorted(distances, reverse=True)  # later drawn = nearer
        assert r["background"]["distance"] > distances[0]
        main_pts = _polygon(mains[0])
        main_extent = (main_pts.max(0) - main_pts.min(0)).max()
        assert 0.35 * SIZE - 0.05 <= main_extent <= 0.65 * SIZE + 0.05
        for o in objects:
            pts = _polygon(o)
            x0, y0, x1, y1 = o["bbox"]
            assert x0 <= pts[:, 0].min() and pts[:, 0].max() <= x1
            assert y0 <= pts[:, 1].min() and pts[:, 1].max() <= y1
            assert 0 <= x0 and 0 <= y0 and x1 <= SIZE and y1 <= SIZE
            if not o["main"]:
                assert (pts.max(0) - pts.min(0)).max() <= max(0.45 * main_extent, 3.0) + 0.05

        masks = render_instance_masks(r)
        assert masks.shape == (len(objects), SIZE, SIZE) and masks.dtype == bool
        assert masks.sum(0).max() <= 1  # disjoint: each pixel belongs to its front-most object
        main_index = objects.index(mains[0])
        assert masks[main_index].sum() >= 0.75 * _area(main_pts)


def test_masks_match_the_drawn_pixels(root):
    for r in load_annotations(root)[:60]:
        image = np.asarray(Image.open(root / r["file"]), dtype=float)
        main = next(o for o in r["objects"] if o["main"])
        visible = render_instance_masks(r)[r["objects"].index(main)]
        median_error = np.median(np.abs(image[visible] - main["colour"]), axis=0)
        assert (median_error <= 20).all(), (r["file"], median_error)


def test_semantic_agrees_with_instances(root):
    for r in load_annotations(root)[:60]:
        semantic = render_semantic(r)
        masks = render_instance_masks(r)
        expected = np.zeros((SIZE, SIZE), dtype=np.uint8)
        for o, m in zip(r["objects"], masks):
            expected[m] = o["kind"] + 1
        np.testing.assert_array_equal(semantic, expected)
        rimmed = render_semantic(r, ignore_boundaries=True)
        changed = rimmed != semantic
        assert (rimmed[changed] == 255).all() and 0 < changed.sum() < changed.size / 2
    with pytest.raises(ValueError, match="collides"):
        render_semantic(r, ignore_value=3)


def test_deterministic_per_seed_and_per_image(tmp_path):
    a = _files(generate_shapes(tmp_path / "a", 12, SIZE, seed=5))
    b = _files(generate_shapes(tmp_path / "b", 12, SIZE, seed=5))
    assert a == b
    c = _files(generate_shapes(tmp_path / "c", 12, SIZE, seed=6))
    pngs = [k for k in a if k.endswith(".png")]
    assert len(pngs) == 12 and all(a[k] != c[k] for k in pngs)
    # Image i depends only on (seed, i): a shorter run reproduces the longer run's first images.
    d = _files(generate_shapes(tmp_path / "d", 5, SIZE, seed=5))
    assert all(d[k] == a[k] for k in d if k.endswith(".png"))


def test_existing_root_reused_or_refused(root, capsys):
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert ensure_shapes(root, NUM, SIZE, SEED) == root
    assert generate_shapes(root, NUM, SIZE, SEED) == root
    assert capsys.readouterr().out == "" and (root / "meta.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=rf"{root}.*size=32 \(requested 48\)"):
        generate_shapes(root, NUM, 48, SEED)
    with pytest.raises(ShapesDataError, match=rf"{root}.*seed=3 \(requested 4\)"):
        ensure_shapes(root, NUM, SIZE, 4)


def test_ensure_generates_with_one_line(tmp_path, capsys):
    root = ensure_shapes(tmp_path / "new", 6, SIZE, 0)
    out = capsys.readouterr().out
    assert out == f"generating shapes data set (6 images, {SIZE} px) into {tmp_path / 'new'}\n"
    assert (root / "meta.json").is_file()


def test_killed_generation_is_regenerated_cleanly(tmp_path):
    root = tmp_path / "partial"
    (root / ".tmp-shapes-999" / "circle").mkdir(parents=True)
    (root / ".tmp-shapes-999" / "circle" / "00000.png").write_bytes(b"half")
    (root / "circle").mkdir()
    (root / "circle" / "99999.png").write_bytes(b"stale")
    (root / "annotations.json").write_text("{")  # no meta.json: the run never finished
    generate_shapes(root, 12, SIZE, 1)
    assert _files(root) == _files(generate_shapes(tmp_path / "fresh", 12, SIZE, 1))
    assert not list(root.glob(".tmp-*"))


def test_refuses_foreign_directory_and_bad_arguments(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ShapesDataError, match="holiday.jpg"):
        generate_shapes(tmp_path / "photos", 6, SIZE)
    with pytest.raises(ValueError, match="num_images"):
        generate_shapes(tmp_path / "x", 0, SIZE)
    with pytest.raises(ValueError, match="size"):
        generate_shapes(tmp_path / "x", 6, 8)
