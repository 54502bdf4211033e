"""Fault injection for the reliability tests: off (and free) unless ``VISIONKIT_FAULTS`` is set.

A kill test must strike at an exact point -- halfway through a checkpoint write, right after
optimizer step N -- which timing from outside cannot hit reliably. The points below let a test
pause the training process there (it then sends the real SIGKILL or SIGTERM from outside), or
make the disk report that it is full. Set, for example::

    VISIONKIT_FAULTS="pause_in_write=2,enospc_in_write=3,pause_after_step=7"
    VISIONKIT_FAULT_MARKER=/tmp/x/paused    # touched when a pause begins

``pause_in_write=K`` and ``enospc_in_write=K`` act in the K-th checkpoint write of the process
(1-based, manifests not counted); ``pause_after_step=N`` after optimizer step N. A pause lasts
until the process is killed, the test deletes the marker, or, for ``pause_after_step``, the
process receives SIGTERM/SIGINT (so the signal's checkpoint can be tested); at most 120 s.
``kill_after_step=N`` makes the process SIGKILL itself after optimizer step N (before that step's
checkpoint), on the first start only (torchrun's ``TORCHELASTIC_RESTART_COUNT`` 0), so a
restarted group runs through.

Under torchrun, ``VISIONKIT_FAULT_RANK=R`` limits every fault to the process of rank R.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

_writes = 0


def _faults() -> dict[str, int]:
    rank = os.environ.get("VISIONKIT_FAULT_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return {}
    spec = os.environ.get("VISIONKIT_FAULTS", "")
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, value = item.partition("=")
        out[name] = int(value or 1)
    return out


def _pause(until: Callable[[], bool] = lambda: False) -> None:
    marker = os.environ.get("VISIONKIT_FAULT_MARKER")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not until():
        if marker and not Path(marker).exists():  # the test removed it: go on
            return
        time.sleep(0.02)


def in_checkpoint_write(tmp: Path) -> None:
    """Called once a checkpoint's temp file holds half its bytes."""
    global _writes
    faults = _faults()
    if not faults:
        return
    _writes += 1
    if faults.get("enospc_in_write") == _writes:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    if faults.get("pause_in_write") == _writes:
        _pause()


def after_step(global_step: int, stop_requested: Callable[[], bool]) -> None:
    """Called after every optimizer step."""
    if not os.environ.get("VISIONKIT_FAULTS"):
        return
    faults = _faults()
    if faults.get("pause_after_step") == global_step:
        _pause(stop_requested)
    if faults.get("kill_after_step") == global_step and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        os.kill(os.getpid(), signal.SIGKILL)
