"""From the ``data`` config section to train/val/test datasets and loaders.

A registered dataset source returns either the data set's own splits or one pool of samples with
a label per sample; a pool is split once, stratified and seeded, and the split is saved as
``split.json`` in the run directory so resume and eval score exactly the same samples.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from visionkit.data.collate import collate_samples
from visionkit.data.splits import load_split, save_split, stratified_split
from visionkit.errors import DataError
from visionkit.registry import DATASETS, TASKS

SPLITS = ("train", "val", "test")


@dataclass
class Source:
    """What a dataset builder returns: own ``splits`` or one ``pool`` with ``targets`` to split."""

    classes: list[str]
    splits: dict[str, Dataset] | None = None
    pool: Dataset | None = None
    targets: list[int] | None = None
    info: dict = field(default_factory=dict)
    #: a data set with own splits: the file or folder that holds one, "{split}" standing for its
    #: name (the builder knows its layout); a pool is split by data.split instead
    split_home: str = ""

    def where_split(self, split: str) -> str:
        """Where ``split`` would come from for this kind of data set: the fix for a missing one."""
        if self.splits is None:
            return (f"the samples are split by data.split.ratios (train, val, test shares) or data.split.counts; "
                    f"give {split} a share above 0")
        home = self.split_home.replace("{split}", split) if self.split_home else f"a '{split}' split of its own"
        return f"this data set keeps its own splits; {split} would be {home}"

    def no_split(self, split: str) -> str:
        return f"the data set has no '{split}' split: {self.where_split(split)}"


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, index): augmentation of a sample is the
    same whatever worker, batch position or resume produced it."""
    digest = hashlib.blake2b(struct.pack("<qqq", seed, epoch, index), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def describe_bad(dataset: Dataset, index: int, error: Exception | None = None) -> tuple[str, str]:
    """(path, reason) of an unreadable sample: asks the first dataset down the ``.base`` chain
    that implements ``describe_bad(index)`` (ImageFolderDataset does)."""
    ds = dataset
    while ds is not None:
        if hasattr(ds, "describe_bad"):
            path, reason = ds.describe_bad(index)
            return path, str(error) if error is not None else reason
        ds = getattr(ds, "base", None)
    return f"sample {index}", str(error) if error is not None else "unreadable"


#: how many other samples a training item tries when its own is unreadable (data.on_error: skip)
REPLACEMENT_TRIES = 8


class SplitView(Dataset):
    """The samples ``indices`` of ``base`` with the task's transform.

    Training items arrive as ``(epoch, position)`` from :class:`EpochSampler`; the random
    augmentation of each is seeded from (seed, epoch, sample index) inside a forked RNG, so it is
    reproducible without touching the global RNG of the process.

    With ``on_error="skip"`` an unreadable training sample is replaced by another one of the
    split, chosen by a hash of (seed, epoch, index, try) -- so batches keep their size and two
    runs stay equal, without drawing from any global RNG -- and each training item carries
    ``bad_samples``: the ``(path, reason)`` pairs it met, which the trainer writes to
    ``bad_samples.jsonl``. Evaluation items that cannot be read become ``{"bad_samples": [...]}``
    markers, which collation takes out of the batch (and the trainer logs).
    """

    def __init__(self, base: Dataset, indices: list[int] | None, transform: Callable, seed: int = 0,
                 on_error: str = "raise"):
        self.base = base
        self.indices = list(range(len(base))) if indices is None else list(indices)
        self.transform = transform
        self.seed = seed
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.indices)

    def _read(self, index: int):
        """The base sample, or ``(None, (path, reason))`` when it is unreadable and skipped."""
        try:
            sample = self.base[index]
        except DataError as e:
            if self.on_error != "skip":
                raise
            return None, describe_bad(self.base, index, e)
        return (sample, None) if sample is not None else (None, describe_bad(self.base, index))

    def __getitem__(self, item):
        epoch, pos = item if isinstance(item, tuple) else (None, item)
        index = self.indices[pos]
        sample, bad = self._read(index)
        if epoch is None:  # evaluation: an unreadable sample is left out, but named
            return {"bad_samples": [bad]} if sample is None else self.transform(sample)
        met = []
        for attempt in range(1, REPLACEMENT_TRIES + 1):
            if sample is not None:
                break
            met.append(bad)
            index = self.indices[sample_seed(self.seed, epoch, index * REPLACEMENT_TRIES + attempt) % len(self)]
            sample, bad = self._read(index)
        if sample is None:
            return None
        gen = torch.default_generator  # the CPU generator the v2 transforms draw from
        state = gen.get_state()
        try:
            # gen.manual_seed, not torch.manual_seed: the latter also reseeds every accelerator,
            # far dearer per sample
            gen.manual_seed(sample_seed(self.seed, epoch, index))
            out = self.transform(sample)
        finally:
            gen.set_state(state)
        if self.on_error == "skip" and isinstance(out, dict):
            out["bad_samples"] = met
        return out


class DecodedCache(Dataset):
    """Keeps the decoded samples ``indices`` of ``base`` in memory, filled once in the main process
    before the workers start, so workers share the pages (fork) and no epoch decodes a file twice.

    Worth it for small images, where decoding costs as much as the rest of the pipeline; the
    ``data.cache`` option bounds it by the estimated size. Other indices are read from ``base``.
    """

    def __init__(self, base: Dataset, indices=None):
        self.base = base
        indices = range(len(base)) if indices is None else indices
        self.items = {i: base[i] for i in indices}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        item = self.items[i] if i in self.items else self.base[i]
        return None if item is None else {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                          for k, v in item.items()}

    def describe_bad(self, index: int) -> tuple[str, str]:
        return describe_bad(self.base, index)


def maybe_cache(dataset: Dataset, mode, limit_bytes: float, indices=None) -> Dataset:
    """Wrap ``dataset`` in :class:`DecodedCache` when ``mode`` is true, or ``auto`` and the
    decoded samples (estimated from the first one) fit in ``limit_bytes``."""
    count = len(dataset) if indices is None else len(indices)
    if mode is False or count == 0:
        return dataset
    if mode == "auto":
        first = dataset[0 if indices is None else indices[0]]
        if first is None:
            return dataset
        per = sum(v.numel() * v.element_size() for v in first.values() if isinstance(v, torch.Tensor))
        if per * count > limit_bytes:
            return dataset
    return DecodedCache(dataset, indices)


class EpochSampler(Sampler):
    """Shuffles with a generator seeded by (seed, epoch) and yields ``(epoch, position)``.

    The order of an epoch is a pure function of the seed and the epoch number, so a resumed run
    sees the same order; ``start`` skips the positions an interrupted epoch already consumed.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self):
        for pos in self.order()[self.start:]:
            yield (self.epoch, pos)

    def __len__(self) -> int:
        return self.size - self.start


def build_source(cfg, *, write: bool = True) -> Source:
    """The configured data set's source. ``write=False``: a data set generated on first use (the
    built-in shapes) gives its ``outline`` (classes and info) instead, so reading a config
    (``visionkit info``) never writes data; the others only read, either way."""
    builder = DATASETS.get(cfg.data.dataset)
    outline = getattr(builder, "outline", None)
    return outline(cfg) if not write and outline is not None else builder(cfg)


def target_kind(cfg) -> str:
    """The targets the config's task reads from each sample (``Task.target_kind``): a data reader
    serves them, or refuses the task by what it reads, never by the task's name."""
    return TASKS.get(cfg.task).target_kind(cfg)


def split_meta(cfg, source: Source) -> dict:
    s = cfg.data.split
    return {"dataset": cfg.data.dataset, "num_samples": len(source.targets),
            "ratios": list(s.ratios), "counts": s.counts, "seed": s.seed}


def resolve_split(cfg, source: Source, run_dir: Path | None) -> dict[str, list[int]]:
    """The run's split: read from ``run_dir/split.json`` when present, else computed (and saved)."""
    meta = split_meta(cfg, source)
    path = Path(run_dir) / "split.json" if run_dir else None
    if path is not None and path.exists():
        return load_split(path, expected_meta=meta)
    s = cfg.data.split
    split = stratified_split(source.targets, ratios=tuple(s.ratios), counts=s.counts, seed=s.seed)
    if path is not None:
        save_split(path, split, meta)
    return split


def build_datasets(cfg, task_cls, run_dir: Path | None = None, splits: tuple[str, ...] = SPLITS,
                   source: Source | None = None) -> tuple[dict[str, SplitView], Source]:
    """Datasets for the requested ``splits`` with the task's train/eval transforms."""
    source = source or build_source(cfg)
    seed = cfg.train.seed
    mode, limit = cfg.data.cache, cfg.data.cache_limit_gb * 2**30
    out: dict[str, SplitView] = {}
    if source.splits is not None:
        for name in splits:
            if name in source.splits:
                data = maybe_cache(source.splits[name], mode, limit)
                out[name] = SplitView(data, None, task_cls.sample_transform(cfg, name == "train"), seed,
                                      cfg.data.on_error)
    else:
        split = resolve_split(cfg, source, run_dir)
        # decode only the samples of the requested splits (eval of the test split: just those)
        wanted = sorted(i for name in splits for i in split.get(name, []))
        pool = maybe_cache(source.pool, mode, limit, wanted)
        for name in splits:
            if split.get(name):
                out[name] = SplitView(pool, split[name], task_cls.sample_transform(cfg, name == "train"), seed,
                                      cfg.data.on_error)
    if "train" in splits and "train" not in out:
        raise DataError(f"data set '{cfg.data.root}' has no training samples; check data.split.ratios")
    return out, source


#: seconds a loader worker lives on after a SIGTERM, for the main process to finish its step,
#: save a checkpoint and shut the workers down itself
WORKER_TERM_GRACE = 120.0


def _worker_init(worker_id: int) -> None:
    """Ctrl-C, and a SIGTERM from a job scheduler (SLURM's scancel), `timeout` or `kill -TERM
    -PGID`, reach the whole process group; workers leave the stop to the main process, which
    saves a checkpoint before stopping them. A worker that died first would make torch's loader
    raise in the main process, possibly in the middle of a step, and lose that checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)


def _worker_sigterm(signum, frame) -> None:
    # not ignored outright: a worker that never hears from the main process again (a hung one,
    # which the loader's own shutdown then signals) still ends after the grace period
    timer = threading.Timer(WORKER_TERM_GRACE, os._exit, args=(1,))
    timer.daemon = True
    timer.start()


def build_loader(dataset: SplitView, cfg, train: bool, device: torch.device, *,
                 sampler: Sampler | None = None, batch_size: int | None = None) -> DataLoader:
    """The split's loader; ``sampler`` and ``batch_size`` replace the defaults (one process's)
    for a process of a torchrun group (see visionkit.engine.distributed.loader_args)."""
    d = cfg.data
    workers = d.num_workers
    # the loader's own generator: creating an iterator then draws its worker seed from it, not
    # from the global RNG, whose stream a resumed run must continue exactly
    kwargs = {"num_workers": workers, "collate_fn": collate_samples,
              "generator": torch.Generator().manual_seed(0),
              "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}
    if workers > 0:
        kwargs["prefetch_factor"] = 4
        kwargs["worker_init_fn"] = _worker_init
        # a hung worker fails the run after this long instead of stalling it forever (a killed
        # one is noticed by the loader itself within seconds)
        kwargs["timeout"] = d.worker_timeout
    if train:
        sampler = sampler or EpochSampler(len(dataset), seed=cfg.train.seed, shuffle=True)
        return DataLoader(dataset, batch_size=batch_size or d.batch_size, sampler=sampler, drop_last=False,
                          **kwargs)
    return DataLoader(dataset, batch_size=batch_size or d.eval_batch_size or d.batch_size, sampler=sampler,
                      shuffle=False, **kwargs)
