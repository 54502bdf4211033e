"""Prove an exported file computes what the PyTorch model computes, on the config's own images.

The first ``samples`` images of the val split (the test split when there is no val split) go
through the task's eval transform, then through both the exported file (onnxruntime or
``torch.jit.load``) and the same wrapper module in PyTorch eager mode. Every output is compared
element by element: it passes when ``|exported - eager| <= atol + rtol * |eager|`` everywhere
(``numpy.allclose``'s rule) and integer outputs (detection labels) are equal. Printed per output:
the max absolute error and the max relative error ``max|exported - eager| / max|eager|``.

A dynamic export is checked at batch 1 and at batch ``samples`` through the same file (one image at
a time for a graph of batch 1), and -- for the tasks whose graph takes any image size
(``Task.export_any_size``) -- at a second size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from visionkit.errors import DataError, VisionKitError
from visionkit.export import DEFAULT_ATOL, DEFAULT_RTOL


class VerificationError(VisionKitError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""


@dataclass
class Check:
    """One output of one run: where it was compared and how far apart the two were."""

    case: str
    output: str
    shape: tuple
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""

    def line(self) -> str:
        status = "ok" if self.ok else "FAIL"
        text = (f"{self.case:<24} {self.output:<8} {list(self.shape)!s:<16} max abs {self.max_abs:.3e}  "
                f"max rel {self.max_rel:.3e}  {status}")
        return f"{text}  ({self.note})" if self.note else text


def load_samples(cfg, task_cls, samples: int, run_dir=None) -> list[torch.Tensor]:
    """The first ``samples`` images (uint8 ``(C, H, W)``) of the val split, else the test split,
    after the task's eval transform."""
    from visionkit.data.build import build_datasets

    datasets, _ = build_datasets(cfg, task_cls, run_dir, splits=("val", "test"))
    split = "val" if "val" in datasets else "test" if "test" in datasets else None
    if split is None:
        raise DataError(f"data set '{cfg.data.root}' has no val or test images to verify the export on; "
                        "check data.split")
    data = datasets[split]
    images = []
    for i in range(min(samples, len(data))):
        sample = data[i]
        if "image" in sample:
            images.append(sample["image"].as_subclass(torch.Tensor))
    if not images:
        raise DataError(f"no readable images in the {split} split of '{cfg.data.root}'")
    return images


def to_input(images: list[torch.Tensor], mean, std, normalize_in_graph: bool) -> torch.Tensor:
    """uint8 images of one size -> the float batch the graph takes."""
    x = torch.stack(images).float() / 255
    if normalize_in_graph:
        return x
    c = len(mean)
    return (x - torch.tensor(mean).view(1, c, 1, 1)) / torch.tensor(std).view(1, c, 1, 1)


def compare(case: str, names: list[str], got: list[torch.Tensor], want: list[torch.Tensor], atol: float,
            rtol: float) -> list[Check]:
    checks = []
    for name, a, b in zip(names, got, want):
        b = b.detach().cpu()
        if tuple(a.shape) != tuple(b.shape):
            checks.append(Check(case, name, tuple(b.shape), float("inf"), float("inf"), False,
                                f"shape {list(a.shape)} exported vs {list(b.shape)} in PyTorch"))
            continue
        if not b.is_floating_point():
            wrong = int((a.to(b.dtype) != b).sum())
            checks.append(Check(case, name, tuple(b.shape), float(wrong > 0), float(wrong > 0), wrong == 0,
                                f"{wrong} of {b.numel()} values differ" if wrong else "equal"))
            continue
        a, b = a.double(), b.double()
        if b.numel() == 0:
            checks.append(Check(case, name, tuple(b.shape), 0.0, 0.0, True, "empty"))
            continue
        err = (a - b).abs()
        max_abs = float(err.max())
        max_rel = max_abs / max(float(b.abs().max()), 1e-12)
        ok = bool((err <= atol + rtol * b.abs()).all()) and bool(torch.isfinite(a).all() == torch.isfinite(b).all())
        checks.append(Check(case, name, tuple(b.shape), max_abs, max_rel, ok))
    return checks


def cases(task, images: list[torch.Tensor], dynamic: bool, export_size) -> list[tuple[str, list]]:
    """(description, list of uint8 images of one size) for every run the verification makes of
    ``task``'s graph (its ``export_single_image`` and ``export_any_size`` say which)."""
    same = [im for im in images if tuple(im.shape[-2:]) == tuple(export_size)]
    out: list[tuple[str, list]] = []
    h, w = export_size
    if task.export_single_image or not dynamic:
        out += [(f"image {i} {h}x{w} batch 1", [im]) for i, im in enumerate(same)]
    else:
        out.append((f"image 0 {h}x{w} batch 1", same[:1]))
        if len(same) > 1:
            out.append((f"images {h}x{w} batch {len(same)}", same))
    if dynamic and task.export_any_size:
        # sample images of other sizes (real data sets), one by one
        out += [(f"image {i} {im.shape[-2]}x{im.shape[-1]} batch 1", [im]) for i, im in enumerate(images)
                if tuple(im.shape[-2:]) != tuple(export_size)]
        # a second size through the same file: +32 px keeps strides of 32 aligned
        size = (h + 32, w + 32)
        grown = [F.interpolate(im[None].float(), size=size, mode="bilinear", align_corners=False)[0]
                 .round().clamp(0, 255).to(torch.uint8) for im in same[:2]]
        if task.export_single_image:
            out.append((f"image 0 {size[0]}x{size[1]} batch 1", grown[:1]))
        else:
            out.append((f"images {size[0]}x{size[1]} batch {len(grown)}", grown))
    return out


def verify(runner, graph, task, names: list[str], images: list[torch.Tensor], mean, std,
           normalize_in_graph: bool, dynamic: bool, export_size, atol: float = DEFAULT_ATOL,
           rtol: float = DEFAULT_RTOL, log=print) -> list[Check]:
    """Run every case through ``runner`` (the exported file) and ``graph`` (``task``'s export graph,
    eager); log one line per output; raise :class:`VerificationError` when any is outside the
    tolerance."""
    checks: list[Check] = []
    runs = [c for c in cases(task, images, dynamic, export_size) if c[1]]
    if not runs:
        sizes = sorted({tuple(im.shape[-2:]) for im in images})
        raise DataError(f"none of the {len(images)} sample images has the export's size {list(export_size)} "
                        f"(they are {sizes[:3]}); export with --dynamic or set data.image_size / a resize")
    for case, batch in runs:
        x = to_input(batch, mean, std, normalize_in_graph or task.export_normalizes)
        with torch.no_grad():
            want = list(graph(x))
        got = runner(x)
        for check in compare(case, names, got, want, atol, rtol):
            log(check.line())
            checks.append(check)
    bad = [c for c in checks if not c.ok]
    if bad:
        worst = max(bad, key=lambda c: c.max_abs)
        raise VerificationError(
            f"export verification failed: {len(bad)} of {len(checks)} outputs differ from PyTorch beyond "
            f"atol {atol:g} + rtol {rtol:g} x |value|; worst: '{worst.output}' on {worst.case}, max abs "
            f"{worst.max_abs:.3e}{' (' + worst.note + ')' if worst.note else ''}")
    return checks
