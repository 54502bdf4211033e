"""``visionkit data check``: decode every sample of a config's data set and validate its targets.

A run should not find out at hour five that one file is truncated. This reads each sample the
way training does (``data.on_error`` forced to ``raise``, so nothing is skipped silently), runs
the generic image checks below and the task's own :meth:`Task.check_sample` (label ranges, boxes
inside the image, depth values, ...), and reports every problem with the file it concerns.
"""

from __future__ import annotations

from collections import Counter

import torch

from visionkit.data.build import build_source, describe_bad
from visionkit.errors import DataError
from visionkit.registry import TASKS

#: images smaller than this (either side) are reported as warnings: readable, but likely mistakes
MIN_SIDE = 8


def _image_problems(image) -> tuple[list[str], list[str]]:
    """(errors, warnings) of one decoded image tensor."""
    if isinstance(image, list):  # variable-size tasks may carry a list; check each
        out = ([], [])
        for im in image:
            e, w = _image_problems(im)
            out[0].extend(e)
            out[1].extend(w)
        return out
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        return [f"image is not a (C, H, W) tensor (got {getattr(image, 'shape', type(image).__name__)})"], []
    if image.dtype != torch.uint8:
        return [f"image pixels are {image.dtype}, not uint8"], []
    h, w = image.shape[-2:]
    if min(h, w) < MIN_SIDE:
        return [], [f"image is only {w}x{h} pixels"]
    return [], []


def check_data(cfg, log=print) -> dict:
    """Check every sample; returns the report (the CLI prints it and exits 1 on any error)."""
    task_cls = TASKS.get(cfg.task)
    source = build_source(cfg)
    info = {**source.info, "classes": source.classes, "cfg": cfg}
    parts = source.splits if source.splits is not None else {"all": source.pool}
    report = {"dataset": cfg.data.dataset, "root": cfg.data.root, "task": cfg.task,
              "classes": len(source.classes), "splits": {}, "errors": [], "warnings": []}
    for name, ds in parts.items():
        ok, sizes, labels = 0, Counter(), Counter()
        for i in range(len(ds)):
            path = None
            try:
                sample = ds[i]
            except DataError as e:
                path, _ = describe_bad(ds, i, e)
                report["errors"].append({"split": name, "index": i, "path": path, "problem": str(e)})
                continue
            if sample is None:
                path, reason = describe_bad(ds, i)
                report["errors"].append({"split": name, "index": i, "path": path, "problem": reason})
                continue
            path = sample.get("path") or describe_bad(ds, i)[0]
            errors, warnings = _image_problems(sample.get("image"))
            errors += task_cls.check_sample(sample, info)
            for problem in errors:
                report["errors"].append({"split": name, "index": i, "path": path, "problem": problem})
            for problem in warnings:
                report["warnings"].append({"split": name, "index": i, "path": path, "problem": problem})
            if not errors:
                ok += 1
                image = sample.get("image")
                if isinstance(image, torch.Tensor):
                    sizes[tuple(image.shape[-2:])] += 1
                lab = sample.get("labels")
                if isinstance(lab, torch.Tensor) and lab.ndim == 0:
                    labels[int(lab)] += 1
        report["splits"][name] = {
            "samples": len(ds), "ok": ok,
            "image_sizes": {f"{w}x{h}": n for (h, w), n in sizes.most_common(5)},
            **({"per_class": {source.classes[k]: n for k, n in sorted(labels.items())
                              if 0 <= k < len(source.classes)}} if labels else {}),
        }
    return report


def format_report(report: dict) -> str:
    lines = [f"data set {report['dataset']} at {report['root']} ({report['task']}, {report['classes']} classes)"]
    for name, s in report["splits"].items():
        sizes = ", ".join(f"{k} ({n})" for k, n in s["image_sizes"].items())
        lines.append(f"  {name}: {s['ok']}/{s['samples']} samples ok; sizes {sizes or '-'}")
        if "per_class" in s:
            lines.append("    per class: " + ", ".join(f"{k} {n}" for k, n in s["per_class"].items()))
    for kind in ("errors", "warnings"):
        if report[kind]:
            lines.append(f"{len(report[kind])} {kind[:-1] if len(report[kind]) == 1 else kind}:")
            lines += [f"  {e['path']}: {e['problem']}" for e in report[kind]]
    lines.append("no problems found" if not report["errors"] else
                 f"FAILED: {len(report['errors'])} sample(s) cannot be used; fix or delete them, "
                 "or train with data.on_error=skip")
    return "\n".join(lines)
