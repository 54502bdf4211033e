"""The run directory's append-only logs, kept consistent across kills and resumes.

``metrics.jsonl`` is cut back to the resumed checkpoint's step, so no step repeats or goes back
(TensorBoard gets the same through ``SummaryWriter(purge_step=...)``). ``bad_samples.jsonl``
lists each unreadable sample once, with the reason, as the training loop meets them.
"""

from __future__ import annotations

import json
from pathlib import Path

from visionkit.engine.checkpoint import atomic_write_bytes


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records of ``path`` up to and including ``step`` (what the checkpoint saw) and
    drop later ones and a line cut short by a kill; returns how many were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_bytes(path, "".join(x + "\n" for x in kept).encode())
    return dropped


class BadSampleLog:
    """``bad_samples.jsonl``: one line per unreadable sample (path, reason, epoch first seen)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.seen: set[str] = set()
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    self.seen.add(json.loads(line)["path"])
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, items: list, epoch: int) -> int:
        """Record the new ``(path, reason)`` pairs of a batch; returns how many were new."""
        new = 0
        flat = [x for group in items for x in (group or [])]
        with open(self.path, "a") as f:
            for path, reason in flat:
                if path in self.seen:
                    continue
                self.seen.add(path)
                f.write(json.dumps({"path": path, "reason": reason, "epoch": epoch}) + "\n")
                new += 1
        return new

    def __len__(self) -> int:
        return len(self.seen)
