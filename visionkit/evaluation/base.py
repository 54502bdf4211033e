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

    def write(self, directory, split: str) -> list:
        """Files an evaluator keeps beside the metrics (a COCO results json, ...) in ``directory``;
        returns their paths. Default: none."""
        return []
