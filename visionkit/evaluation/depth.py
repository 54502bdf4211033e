"""Depth metrics (Eigen et al. 2014, sec. 4; KITTI's silog), on valid pixels only.

With ``d`` the prediction and ``d*`` the ground truth over the N valid pixels (``min_depth < d* <=
max_depth``, inside the optional crop), predictions clamped to ``[min_depth, max_depth]``:

- ``abs_rel`` = mean |d - d*| / d*;  ``sq_rel`` = mean (d - d*)^2 / d*
- ``rmse`` = sqrt(mean (d - d*)^2);  ``rmse_log`` = sqrt(mean (ln d - ln d*)^2)
- ``log10`` = mean |log10 d - log10 d*|
- ``delta1..3`` = share of pixels with max(d / d*, d* / d) < 1.25^k
- ``silog`` = 100 sqrt(mean e^2 - (mean e)^2), e = ln d - ln d*  (the KITTI benchmark's)

``average="image"`` computes every metric per image and averages the images (the usual protocol
of the Eigen split); ``average="pixel"`` pools all valid pixels of the split. Median scaling
(for scale-ambiguous models) multiplies each prediction by median(d*) / median(d) first.
Images without a valid pixel are skipped and counted (``skipped_images``).
"""

from __future__ import annotations

import math

import torch

from visionkit.evaluation.base import Evaluator, interleave

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "silog")
#: crop boxes as fractions (top, bottom, left, right) of the ground truth's height and width
CROPS = {
    # Garg et al. 2016 on KITTI (rows 40.8-99.2 %, cols 3.6-96.4 %)
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    # Eigen et al. 2014 on KITTI
    "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
    # Eigen et al. 2014 on NYU: rows 45-471, cols 41-601 of 480x640 (the frame the Kinect fills)
    "eigen_nyu": (45 / 480, 471 / 480, 41 / 640, 601 / 640),
}
# the per-pixel sums every metric is computed from
_SUMS = ("n", "abs_rel", "sq_rel", "sq", "log_sq", "log", "log10", "d1", "d2", "d3")


def crop_mask(height: int, width: int, crop: str | None, device=None) -> torch.Tensor:
    """Bool ``(H, W)``: True inside the named evaluation crop (everywhere for ``None``/"none")."""
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    if crop in (None, "none"):
        mask[:] = True
        return mask
    top, bottom, left, right = CROPS[crop]
    mask[int(top * height):int(bottom * height), int(left * width):int(right * width)] = True
    return mask


def valid_mask(target: torch.Tensor, min_depth: float, max_depth: float,
               crop: str | None = None) -> torch.Tensor:
    """Pixels with a measurement inside the range (and the crop): 0 and non-finite are never valid."""
    valid = torch.isfinite(target) & (target > min_depth) & (target <= max_depth)
    if crop not in (None, "none"):
        valid &= crop_mask(*target.shape[-2:], crop, target.device)
    return valid


def error_sums(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The sums over 1-D tensors of matching valid pixels that :func:`metrics_from_sums` needs."""
    pred, target = pred.double(), target.double()
    diff = pred - target
    log_diff = torch.log(pred) - torch.log(target)
    ratio = torch.maximum(pred / target, target / pred)
    return {
        "n": float(pred.numel()),
        "abs_rel": float((diff.abs() / target).sum()),
        "sq_rel": float((diff * diff / target).sum()),
        "sq": float((diff * diff).sum()),
        "log_sq": float((log_diff * log_diff).sum()),
        "log": float(log_diff.sum()),
        "log10": float((torch.log10(pred) - torch.log10(target)).abs().sum()),
        "d1": float((ratio < 1.25).sum()),
        "d2": float((ratio < 1.25**2).sum()),
        "d3": float((ratio < 1.25**3).sum()),
    }


def metrics_from_sums(s: dict[str, float]) -> dict[str, float]:
    n = s["n"]
    mean_log = s["log"] / n
    return {
        "abs_rel": s["abs_rel"] / n,
        "sq_rel": s["sq_rel"] / n,
        "rmse": math.sqrt(s["sq"] / n),
        "rmse_log": math.sqrt(s["log_sq"] / n),
        "log10": s["log10"] / n,
        "delta1": s["d1"] / n,
        "delta2": s["d2"] / n,
        "delta3": s["d3"] / n,
        "silog": 100 * math.sqrt(max(s["log_sq"] / n - mean_log**2, 0.0)),
    }


def depth_metrics(pred: torch.Tensor, target: torch.Tensor, *, min_depth: float = 1e-3,
                  max_depth: float = 10.0, crop: str | None = None, median_scaling: bool = False,
                  average: str = "image") -> dict[str, float]:
    """Metrics of a batch ``(B, H, W)`` (or one ``(H, W)`` map) in one call; see the module doc."""
    ev = DepthEvaluator(min_depth=min_depth, max_depth=max_depth, crop=crop,
                        median_scaling=median_scaling, average=average)
    ev.reset()
    ev.process({"depth": target}, {"depth": pred})
    return ev.compute()


class DepthEvaluator(Evaluator):
    """Accumulates :func:`error_sums` per image; ``compute`` averages per image or per pixel."""

    def __init__(self, *, min_depth: float = 1e-3, max_depth: float = 10.0, crop: str | None = None,
                 median_scaling: bool = False, average: str = "image"):
        if average not in ("image", "pixel"):
            raise ValueError(f"average must be 'image' or 'pixel', got {average!r}")
        if crop not in (None, "none", *CROPS):
            raise ValueError(f"crop must be none or one of {', '.join(CROPS)}, got {crop!r}")
        self.min_depth, self.max_depth = min_depth, max_depth
        self.crop, self.median_scaling, self.average = crop, median_scaling, average
        self.reset()

    def reset(self) -> None:
        self.per_image: list[dict[str, float]] = []
        self.skipped = 0
        self.scales: list[float] = []
        self.scored: list[bool] = []  # per image, in order: scored (True) or skipped

    def process(self, batch: dict, predictions) -> None:
        target = batch["depth"]
        pred = predictions["depth"] if isinstance(predictions, dict) else predictions
        if target.ndim == 2:
            target, pred = target[None], pred[None]
        if pred.shape[-2:] != target.shape[-2:]:  # score at the ground truth's resolution
            pred = torch.nn.functional.interpolate(pred[:, None].float(), size=target.shape[-2:],
                                                   mode="bilinear", align_corners=False)[:, 0]
        for p, t in zip(pred.detach().float(), target.detach().float()):
            valid = valid_mask(t, self.min_depth, self.max_depth, self.crop)
            self.scored.append(bool(valid.any()))
            if not self.scored[-1]:
                self.skipped += 1
                continue
            p, t = p[valid], t[valid]
            if self.median_scaling:
                scale = float(t.median() / p.median().clamp_min(1e-12))
                self.scales.append(scale)
                p = p * scale
            p = p.clamp(self.min_depth, self.max_depth)
            self.per_image.append(error_sums(p, t))

    def merge(self, shards: list[DepthEvaluator]) -> None:
        def per_sample(s):  # (sums, scale) per scored image, None per skipped one
            sums, scales = iter(s.per_image), iter(s.scales)
            return [(next(sums), next(scales, None)) if ok else None for ok in s.scored]

        items = interleave([per_sample(s) for s in shards])
        self.scored = [x is not None for x in items]
        self.per_image = [x[0] for x in items if x is not None]
        self.scales = [x[1] for x in items if x is not None and x[1] is not None]
        self.skipped = sum(s.skipped for s in shards)

    def compute(self) -> dict[str, float]:
        if not self.per_image:
            out = {k: float("nan") for k in METRICS}
        elif self.average == "image":
            each = [metrics_from_sums(s) for s in self.per_image]
            out = {k: sum(m[k] for m in each) / len(each) for k in METRICS}
        else:
            out = metrics_from_sums({k: sum(s[k] for s in self.per_image) for k in _SUMS})
        out["skipped_images"] = float(self.skipped)
        return out

    def metric_names(self) -> set[str]:
        return {*METRICS, "skipped_images"}

    def details(self) -> dict:
        d = {"images": len(self.per_image), "skipped_images": self.skipped, "average": self.average,
             "crop": self.crop or "none", "range": [self.min_depth, self.max_depth],
             "median_scaling": self.median_scaling}
        if self.scales:
            t = torch.tensor(self.scales)
            d["median_scale"] = {"mean": float(t.mean()), "std": float(t.std()) if len(t) > 1 else 0.0}
        return d
