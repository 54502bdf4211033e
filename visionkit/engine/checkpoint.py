"""Checkpoints that survive a kill: written to a temp file, fsynced, then renamed into place.

A reader never sees a partial file under a final name, because ``os.replace`` is atomic within
one directory. Old checkpoints are pruned only after the new one is committed. Loading always
uses ``torch.load(weights_only=True)``, so a checkpoint cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from visionkit.errors import CheckpointError

FORMAT = "visionkit-checkpoint"
EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` atomically (hard link, else copy), replacing it."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class CheckpointManager:
    """Saves ``epoch_NNNN.pt`` (keeping the newest ``keep``), ``last.pt`` and ``best.pt``.

    File names are generated here from integers, never taken from data or config strings.
    """

    def __init__(self, directory: str | Path, keep: int = 3):
        self.dir = Path(directory)
        self.keep = keep

    def save(self, state: dict, epoch: int, is_best: bool) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"format": FORMAT, **state}, buf)
        path = self.dir / f"epoch_{epoch:04d}.pt"
        atomic_write_bytes(path, buf.getvalue())
        _link_or_copy(path, self.dir / "last.pt")
        if is_best:
            _link_or_copy(path, self.dir / "best.pt")
        _fsync_dir(self.dir)
        self._prune()
        return path

    def epoch_files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := EPOCH_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def _prune(self) -> None:
        for p in self.epoch_files()[: -self.keep]:
            p.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a checkpoint safely; every failure is a CheckpointError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint '{path}' was refused: it holds objects other than tensors and plain "
            f"values, which could run code when loaded ({str(e).splitlines()[0][:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt and cannot be read "
            f"({str(e).splitlines()[0][:160]}); use an earlier checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"'{path}' is not a visionkit checkpoint; to start from other weights set "
            "model.backbone.weights instead"
        )
    return state
