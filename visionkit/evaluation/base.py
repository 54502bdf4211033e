"""The Evaluator contract shared by every task."""

from __future__ import annotations

from typing import Any


class Evaluator:
    """Accumulates predictions over a split, then computes scalar metrics.

    ``compute`` returns only floats (logged to TensorBoard and metrics.jsonl); ``details`` returns
    what does not fit a scalar (per-class tables, confusion matrices) for the eval JSON.
    """

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, batch: dict, predictions: Any) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        return {}

    def metric_names(self) -> set[str] | None:
        """Every key :meth:`compute` can return, known before any data (so a ``train.monitor``
        typo fails when the run starts, not after its first epoch); None: not known."""
        return None

    def merge(self, shards: list[Evaluator]) -> None:
        """Make this evaluator hold what ``shards`` processed together, so ``compute`` and
        ``details`` equal one process's over the whole split (sharded evaluation under torchrun).

        ``shards`` are the ranks' evaluators in rank order; rank r processed samples r, r + W,
        r + 2W, ... of the split (see :func:`interleave`). Counts add up; per-sample lists are
        put back in sample order, so even float sums are added in the same order."""
        raise NotImplementedError(f"{type(self).__name__} cannot be reduced over processes")

    def write(self, directory, split: str) -> list:
        """Files an evaluator keeps beside the metrics (a COCO results json, ...) in ``directory``;
        returns their paths. Default: none."""
        return []


def interleave(shards: list[list]) -> list:
    """Per-rank item lists (rank r's j-th item is sample j W + r) back in sample order."""
    out = []
    for j in range(max((len(s) for s in shards), default=0)):
        out += [s[j] for s in shards if j < len(s)]
    return out
