"""What a run sets up before its first step: device, mixed precision, seeds, RNG state, run directory.

Small functions usable without the trainer (eval, predict and the benchmark use them too).
"""

from __future__ import annotations

import contextlib
import os
import random
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from visionkit.errors import ConfigError
from visionkit.schema import check_device_name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(name)  # load_config has checked it; a Config built by hand has not
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'train.device' is '{name}' but no CUDA device is available; use auto or cpu")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: CUDA cards with bf16 (Ampere and later), CPUs
    with AVX-512 BF16 or AMX. Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, since 2.2
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """``train.amp`` as run: ``auto`` is bf16 where :func:`native_bf16`, else none; plus the
    words the trainer logs about it."""
    if amp != "auto":
        return amp, f"amp {amp}"
    if native_bf16(device):
        return "bf16", "amp bf16 (auto: native bf16 on this device)"
    return "none", "amp none (auto: no native bf16 on this device, so fp32)"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_deterministic_kernels(on: bool) -> None:
    """``train.deterministic``: the same run gives the same bits on a GPU too.

    cuDNN's autotuner and some CUDA kernels (atomic adds in backward passes) differ from run to run;
    this picks deterministic ones, which can be slower. cuBLAS needs a fixed workspace for that, set
    through its environment variable before the first matrix product. Ops with no deterministic CUDA
    kernel (RoIAlign's backward among them) warn rather than stop the run.
    """
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state() -> dict:
    """Every RNG the run draws from, as tensors and plain values (loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def new_run_dir(cfg) -> Path:
    stem = Path(cfg.source).stem if cfg.source else "run"
    base = Path("runs") / stem / datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def stop_workers(loader) -> None:
    """Stop a DataLoader's persistent workers now. Left to the interpreter's exit they get a
    SIGTERM, which they answer only after a grace period (see data.build); stopping them also
    unregisters them from torch's SIGCHLD handler (otherwise it raises again, as noise, at exit)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        with contextlib.suppress(Exception):  # a worker that already died: nothing left to stop
            iterator._shutdown_workers()
        loader._iterator = None


def prepare_task(task, cfg, device: torch.device) -> bool:
    """Put ``task`` on ``device`` in the layout and compiled form ``train`` asks for; returns
    whether batches go channels-last too."""
    task.to(device)
    # channels_last lets cuDNN run convolutions on tensor cores without transposes; on CPU
    # oneDNN gains little or nothing for our models, so auto keeps the default layout there
    cl = cfg.train.channels_last
    channels_last = device.type == "cuda" if cl == "auto" else bool(cl)
    if channels_last:
        task.to(memory_format=torch.channels_last)
    if cfg.train.compile:  # in place (nn.Module.compile): state-dict keys and checkpoints unchanged
        for module in task.compile_targets():
            module.compile()
    return channels_last


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The forward pass's mixed-precision context (``train.amp``); a no-op for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
