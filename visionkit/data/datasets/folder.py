"""Classification data in the ImageFolder layout: ``root/<class>/<image>``.

Class names are the sorted folder names and become label ids in that order, so the same tree
always gives the same labels. A root may instead hold its own ``train/``, ``val/`` (and ``test/``)
splits, each in that layout; :func:`has_own_splits` and :func:`split_roots` detect and check them,
so the builder can use those splits rather than cutting one of its own.

Problems a user can fix (a missing root, an empty class, a corrupt file) raise
:class:`~visionkit.errors.DataError` naming the path, before or at the moment they matter.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from visionkit.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "find_classes",
    "has_own_splits",
    "read_image",
    "split_roots",
]

logger = logging.getLogger(__name__)
# torchvision 0.29 warns on every decode that its decoders will move to TorchCodec; they are
# what we use today, and thousands of identical warnings would bury the ones that matter.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLIT_NAMES = ("train", "val", "test")
_EXT_HINT = "/".join(IMAGE_EXTENSIONS)
#: the schema's default ``data.root``, where ``dataset: shapes`` generates its images
SHAPES_DEFAULT_ROOT = "data/shapes"
#: what the decoders read (torchvision's, and PIL for BMP), for "not a ... file" messages
_FORMATS = "JPEG, PNG, WEBP, GIF or BMP"
#: how to fix an unreadable training image (other readers, e.g. predict, pass their own)
_SKIP_HINT = "replace or delete the file (or set data.on_error=skip to drop unreadable images)"


def unreadable_fix(on_error: str) -> str:
    """The end of an unreadable data file's message: with ``data.on_error=skip`` the file is
    dropped already, so the line says only how to get it back."""
    return "replace or delete the file" if on_error == "skip" else _SKIP_HINT
# torchvision's decoders read these directly; BMP has no torchvision decoder, so it goes to PIL.
_PIL_ONLY = (".bmp",)
# Only the PNG and JPEG decoders honour ImageReadMode.GRAY (WEBP/GIF warn or ignore it), so the
# others are decoded as RGB and converted afterwards.
_NATIVE_GRAY = (".png", ".jpg", ".jpeg")


def _visible_dirs(path: str) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``path``."""
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def is_image(name: str) -> bool:
    """A file name the readers take: an image suffix, and not hidden (macOS' ``._x.png`` forks)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _check_root(root: str) -> None:
    if not os.path.exists(root):
        # the synth hint only where the user kept the default root, which is the shapes set's;
        # for their own data it would suggest replacing it by synthetic images
        synth = (f" or run `visionkit data synth shapes --out {root}`"
                 if os.path.abspath(root) == os.path.abspath(SHAPES_DEFAULT_ROOT) else "")
        raise DataError(
            f"data root '{root}' does not exist; point data.root at a folder of class folders "
            f"('{os.path.join(root, '<class>', '<image>.png')}'){synth}"
        )
    if not os.path.isdir(root):
        raise DataError(
            f"data root '{root}' is not a folder; point data.root at a folder of class folders"
        )


def find_classes(root: str | os.PathLike) -> list[str]:
    """The class names under ``root``: its sorted, non-hidden sub-folders."""
    root = os.fspath(root)
    _check_root(root)
    classes = _visible_dirs(root)
    if not classes:
        loose = [n for n in os.listdir(root) if is_image(n)]
        hint = " (the images lie directly in it; move them into one folder per class)" if loose else ""
        raise DataError(
            f"data root '{root}' has no class folders{hint}; expected '{root}/<class>/<image>.png'"
        )
    return classes


def _images_in(folder: str) -> list[str]:
    """All image files below ``folder`` (nested folders included), in a stable sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image(f))
    return found


def has_own_splits(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds ``train/`` and ``val/`` folders that each contain class folders."""
    root = os.fspath(root)
    for name in ("train", "val"):
        path = os.path.join(root, name)
        if not os.path.isdir(path) or not _visible_dirs(path):
            return False
    return True


def split_roots(root: str | os.PathLike) -> dict[str, str]:
    """The data set's own split folders, ``{"train": ..., "val": ...[, "test": ...]}``.

    Every split must list the same classes, since a label id means the same class everywhere;
    otherwise a DataError names the folder that differs and the classes it lacks or adds.
    """
    root = os.fspath(root)
    _check_root(root)
    if not has_own_splits(root):
        raise DataError(
            f"data root '{root}' has no train/ and val/ folders of class folders; "
            "add them or let visionkit split the data set"
        )
    candidates = {name: os.path.join(root, name) for name in SPLIT_NAMES}
    roots = {name: path for name, path in candidates.items() if os.path.isdir(path)}
    reference = find_classes(roots["train"])
    for path in roots.values():
        classes = find_classes(path)
        if classes != reference:
            missing = sorted(set(reference) - set(classes))
            extra = sorted(set(classes) - set(reference))
            parts = [f"lacks {missing}" if missing else "", f"adds {extra}" if extra else ""]
            detail = " and ".join(p for p in parts if p) or "orders them differently"
            raise DataError(
                f"split folder '{path}' {detail} compared with '{roots['train']}'; "
                "every split needs the same class folders"
            )
    return roots


def _clean_reason(error: Exception) -> str:
    """The decoder's message without torchvision's C++ source location prefix, and in a user's
    words where the decoder speaks to developers (torchvision's "Unsupported image file. ...
    please rely on `decode_avif`", PIL's "cannot identify image file")."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    # e.g. "decode_image, /__w/vision/.../decode_image.cpp:67, Unsupported image file. ..."
    text = re.sub(r"^\w+, \S+\.cpp:\d+, ", "", text)
    if text.startswith(("Unsupported image file", "cannot identify image file")):
        return f"not a {_FORMATS} file"
    if text.startswith("Expected a non empty file"):
        return "the file is empty"
    return text


def _decode_with_pil(path: str, channels: int) -> torch.Tensor:
    from PIL import Image  # imported lazily: only BMP files need it

    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return data.view(img.height, img.width, channels).permute(2, 0, 1).contiguous()


def read_image(path: str, channels: int = 3, *, fix: str = _SKIP_HINT) -> tv_tensors.Image:
    """Decode one file to a uint8 ``(channels, H, W)`` image; DataError if it cannot be read.

    Grayscale files are repeated to three channels when ``channels=3`` and colour files are
    converted to luminance when ``channels=1``, so every sample of a data set has one shape.
    Animated GIFs give their first frame. ``fix`` ends the DataError: how the caller's user
    gets past an unreadable file (by default the training data's ``on_error`` hint).
    """
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix in _PIL_ONLY:
            data = _decode_with_pil(path, channels)
        else:
            gray = channels == 1 and suffix in _NATIVE_GRAY
            data = decode_image(path, mode=ImageReadMode.GRAY if gray else ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError, SyntaxError) as error:  # PIL raises SyntaxError too
        raise DataError(
            f"cannot decode image '{path}': {_clean_reason(error)}; {fix}"
        ) from error
    if data.ndim == 4:
        data = data[0]
    if data.dtype == torch.uint16:  # 16-bit PNGs decode as uint16; x // 257 maps 0..65535 to 0..255
        data = (data.to(torch.int32) // 257).to(torch.uint8)
    elif data.dtype != torch.uint8:
        raise DataError(f"image '{path}' decodes to {data.dtype} pixels; save it as 8- or 16-bit")
    if channels == 1 and data.shape[0] != 1:
        data = F.rgb_to_grayscale(data[:3])
    elif channels == 3 and data.shape[0] == 1:
        data = data.expand(3, -1, -1).contiguous()
    return tv_tensors.Image(data)


class ImageFolderDataset(Dataset):
    """Images in ``root/<class>/...`` with the class folder's index as label.

    ``classes`` fixes the class list (and so the label ids) instead of reading it from the
    folders, e.g. to evaluate with a trained model's classes; every class folder on disk must be
    in it, while a listed class may lack a folder. ``on_error="skip"`` turns an unreadable image
    into ``None`` (dropped by :func:`~visionkit.data.collate.collate_samples`) and records its
    path in ``bad_samples`` -- per process, so with DataLoader workers the main process only
    sees the warnings in the log.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        channels: int = 3,
        transform: Callable | None = None,
        on_error: str = "raise",
        classes: Sequence[str] | None = None,
    ):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = os.fspath(root)
        self.channels = channels
        self.transform = transform
        self.on_error = on_error
        self.bad_samples: list[str] = []
        self.bad_reasons: dict[str, str] = {}

        on_disk = find_classes(self.root)
        if has_own_splits(self.root):
            raise DataError(
                f"data root '{self.root}' holds its own train/ and val/ splits; point at one of "
                f"them (e.g. '{os.path.join(self.root, 'train')}') or build each split on its own"
            )
        if classes is None:
            self.classes = on_disk
        else:
            self.classes = list(classes)
            unknown = [c for c in on_disk if c not in self.classes]
            if unknown:
                raise DataError(
                    f"class folder '{os.path.join(self.root, unknown[0])}' is not one of the "
                    f"{len(self.classes)} known classes; remove it or train a model that knows it"
                )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

        self.samples: list[tuple[str, int]] = []
        for name in on_disk:
            folder = os.path.join(self.root, name)
            images = _images_in(folder)
            if not images:
                raise DataError(
                    f"class folder '{folder}' has no images ({_EXT_HINT}); "
                    "add images or remove the folder"
                )
            label = self.class_to_idx[name]
            self.samples.extend((path, label) for path in images)
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        path, label = self.samples[index]
        try:
            image = read_image(path, self.channels, fix=unreadable_fix(self.on_error))
        except DataError as error:
            if self.on_error != "skip":
                raise
            if path not in self.bad_samples:
                self.bad_samples.append(path)
                self.bad_reasons[path] = str(error)
                logger.warning("skipping %s", error)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "labels": torch.tensor(label), "path": path, "index": index}

    def describe_bad(self, index: int) -> tuple[str, str]:
        """(path, reason) of sample ``index`` after it failed to read (``on_error="skip"``)."""
        path = self.samples[index][0]
        return path, self.bad_reasons.get(path, f"cannot read image '{path}'")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root='{self.root}', {len(self)} images, "
            f"{len(self.classes)} classes, channels={self.channels})"
        )
