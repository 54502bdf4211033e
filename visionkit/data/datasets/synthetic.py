"""The built-in synthetic data set ``shapes``: made offline in seconds, with exact labels.

Why it exists: quickstart, tests and CI need a data set that needs no download and carries every
target the toolkit trains on. Each scene has one large *main* object on a textured, noisy
background plus up to two small distractors; the image's class is the main object's kind, and
``annotations.json`` keeps every object's polygon, box, draw order and a depth-like distance, so
boxes, instance masks, semantic masks and depth for later tasks come from the very same scenes
(depth maps: :func:`render_depth`, from the scene's ground-plane layout rather than that distance).

A generated root looks like::

    root/<class>/<00000>.png   ImageFolder layout (class = kind of the main object)
    root/annotations.json      {"generator", "version", "classes", "images": [per-image record]}
    root/meta.json             the generation parameters; written last, it marks completion

Images are byte-identical for the same ``(num_images, size, seed)``: image ``i`` draws from its own
child seed ``SeedSequence(seed, spawn_key=(i,))`` (the same as ``SeedSequence(seed).spawn(n)[i]``),
so it depends on nothing else, not even ``num_images``. Polygons are rounded to 0.01 px before
drawing and stored as drawn, so masks rendered from the annotations match the picture exactly.
(Exact bytes, and masks exact to the pixel, assume the generating run's numpy and Pillow versions.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from visionkit.errors import DataError

# Alphabetical, so that ImageFolder's sorted-folder class index equals the index used here.
# No hexagon: at 32 px it differs from a circle by under a pixel.
SHAPE_CLASSES = ("circle", "crescent", "cross", "square", "star", "triangle")
GENERATOR = "shapes"
VERSION = 1

_SUPERSAMPLE = 4  # anti-aliasing: rasterise at 4x, coverage = fraction of the 16 sub-pixels set
_FULL = _SUPERSAMPLE**2
_MAIN_EXTENT = (0.35, 0.65)  # main object's longer box side, as a fraction of the image side
_DISTRACTOR_EXTENT = (0.2, 0.45)  # distractor's longer box side, as a fraction of the main one's
_MAX_OCCLUDED = 0.2  # most of the main object that distractors in front may hide (brief: ~25 %)
_BACKGROUNDS = ("gradient", "stripes", "checker", "blotches")
_OWN_FILES = ("annotations.json", "meta.json", ".shapes.lock")
_TMP_PREFIX = ".tmp-shapes-"


class ShapesDataError(DataError, ValueError):
    """A shapes root that cannot be (re)used as asked; the message names the path and what differs."""


# ---------------------------------------------------------------------------------------------
# Shapes: unit polygons, centred near the origin; placement scales them by their bounding box.


def _ring(n: int, radius: float = 1.0, phase: float = math.pi / 2, centre=(0.0, 0.0)) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return _ring(2 * points) * radii[:, None]


def _cross(arm: float = 0.34) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
                     (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=float)


def _crescent(offset: float = 0.55, inner: float = 0.8, n: int = 24) -> np.ndarray:
    """Unit disc minus a disc of radius ``inner`` shifted right by ``offset``: a fat crescent."""
    x = (1 + offset**2 - inner**2) / (2 * offset)  # where the two circles cross
    y = math.sqrt(1 - x * x)
    outer_from = math.atan2(y, x)
    inner_from = math.atan2(y, x - offset)
    outer = np.linspace(outer_from, 2 * np.pi - outer_from, n)  # long way round, through 180 deg
    back = np.linspace(2 * np.pi - inner_from, inner_from, n)[1:-1]  # inner arc, returning
    return np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                           np.stack([offset + inner * np.cos(back), inner * np.sin(back)], 1)])


_UNIT_POLYGONS = {
    "circle": _ring(40),
    "crescent": _crescent(),
    "cross": _cross(),
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=float),
    "star": _star(),
    "triangle": _ring(3),
}


# ---------------------------------------------------------------------------------------------
# Rasterisation: the one function both the drawing and the mask helpers use.


def _coverage(polygon, height: int, width: int) -> np.ndarray:
    """Sub-pixel count (0..16) each pixel has inside ``polygon`` (flat or (V, 2), image pixels).

    Pixel ``(r, c)`` spans ``[c, c+1) x [r, r+1)``. Only the polygon's box is rasterised, which
    keeps a 64 px scene to a few small PIL draws.
    """
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int), 0)
    x1 = min(math.ceil(pts[:, 0].max()), width)
    y1 = min(math.ceil(pts[:, 1].max()), height)
    counts = np.zeros((height, width), dtype=np.uint8)
    if x1 <= x0 or y1 <= y0:
        return counts
    s = _SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    # PIL puts integer coordinates on sub-pixel centres; shift by half a sub-pixel to match.
    local = (pts - (x0, y0)) * s - 0.5
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in local.tolist()], fill=1)
    sub = np.asarray(canvas, dtype=np.uint8).reshape(y1 - y0, s, x1 - x0, s)
    counts[y0:y1, x0:x1] = sub.sum(axis=(1, 3), dtype=np.uint8)
    return counts


def _mask(polygon, height: int, width: int) -> np.ndarray:
    """Pixels at least half covered by ``polygon``: the object's full (unoccluded) mask."""
    return _coverage(polygon, height, width) * 2 >= _FULL


def render_instance_masks(image_annotation: dict) -> np.ndarray:
    """Visible pixels of each object, ``(N, H, W)`` bool in the annotation's (draw) order.

    An object's mask is its polygon rasterised as drawn (at least half covered), minus every pixel
    that a later-drawn object's mask claims; so the masks are disjoint and match the image.
    """
    h, w = image_annotation["height"], image_annotation["width"]
    objects = image_annotation["objects"]
    masks = np.zeros((len(objects), h, w), dtype=bool)
    for i, obj in enumerate(objects):
        masks[i] = _mask(obj["polygon"], h, w)
    covered = np.zeros((h, w), dtype=bool)
    for i in range(len(objects) - 1, -1, -1):  # front to back
        masks[i] &= ~covered
        covered |= masks[i]
    return masks


def render_semantic(image_annotation: dict, ignore_value: int = 255, *,
                    ignore_boundaries: bool = False) -> np.ndarray:
    """Class map ``(H, W)`` uint8: 0 = background, ``k + 1`` = class ``k`` (visible object's).

    Every pixel gets a class by default. With ``ignore_boundaries`` the anti-aliased rim where the
    visible label is a coin toss (a visible object 25-75 % covering the pixel) gets
    ``ignore_value``, the convention of data sets that leave object borders out of the loss.
    """
    if 0 <= ignore_value <= len(SHAPE_CLASSES):
        raise ValueError(f"ignore_value={ignore_value} collides with class values 0..{len(SHAPE_CLASSES)}")
    h, w = image_annotation["height"], image_annotation["width"]
    semantic = np.zeros((h, w), dtype=np.uint8)
    masks = render_instance_masks(image_annotation)
    for obj, mask in zip(image_annotation["objects"], masks):
        semantic[mask] = obj["kind"] + 1
    if ignore_boundaries:
        unsure = np.zeros((h, w), dtype=bool)
        hidden = np.zeros((h, w), dtype=bool)
        for obj in reversed(image_annotation["objects"]):
            cov = _coverage(obj["polygon"], h, w)
            unsure |= (cov * 4 > _FULL) & (cov * 4 < 3 * _FULL) & ~hidden
            hidden |= cov * 4 >= 3 * _FULL
        semantic[unsure] = ignore_value
    return semantic


#: Depth of the ground at the image's bottom and top edges (metres); see :func:`render_depth`.
DEPTH_NEAR, DEPTH_FAR = 2.0, 10.0


def ground_depth(rows, height: int) -> np.ndarray:
    """Depth (m) of the ground plane at image row coordinate ``rows`` (0 = top edge, ``height`` =
    bottom edge, continuous).

    A pinhole camera looking level over a flat ground sees a ground point at depth ``Z = k / (v -
    v_h)``, with ``v`` its row and ``v_h`` the horizon's (Hartley and Zisserman 2004, sec. 8.6:
    points on a plane map by a homography). The horizon lies above the picture, so the ground
    fills every row, with ``DEPTH_NEAR`` at the bottom edge and ``DEPTH_FAR`` at the top edge.
    """
    v = np.asarray(rows, dtype=np.float64) / height
    horizon = -DEPTH_NEAR / (DEPTH_FAR - DEPTH_NEAR)  # normalised row where Z would be infinite
    return DEPTH_FAR * (-horizon) / (v - horizon)


def render_depth(image_annotation: dict) -> np.ndarray:
    """Metric depth ``(H, W)`` float32 of a scene, from its annotations (the image is unchanged).

    The 3D layout behind a picture: the background is a ground plane in perspective (depth grows
    towards the top, :func:`ground_depth`, from 2 m to 10 m), and every object is an upright flat
    cut-out standing on the ground at its lowest polygon point, facing the camera, so its whole
    visible area has the ground's depth at that row. Which surface is seen at a pixel is what the
    picture shows: the visible-object masks of :func:`render_instance_masks` (draw order). So the
    depth of every pixel follows from image cues alone -- its row (height in the visual field)
    and, on an object, the row of that object's foot -- and objects occlude what lies behind.
    The annotation's ``distance`` fields (random, with no cue in the image) are not used.
    """
    h, w = image_annotation["height"], image_annotation["width"]
    rows = np.arange(h, dtype=np.float64) + 0.5  # pixel centres
    depth = np.repeat(ground_depth(rows, h)[:, None], w, axis=1)
    masks = render_instance_masks(image_annotation)
    for obj, mask in zip(image_annotation["objects"], masks):
        foot = max(obj["polygon"][1::2])  # lowest point (largest y) of the polygon as drawn
        depth[mask] = ground_depth(foot, h)
    return depth.astype(np.float32)


def load_annotations(root: str | Path) -> list[dict]:
    """The per-image records of a generated root, in image-id order; a missing or damaged
    ``annotations.json`` is a :class:`DataError` naming it."""
    path = Path(root) / "annotations.json"
    try:
        return json.loads(path.read_text())["images"]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"cannot read '{path}' ({e}); delete {root} to regenerate it") from None


# ---------------------------------------------------------------------------------------------
# Scenes.


def _background(rng: np.random.Generator, size: int):
    """A two-colour texture in 0..1: ``(image (S, S, 3), kind, colours (2, 3))``."""
    c1 = rng.uniform(0, 1, 3)
    c2 = np.clip(c1 + rng.uniform(-0.35, 0.35, 3), 0, 1)  # moderate texture contrast
    kind = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    angle, phase = rng.uniform(0, 2 * np.pi, 2)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    period = rng.uniform(0.08, 0.3)
    if kind == "gradient":
        t = (u - u.min()) / (u.max() - u.min())
    elif kind == "stripes":
        t = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * np.pi * u / period + phase))
    elif kind == "checker":
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        t = (np.floor(u / period) + np.floor(v / period)) % 2
    else:  # blotches: a coarse random grid, smoothly upsampled
        grid = rng.uniform(0, 1, (rng.integers(3, 7),) * 2).astype(np.float32)
        t = np.asarray(Image.fromarray(grid).resize((size, size), Image.BILINEAR))
    image = c1 + t[..., None] * (c2 - c1)
    return image, kind, np.stack([c1, c2])


def _colour(rng: np.random.Generator, avoid: np.ndarray, min_distance: float) -> np.ndarray:
    """An RGB colour at least ``min_distance`` from every row of ``avoid`` (else the farthest try)."""
    tries = rng.uniform(0, 1, (32, 3))
    distance = np.linalg.norm(tries[:, None] - avoid[None], axis=2).min(1)
    ok = np.flatnonzero(distance >= min_distance)
    return tries[ok[0] if ok.size else distance.argmax()]


def _place(rng: np.random.Generator, kind: int, extent: float, size: int) -> np.ndarray:
    """The kind's polygon, stretched, rotated, scaled to a longer box side of ``extent`` and moved
    to a random spot fully inside the image (1 px margin); rounded as stored."""
    pts = _UNIT_POLYGONS[SHAPE_CLASSES[kind]] * (1.0, rng.uniform(0.85, 1.15))
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    pts = pts @ rot
    pts = pts - pts.min(0)
    pts = pts * (extent / pts.max())
    room = size - 2 - pts.max(0)
    return np.round(pts + 1 + rng.uniform(0, 1, 2) * room, 2)


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _occlusion_ok(main_pts: np.ndarray, main_mask: np.ndarray, front: np.ndarray) -> bool:
    """Whether the main object keeps >= 80 % of both its mask and its polygon area visible."""
    visible = int((main_mask & ~front).sum())
    full = int(main_mask.sum())
    return visible >= (1 - _MAX_OCCLUDED) * max(full, _polygon_area(main_pts))


def _scene(rng: np.random.Generator, size: int, label: int):
    """Sample and render one scene: ``(uint8 image, objects in draw order, background record)``."""
    image, bg_kind, bg_colours = _background(rng, size)
    main_extent = rng.uniform(*_MAIN_EXTENT) * size
    main_pts = _place(rng, label, main_extent, size)
    main = {"kind": label, "pts": main_pts, "colour": _colour(rng, bg_colours, 0.5), "main": True}
    main_mask = _mask(main_pts, size, size)

    behind, in_front = [], []
    front_union = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(0, 3)):
        kind = int(rng.integers(len(SHAPE_CLASSES)))
        extent = max(rng.uniform(*_DISTRACTOR_EXTENT) * main_extent, 3.0)  # >= 3 px: still a shape
        # Distinct from the main object too, or the two would merge into one new silhouette.
        colour = _colour(rng, np.vstack([bg_colours, main["colour"]]), 0.4)
        wants_front = rng.random() < 0.5
        for _attempt in range(8):
            pts = _place(rng, kind, extent, size)
            if not wants_front:
                break
            mask = _mask(pts, size, size)
            if _occlusion_ok(main_pts, main_mask, front_union | mask):
                front_union |= mask
                break
        else:
            wants_front = False  # no spot hides little enough: draw it behind instead
        (in_front if wants_front else behind).append(
            {"kind": kind, "pts": pts, "colour": colour, "main": False})

    order = behind + [main] + in_front
    # Depth-like distances: later-drawn objects are nearer; the background is farthest.
    distances = np.sort(rng.uniform(1.0, 5.0, len(order)))[::-1]
    background = {"kind": bg_kind, "distance": round(float(rng.uniform(6.0, 10.0)), 3)}

    for obj in order:
        alpha = _coverage(obj["pts"], size, size).astype(np.float32) / _FULL
        image += alpha[..., None] * (obj["colour"] - image)
    image += rng.normal(0.0, rng.uniform(0.0, 0.06), image.shape)
    pixels = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)

    objects = [{
        "kind": int(obj["kind"]),
        "polygon": obj["pts"].reshape(-1).tolist(),
        "bbox": [*obj["pts"].min(0).tolist(), *obj["pts"].max(0).tolist()],
        "z": z,
        "main": obj["main"],
        "distance": round(float(distance), 3),
        "colour": [int(c) for c in np.rint(obj["colour"] * 255)],
    } for z, (obj, distance) in enumerate(zip(order, distances))]
    return pixels, objects, background


def _write_image(directory: Path, index: int, size: int, seed: int) -> dict:
    """Render image ``index`` from its own child seed, save it, return its annotation record."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))
    label = index % len(SHAPE_CLASSES)  # round-robin keeps the classes balanced to one image
    pixels, objects, background = _scene(rng, size, label)
    file = f"{SHAPE_CLASSES[label]}/{index:05d}.png"
    Image.fromarray(pixels).save(directory / file, format="PNG")
    return {"id": index, "file": file, "label": label, "width": size, "height": size,
            "background": background, "objects": objects}


# ---------------------------------------------------------------------------------------------
# Generation on disk: temp dir, rename into place, meta.json last.


def _meta(num_images: int, size: int, seed: int) -> dict:
    return {"generator": GENERATOR, "version": VERSION, "num_images": num_images, "size": size,
            "seed": seed, "classes": list(SHAPE_CLASSES)}


def _read_meta(out: Path) -> dict | None:
    path = out / "meta.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ShapesDataError(f"{path} is unreadable ({err}); delete {out} to regenerate it") from err


_FIX = "use another directory or delete this one"


def _check_meta(out: Path, found: dict, wanted: dict, keys: str = "", fix: str = _FIX) -> None:
    """Raise, naming ``out`` and each differing parameter (``keys`` before its name: how the caller's
    user sets it) and ending with ``fix``, unless ``found`` is what is wanted."""
    if found.get("generator") != GENERATOR:
        raise ShapesDataError(f"{out} holds a data set from generator {found.get('generator')!r}, "
                              f"not {GENERATOR!r}; choose another directory")
    diffs = [f"{keys}{key}={found.get(key)!r} (requested {value!r})"
             for key, value in wanted.items() if key != "classes" and found.get(key) != value]
    if diffs:
        raise ShapesDataError(f"{out} already holds a shapes data set made with other parameters: "
                              f"{', '.join(diffs)}; {fix}")


@contextlib.contextmanager
def _locked(out: Path):
    """Serialise generators of one root (e.g. several DDP ranks calling :func:`ensure_shapes`)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, the temp-dir scheme still applies
        yield
        return
    with open(out / ".shapes.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _owned(name: str) -> bool:
    return name in SHAPE_CLASSES or name in _OWN_FILES or name.startswith(_TMP_PREFIX)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def generate_shapes(out: str | Path, num_images: int = 3000, size: int = 64, seed: int = 0, *,
                    progress: bool = False) -> Path:
    """Generate the shapes data set into ``out`` and return it as a Path.

    A root already complete with the same parameters is returned untouched; one made with other
    parameters raises :class:`ShapesDataError` (a ``ValueError``) naming it. Images are written to
    ``out/.tmp-shapes-<pid>/`` and renamed into place, and ``meta.json`` comes last, so a killed
    run leaves no root that looks complete; the next run clears its leftovers and starts again.
    A directory holding anything but shapes files is never overwritten.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if size < 16:
        raise ValueError(f"size must be >= 16 px for the shapes to stay recognisable, got {size}")
    out = Path(out)
    wanted = _meta(int(num_images), int(size), int(seed))
    found = _read_meta(out)
    if found is not None:
        _check_meta(out, found, wanted)
        return out
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        found = _read_meta(out)  # another process may have finished while we waited
        if found is not None:
            _check_meta(out, found, wanted)
            return out
        foreign = sorted(p.name for p in out.iterdir() if not _owned(p.name))
        if foreign:
            raise ShapesDataError(f"{out} is not empty and holds no shapes meta.json (found "
                                  f"{', '.join(foreign[:3])}); refusing to overwrite it, "
                                  f"choose a new or empty directory")
        for leftover in out.glob(_TMP_PREFIX + "*"):  # a killed run's; safe, we hold the lock
            _remove(leftover)
        _generate_into(out, wanted, progress)
    return out


def _generate_into(out: Path, meta: dict, progress: bool) -> None:
    tmp = out / f"{_TMP_PREFIX}{os.getpid()}"
    for name in SHAPE_CLASSES:
        (tmp / name).mkdir(parents=True)
    indices = range(meta["num_images"])
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="shapes", unit="img")
    records = [_write_image(tmp, i, meta["size"], meta["seed"]) for i in indices]
    annotations = {"generator": GENERATOR, "version": VERSION, "classes": list(SHAPE_CLASSES),
                   "images": records}
    (tmp / "annotations.json").write_text(json.dumps(annotations, separators=(",", ":")))
    for name in (*SHAPE_CLASSES, "annotations.json"):
        _remove(out / name)  # a killed run's partial output
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp)
    marker = out / f"{_TMP_PREFIX}meta-{os.getpid()}.json"
    marker.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(marker, out / "meta.json")  # atomic: the data set is complete from here on


def ensure_shapes(root: str | Path, num_images: int = 3000, size: int = 64, seed: int = 0, *,
                  keys: str = "", fix: str = _FIX) -> Path:
    """Return ``root`` holding the shapes data set with these parameters, generating it if needed.

    Reuses a matching root, raises :class:`ShapesDataError` naming ``root`` on a mismatch (each
    parameter as ``keys`` + its name, then ``fix``: the caller's words), and prints one line before
    generating so a first run's pause is explained.
    """
    root = Path(root)
    found = _read_meta(root)
    if found is not None:
        _check_meta(root, found, _meta(num_images, size, seed), keys, fix)
        return root
    print(f"generating shapes data set ({num_images} images, {size} px) into {root}", flush=True)
    return generate_shapes(root, num_images, size, seed)
