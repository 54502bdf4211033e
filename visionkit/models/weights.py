"""Load pretrained weights into a backbone (or a model holding ``.backbone``), refusing misfits.

A weights spec is either a local file (a raw state dict, or a checkpoint dict with a
``state_dict`` or ``model`` entry) or a torchvision weights name such as
``ResNet18_Weights.IMAGENET1K_V1``. Two key layouts are understood:

- torchvision's flat layout (``conv1.weight`` ... ``fc.weight``): keys whose first component is
  one of the backbone's ``classifier_prefixes`` belong to the classifier, which our
  classification model keeps in ``head`` (see :func:`map_torchvision_keys`);
- visionkit's own layout (``backbone.*``, ``head.*``, ...), as saved by the trainer.

A load never half-happens: shape mismatches and keys the target cannot hold are collected
first and refused together with one :class:`~visionkit.errors.CheckpointError` saying how to
fix it. Target keys the file does not provide (say the SE blocks when starting an SE-ResNet
from ResNet weights, or a detection head) are reported in :class:`LoadReport`, not refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from visionkit.errors import CheckpointError
from visionkit.models.backbones.base import Backbone

#: top-level names of visionkit's own checkpoint layout
_OWN_PREFIXES = ("backbone", "neck", "head")
#: how many offending keys an error message names
_SHOWN = 3


@dataclass
class LoadReport:
    """What a load did, key by key (names in the target's namespace unless said otherwise)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    #: target keys the file does not provide (left at their initialisation)
    missing: list[str] = field(default_factory=list)
    #: file keys (as in the file) that the target has no place for
    unexpected: list[str] = field(default_factory=list)
    #: ``"key: file shape -> model shape"`` for keys present on both sides with other shapes
    mismatched: list[str] = field(default_factory=list)
    #: file keys left out on purpose: ``skip`` prefixes, and a classifier/head the target lacks
    skipped: list[str] = field(default_factory=list)
    #: the task a visionkit checkpoint was trained for (None for other files)
    trained_for: str | None = None
    #: the checkpoint was trained for another task than the target's: only its backbone is loaded
    backbone_only: bool = False
    #: the backbone a visionkit checkpoint was trained on, when it is not the target's
    from_backbone: str | None = None

    def summary(self) -> str:
        """One line for the log."""
        whose = ""
        if self.backbone_only or self.from_backbone:
            on = f" on {self.from_backbone}" if self.from_backbone else ""
            whose = f" (a {self.trained_for or 'visionkit'} checkpoint{on}"
            whose += ": its backbone only)" if self.backbone_only else ")"
        line = (f"weights {self.source}{whose}: loaded {len(self.loaded)} tensors, {len(self.missing)} missing"
                f" (kept at init), {len(self.skipped)} skipped")
        for what, keys in (("missing", self.missing), ("skipped", self.skipped)):
            if keys:  # named, so a prefix the file lacks by mistake shows
                more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
                line += f"; {what}: {', '.join(keys[:6])}{more}"
        return line


def map_torchvision_keys(state_dict: Mapping[str, torch.Tensor], backbone: Backbone) -> dict:
    """Route a torchvision model's keys to our classification model's ``backbone`` / ``head``.

    Keys whose first component is one of ``backbone.classifier_prefixes`` (``fc`` for ResNet,
    ``classifier`` for VGG) become ``head.<key>``, since the head's attributes are exactly what
    ``backbone.build_classifier`` returns; every other key becomes ``backbone.<key>``.
    """
    prefixes = tuple(backbone.classifier_prefixes)
    return {
        (f"head.{k}" if k.split(".", 1)[0] in prefixes else f"backbone.{k}"): v for k, v in state_dict.items()
    }


def load_backbone_weights(backbone_or_model: nn.Module, spec: str, *, skip: Iterable[str] = (),
                          task: str | None = None, backbone_name: str | None = None) -> LoadReport:
    """Load ``spec`` into a :class:`Backbone`, or into a model whose ``.backbone`` is one.

    ``skip`` lists key prefixes (dotted components, in the file's or the target's naming, e.g.
    ``fc`` or ``head.fc``) to leave out, typically a classifier trained for other classes.
    ``task`` names the target's task: a visionkit checkpoint trained for another task gives its
    backbone only (its heads are skipped and reported); ``backbone_name`` (the target's registered
    name) lets the log and a refusal say when the checkpoint was trained on another backbone.
    Raises :class:`CheckpointError` for an unreadable file or unknown weights name, and for any
    shape mismatch or key without a place in the target that ``skip`` does not cover.
    """
    target, backbone = _resolve_target(backbone_or_model)
    state, meta = _read_state_dict(spec)
    own_layout = bool(meta) or _is_own_layout(state)  # a trainer checkpoint is ours whatever its keys
    remap = getattr(backbone, "remap_torchvision_keys", None)  # a family's legacy key names
    if remap is not None and not own_layout:
        state = remap(state)
    trained_for, trained_on = meta.get("task"), meta.get("backbone")
    report = LoadReport(source=spec, trained_for=trained_for, backbone_only=_differs(trained_for, task),
                        from_backbone=trained_on if _differs(trained_on, backbone_name) else None)
    # file key -> target key (None: not for this target)
    pairs = _to_target_names(state, target, backbone, own_layout, backbone_only=report.backbone_only)
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    own = target.state_dict()
    unbuilt = _unbuilt_parts(target, backbone)
    to_load: dict[str, torch.Tensor] = {}
    for key, name in pairs.items():
        tensor = state[key]
        if _matches(key, skip) or (name is not None and _matches(name, skip)):
            report.skipped.append(key)
        elif name is None or _matches(name, unbuilt):
            report.skipped.append(key)  # a head/classifier or optional part the target does not have
        elif name in own and own[name].shape != tensor.shape:
            report.mismatched.append(f"{name}: {tuple(tensor.shape)} -> {tuple(own[name].shape)}")
        elif name in own:
            to_load[name] = tensor
        elif name.endswith("num_batches_tracked"):
            report.skipped.append(key)  # a BN step counter; frozen or group norms keep none
        else:
            report.unexpected.append(key)
    if report.mismatched or report.unexpected:
        raise CheckpointError(_refusal(report, target, backbone))
    target.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = [k for k in own if k not in to_load]
    return report


# -- helpers ------------------------------------------------------------------------------------
def _resolve_target(obj: nn.Module) -> tuple[nn.Module, Backbone]:
    if isinstance(obj, Backbone):
        return obj, obj
    backbone = getattr(obj, "backbone", None)
    if isinstance(backbone, Backbone):
        return obj, backbone
    raise TypeError(
        f"load_backbone_weights needs a Backbone or a model with a .backbone Backbone, got {type(obj).__name__}"
    )


def _read_state_dict(spec: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a local file or of torchvision weights, keys unchanged, and the ``meta`` of
    a visionkit checkpoint (its task and backbone; empty for other files)."""
    if os.path.exists(spec):
        from visionkit.engine.checkpoint import check_torch_file, is_checkpoint

        check_torch_file(Path(spec), "weights file")
        try:
            obj = torch.load(spec, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt, truncated, or pickles more than tensors
            raise CheckpointError(f"cannot read weights file {spec}: {_first_line(e)}") from e
        ours = is_checkpoint(obj) and isinstance(obj.get("model"), dict)
        meta = obj["meta"] if ours and isinstance(obj.get("meta"), dict) else {}
        if isinstance(obj, dict):
            for key in ("state_dict", "model"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(
                f"{spec} is not a state dict (nor a dict with 'state_dict' or 'model' holding one)"
            )
        return _strip_module_prefix(obj), meta
    if "_Weights." in spec:
        return _torchvision_state_dict(spec), {}
    raise CheckpointError(
        f"weights '{spec}' is neither an existing file nor a torchvision weights name"
        " like 'ResNet50_Weights.IMAGENET1K_V1'"
    )


def _torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(
            f"unknown torchvision weights '{name}'; names look like 'ResNet50_Weights.IMAGENET1K_V1'"
        ) from e
    try:
        return weights.get_state_dict(progress=False, weights_only=True)
    except Exception as e:  # offline and not cached, or a broken download
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise CheckpointError(
            f"cannot get torchvision weights {name} ({_first_line(e)}); offline, place "
            f"{os.path.basename(weights.url)} in {cache} (set TORCH_HOME to move the cache)"
        ) from e


def _first_line(e: Exception) -> str:
    """An exception as one line (torch.load's explanations run to paragraphs)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _strip_module_prefix(state: dict) -> dict:
    """Checkpoints saved from DistributedDataParallel prefix every key with ``module.``."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _is_own_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return bool(state) and all(k.split(".", 1)[0] in _OWN_PREFIXES for k in state)


def _to_target_names(state, target: nn.Module, backbone: Backbone, own_layout: bool,
                     backbone_only: bool = False) -> dict[str, str | None]:
    """File key -> the name it has in ``target`` (None for a part the target does not take: a
    head it does not have, or with ``backbone_only`` every non-backbone part of our layout)."""
    keys = list(state)
    if target is backbone:
        if own_layout:  # only our backbone part is for it
            return {k: (k[len("backbone.") :] if k.startswith("backbone.") else None) for k in keys}
        prefixes = tuple(backbone.classifier_prefixes)
        return {k: (None if k.split(".", 1)[0] in prefixes else k) for k in keys}
    if own_layout and backbone_only:
        return {k: (k if k.startswith("backbone.") else None) for k in keys}
    names = dict(zip(keys, keys)) if own_layout else dict(zip(keys, map_torchvision_keys(state, backbone)))
    has_head = any(n.startswith("head.") for n in target.state_dict())
    return {k: (None if n.startswith("head.") and not has_head else n) for k, n in names.items()}


def _unbuilt_parts(target: nn.Module, backbone: Backbone) -> tuple[str, ...]:
    """The backbone's optional parts (say GoogLeNet's ``aux1``) it was built without, named as in
    ``target``: a file's keys for them are skipped."""
    prefix = "" if target is backbone else "backbone."
    return tuple(f"{prefix}{p}" for p in backbone.optional_parts if not isinstance(getattr(backbone, p, None), nn.Module))


def _differs(recorded: str | None, wanted: str | None) -> bool:
    """Whether a checkpoint's recorded task/backbone is known and not the one wanted (when given)."""
    return None not in (recorded, wanted) and recorded != wanted


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``key`` starts with one of ``prefixes`` at a dotted-component boundary."""
    return any(key == p or key.startswith(p.rstrip(".") + ".") for p in prefixes)


def _refusal(report: LoadReport, target: nn.Module, backbone: Backbone) -> str:
    parts = []
    if report.mismatched:
        shown = "; ".join(report.mismatched[:_SHOWN])
        more = f" (+{len(report.mismatched) - _SHOWN} more)" if len(report.mismatched) > _SHOWN else ""
        parts.append(f"{len(report.mismatched)} shape mismatch(es): {shown}{more}")
    if report.unexpected:
        shown = ", ".join(report.unexpected[:_SHOWN])
        more = f" (+{len(report.unexpected) - _SHOWN} more)" if len(report.unexpected) > _SHOWN else ""
        parts.append(f"{len(report.unexpected)} key(s) with no place in the model: {shown}{more}")
    first = (report.mismatched or report.unexpected)[0].split(":")[0].rsplit(".", 1)[0]
    if not report.mismatched and all(k.endswith(("running_mean", "running_var")) for k in report.unexpected):
        fix = (
            "they are batch-norm statistics, which this model's norm layers do not keep; build it "
            "with norm 'batch' or 'frozen_batch' to use these weights"
        )
    else:
        fix = (
            f"if these are layers you replace (e.g. a classifier for other classes), list their "
            f"prefixes in model.backbone.weights_skip (e.g. ['{first}']); otherwise pick the "
            "backbone these weights were trained for"
        )
    if report.from_backbone:
        fix += f" (this checkpoint was trained on backbone '{report.from_backbone}')"
    return (
        f"weights {report.source} do not fit {type(backbone).__name__} ({type(target).__name__}): "
        + "; ".join(parts)
        + ". "
        + fix[0].upper()
        + fix[1:]
    )
