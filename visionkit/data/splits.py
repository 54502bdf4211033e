"""Seeded, stratified train/val/test splits with exact sizes, saved next to the run.

The split sizes are what a user reads in a paper table, so they are exact: ``ratios`` are turned
into counts by largest-remainder apportionment (1003 samples at 8:1:1 give 803/100/100), and the
per-class allocations add up to precisely those counts. Each class is spread over the splits in
proportion to its size (within one sample of its fair share), except that a class with at least
three samples gets one sample in every non-empty split whenever the split sizes allow it -- a
validation set without some class would hide errors on it.

The split is written to ``split.json`` in the run directory so that resuming, evaluating and
testing a run all see the same samples; :func:`load_split` refuses a file made for other data.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from visionkit.errors import DataError

__all__ = ["SPLITS", "largest_remainder", "load_split", "save_split", "stratified_split"]

SPLITS = ("train", "val", "test")

# Cost weights of the allocation, in strict priority order: first give every big-enough class a
# sample in each split, then keep every cell within floor/ceil of its quota, then minimise the
# squared distance to the quotas (at most 1 per cell, and a move changes a handful of cells).
_PIN_WEIGHT = 1e6
_BAND_WEIGHT = 1e3


def largest_remainder(total: int, weights: Sequence[Any]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (Hamilton's method).

    Each part gets the floor of its exact quota; the units left go to the largest remainders,
    ties to the earlier part. Float weights are read as the decimals they were written as
    (0.1 means 1/10), so 0.8/0.1/0.1 and 8/1/1 agree.
    """
    fractions = [Fraction(w).limit_denominator(10**6) for w in weights]
    if any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    quotas = [total * f / sum(fractions) for f in fractions]
    parts = [int(q) for q in quotas]  # floor: quotas are non-negative
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _split_sizes(n: int, ratios: Sequence[Any], counts: Sequence[int] | None) -> list[int]:
    if counts is None:
        if len(ratios) != len(SPLITS):
            raise ValueError(f"ratios need one value per split {SPLITS}, got {list(ratios)}")
        return largest_remainder(n, ratios)
    if len(counts) != len(SPLITS) or any(int(c) != c or c < 0 for c in counts):
        raise ValueError(f"counts need one non-negative integer per split {SPLITS}, got {list(counts)}")
    if sum(counts) > n:
        raise DataError(
            f"split counts {'+'.join(map(str, counts))} = {sum(counts)} exceed the {n} samples of "
            "the data set; lower the counts or use ratios"
        )
    return [int(c) for c in counts]


def _cost(alloc, quota, low, high, need):
    """Per-cell cost of an allocation (see the weights above); +inf below zero."""
    cost = (alloc - quota) ** 2
    cost = cost + _BAND_WEIGHT * (np.maximum(low - alloc, 0) + np.maximum(alloc - high, 0))
    cost = cost + _PIN_WEIGHT * np.maximum(need - alloc, 0)
    return np.where(alloc < 0, np.inf, cost)


def _allocate(class_sizes: np.ndarray, totals: list[int], pinned: np.ndarray) -> np.ndarray:
    """Integer table ``(classes, splits)`` with row sums ``class_sizes`` and column sums ``totals``.

    A min-cost flow over a convex separable cost: first each class is allocated optimally on its
    own, then units are moved from over-full to under-full splits along the cheapest chain of
    single-class moves (successive shortest paths; with at most four splits the chains are
    enumerated). Cells whose quota is an integer never move, and a feasible table within
    floor/ceil always exists (controlled rounding of a two-way table), so without pins every cell
    ends within one sample of its quota. Ties go to the lower class and split index.
    """
    n = int(class_sizes.sum())
    totals_arr = np.asarray(totals, dtype=np.int64)
    exact = class_sizes[:, None] * totals_arr[None, :]  # quota * n, in integers
    low = exact // n
    high = low + (exact % n > 0)
    quota = exact / n
    need = pinned.astype(np.int64)
    alloc = low.copy()

    def inc_dec():
        here = _cost(alloc, quota, low, high, need)
        up = _cost(alloc + 1, quota, low, high, need) - here
        down = _cost(alloc - 1, quota, low, high, need) - here
        return up, down

    # 1. each class alone: fill up from the floors, then swap units while that lowers the cost
    while (short := alloc.sum(1) < class_sizes).any():
        inc, _ = inc_dec()
        rows = np.flatnonzero(short)
        alloc[rows, inc[rows].argmin(1)] += 1
    num_splits = len(totals)
    off_diag = ~np.eye(num_splits, dtype=bool)
    while True:
        inc, dec = inc_dec()
        gain = dec[:, :, None] + inc[:, None, :]  # gain[c, i, j]: move one unit of c from i to j
        gain[:, ~off_diag] = np.inf
        flat = gain.reshape(len(alloc), -1)
        best = flat.argmin(1)
        rows = np.flatnonzero(flat[np.arange(len(alloc)), best] < -1e-9)
        if rows.size == 0:
            break
        src, dst = np.divmod(best[rows], num_splits)
        alloc[rows, src] -= 1
        alloc[rows, dst] += 1

    # 2. fix the split totals along cheapest chains of moves
    while (surplus := alloc.sum(0) - totals_arr).any():
        inc, dec = inc_dec()
        gain = dec[:, :, None] + inc[:, None, :]
        edge_cost, edge_class = gain.min(0), gain.argmin(0)
        best_path, best_cost = None, np.inf
        for s in np.flatnonzero(surplus > 0):
            for t in np.flatnonzero(surplus < 0):
                middle = [k for k in range(num_splits) if k not in (s, t)]
                for r in range(len(middle) + 1):
                    for via in itertools.permutations(middle, r):
                        path = (s, *via, t)
                        cost = sum(edge_cost[a, b] for a, b in itertools.pairwise(path))
                        if cost < best_cost - 1e-9:
                            best_path, best_cost = path, cost
        for a, b in itertools.pairwise(best_path):
            c = edge_class[a, b]
            alloc[c, a] -= 1
            alloc[c, b] += 1
    return alloc


def stratified_split(
    targets: Sequence[int],
    *,
    ratios: Sequence[Any] = (8, 1, 1),
    counts: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Indices into ``targets`` for ``train``/``val``/``test``, stratified by class.

    Sizes follow ``ratios`` by largest remainder, or are ``counts`` exactly (their sum may be
    below the data set size; the rest is unused). A zero ratio or count gives an empty split.
    Which samples of a class go where is drawn from ``numpy.random.default_rng(seed)``, never the
    global RNG, so the split depends on the seed alone. Indices are sorted within each split.
    """
    labels = np.asarray(targets, dtype=np.int64).reshape(-1)
    n = len(labels)
    sizes = _split_sizes(n, ratios, counts)
    if n == 0:
        return {name: [] for name in SPLITS}
    classes, inverse, class_sizes = np.unique(labels, return_inverse=True, return_counts=True)
    columns = sizes + ([n - sum(sizes)] if sum(sizes) < n else [])  # an "unused" column for counts
    pinned = np.zeros((len(classes), len(columns)), dtype=bool)
    pinned[:, : len(SPLITS)] = (class_sizes[:, None] >= 3) & (np.asarray(sizes)[None, :] > 0)
    alloc = _allocate(class_sizes.astype(np.int64), columns, pinned)

    rng = np.random.default_rng(seed)
    split = {name: [] for name in SPLITS}
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(inverse == c))
        bounds = np.cumsum(alloc[c])
        for k, name in enumerate(SPLITS):
            start = bounds[k - 1] if k else 0
            split[name].extend(members[start : bounds[k]].tolist())
    return {name: sorted(indices) for name, indices in split.items()}


def save_split(
    path: str | os.PathLike, split: Mapping[str, Sequence[int]], meta: Mapping[str, Any]
) -> None:
    """Write ``{"meta": meta, "train": [...], "val": [...], "test": [...]}`` to ``path``.

    Written to a temporary file in the same folder and renamed into place, so a crash never
    leaves a half-written split that a resumed run would trust.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(meta), **{name: [int(i) for i in split.get(name, [])] for name in SPLITS}}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparing metas."""
    return json.loads(json.dumps(value))


def load_split(
    path: str | os.PathLike, expected_meta: Mapping[str, Any] | None = None
) -> dict[str, list[int]]:
    """Read a split written by :func:`save_split`; DataError if it was made for other data.

    Every key of ``expected_meta`` must match the saved meta (``num_samples`` -- the data set
    size -- gets the plainest message, as it is the usual reason: images were added or removed).
    """
    path = Path(path)
    # not "delete it": a new split of a trained run would put its training images in val and test
    fix = ("use the data and data.split settings the run was made with (its config.yaml), "
           "or train a new run in another --run-dir")
    try:
        payload = json.loads(path.read_text())
        meta = payload.get("meta", {})
        split = {name: [int(i) for i in payload[name]] for name in SPLITS}
    except FileNotFoundError:
        raise DataError(f"split file '{path}' does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        reason = f"{type(error).__name__}: {error}"
        raise DataError(f"cannot read split file '{path}' ({reason}); restore it from a backup "
                        "or train a new run in another --run-dir") from error

    for key, wanted in (expected_meta or {}).items():
        wanted, saved = _as_json(wanted), meta.get(key)
        if saved == wanted:
            continue
        if key == "num_samples":
            raise DataError(
                f"'{path}' was made for {saved} samples, the data set now has {wanted}; {fix}"
            )
        raise DataError(
            f"'{path}' was made with {key}={saved!r}, the run now has {key}={wanted!r}; {fix}"
        )
    size = meta.get("num_samples")
    if isinstance(size, int) and any(i < 0 or i >= size for name in SPLITS for i in split[name]):
        raise DataError(f"split file '{path}' has indices outside 0..{size - 1}; {fix}")
    return split
