"""One training process per run directory: an advisory lock on ``<run dir>/.lock``, and the checks
that a new run does not clobber another's files.

``fcntl.flock`` belongs to the open file, so the kernel drops it when the process ends however it
ends (a SIGKILL included): a killed run never blocks its own ``--resume``. The file's text names
the holder for the message a second process gets. Under torchrun rank 0 holds it.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path

from visionkit.errors import ConfigError, RunDirInUse

try:
    import fcntl
except ImportError:  # Windows: no flock; the run directory is not guarded there
    fcntl = None


class RunDirLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunDirInUse` naming the process that has it."""
        if self.held or fcntl is None:
            return
        f = open(self.path, "a+")  # noqa: SIM115 (held open while the lock is held; closed by release())
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunDirInUse(
                f"run directory '{self.path.parent}' is in use by {holder}; wait for that run to end (or stop "
                "it), or choose another --run-dir (nothing was changed)") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on host {socket.gethostname()} "
                f"(since {datetime.now().isoformat(timespec='seconds')})\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def claim_run_dir(run_dir: Path, resumed: bool) -> tuple[Path, RunDirLock]:
    """``run_dir`` and its lock, taken at once when the directory exists; a new run refuses one
    that already holds files (before anything is read or written, so nothing is changed)."""
    run_dir, lock = Path(run_dir), RunDirLock(run_dir)
    if run_dir.exists():
        if not resumed and any(run_dir.iterdir()):
            raise ConfigError(f"run directory '{run_dir}' already holds files; pass --resume to "
                              "continue that run, or choose another --run-dir (nothing was changed)")
        lock.acquire()  # a run directory in use by another process is left alone
    return run_dir, lock


def create_run_dir(run_dir: Path, lock: RunDirLock, cfg) -> None:
    """Make the run directory, take its lock and write the resolved ``config.yaml`` (never rewritten)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        cfg_path.write_text(cfg.to_yaml())
