"""Turn a list of sample dicts into one batch dict with the names of the Batch contract.

A sample's singular keys become the batch's plural ones (``image`` -> ``images``, ``path`` ->
``paths``, ``index`` -> ``indices``; ``labels`` keeps its name). ``None`` samples -- images a
data set skipped with ``on_error="skip"`` -- are dropped, so one bad file costs one sample,
not the run; ``{"bad_samples": [...]}`` markers are dropped too, their entries gathered under
the batch's ``bad_samples``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["collate_samples"]

_BATCH_NAMES = {"image": "images", "path": "paths", "index": "indices"}


def _stack_or_list(values: list[Any]) -> Any:
    """Stack tensors of one shape (plain ``Tensor``); keep anything else as a list.

    Variable sizes -- detection images, per-image boxes -- stay lists, as the Batch contract says.
    """
    if (values and all(isinstance(v, torch.Tensor) for v in values)
            and all(v.shape == values[0].shape for v in values)):
        return torch.stack([v.as_subclass(torch.Tensor) for v in values])
    return list(values)


def collate_samples(samples: list[dict | None]) -> dict | None:
    """Batch the non-None samples; ``None`` when every sample was dropped.

    All samples must carry the same keys (a data set produces them, so a mismatch is a bug).
    """
    # an evaluation sample that could not be read arrives as a {"bad_samples": [...]} marker
    markers = [s["bad_samples"] for s in samples if s is not None and set(s) == {"bad_samples"}]
    kept = [s for s in samples if s is not None and set(s) != {"bad_samples"}]
    if not kept:
        return {"bad_samples": markers} if markers else None
    keys = list(kept[0])
    for sample in kept[1:]:
        if set(sample) != set(keys):
            raise ValueError(
                f"samples in one batch have different keys: {sorted(keys)} vs {sorted(sample)}"
            )
    batch = {}
    for key in keys:
        values = [s[key] for s in kept]
        if key == "index":
            batch["indices"] = torch.as_tensor(values, dtype=torch.long)
        elif key == "path":
            batch["paths"] = list(values)
        else:
            batch[_BATCH_NAMES.get(key, key)] = _stack_or_list(values)
    if markers:
        batch["bad_samples"] = list(batch.get("bad_samples", [])) + markers
    return batch
