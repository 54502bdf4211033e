"""The backbone contract: staged feature maps with declared channels and strides.

Every family builds its stages in order and declares each one with :meth:`Backbone.add_stage`
while it builds them (the declaration is the contract that necks and heads are built from; it is
never inferred by running the model). ``forward`` returns the requested stages, shallow to deep.
Parameter names stay those of torchvision's model, so torchvision checkpoints load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

NORMS = ("batch", "frozen_batch", "group", "sync_batch")


@dataclass(frozen=True)
class FeatureSpec:
    """What one stage outputs: channel count and stride relative to the input image."""

    channels: int
    stride: int


class BackboneBuildError(ValueError):
    """A backbone option that cannot work, with what to change."""


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels)


def norm_layer(norm: str):
    """A ``norm_layer(channels)`` factory for families whose constructor takes one."""
    if norm in ("batch", "sync_batch"):  # sync is converted after build (needs the whole module)
        return nn.BatchNorm2d
    if norm == "frozen_batch":
        return FrozenBatchNorm2d
    if norm == "group":
        return group_norm
    raise BackboneBuildError(f"unknown norm '{norm}'; choose one of {', '.join(NORMS)}")


def convert_norms(module: nn.Module, norm: str) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (for families built without a norm_layer argument).

    Parameter names are kept (weight, bias, running_mean, running_var), so checkpoints still load
    for ``frozen_batch``; ``group`` has no running statistics by design.
    """
    if norm == "batch":
        return module
    if norm == "sync_batch":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            new = FrozenBatchNorm2d(c, eps=child.eps) if norm == "frozen_batch" else norm_layer(norm)(c)
            setattr(module, name, new)
        else:
            convert_norms(child, norm)
    return module


class Backbone(nn.Module):
    """Base class of all backbones.

    Subclasses build their layers under torchvision's attribute names, then call
    :meth:`add_stage` once per stage (shallow to deep) with the modules that compute it, and
    finally :meth:`finish`. ``forward`` runs the stages in order and returns those named in
    ``out_stages``. A family may also declare its stem's output as the optional stage ``stem``
    (:meth:`add_stem`'s ``tap``): returned only when ``out_stages`` names it, so that decoders
    can read a finer level (ResNet's stride-2 conv1 output) while every default stays as it was.
    """

    #: name of the optional stem output in ``out_stages`` / ``feature_specs``
    STEM = "stem"

    #: smallest input side (pixels) the family accepts; checked in forward with a clear error
    min_input_size: int = 1
    #: first components of torchvision state-dict keys that belong to the classifier, not to us
    classifier_prefixes: tuple[str, ...] = ()
    #: submodules the family builds only when asked (GoogLeNet's auxiliary classifiers): a weights
    #: file's keys for one this model did not build are skipped, not refused
    optional_parts: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._stem: list[str] = []
        self._stem_tap: int | None = None
        self._stem_spec: FeatureSpec | None = None
        self._stage_names: list[str] = []
        self._stage_modules: dict[str, list[str]] = {}
        self._all_specs: dict[str, FeatureSpec] = {}
        self._aux: dict[str, str] = {}  # submodule path -> the auxiliary classifier reading it
        self.out_stages: list[str] = []
        self.frozen_stages = -1

    # -- building -------------------------------------------------------------------------
    def add_stem(self, modules: Sequence[str], *, tap: int | None = None, channels: int | None = None,
                 stride: int | None = None) -> None:
        """Declare the stem: submodules run before the first stage (may be empty).

        ``tap`` (with ``channels`` and ``stride``): the output of the first ``tap`` stem modules
        can be returned as the stage ``stem`` when ``out_stages`` asks for it (never by default).
        It is not one of :attr:`stage_specs` and does not shift ``frozen_stages`` (0 = the stem).
        """
        self._stem = list(modules)
        if tap is not None:
            if not 1 <= tap <= len(self._stem) or channels is None or stride is None:
                raise BackboneBuildError(f"{type(self).__name__}: stem tap {tap} needs 1..{len(self._stem)} "
                                         "modules and the tapped channels and stride")
            self._stem_tap, self._stem_spec = tap, FeatureSpec(int(channels), int(stride))

    def add_stage(self, name: str, modules: Sequence[str], channels: int, stride: int) -> None:
        """Declare stage ``name``: computed by the submodules ``modules`` (attribute paths, in order)."""
        self._stage_names.append(name)
        self._stage_modules[name] = list(modules)
        self._all_specs[name] = FeatureSpec(int(channels), int(stride))

    def add_aux(self, name: str, after: str) -> None:
        """Declare the auxiliary classifier ``name`` (a submodule) on the output of the stage
        submodule ``after``: in training ``forward`` also returns its logits under ``name``
        (deep supervision, Szegedy et al. 2015, sec. 5); in eval mode it is not run."""
        self._aux[after] = name

    @property
    def aux_outputs(self) -> list[str]:
        """Names of the auxiliary logits ``forward`` adds in training (none for most families)."""
        return list(self._aux.values())

    def finish(self, out_stages: Sequence[str] | None, frozen_stages: int = -1) -> None:
        """Select the returned stages and freeze: -1 nothing, 0 the stem, k the stem and k stages."""
        names = self._stage_names
        if out_stages is None or len(out_stages) == 0:
            out_stages = names
        available = ([self.STEM] if self._stem_spec is not None else []) + names
        bad = [s for s in out_stages if s not in available]
        if bad:
            raise BackboneBuildError(
                f"{type(self).__name__}: out_stages {bad} not available; stages are {available}"
            )
        self.out_stages = [s for s in available if s in out_stages]
        if not -1 <= frozen_stages <= len(names):
            raise BackboneBuildError(
                f"{type(self).__name__}: frozen_stages={frozen_stages} must be in -1..{len(names)}"
                " (-1 freezes nothing, 0 the stem, k the stem and the first k stages)"
            )
        last = self.out_stages[-1]  # forward runs the stages up to it
        ran = [] if last == self.STEM else [p for n in names[: names.index(last) + 1] for p in self._stage_modules[n]]
        unread = [f"{aux} (after {after})" for after, aux in self._aux.items() if after not in ran]
        if unread:
            raise BackboneBuildError(
                f"{type(self).__name__}: the auxiliary classifiers {', '.join(unread)} need the stage that "
                f"holds them, but out_stages ends at '{last}'"
            )
        self.frozen_stages = frozen_stages
        self._freeze()

    @property
    def stage_specs(self) -> dict[str, FeatureSpec]:
        """Every stage the family has, whether returned or not."""
        return dict(self._all_specs)

    @property
    def feature_specs(self) -> dict[str, FeatureSpec]:
        """The stages ``forward`` returns, shallow to deep (``stem`` first when asked for)."""
        return {n: self._stem_spec if n == self.STEM else self._all_specs[n] for n in self.out_stages}

    # -- freezing ---------------------------------------------------------------------------
    def frozen_modules(self) -> list[nn.Module]:
        """Modules of the stem and the first ``frozen_stages`` stages (none when -1)."""
        if self.frozen_stages < 0:
            return []
        mods = [self.get_submodule(p) for p in self._stem]
        for name in self._stage_names[: self.frozen_stages]:
            mods += [self.get_submodule(p) for p in self._stage_modules[name]]
        return mods

    def _freeze(self) -> None:
        for m in self.frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen_modules():  # frozen norms keep their statistics
            m.eval()
        return self

    # -- running -----------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if min(h, w) < self.min_input_size:
            raise BackboneBuildError(
                f"{type(self).__name__} needs inputs of at least {self.min_input_size}x"
                f"{self.min_input_size} pixels, got {h}x{w}; raise data.image_size"
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ``out_stages`` features, shallow to deep, and in training the logits of the
        auxiliary classifiers under :attr:`aux_outputs` (before the stage that holds them)."""
        self.check_input(x)
        out: dict[str, torch.Tensor] = {}
        last = self.out_stages[-1]
        for i, path in enumerate(self._stem):
            x = self.get_submodule(path)(x)
            if i + 1 == self._stem_tap and self.STEM in self.out_stages:
                out[self.STEM] = x
        if last == self.STEM:
            return out
        for name in self._stage_names:
            for path in self._stage_modules[name]:
                x = self.get_submodule(path)(x)
                if self.training and path in self._aux:
                    out[self._aux[path]] = self.get_submodule(self._aux[path])(x)
            if name in self.out_stages:
                out[name] = x
            if name == last:
                break
        return out

    # -- classification ------------------------------------------------------------------------
    def build_classifier(self, num_classes: int, dropout: float = 0.0) -> nn.Module:
        """The family's own classifier over the deepest stage (the paper's head).

        Default: global average pooling and one linear layer named ``fc`` (ResNet style).
        Families with another head (VGG, AlexNet, DenseNet, LeNet) override this, keeping
        torchvision's attribute names so its classifier weights load too.
        """
        channels = self._all_specs[self._stage_names[-1]].channels
        return PoolLinear(channels, num_classes, dropout)


class PoolLinear(nn.Module):
    """Global average pooling, optional dropout, a linear layer named ``fc``."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))
