"""The shared trainer: a short loop (fit / validate / test) with hooks for everything else.

It never asks which task it runs: the Task gives losses, predictions, an evaluator and drawings.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from visionkit.config import flatten, suggestion
from visionkit.data.build import SPLITS, build_datasets, build_loader, build_source
from visionkit.engine import distributed, faults
from visionkit.engine.checkpoint import CheckpointManager, load_checkpoint
from visionkit.engine.hooks import CheckpointHook, Hook, LoggerHook, MetricsWriter
from visionkit.engine.loading import model_settings_hint as _model_settings_hint
from visionkit.engine.runlog import BadSampleLog, truncate_metrics
from visionkit.engine.optim import build_optimizer, build_scheduler, scaled_lr
from visionkit.errors import CheckpointError, ConfigError, DataError, VisionKitError
from visionkit.registry import TASKS
from visionkit.schema import check_device_name


# what torch's DataLoader raises when a worker dies (killed for memory, segfault) or hangs
_LOADER_FAILURE = re.compile(r"DataLoader (worker \(pid|timed out)")


class NonFiniteLossError(VisionKitError):
    """The loss became NaN or Inf; nothing holding it was saved."""


class TrainingInterrupted(VisionKitError):
    """SIGTERM or SIGINT stopped the run after a checkpoint was saved; ``--resume`` continues it."""

    exit_code = 130


def _nonfinite_stop(where: str, terms: str) -> NonFiniteLossError:
    """The error of ``train.on_nonfinite: stop``, whether the loss was read at once or later."""
    return NonFiniteLossError(
        f"non-finite loss at {where} ({terms}); no checkpoint was written with it; lower "
        "train.optimizer.lr or set train.clip_grad_norm (or train.on_nonfinite: skip)")


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


class Trainer:
    """Builds data, task, optimizer and hooks from a config and runs them.

    ``Trainer(cfg).fit()`` trains into a new run directory (or ``run_dir``); ``resume=True``
    continues ``run_dir`` from ``checkpoints/last.pt``, ``resume=PATH`` from that checkpoint.
    ``Trainer(cfg, checkpoint=PATH).evaluate("test")`` scores a trained model.
    """

    def __init__(self, cfg, run_dir: str | Path | None = None, *, resume: bool | str | Path = False,
                 checkpoint: str | Path | None = None, hooks: list[Hook] | None = None,
                 splits: tuple[str, ...] = SPLITS, log=print):
        self.cfg = cfg
        # under torchrun: this process's rank and device (cuda:LOCAL_RANK); rank 0 speaks for all
        self.group, self.device = distributed.setup(resolve_device(cfg.train.device))
        self.log = log if self.group.is_main else (lambda *a, **k: None)
        self.task_cls = TASKS.get(cfg.task)
        self._resume_state: dict | None = None
        # torchrun restarted the group after a failure (--max-restarts): continue the run
        self.restarted = checkpoint is None and not resume and distributed.restarted_run(run_dir)
        if self.restarted and distributed.has_checkpoint(run_dir):
            resume = True
        if self.group.enabled and checkpoint is None:
            distributed.local_batch(cfg.data.batch_size, self.group.world)  # refuse an uneven split early
        self.resume_path, self.run_dir = self._locate(run_dir, resume, checkpoint)
        self.extra_hooks = list(hooks or [])
        seed_everything(cfg.train.seed)
        use_deterministic_kernels(cfg.train.deterministic)

        if checkpoint is None:
            self.run_dir = self.group.on_main(self._check_run_dir)  # refuse to clobber before anything is read
        # everything that can fail on the user's data or weights runs before the run directory
        # is made, so a failed start leaves nothing behind
        source = build_source(cfg)
        self.classes = source.classes
        self.task = self.task_cls.from_config(cfg, {**source.info, "classes": self.classes}).to(self.device)
        if checkpoint is None:
            self._check_monitor()
        # channels_last lets cuDNN run convolutions on tensor cores without transposes; on CPU
        # oneDNN gains little or nothing for our models, so auto keeps the default layout there
        cl = cfg.train.channels_last
        self.channels_last = self.device.type == "cuda" if cl == "auto" else bool(cl)
        if self.channels_last:
            self.task.to(memory_format=torch.channels_last)
        if cfg.train.compile:  # in place (nn.Module.compile): state-dict keys and checkpoints unchanged
            for module in self.task.compile_targets():
                module.compile()
        if cfg.model.backbone.weights and self.resume_path is None:
            self._load_pretrained()
        if checkpoint is None:
            self.group.on_main(self._create_run_dir)
            split_dir = self.run_dir
        else:  # evaluation reads the run's split.json when there is one and writes nothing
            split_dir = self.run_dir if (self.run_dir / "split.json").exists() else None
            if split_dir is None:
                self.log(f"note: no split.json in '{self.run_dir}'; splitting the data with data.split.seed")

        def datasets():  # rank 0 first: it writes split.json, which the others then read
            own = split_dir if self.group.is_main or (split_dir and (split_dir / "split.json").exists()) else None
            return build_datasets(cfg, self.task_cls, own, splits, source=source)[0]

        self.datasets = self.group.main_first(datasets)
        self.has_val = "val" in self.datasets
        self.monitor = self._monitor()
        self.epoch = 0  # completed epochs
        self.global_step = 0  # optimizer steps
        self.step_in_epoch = 0
        self.best = {"metric": self.monitor[0], "value": None, "epoch": None}
        self.stale = 0
        self.improved = False
        self.should_stop = False
        self.stop_signal: int | None = None  # SIGTERM/SIGINT received; checkpoint and stop
        self.nonfinite_streak = 0  # non-finite losses in a row (train.on_nonfinite: skip)
        # On a GPU, reading the loss (finite? its value for the log) after every step makes the
        # CPU wait for the GPU, which then idles while the next step is queued (10 % of a ResNet-50
        # step on an H200). With train.on_nonfinite: stop nothing needs the answer at once: the
        # steps' losses stay on the device and are read together every log_every steps and
        # before any checkpoint, so a non-finite loss still stops the run before it is saved.
        self.defer_reads = (self.device.type == "cuda" and cfg.train.on_nonfinite == "stop"
                            and not self.group.enabled)
        self._unread: list[dict] = []  # steps whose losses are still on the device
        self.counters = {"skipped_steps": 0, "bad_samples": 0}  # logged with every train record
        self.last_metrics: dict = {}
        self._loaders: dict = {}
        amp, self.amp_said = resolve_amp(cfg.train.amp, self.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.optimizer = self.scheduler = None
        self.ddp = None  # the task under DistributedDataParallel, under torchrun
        if checkpoint is not None:
            self.load_weights(checkpoint)

    # -- set-up ------------------------------------------------------------------------------------
    def _locate(self, run_dir, resume, checkpoint) -> tuple[Path | None, Path | None]:
        """(checkpoint to resume from, run directory) from the CLI's --run-dir/--resume/--checkpoint."""
        if resume:
            if resume is True:
                if run_dir is None:
                    raise ConfigError("--resume without a path needs --run-dir (the run to continue)")
                if not (Path(run_dir) / "checkpoints").is_dir():
                    raise CheckpointError(f"no checkpoint to resume in '{run_dir}' (it has no checkpoints/); "
                                          "check --run-dir, or drop --resume to start a new run")
                # the newest checkpoint that verifies; corrupt newer ones are named and skipped
                # (rank 0 picks it, every rank loads that one)
                path, self._resume_state = distributed.find_resumable_everywhere(
                    self.group, Path(run_dir) / "checkpoints", self.log)
            else:
                path = Path(resume)
                self._resume_state = load_checkpoint(path)  # fails here, naming the path
            return path, Path(run_dir) if run_dir else path.parent.parent
        if checkpoint is not None:  # evaluation: read the run's split.json, write nothing
            ckpt = Path(checkpoint)
            return None, Path(run_dir) if run_dir else ckpt.parent.parent
        return None, Path(run_dir) if run_dir else None

    def _check_monitor(self) -> None:
        """A ``train.monitor`` the task's evaluator cannot give fails now, not after an epoch."""
        name = self.cfg.train.monitor
        known = self.task.evaluator().metric_names() if name != "auto" else None
        if known is None:
            return
        known = sorted(known | {"bad_samples"})  # the trainer adds the unreadable-sample count
        if name not in known:
            raise ConfigError(f"{self.cfg.where('train.monitor')}: 'train.monitor' is '{name}', which is not "
                              f"a validation metric of task {self.cfg.task}; choose one of "
                              f"{', '.join(known)}{suggestion(name, known)}")

    def _monitor(self) -> tuple[str, str]:
        name, mode = self.cfg.train.monitor, self.cfg.train.monitor_mode
        default_name, default_mode = self.task.monitor
        if name == "auto":
            name = default_name
        if mode == "auto":
            mode = default_mode if name == default_name else ("min" if "loss" in name else "max")
        return name, mode

    def _load_pretrained(self) -> None:
        from visionkit.models.weights import load_backbone_weights

        b = self.cfg.model.backbone
        report = load_backbone_weights(self.task, b.weights, skip=b.weights_skip, task=self.cfg.task,
                                       backbone_name=b.name)
        self.log(f"loaded backbone {report.summary()}")

    def _build_optim(self) -> None:
        t = self.cfg.train
        self.steps_per_epoch = len(self.loader("train"))
        self.optim_steps_per_epoch = math.ceil(self.steps_per_epoch / t.accumulate)
        self.optimizer = build_optimizer(self.task, t.optimizer)
        if t.scale_lr != "none":  # opt-in: lr for the global batch (data.batch_size x accumulate)
            lr = scaled_lr(self.cfg, self.log)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.ddp = distributed.wrap_for_training(self.task, self.group, self.device, t.sync_bn)
        self.scheduler = build_scheduler(self.optimizer, t.schedule, self.optim_steps_per_epoch, t.epochs)

    def loader(self, split: str):
        if split not in self._loaders:
            if split not in self.datasets:
                raise ConfigError(f"the data set has no '{split}' split (check data.split.ratios)")
            data, train = self.datasets[split], split == "train"
            self._loaders[split] = build_loader(data, self.cfg, train, self.device,
                                                **distributed.loader_args(len(data), self.cfg, train, self.group))
        return self._loaders[split]

    def _check_run_dir(self) -> Path:
        if self.run_dir is None:
            self.run_dir = new_run_dir(self.cfg)
        elif (self.resume_path is None and not self.restarted and self.run_dir.exists()
              and any(self.run_dir.iterdir())):
            raise ConfigError(f"run directory '{self.run_dir}' already holds files; pass --resume to "
                              "continue that run, or choose another --run-dir (nothing was changed)")
        return self.run_dir

    def _create_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.run_dir / "config.yaml"
        if not cfg_path.exists():
            cfg_path.write_text(self.cfg.to_yaml())

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.task.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best": dict(self.best),
            "stale": self.stale,
            "step_in_epoch": self.step_in_epoch,  # batches of the current epoch already trained
            "nonfinite_streak": self.nonfinite_streak,
            "counters": dict(self.counters),
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "meta": {"task": self.cfg.task, "backbone": self.cfg.model.backbone.name,
                     **self.task.metadata()},
        }

    def save_checkpoint(self, is_best: bool, mid_epoch: bool = False) -> Path:
        """Commit a checkpoint of the whole training state; mid-epoch ones also hold the
        sampler position (``step_in_epoch``), so a resume continues with the next batch."""
        for name, v in self.task.state_dict().items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise NonFiniteLossError(
                    f"parameter '{name}' holds NaN or Inf at epoch {self.epoch + 1} step {self.global_step}; "
                    "no checkpoint was written with it; lower train.optimizer.lr or set train.clip_grad_norm")
        if not self.group.enabled:
            return self.ckpt.save(self.state_dict(), self.epoch, self.global_step, is_best, mid_epoch)
        # rank 0 writes (with every rank's RNG state); the others go on once it is committed
        rngs = self.group.gather(rng_state())
        return self.group.on_main(lambda: self.ckpt.save({**self.state_dict(), "rng_ranks": rngs}, self.epoch,
                                                         self.global_step, is_best, mid_epoch))

    def load_weights(self, path: str | Path, state: dict | None = None) -> dict:
        """Load a checkpoint's model weights, refusing one made for another model."""
        state = state if state is not None else load_checkpoint(path, map_location="cpu")
        meta = state.get("meta", {})
        want = {"task": self.cfg.task, "backbone": self.cfg.model.backbone.name}
        for key, value in want.items():
            if meta.get(key) != value:
                raise CheckpointError(
                    f"checkpoint '{path}' was trained with {key} '{meta.get(key)}' but the config builds "
                    f"'{value}'; use the config the checkpoint was trained with (config.yaml in its run directory)"
                )
        if "classes" in meta and list(meta["classes"]) != list(self.classes):
            raise CheckpointError(
                f"checkpoint '{path}' was trained on classes {meta['classes']} but the data set has "
                f"{self.classes}; evaluate it on the data it was trained for"
            )
        result = self.task.load_state_dict(state["model"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"checkpoint '{path}' does not fit the model built from the config: "
                f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
                + _model_settings_hint(state.get("config"), self.cfg.model.to_dict(), self.task.added_settings)
            )
        return state

    def _restore(self) -> None:
        state = self.load_weights(self.resume_path, self._resume_state)
        self._resume_state = None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.best = dict(state["best"])
        self.stale = state["stale"]
        self.step_in_epoch = state.get("step_in_epoch", 0)
        self.nonfinite_streak = state.get("nonfinite_streak", 0)
        self.counters.update(state.get("counters", {}))
        ranks = state.get("rng_ranks")
        set_rng_state(ranks[self.group.rank] if ranks and len(ranks) == self.group.world else state["rng"])
        where = f" batch {self.step_in_epoch}" if self.step_in_epoch else ""
        self.log(f"resumed from {self.resume_path} at epoch {self.epoch}{where} (step {self.global_step})")
        self._note_changed_settings(state.get("config"))

    def _note_changed_settings(self, saved: dict | None) -> None:
        """A resume whose config differs from the checkpoint's says which keys changed and keeps
        the config as resumed beside the run's first one (config.yaml is never rewritten)."""
        if not saved:
            return
        before, now = flatten(saved), flatten(self.cfg.to_dict())
        changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
        if not changed:
            return
        shown = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        record = self.run_dir / f"config_resumed_step{self.global_step}.yaml"
        self.log(f"note: resuming with {len(changed)} setting(s) changed since the checkpoint: "
                 f"{shown}{more}; the config as resumed is in {record}")
        if any(k.startswith("train.optimizer.") for k in changed):
            self.log("note: train.optimizer changes do not apply on resume: the optimizer's learning rate "
                     "and hyper-parameters come from the checkpoint; start a new run (model.backbone.weights "
                     "can take the checkpoint) to train with others")
        if self.group.is_main:
            record.write_text(self.cfg.to_yaml())

    # -- the loop ----------------------------------------------------------------------------------
    def call(self, event: str, *args) -> None:
        for h in self.hooks:
            getattr(h, event)(self, *args)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: dict) -> dict:
        def move(v):
            if isinstance(v, torch.Tensor):
                return v.to(self.device, non_blocking=True)
            if isinstance(v, list):
                return [move(x) for x in v]
            if isinstance(v, dict):
                return {k: move(x) for k, x in v.items()}
            return v

        batch = self.task.preprocess({k: move(v) for k, v in batch.items()})
        images = batch.get("images")
        if self.channels_last and isinstance(images, torch.Tensor) and images.ndim == 4:
            batch["images"] = images.contiguous(memory_format=torch.channels_last)
        return batch

    def fit(self) -> dict:
        """Train for ``train.epochs``; returns the last validation metrics."""
        if self.optimizer is None:
            self._build_optim()
        t = self.cfg.train
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=t.keep_checkpoints)
        for stale in self.ckpt.remove_stale_temp_files() if self.group.is_main else []:
            self.log(f"removed '{stale}', left by a run killed while writing a checkpoint")
        if self.resume_path is not None:
            self._restore()
        if self.epoch >= t.epochs:
            self.log(f"run '{self.run_dir}' already finished {self.epoch}/{t.epochs} epochs; nothing to do")
            return {}
        resumed = self.resume_path is not None or self.restarted
        self.hooks = [CheckpointHook(t.early_stopping), *self.extra_hooks]
        if self.group.is_main:  # rank 0 alone writes the logs (the others compute the same decisions)
            if resumed:  # forget what the interrupted run logged after its checkpoint
                truncate_metrics(self.run_dir / "metrics.jsonl", self.global_step)
            writer = MetricsWriter(self.run_dir, purge_step=self.global_step + 1 if resumed else None)
            self.hooks.insert(0, LoggerHook(writer, t.log_every, t.progress and sys.stderr.isatty()))
        rank = f".rank{self.group.rank}" if not self.group.is_main else ""
        self.bad_log = BadSampleLog(self.run_dir / f"bad_samples{rank}.jsonl")
        self.log(f"run directory: {self.run_dir}")
        self.log(f"watch it with: tensorboard --logdir {self.run_dir}")
        n = {k: len(v) for k, v in self.datasets.items()}
        self.log(f"device {self.device}, {self.amp_said}; samples " + ", ".join(f"{k} {v}" for k, v in n.items()))
        if self.group.enabled:
            self.log(f"{self.group.world} processes (torchrun); data.batch_size {self.cfg.data.batch_size} is the "
                     f"global batch, {self.cfg.data.batch_size // self.group.world} per process")
        try:
            with self._stop_on_signals():
                self._fit_loop()
        except (RuntimeError, ConnectionError, EOFError) as e:
            # torch's loader: a worker died (killed for memory, a crash) or hung; a dead worker
            # shows as its message, or as a broken pipe while its batch was being received
            if isinstance(e, (ConnectionError, EOFError)) or _LOADER_FAILURE.search(str(e)):
                self._shutdown_loaders()
                raise self._loader_failed(e) from e
            raise
        finally:
            # stop the loader workers here, on every way out: left to the interpreter's exit they
            # get a SIGTERM, which they answer only after a grace period (see data.build)
            self._shutdown_loaders()
        return self.last_metrics

    def close(self) -> None:
        """Stop the data loader workers (``fit`` does it itself; call it after ``evaluate``)."""
        self._shutdown_loaders()

    def _shutdown_loaders(self) -> None:
        """Stop the surviving workers now, which also unregisters them from torch's SIGCHLD
        handler (otherwise it raises again, as noise, while the process exits)."""
        for loader in self._loaders.values():
            iterator = getattr(loader, "_iterator", None)  # persistent workers' iterator
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                with contextlib.suppress(Exception):
                    iterator._shutdown_workers()
        self._loaders.clear()

    def _fit_loop(self) -> None:
        """Epochs until ``train.epochs`` or a stop; then the final test."""
        t = self.cfg.train
        self.call("before_fit")
        while self.epoch < t.epochs and not self.should_stop:
            self.call("before_epoch")
            self.train_one_epoch()
            self.epoch += 1
            self.step_in_epoch = 0
            if self.has_val and (self.epoch % t.val_every == 0 or self.epoch == t.epochs):
                self.last_metrics = self.validate("val")
            self.call("after_epoch")  # saves the epoch's checkpoint
            self._agree_on_stop()
            if self.stop_signal is not None and self.epoch < t.epochs:
                self._interrupted()
        if t.final_test and "test" in self.datasets:
            self.final_test()
        self.call("after_fit")

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGTERM/SIGINT ask for a checkpoint at the next optimizer step, then a stop; a second
        SIGINT stops at once. Handlers are installed only in the main thread, and restored after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signum
            self.log(f"received {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping")

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _agree_on_stop(self) -> None:
        """Under torchrun a signal reaches one rank, or the ranks at different steps: all take
        the highest signal number any received (an all-reduce with MAX), so all stop together."""
        if self.group.enabled:
            signum = self.group.max(self.stop_signal or 0)[0]
            self.stop_signal = signum or None

    def _interrupted(self):
        name = signal.Signals(self.stop_signal).name
        self.call("after_fit")  # flushes and closes the logs
        raise TrainingInterrupted(
            f"stopped by {name} at epoch {self.epoch + 1} batch {self.step_in_epoch} (step {self.global_step}) "
            f"after saving a checkpoint; continue with: visionkit train CONFIG --run-dir {self.run_dir} --resume")

    def _loader_failed(self, error: Exception) -> DataError:
        return DataError(
            f"data loading failed at epoch {self.epoch + 1} batch {self.step_in_epoch + 1}: "
            f"{type(error).__name__}: {str(error).strip().splitlines()[0]}; the checkpoints are untouched, "
            "continue with --resume "
            "(a worker killed for memory: lower data.num_workers or data.batch_size)")

    def _on_nonfinite(self, losses: dict, elsewhere: bool = False) -> None:
        """Stop (default), or with ``train.on_nonfinite: skip`` drop the batch unless too many in a row.
        ``elsewhere``: this rank's loss is finite but another rank's is not (under torchrun)."""
        t = self.cfg.train
        terms = "on another process" if elsewhere else ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        where = f"epoch {self.epoch + 1} step {self.global_step}"
        self.nonfinite_streak += 1
        if t.on_nonfinite == "stop":
            raise _nonfinite_stop(where, terms)
        if self.nonfinite_streak >= t.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"non-finite loss at {where} ({terms}), {self.nonfinite_streak} batches in a row "
                f"(train.max_nonfinite_steps is {t.max_nonfinite_steps}); no checkpoint was written with "
                "it; lower train.optimizer.lr or set train.clip_grad_norm")
        self.counters["skipped_steps"] += 1
        self.log(f"warning: skipped a batch with a non-finite loss at {where} ({terms})")

    def _read_losses(self) -> None:
        """The deferred steps' losses, read in one device sync: a non-finite one stops the run
        (naming its step), the others go to the ``after_step`` hooks as if read at once."""
        unread, self._unread = self._unread, []
        if not unread:
            return
        wait = time.perf_counter()
        totals = torch.stack([u["total"].float() for u in unread])
        finite = torch.isfinite(totals).tolist()
        values = torch.stack([torch.stack([v.float() for v in u["losses"].values()]) for u in unread]).tolist()
        wait = time.perf_counter() - wait  # the GPU work still queued: booked to the last step
        unread[-1]["time"] += wait
        for u, ok, vals in zip(unread, finite, values):
            if not ok:
                terms = ", ".join(f"{k}={v:.4g}" for k, v in zip(u["losses"], vals))
                raise _nonfinite_stop(f"epoch {u['epoch'] + 1} step {u['step']}", terms)
        now = self.global_step
        try:  # the hooks see each step as it was (a log window closing there is logged at its step)
            for u, vals in zip(unread, values):
                self.global_step = u["after"]
                self.call("after_step", {"loss": sum(vals), "losses": dict(zip(u["losses"], vals)), "lr": u["lr"],
                                         "batch_size": u["batch_size"], "time": u["time"],
                                         "data_wait": u["data_wait"]})
        finally:
            self.global_step = now

    def train_one_epoch(self) -> None:
        t = self.cfg.train
        self.task.train()
        loader = self.loader("train")
        # a resumed epoch starts at the first batch the interrupted run had not trained on
        loader.sampler.set_epoch(self.epoch, self.step_in_epoch * loader.batch_size)
        end = time.perf_counter()
        accum = t.accumulate
        pending = False  # gradients accumulated since the last optimizer step
        synced = True  # under torchrun: the ranks' gradients have been averaged since that step
        for i, batch in enumerate(loader, start=self.step_in_epoch):
            start = time.perf_counter()
            data_wait = start - end
            if isinstance(batch, dict) and "bad_samples" in batch:
                self.bad_log.add(batch.pop("bad_samples"), self.epoch)
                self.counters["bad_samples"] = len(self.bad_log)
            stepped = finite = False
            closes = (i + 1) % accum == 0 or i + 1 == self.steps_per_epoch  # the optimizer steps after it
            # under torchrun, a batch that does not close an accumulation window keeps its
            # gradients local (DDP's no_sync): the closing batch's backward averages the sum once
            with distributed.gradient_sync(self.ddp, closes):
                if batch is not None:  # None: every sample of the batch was unreadable (on_error: skip)
                    batch = self.to_device(batch)
                    with self.autocast():
                        losses = self.ddp(batch) if self.ddp is not None else self.task.loss(batch)
                    total = sum(losses.values())
                    finite = True if self.defer_reads else bool(torch.isfinite(total))
                skip, own_finite = batch is None, finite
                if self.group.enabled:
                    skip, finite = distributed.agree_on_batch(self.group, skip, finite)
                if not skip:
                    if finite:
                        self.nonfinite_streak = 0
                        self.scaler.scale(total / accum).backward()
                        pending, synced = True, closes
                    else:
                        self._on_nonfinite(losses, elsewhere=own_finite)
            if closes and pending:
                if not synced:  # the window's closing batch was skipped on every rank: average here
                    distributed.average_gradients(self.group, self.task.parameters())
                    synced = True
                if t.clip_grad_norm is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.task.parameters(), t.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.global_step += 1
                pending, stepped = False, True
            self.step_in_epoch = i + 1
            if finite and self.defer_reads:
                self._unread.append({
                    "epoch": self.epoch, "step": self.global_step - stepped, "after": self.global_step,
                    "losses": {k: v.detach() for k, v in losses.items()},
                    "total": total.detach(), "lr": self.optimizer.param_groups[0]["lr"],
                    "batch_size": len(batch["images"]), "time": time.perf_counter() - start + data_wait,
                    "data_wait": data_wait})
                if len(self._unread) >= self.cfg.train.log_every:
                    self._read_losses()
            elif finite:
                # .item() waits for the step's device work, so the step time covers it on a GPU
                # too (read after the clock, a GPU's compute would be booked as the next step's
                # data wait)
                if self.group.enabled:  # the global batch's loss: the mean of the ranks' equal shares
                    values, loss = distributed.mean_losses(self.group, losses, total)
                else:
                    values = {k: v.item() for k, v in losses.items()}
                    loss = total.item()
                done = time.perf_counter()
                self.call("after_step", {
                    "loss": loss, "losses": values,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "batch_size": len(batch["images"]) * self.group.world,  # the global batch
                    "time": done - start + data_wait, "data_wait": data_wait,
                })
            if stepped:
                self._maybe_checkpoint_mid_epoch()
            end = time.perf_counter()  # the hooks' own time (logging, checkpoints) is neither
        self._read_losses()  # before the epoch's checkpoint

    def _maybe_checkpoint_mid_epoch(self) -> None:
        """After an optimizer step: a checkpoint every ``train.checkpoint_every_steps`` and on a
        stop signal (the epoch's last batch is left to the epoch-end checkpoint)."""
        faults.after_step(self.global_step, lambda: self.stop_signal is not None)
        self._agree_on_stop()
        every = self.cfg.train.checkpoint_every_steps
        if self.step_in_epoch >= self.steps_per_epoch:
            return
        if self.stop_signal is not None or (every and self.global_step % every == 0):
            self._read_losses()  # never save weights a non-finite loss has reached
            self.save_checkpoint(False, mid_epoch=True)
        if self.stop_signal is not None:
            self._interrupted()

    @torch.no_grad()
    def evaluate(self, split: str = "val", with_details: bool = False):
        """Score ``split`` with the task's evaluator; returns metrics (and details when asked)."""
        self.task.eval()
        self.group.sync_buffers(self.task)  # every rank scores with rank 0's BatchNorm statistics
        evaluator = self.task.evaluator()
        evaluator.reset()
        vis = None
        bad = []  # (path, reason) of the split's unreadable samples (data.on_error: skip)
        for batch in self.loader(split):
            if isinstance(batch, dict) and "bad_samples" in batch:
                bad += [x for group in batch.pop("bad_samples") for x in (group or [])]
                if "images" not in batch:
                    batch = None
            if batch is None:
                continue
            batch = self.to_device(batch)
            with self.autocast():
                preds = self.task.predict(batch)
            evaluator.process(batch, preds)
            if vis is None and self.cfg.train.vis_images > 0 and self.group.is_main:
                vis = self.task.visualize(batch, preds, self.cfg.train.vis_images)
        if self.group.enabled:  # each rank scored its shard: reduce them exactly (rank 0 merges)
            metrics, evaluator, bad = distributed.reduce_evaluation(self.group, evaluator, bad)
        else:
            metrics = evaluator.compute()
        if bad:
            metrics["bad_samples"] = float(len(bad))
            if hasattr(self, "bad_log") and self.group.is_main:
                self.bad_log.add([bad], self.epoch)
            self.log(f"warning: {len(bad)} unreadable {split} sample(s) left out of the metrics, e.g. "
                     f"'{bad[0][0]}' ({bad[0][1]})")
        self._last_vis = vis
        self.last_evaluator = evaluator
        return (metrics, evaluator.details()) if with_details else metrics

    def validate(self, split: str = "val") -> dict:
        metrics = self.evaluate(split)
        if hasattr(self, "hooks"):
            if self.group.is_main:
                self.last_evaluator.write(self.run_dir, split)  # e.g. detections_val.json
            self.call("after_validate", split, metrics, self._last_vis)
        return metrics

    def test(self) -> dict:
        """Score the test split (the only place the trainer touches it)."""
        return self.validate("test")

    def final_test(self) -> dict:
        best = self.run_dir / "checkpoints" / "best.pt"
        if best.exists():
            self.load_weights(best)
        metrics = self.test()
        import json

        if self.group.is_main:
            (self.run_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
