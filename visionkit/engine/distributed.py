"""Multi-process training on torch.distributed, as launched by ``torchrun``.

torchrun starts one process per device and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); :func:`setup` joins
the group from those (NCCL on CUDA, one device per process; gloo on CPU). Without them (a plain
``visionkit train``) everything here is a no-op and the trainer runs exactly as one process.

Conventions the trainer relies on:

- ``data.batch_size`` is the *global* batch: each of the W processes loads ``batch_size / W``
  samples per step, so a run's optimisation does not change with the number of processes.
- Rank 0 alone writes (run directory, logs, TensorBoard, checkpoints); the others compute the
  same decisions (best checkpoint, early stopping) from the same reduced metrics.
- Decisions one rank takes alone (a stop signal, a non-finite loss, the checkpoint to resume)
  are made common with a collective, since a rank that leaves a collective out hangs the others.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from visionkit.data.build import EpochSampler
from visionkit.engine.checkpoint import CKPT_RE, find_resumable, load_checkpoint
from visionkit.errors import ConfigError, VisionKitError


class Group:
    """This process's place in the group: ``rank`` of ``world`` (``world == 1``: no group)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (identity with one process) ---------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list | None:
        """Every rank's ``obj`` in rank order on rank 0; None elsewhere."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def max(self, *values: int) -> list[int]:
        """The element-wise maximum of ``values`` over the ranks (one all-reduce)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64, device=self._device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on rank 0 only; its result on every rank. A VisionKitError there is raised
        on every rank with the same message, so no rank waits for one that has failed."""
        if not self.enabled:
            return fn()
        if self.is_main:
            try:
                result = fn()
            except VisionKitError as e:
                self.broadcast(("error", type(e), str(e)))
                raise
            return self.broadcast(("ok", result))[1]
        outcome = self.broadcast(None)
        if outcome[0] == "error":
            raise outcome[1](outcome[2])
        return outcome[1]

    def main_first(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0, then on the others (rank 0 writes ``split.json``, they read it)."""
        if not self.enabled:
            return fn()
        result = []
        self.on_main(lambda: result.append(fn()))  # only the outcome travels, not the result
        return result[0] if self.is_main else fn()

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank: without SyncBN each
        rank's statistics drift apart, and rank 0's are the ones its checkpoint keeps."""
        if self.enabled:
            for b in module.buffers():
                dist.broadcast(b.data, src=0)

    @property
    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")


#: the group of this process; set once by :func:`setup`
_GROUP = Group()


def is_main() -> bool:
    """True in one process of a torchrun group (rank 0), and in a process started without it."""
    return _GROUP.is_main


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets its variables) with
    more than one process in the group."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> tuple[Group, torch.device]:
    """Join the group torchrun describes (once per process) and return it with this rank's device:
    ``cuda:LOCAL_RANK`` on CUDA (NCCL), the given CPU device otherwise (gloo)."""
    global _GROUP
    if not launched():
        return _GROUP, device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK is {local_rank} but this machine has {torch.cuda.device_count()} "
                              "CUDA device(s); start at most that many processes per node (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("VISIONKIT_DIST_TIMEOUT", "1800")))
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        store = _attempt_store(world, timeout)
        if store is not None:
            kwargs.update(store=store, rank=rank, world_size=world)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout, **kwargs)
        atexit.register(_leave)
    _GROUP = Group(rank, world, local_rank)
    return _GROUP, device


def _attempt_store(world: int, timeout: timedelta):
    """torchrun's own store under a prefix of this attempt (``--max-restarts``), or None.

    The agent keeps one store across restarts, and a restarted group that joins under the same
    keys reads the dead processes' addresses (gloo then fails with "Connection refused"); a
    prefix per attempt gives every attempt fresh keys."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"/visionkit/attempt_{restart_count()}", store)


def _leave() -> None:
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def shutdown() -> None:
    """Leave the group together at the end of a successful command, while Python is still whole.

    The DDP reducer and gloo's worker threads hold references to the process group and to
    tensors; left to the interpreter's finalization they are destroyed in an order that varies
    from run to run, and a gloo thread that then needs the GIL aborts the process ("terminate
    called without an active exception", SIGABRT: torchrun reports the rank as failed after a
    finished run). Collecting them first, waiting for every rank, then destroying the group
    ends each process cleanly; the barrier also keeps the rank whose agent hosts the rendezvous
    store from leaving while the others still use it. Not for failure paths: a barrier there
    would wait for ranks that are gone (the atexit hook destroys the group without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def restart_count() -> int:
    """How many times torchrun restarted this group (``--max-restarts``); 0 on the first start."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def restarted_run(run_dir: str | Path | None) -> bool:
    """True when torchrun restarted the group after a failure and ``run_dir`` is the run it was
    training: the restarted processes then resume it instead of refusing to clobber it."""
    return run_dir is not None and restart_count() > 0 and Path(run_dir).is_dir()


def has_checkpoint(run_dir: str | Path) -> bool:
    directory = Path(run_dir) / "checkpoints"
    return directory.is_dir() and any(CKPT_RE.match(p.name) for p in directory.iterdir())


def find_resumable_everywhere(group: Group, directory: Path, warn: Callable[[str], None]) -> tuple[Path, dict]:
    """The checkpoint rank 0 picks (the newest that verifies), loaded on every rank: each rank
    choosing for itself could pick different files while rank 0 is pruning or a file is corrupt."""
    state: dict = {}

    def pick() -> str:
        path, state["state"] = find_resumable(directory, warn)
        return str(path)

    path = Path(group.on_main(pick))  # only the path travels
    return path, state["state"] if group.is_main else load_checkpoint(path)


def local_batch(global_batch: int, world: int, key: str = "data.batch_size") -> int:
    """The per-process share of a global batch; it must divide evenly so every process's loss
    has the same weight in the averaged gradient (exactly the one-process gradient)."""
    if global_batch % world:
        raise ConfigError(f"'{key}' is {global_batch}, the global batch over {world} processes, and must be "
                          f"a multiple of {world}; use {max(world, global_batch // world * world)} or "
                          f"{(global_batch // world + 1) * world}")
    return global_batch // world


class DistributedEpochSampler(EpochSampler):
    """This rank's share of :class:`EpochSampler`'s order: positions ``rank, rank + W, ...``.

    The order is padded to a multiple of W with its first positions (as torch's
    DistributedSampler does), so every rank has the same number of batches. Rank r's k-th batch
    of ``b`` items holds ``order[k b W + r :: W]`` of the global batch ``order[k b W : (k+1) b W]``:
    the global batches are exactly those of one process with batch ``b W``. ``start`` counts this
    rank's positions, so a resume skips the same batches on every rank.
    """

    def __init__(self, size: int, seed: int, rank: int, world: int, shuffle: bool = True):
        super().__init__(size, seed, shuffle)
        self.rank, self.world = rank, world
        self.per_rank = -(-size // world)

    def order(self) -> list[int]:
        full = super().order()
        full += full[:self.per_rank * self.world - len(full)]
        return full[self.rank::self.world]

    def __len__(self) -> int:
        return self.per_rank - self.start


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation indices ``rank, rank + W, ...`` without padding: every sample is scored once
    over the group, so the reduced metrics equal one process's (DistributedSampler would repeat
    samples to even out the shards)."""

    def __init__(self, size: int, rank: int, world: int):
        self.size, self.rank, self.world = size, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.size, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))


class LossForward(nn.Module):
    """``forward(batch) = task.loss(batch)``: DistributedDataParallel synchronises gradients
    through ``forward`` only, and a Task computes its loss in ``loss``."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def forward(self, batch: dict) -> dict:
        return self.task.loss(batch)


def wrap_for_training(task: nn.Module, group: Group, device: torch.device, sync_bn: bool) -> nn.Module | None:
    """Under torchrun, the task's loss under DistributedDataParallel (with SyncBN when asked),
    which the training step calls instead of ``task.loss``; None in one process."""
    if not group.enabled:
        return None
    # train.sync_bn, or model.backbone.norm: sync_batch (torch's SyncBatchNorm, which DDP refuses on CPU)
    if sync_bn or any(isinstance(m, nn.SyncBatchNorm) for m in task.modules()):
        from visionkit.engine.sync_bn import convert_sync_batchnorm

        convert_sync_batchnorm(task, device)
    ids = [device.index] if device.type == "cuda" else None
    # parameters are broadcast from rank 0 here, so every rank starts from the same weights
    return nn.parallel.DistributedDataParallel(LossForward(task), device_ids=ids)


def loader_args(size: int, cfg, train: bool, group: Group) -> dict:
    """``sampler`` and per-process ``batch_size`` of a loader under torchrun (none otherwise).
    Training: :class:`DistributedEpochSampler` with the global batch split evenly; evaluation:
    :class:`ShardSampler` with the global evaluation batch split (rounded up)."""
    if not group.enabled:
        return {}
    d = cfg.data
    if train:
        return {"sampler": DistributedEpochSampler(size, cfg.train.seed, group.rank, group.world),
                "batch_size": local_batch(d.batch_size, group.world)}
    return {"sampler": ShardSampler(size, group.rank, group.world),
            "batch_size": -(-(d.eval_batch_size or d.batch_size) // group.world)}


def agree_on_batch(group: Group, skip: bool, finite: bool) -> tuple[bool, bool]:
    """(skip, finite) for the whole group: a batch that any rank could not read is skipped by
    all, a loss that is non-finite on any rank is non-finite for all -- every rank steps or none
    does, since a rank that leaves DDP's gradient all-reduce out hangs the others."""
    any_skip, any_bad = group.max(int(skip), int(not skip and not finite))
    return bool(any_skip), not any_skip and not any_bad


def reduce_evaluation(group: Group, evaluator, bad: list) -> tuple[dict, Any, list]:
    """(metrics, evaluator, unreadable samples) of the whole split from the ranks' shards: rank 0
    merges the evaluators (exactly: counts add up, per-sample results go back in sample order)
    and computes the metrics, which every rank receives. Rank 0's evaluator holds the merged
    state (details, detections json); the others keep their own shard."""
    shards = group.gather((evaluator, bad))
    outcome = None
    if group.is_main:
        evaluator.merge([e for e, _ in shards])
        bad = [x for _, b in shards for x in b]
        outcome = (evaluator.compute(), bad)
    metrics, bad = group.broadcast(outcome)
    return metrics, evaluator, bad


def gradient_sync(ddp, sync: bool):
    """The context of one batch's forward and backward: DDP's ``no_sync`` when ``sync`` is false
    (gradient accumulation: the ranks' gradients stay local until the window's last batch), a
    no-op otherwise and outside torchrun."""
    if not sync and isinstance(ddp, nn.parallel.DistributedDataParallel):
        return ddp.no_sync()
    return contextlib.nullcontext()


def average_gradients(group: Group, params) -> None:
    """Average the gradients of ``params`` over the ranks (one all-reduce of them flattened): for
    an accumulation window whose closing batch, the one DDP would have averaged in, was skipped
    on every rank. A parameter without a gradient takes zeros, so every rank sends the same sizes."""
    if not group.enabled:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= group.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_losses(group: Group, losses: dict, total: torch.Tensor) -> tuple[dict[str, float], float]:
    """The loss terms and total averaged over the ranks (one all-reduce): with equal per-rank
    batches, the loss of the global batch, as one process logs it."""
    t = torch.stack([v.detach().float() for v in losses.values()] + [total.detach().float()]).to(group._device)
    dist.all_reduce(t)
    mean = (t / group.world).tolist()
    return dict(zip(losses, mean[:-1])), mean[-1]

