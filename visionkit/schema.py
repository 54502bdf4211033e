"""What a config may contain: every key with its type, default and allowed values.

The schema is a tree of dicts whose leaves are :class:`Field`. ``model.head`` is filled from the
chosen task's ``head_schema``, so each task declares its own head keys next to its code.
Validation walks the user's tree against the schema and fails on the first problem with the
file that set the key (from the ``_base_`` chain or the command line).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from visionkit.errors import ConfigError
from visionkit.registry import BACKBONES, DATASETS, TASKS, close_matches

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@dataclass
class Field:
    """One config value: ``type`` is int/float/bool/str, or a list of one of them (``[float]``)."""

    type: Any
    default: Any = None
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    length: int | None = None  # exact list length, where fixed
    help: str = ""
    extra: dict = field(default_factory=dict)

    def allowed(self) -> Sequence[str] | None:
        return self.choices() if callable(self.choices) else self.choices


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """A nested mapping as ``{"dotted.key": leaf}`` (a config's values, or a schema's Fields)."""
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def _describe(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(_describe(x) for x in t)
    if isinstance(t, list):
        return f"a list of {_describe(t[0]).removeprefix('an ').removeprefix('a ')}s"
    return _TYPE_NAMES.get(t, getattr(t, "__name__", str(t)))


def _check_scalar(t: Any, v: Any) -> bool:
    if isinstance(t, tuple):
        return any(_check_scalar(x, v) for x in t)
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, t)


def _check_field(f: Field, v: Any, key: str, where: str) -> Any:
    if v is None:
        if f.nullable:
            return None
        raise ConfigError(f"{where}: '{key}' must be {_describe(f.type)}, got null")
    ok = (
        isinstance(v, list) and all(_check_scalar(f.type[0], x) for x in v)
        if isinstance(f.type, list)
        else _check_scalar(f.type, v)
    )
    if not ok:
        raise ConfigError(
            f"{where}: '{key}' must be {_describe(f.type)}, got {v!r} ({type(v).__name__})"
        )
    if f.type is float:
        v = float(v)
    if isinstance(f.type, list) and f.type[0] is float:
        v = [float(x) for x in v]
    if f.length is not None and len(v) != f.length:
        raise ConfigError(f"{where}: '{key}' must have {f.length} values, got {len(v)}")
    values = v if isinstance(v, list) else [v]
    for x in values:
        if f.min is not None and isinstance(x, (int, float)) and x < f.min:
            raise ConfigError(f"{where}: '{key}' must be >= {f.min}, got {x}")
        if f.max is not None and isinstance(x, (int, float)) and x > f.max:
            raise ConfigError(f"{where}: '{key}' must be <= {f.max}, got {x}")
        allowed = f.allowed()
        if allowed is not None and x not in allowed:
            close = close_matches(str(x), allowed) if all(isinstance(a, str) for a in allowed) else []
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{where}: '{key}' is {x!r}, not one of: {', '.join(map(str, allowed))}{hint}"
            )
    return v


def _walk(schema: dict, data: Any, path: str, origins: dict, default_file: str) -> dict:
    where = origins.get(path, default_file) if path else default_file
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{path}' must be a mapping of keys, got {data!r}")
    for k in data:
        if k not in schema:
            key = f"{path}.{k}" if path else str(k)
            close = close_matches(str(k), [s for s in schema])
            # 'epochs' at the top -> 'train.epochs'
            deeper = [p for p in flatten(schema) if p.rsplit(".", 1)[-1] == k]
            if close:
                hint = f"; did you mean '{close[0]}'?"
            elif deeper:
                hint = f"; did you mean '{(path + '.' if path else '') + deeper[0]}'?"
            else:
                hint = f"; valid keys: {', '.join(schema)}"
            raise ConfigError(f"{origins.get(key, default_file)}: unknown key '{key}'{hint}")
    out = {}
    for k, spec in schema.items():
        key = f"{path}.{k}" if path else k
        if isinstance(spec, dict):
            out[k] = _walk(spec, data.get(k) or {}, key, origins, default_file)
        elif k in data:
            out[k] = _check_field(spec, data[k], key, origins.get(key, default_file))
        else:
            out[k] = list(spec.default) if isinstance(spec.default, list) else spec.default
    return out


def _lr_schedules() -> Sequence[str]:
    return ("constant", "step", "multistep", "cosine", "poly")


def base_schema() -> dict:
    """The keys every config shares; ``model.head`` comes from the task."""
    return {
        "task": Field(str, "classification", choices=TASKS.names, help="what the model learns"),
        "model": _model_schema(),
        "data": _data_schema(),
        "train": _train_schema(),
    }


def _model_schema() -> dict:
    """``model``: the backbone's keys (the head's come from the task)."""
    return {
        "backbone": {
            "name": Field(str, "resnet18", choices=BACKBONES.names,
                          help="registered backbone (visionkit info lists them)"),
            "weights": Field(str, None, nullable=True, help="file path or torchvision weights name"),
            "weights_skip": Field([str], [], help="key prefixes allowed to mismatch when loading"),
            "out_stages": Field([str], None, nullable=True,
                                help="stages the backbone returns; null: all"),
            "frozen_stages": Field(int, -1, min=-1,
                                   help="-1: none; 0: the stem; k: stem + k stages (norms in eval mode)"),
            "norm": Field(str, "batch", choices=("batch", "frozen_batch", "group", "sync_batch"),
                          help="the backbone's norm layers"),
            "aux_logits": Field(bool, False, help="GoogLeNet's auxiliary classifiers (after inception4a "
                                "and 4d), trained at loss weight 0.3 by task classification; not run at "
                                "eval or export"),
        },
        "head": {},  # filled from the task's head_schema
    }


def _data_schema() -> dict:
    """``data``: where the samples are and how they are read, split and augmented."""
    return {
        "dataset": Field(str, "shapes", choices=DATASETS.names,
                         help="shapes: built in, generated on first use"),
        "root": Field(str, "data/shapes", help="relative paths are taken from the working directory"),
        "image_size": Field(int, 64, min=8, help="network input size (pixels)"),
        "channels": Field(int, 3, choices=(1, 3), help="input channels; images are converted"),
        "mean": Field([float], [0.485, 0.456, 0.406], help="normalisation mean, one value per channel"),
        "std": Field([float], [0.229, 0.224, 0.225], help="normalisation std, one value per channel"),
        "batch_size": Field(int, 64, min=1,
                            help="the global training batch (split over torchrun processes)"),
        "eval_batch_size": Field(int, None, nullable=True, min=1, help="null: batch_size"),
        "num_workers": Field(int, 2, min=0),
        "on_error": Field(str, "raise", choices=("raise", "skip"),
                          help="raise: stop at a bad image; skip: replace it (bad_samples.jsonl)"),
        "worker_timeout": Field(float, 300.0, min=0,
                                help="seconds a loader worker may take for one batch; 0: no limit"),
        "cache": Field((bool, str), "auto", choices=("auto", True, False),
                       help="keep decoded images in memory; auto: when they fit cache_limit_gb"),
        "cache_limit_gb": Field(float, 2.0, min=0,
                                help="data.cache auto: the most memory the decoded images may take"),
        "split": {
            "ratios": Field([float], [8.0, 1.0, 1.0], length=3, min=0,
                            help="train/val/test shares, when the data set has no splits of its own"),
            "counts": Field([int], None, nullable=True, length=3, min=0,
                            help="exact train/val/test sizes instead of ratios"),
            "seed": Field(int, 0, help="seeds the split"),
        },
        "augment": {
            "scale": Field([float], [0.5, 1.0], length=2, min=0.01, max=1.0,
                           help="training crop: area range of the random resized crop"),
            "ratio": Field([float], [0.75, 1.3333], length=2, min=0.01,
                           help="training crop: aspect-ratio range"),
            "hflip": Field(float, 0.5, min=0, max=1, help="horizontal-flip probability (training)"),
            "resize_ratio": Field(float, 1.0, min=1.0,
                                  help="evaluation: resize to image_size * this, then center-crop"),
        },
        "coco": {
            "keep_empty": Field(bool, True, help="keep training images without annotations"),
        },
        "synth": {
            "num_images": Field(int, 3000, min=10),
            "size": Field(int, 64, min=16),
            "seed": Field(int, 0),
        },
    }


def _train_schema() -> dict:
    """``train``: the loop, the optimizer, the schedule, checkpoints and logs."""
    return {
        "epochs": Field(int, 10, min=1, help="training epochs"),
        "device": Field(str, "auto", help="auto, cpu, cuda or cuda:N"),
        "amp": Field(str, "none", choices=("none", "bf16", "fp16", "auto"),
                     help="auto: bf16 where the device computes it natively (AVX-512 BF16/AMX CPUs, "
                          "bf16 CUDA cards), else none"),
        "channels_last": Field((bool, str), "auto", choices=("auto", True, False),
                               help="NHWC weights and batches; auto: on CUDA (tensor-core convolutions)"),
        "compile": Field(bool, False, help="torch.compile what each step runs with one shape "
                         "(Task.compile_targets); pays off on a GPU, after a minute or more of compiling"),
        "accumulate": Field(int, 1, min=1, help="gradient accumulation: batches per optimizer step"),
        "sync_bn": Field(bool, False, help="under torchrun: BatchNorm statistics over the global batch"),
        "scale_lr": Field(str, "none", choices=("none", "linear", "sqrt"),
                          help="scale optimizer.lr by (batch_size x accumulate) / reference_batch"),
        "reference_batch": Field(int, 256, min=1, help="the global batch optimizer.lr is given for"),
        "clip_grad_norm": Field(float, None, nullable=True, min=0,
                                help="max gradient norm; null: no clipping"),
        "seed": Field(int, 0, help="seeds weights, shuffling and augmentation"),
        "deterministic": Field(bool, False, help="deterministic CUDA kernels (bitwise-repeatable "
                               "GPU runs, can be slower)"),
        "optimizer": {
            "name": Field(str, "sgd", choices=("sgd", "adam", "adamw"),
                          help="optimizer (torch's fused kernels on CPU and CUDA)"),
            "lr": Field(float, 0.1, min=0, help="learning rate (see train.scale_lr)"),
            "momentum": Field(float, 0.9, min=0, max=1, help="sgd"),
            "nesterov": Field(bool, False, help="sgd"),
            "weight_decay": Field(float, 1e-4, min=0,
                                  help="not on norms and biases unless norm_weight_decay"),
            "betas": Field([float], [0.9, 0.999], length=2, min=0, max=1, help="adam, adamw"),
            "norm_weight_decay": Field(bool, False, help="decay norms and biases too"),
        },
        "schedule": {
            "name": Field(str, "cosine", choices=_lr_schedules,
                          help="learning-rate schedule over the epochs"),
            "warmup_epochs": Field(float, 0.0, min=0, help="linear warmup from warmup_factor x lr"),
            "warmup_factor": Field(float, 0.1, min=0, max=1, help="the warmup's starting share of lr"),
            "step_size": Field(int, 30, min=1, help="step: epochs between decays"),
            "milestones": Field([int], [30, 60, 90], help="multistep: epochs at which lr decays"),
            "gamma": Field(float, 0.1, min=0, help="step, multistep: decay factor"),
            "power": Field(float, 0.9, min=0, help="poly: exponent"),
            "min_lr": Field(float, 0.0, min=0, help="cosine: final lr"),
        },
        "val_every": Field(int, 1, min=1, help="validate every N epochs (and after the last)"),
        "monitor": Field(str, "auto", help="val metric for best checkpoint and early stopping"),
        "monitor_mode": Field(str, "auto", choices=("auto", "max", "min"),
                              help="auto: the task's own for its metric"),
        "keep_checkpoints": Field(int, 3, min=1,
                                  help="epoch and step checkpoint files kept, newest first"),
        "checkpoint_every_steps": Field(int, None, nullable=True, min=1,
                                        help="also checkpoint mid-epoch every N optimizer steps"),
        "on_nonfinite": Field(str, "stop", choices=("stop", "skip"),
                              help="a NaN/Inf loss stops the run, or skips the batch"),
        "max_nonfinite_steps": Field(int, 5, min=1,
                                     help="with on_nonfinite skip: stop after this many in a row"),
        "early_stopping": Field(int, None, nullable=True, min=1, help="patience in validations"),
        "ema": {
            "decay": Field(float, None, nullable=True, min=0, max=1,
                           help="an exponential moving average of the weights, evaluated and saved as the "
                                "model (e.g. 0.999); null: off"),
            "every": Field(int, 1, min=1, help="update the average every N optimizer steps"),
            "warmup": Field(bool, False, help="ramp the decay up as min(decay, (1 + n) / (10 + n))"),
        },
        "final_test": Field(bool, False, help="score the test split once training ends"),
        "log_every": Field(int, 10, min=1),
        "vis_images": Field(int, 16, min=0),
        "progress": Field(bool, True),
    }


def validate(raw: dict, origins: dict, default_file: str) -> dict:
    """Check ``raw`` against the schema of its task and return it with every default filled in."""
    schema = base_schema()
    # the task decides which head keys exist, so check it first
    task = raw.get("task", schema["task"].default)
    _check_field(schema["task"], task, "task", origins.get("task", default_file))
    schema["model"]["head"] = TASKS.get(task).head_schema()
    head = (raw.get("model") or {}).get("head") if isinstance(raw.get("model"), dict) else None
    for old, new in TASKS.get(task).renamed_head_keys.items():
        if isinstance(head, dict) and old in head:
            key = f"model.head.{old}"
            raise ConfigError(f"{origins.get(key, default_file)}: '{key}' was renamed: use model.head.{new}")
    schema["data"].update(TASKS.get(task).data_schema())
    cfg = _walk(schema, raw, "", origins, default_file)
    _cross_checks(cfg, origins, default_file)
    return cfg


def check_device_name(name: str, where: str | None = None) -> None:
    """``train.device`` is a name torch can parse (a device that is absent fails at run time)."""
    if name == "auto":
        return
    try:
        torch.device(name)
    except RuntimeError:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}'train.device' is '{name}'; use auto, cpu, cuda or cuda:N") from None


def _cross_checks(cfg: dict, origins: dict, default_file: str) -> None:
    check_device_name(cfg["train"]["device"], origins.get("train.device", default_file))
    data = cfg["data"]
    for key in ("mean", "std"):
        if len(data[key]) != data["channels"]:
            where = origins.get(f"data.{key}", default_file)
            raise ConfigError(
                f"{where}: 'data.{key}' has {len(data[key])} values but data.channels is "
                f"{data['channels']}; give one value per channel"
            )
    if sum(data["split"]["ratios"]) <= 0:
        where = origins.get("data.split.ratios", default_file)
        raise ConfigError(f"{where}: 'data.split.ratios' must not all be 0")
    lo, hi = data["augment"]["scale"]
    if lo > hi:
        where = origins.get("data.augment.scale", default_file)
        raise ConfigError(f"{where}: 'data.augment.scale' must be [min, max] with min <= max")
