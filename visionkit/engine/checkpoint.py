"""Checkpoints that survive a kill, a full disk and a flipped bit.

A checkpoint is written to a temp file in the same directory, flushed and fsynced, then renamed
into place (``os.replace`` is atomic within one directory), so a reader never sees a partial file
under a final name. ``checkpoints/manifest.json`` -- itself written the same way -- is the commit
point: it lists every kept checkpoint, newest last, with its size and SHA-256, by file name only
(so a moved run directory still resumes). Old checkpoints are pruned only after the manifest that
drops them is committed. ``last.pt`` and ``best.pt`` are hard links for people and ``eval``.

Loading always uses ``torch.load(weights_only=True)``, so a checkpoint cannot run code; auto-resume
takes the newest checkpoint whose checksum verifies and says which newer ones it skipped.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from visionkit.engine import faults
from visionkit.errors import CheckpointError

FORMAT = "visionkit-checkpoint"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "visionkit-checkpoint-manifest"
EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")
CKPT_RE = re.compile(r"^(epoch|step)_(\d+)\.pt$")
TMP_RE = re.compile(r"^\..+\.tmp-\d+$")


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


def atomic_write_bytes(path: Path, data: bytes, checkpoint: bool = False) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the whole new one.

    On any failure (a full disk included) the temp file is removed and the error propagates.
    ``checkpoint`` marks the writes the fault-injection tests may interrupt.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            if checkpoint:
                f.flush()
                faults.in_checkpoint_write(tmp)
            f.write(data[half:])
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
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory: Path) -> dict | None:
    """The manifest of ``directory``; None when there is none or it cannot be parsed."""
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    return data


class CheckpointManager:
    """Saves ``epoch_NNNN.pt`` at epoch ends and ``step_NNNNNNNN.pt`` mid-epoch, keeps the newest
    ``keep`` of them, and maintains ``manifest.json``, ``last.pt`` and ``best.pt``.

    File names are generated here from integers, never taken from data or config strings.
    """

    def __init__(self, directory: str | Path, keep: int = 3):
        self.dir = Path(directory)
        self.keep = keep

    def remove_stale_temp_files(self) -> list[Path]:
        """Temp files a killed writer left behind (never under a final name); returns them."""
        if not self.dir.is_dir():
            return []
        stale = [p for p in self.dir.iterdir() if TMP_RE.match(p.name)]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def save(self, state: dict, epoch: int, global_step: int, is_best: bool, mid_epoch: bool = False) -> Path:
        """Write one checkpoint and commit it; a failed write leaves the previous one in place."""
        self.dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"format": FORMAT, **state}, buf)
        data = buf.getvalue()
        name = f"step_{global_step:08d}.pt" if mid_epoch else f"epoch_{epoch:04d}.pt"
        path = self.dir / name
        entry = {"file": name, "epoch": epoch, "global_step": global_step, "mid_epoch": mid_epoch,
                 "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = read_manifest(self.dir) or {"format": MANIFEST_FORMAT, "checkpoints": [], "best": None}
        try:
            atomic_write_bytes(path, data, checkpoint=True)
            entries = [e for e in manifest["checkpoints"] if e["file"] != name] + [entry]
            kept, pruned = entries[-self.keep:], entries[:-self.keep]
            manifest["checkpoints"] = kept
            if is_best:
                manifest["best"] = entry
            # the commit point: from here on, resume sees the new checkpoint
            atomic_write_bytes(self.dir / MANIFEST, json.dumps(manifest, indent=1).encode())
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CheckpointError(
                    f"cannot write checkpoint '{path}': the disk is full ({e.strerror}); nothing "
                    f"partial was left and the previous checkpoint is intact; free space in "
                    f"'{self.dir}' and continue with --resume"
                ) from None
            raise CheckpointError(f"cannot write checkpoint '{path}': {e.strerror or e}; "
                                  "the previous checkpoint is intact") from None
        _link_or_copy(path, self.dir / "last.pt")
        if is_best:
            _link_or_copy(path, self.dir / "best.pt")
        _fsync_dir(self.dir)
        for e in pruned:  # only now that the manifest no longer lists them
            if e["file"] != name:
                (self.dir / e["file"]).unlink(missing_ok=True)
        return path

    def epoch_files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := EPOCH_RE.match(p.name))]
        return [p for _, p in sorted(found)]


def is_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is a checkpoint our trainer wrote (its format tag)."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a checkpoint safely; every failure is a CheckpointError naming the path.

    When the checkpoint's directory has a manifest that lists it, its checksum is verified first,
    so a flipped bit that ``torch.load`` would not notice is refused too.
    """
    path = Path(path)
    check_torch_file(path, "checkpoint")
    expected = _listed_checksums(path)
    if expected is not None and sha256_file(path) not in expected:
        raise CheckpointError(
            f"checkpoint '{path}' is corrupt: its SHA-256 differs from the one recorded in "
            f"{path.parent / MANIFEST} when it was written; use an earlier checkpoint"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint '{path}' was refused: it holds objects other than tensors and plain "
            f"values, which could run code when loaded ({str(e).splitlines()[0][:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError):
        # torch's own explanation runs to paragraphs about other causes; the file is what matters
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt and cannot be read; use an earlier checkpoint"
        ) from None
    if not is_checkpoint(state):
        raise CheckpointError(
            f"'{path}' is not a visionkit checkpoint; to start from other weights set "
            "model.backbone.weights instead"
        )
    return state


def check_torch_file(path: Path, what: str) -> None:
    """Refuse, naming ``path``, what ``torch.load`` would fail on with an unhelpful message: a
    missing file, a folder, an empty file, or a file that is not a ``torch.save`` archive (a
    JSON, a text file: torch.load then reports a ``KeyError`` of the first byte)."""
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pt"))[:5]
        hint = f" ({', '.join(found)})" if found else ""
        raise CheckpointError(f"{what} '{path}' is a folder; pass a .pt file in it{hint}")
    if not path.is_file():
        raise CheckpointError(f"{what} '{path}' does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} '{path}' is empty (0 bytes); use another file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and not _legacy_torch_pickle(head):
        hint = ("; it is the manifest of the checkpoints beside it: pass one of those"
                if path.name == MANIFEST else "")
        raise CheckpointError(f"{what} '{path}' is not a PyTorch file (torch.save writes a zip archive; "
                              f"this is not one){hint}")


def _legacy_torch_pickle(head: bytes) -> bool:
    """torch.save before 1.6 (``_use_new_zipfile_serialization=False``) wrote a pickle stream:
    protocol 2+ starts with 0x80 and the protocol number."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _listed_checksums(path: Path) -> set[str] | None:
    """The SHA-256 values the manifest beside ``path`` allows for it; None when it has no say.

    ``last.pt`` and ``best.pt`` are hard links: they take the checksum of the listed checkpoint
    that is the same file (same inode); ``best.pt`` may also be the recorded best checkpoint
    after that one's own file was pruned.
    """
    manifest = read_manifest(path.parent)
    if manifest is None:
        return None
    entries = list(manifest.get("checkpoints", []))
    best = manifest.get("best")
    for e in entries + ([best] if best else []):
        if e["file"] == path.name:
            return {e["sha256"]}
    try:
        inode = path.stat().st_ino
        for e in entries + ([best] if best else []):
            other = path.parent / e["file"]
            if other.exists() and other.stat().st_ino == inode:
                return {e["sha256"]}
    except OSError:
        return None
    if path.name == "best.pt" and best:
        return {best["sha256"]} | {e["sha256"] for e in entries}
    return None


def find_resumable(directory: str | Path, warn: Callable[[str], None]) -> tuple[Path, dict]:
    """The newest checkpoint in ``directory`` that verifies, and its state.

    Candidates come from the manifest, newest first (or, without a readable manifest, from the
    checkpoint files present, newest first); each one that fails its checksum or cannot be read
    is skipped with a warning naming it. None left: CheckpointError.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is not None:
        candidates = [directory / e["file"] for e in reversed(manifest["checkpoints"])]
    else:
        if (directory / MANIFEST).exists():
            warn(f"warning: '{directory / MANIFEST}' cannot be read; looking at the checkpoint files instead")
        files = [p for p in directory.iterdir() if CKPT_RE.match(p.name)] if directory.is_dir() else []
        candidates = sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True)
        if not candidates and (directory / "last.pt").is_file():
            candidates = [directory / "last.pt"]
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warn(f"warning: skipping checkpoint '{path}': {e}")
    raise CheckpointError(f"no checkpoint to resume in '{directory}' (none verifies or none was written); "
                          "check --run-dir, or drop --resume to start a new run")
