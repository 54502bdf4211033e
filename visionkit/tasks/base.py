"""The Task contract: one module per task that owns its model, loss, predictions and scoring.

The trainer only calls what is defined here, so it never needs to know which task it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from visionkit.errors import ConfigError
from visionkit.evaluation.base import Evaluator
from visionkit.models.backbones.base import BackboneBuildError
from visionkit.schema import Field


def _field_type(hint) -> tuple[Any, bool]:
    """(``Field.type``, nullable) of a settings annotation: ``int``, ``list[float]``, ``str | None``."""
    nullable = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        nullable = type(None) in args
        (hint,) = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is list:
        return [typing.get_args(hint)[0]], nullable
    return hint, nullable


def settings_schema(settings: type) -> dict[str, Field]:
    """The ``model.head`` schema of a settings dataclass: one :class:`Field` per field, its type
    from the annotation, its default, and the limits and help of its ``option(...)``."""
    hints = typing.get_type_hints(settings)
    out = {}
    for f in dataclasses.fields(settings):
        kind, nullable = _field_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = Field(kind, default, nullable=nullable, **f.metadata)
    return out


class Task(nn.Module):
    """Backbone (+ neck) + head, with the task's loss, prediction format, evaluator and drawings.

    Subclasses set :attr:`monitor` (the validation metric that picks the best checkpoint, and
    whether higher is better) and implement the methods below.
    """

    #: (metric name, "max" | "min") used when ``train.monitor`` is ``auto``
    monitor: tuple[str, str] = ("loss", "min")
    #: config keys added after checkpoints may have been trained without them ("model.head.x"), with
    #: the value that builds the model from before them; a checkpoint that does not fit is told these
    added_settings: ClassVar[dict[str, Any]] = {}
    #: the dataclass of this task's ``model.head`` options; it generates :meth:`head_schema`
    settings: ClassVar[type | None] = None
    #: ``model.head`` keys that were renamed (old -> new); a config with an old one is refused
    renamed_head_keys: ClassVar[dict[str, str]] = {}
    #: drawings enlarge small images by a whole factor up to this many pixels, to be legible
    drawing_side: ClassVar[int] = 128
    #: ``visionkit config init``: (data root, Machine) -> Starter, a config for the user's data laid
    #: out as this task's reader expects (visionkit.tasks.starters); None: not offered
    starter: ClassVar[Callable | None] = None

    def set_normalization(self, mean, std) -> None:
        """Pixel mean/std (0..1 scale) applied by :meth:`preprocess` (not saved in state dicts)
        and undone by the drawings."""
        self.mean, self.std = list(mean), list(std)
        c = len(mean)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1), False)

    def preprocess(self, batch: dict) -> dict:
        """Turn a batch of uint8 images (as the loaders give them) into normalised floats, on
        whatever device the batch is; float images are taken as already normalised."""
        images = batch["images"]
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
            batch["images"] = (images.float().div_(255) - self.pixel_mean) / self.pixel_std
        return batch

    @classmethod
    def head_schema(cls) -> dict:
        """The ``model.head`` keys this task accepts (``visionkit.schema.Field`` values); by
        default those of :attr:`settings`."""
        return settings_schema(cls.settings) if cls.settings is not None else {}

    @classmethod
    def head_settings(cls, cfg):
        """:attr:`settings` filled from the validated ``model.head`` section."""
        return cls.settings(**{f.name: cfg.model.head[f.name] for f in dataclasses.fields(cls.settings)})

    @staticmethod
    def check_num_classes(cfg, classes: list[str]) -> None:
        """``model.head.num_classes``, when set, must be the data set's class count."""
        n = cfg.model.head.num_classes
        if n is not None and n != len(classes):
            raise ConfigError(f"{cfg.where('model.head.num_classes')}: 'model.head.num_classes' is {n} but "
                              f"the data set has {len(classes)} classes ({', '.join(classes[:10])}); "
                              "set it to null")

    @staticmethod
    @contextlib.contextmanager
    def build_errors(cfg):
        """Turn a head that cannot sit on the configured backbone into a config error naming both."""
        try:
            yield
        except BackboneBuildError as e:
            raise ConfigError(f"{cfg.where('model')}: head '{cfg.model.head.name}' on backbone "
                              f"'{cfg.model.backbone.name}': {e}") from None

    def zoom(self, image: torch.Tensor, factor: int | None = None) -> torch.Tensor:
        """``image`` (``(C, H, W)``, any dtype) enlarged by nearest neighbour by ``factor``, by
        default the largest whole factor that keeps it within :attr:`drawing_side`; same dtype."""
        f = factor or self.zoom_factor(max(image.shape[-2:]))
        if f == 1:
            return image
        return F.interpolate(image[None].float(), scale_factor=f, mode="nearest")[0].to(image.dtype)

    def zoom_factor(self, side: int) -> int:
        """How many times a drawing of ``side`` pixels is enlarged (at least 1)."""
        return max(1, self.drawing_side // side)

    @classmethod
    def data_schema(cls) -> dict:
        """Extra ``data`` keys this task reads (a sub-section such as ``data.depth``); other
        tasks' configs never see them."""
        return {}

    @classmethod
    def from_config(cls, cfg, data_info: dict) -> Task:
        """Build the task from a validated config and what the data set says (class names, ...)."""
        raise NotImplementedError

    @classmethod
    def sample_transform(cls, cfg, train: bool) -> Callable[[dict], dict]:
        """The per-sample transform of this task's inputs and targets (v2 transforms)."""
        raise NotImplementedError

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named loss terms; the trainer sums them and logs each."""
        raise NotImplementedError

    def predict(self, batch: dict) -> Any:
        """Predictions in the task's documented format."""
        raise NotImplementedError

    def compile_targets(self) -> list[nn.Module]:
        """The modules ``train.compile`` compiles in place: those :meth:`loss` and :meth:`predict`
        call whose inputs keep one shape from batch to batch. Default: the task itself, for tasks
        whose ``loss`` runs through ``forward``; a task whose loss calls its parts directly
        names them."""
        return [self]

    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    def visualize(self, batch: dict, predictions: Any, max_images: int = 16) -> torch.Tensor:
        """uint8 images ``(N, 3, H, W)`` showing inputs with targets and predictions."""
        raise NotImplementedError

    def describe(self, predictions: Any, i: int) -> str:
        """One image's prediction as one line of text (``visionkit predict`` prints it)."""
        raise NotImplementedError

    def record(self, predictions: Any, i: int) -> dict:
        """One image's prediction as JSON-able values (``predictions.json`` of ``predict --out``)."""
        raise NotImplementedError

    def write_outputs(self, predictions: Any, i: int, out_dir, stem: str) -> list[str]:
        """Files for programs beside the drawing (a palette PNG, 16-bit depth, ...) written by
        ``predict --out`` as ``out_dir/<stem>_*``; returns their names. Default: none."""
        return []

    @classmethod
    def check_sample(cls, sample: dict, data_info: dict) -> list[str]:
        """Problems with one raw sample's targets, as sentences (``visionkit data check`` prints
        them with the sample's path): labels out of range, boxes outside the image, negative
        depth, ... The image itself is checked by the caller. Default: none."""
        return []

    def metadata(self) -> dict:
        """What a checkpoint must remember to rebuild and use the model (class names, ...)."""
        return {}

    # -- data: what the data readers ask ------------------------------------------------------------
    @classmethod
    def target_kind(cls, cfg) -> str:
        """The targets each sample of this task carries, one word a data reader serves (the
        ``shapes`` data set keeps one view per kind in ``SHAPES_VIEWS``): ``label`` (a class id per
        image), ``multi_label`` (a multi-hot vector), ``instances`` (boxes, labels, masks),
        ``semantic`` (a class map), ``depth`` (a depth map); a new task may name a new kind."""
        raise NotImplementedError

    # -- export: what ``visionkit export`` and ``visionkit predict MODEL.onnx`` ask ------------------
    #: the exported graph's outputs, in the order :meth:`export_graph` returns them (a model may
    #: leave some out, see :meth:`export_output_names`); empty: the task cannot be exported
    export_outputs: ClassVar[tuple[str, ...]] = ()
    #: the attributes :meth:`describe`, :meth:`record`, :meth:`write_outputs` and :meth:`visualize`
    #: read; an exported file keeps their values, so ``predict MODEL.onnx`` writes what
    #: ``predict --checkpoint`` writes
    export_attrs: ClassVar[tuple[str, ...]] = ()
    #: the graph always takes 0..1 images and normalises them itself (a detector's own transform)
    export_normalizes: ClassVar[bool] = False
    #: the graph runs one image at a time (batch 1)
    export_single_image: ClassVar[bool] = False
    #: with ``--dynamic`` the graph takes any image size; False: the size of the eval transform's crop
    export_any_size: ClassVar[bool] = True

    def export_graph(self, normalize: bool) -> nn.Module:
        """This model as a module of plain tensors: ``images`` float ``(B, C, H, W)`` in (0..1 when
        ``normalize`` or :attr:`export_normalizes`, else already normalised), a tuple of tensors
        named :meth:`export_output_names` out, computing what :meth:`predict` computes."""
        raise NotImplementedError

    def export_output_names(self) -> list[str]:
        """The names of the outputs :meth:`export_graph` returns, in order."""
        return list(self.export_outputs)

    def export_dynamic_axes(self, names: Sequence[str], dynamic: bool) -> dict[str, dict[int, str]]:
        """Which axes of ``images`` and of each output vary between runs (ONNX ``dynamic_axes``).
        Default: with ``dynamic``, the batch axis of all of them."""
        if not dynamic:
            return {}
        return {"images": {0: "batch"}, **{n: {0: "batch"} for n in names}}

    @classmethod
    def export_preprocess(cls, cfg) -> dict:
        """The eval transform as JSON-able data, written into an exported file: what a program does
        to an image before the graph. Default: nothing (the image's own size)."""
        return {}

    @classmethod
    def export_transform(cls, spec: dict) -> Callable:
        """The image transform that :meth:`export_preprocess`'s ``spec`` describes, with the same
        torchvision ops as the eval transform (``predict MODEL.onnx`` runs it). Default: none."""
        return _unchanged

    @classmethod
    def example_image_size(cls, cfg) -> tuple[int, int]:
        """(H, W) of an eval image when no data is at hand (export then traces a grey image)."""
        return cfg.data.image_size, cfg.data.image_size

    @classmethod
    def from_export_attrs(cls, attrs: dict) -> Task:
        """The task without weights, holding only the :attr:`export_attrs` values of an exported
        file: its output methods run unchanged on :meth:`from_export_outputs`' predictions."""
        view = cls.__new__(cls)
        nn.Module.__init__(view)
        for key, value in attrs.items():
            setattr(view, key, value)
        return view

    def from_export_outputs(self, outputs: dict[str, torch.Tensor]) -> Any:
        """An exported graph's outputs, by name, in :meth:`predict`'s format."""
        raise NotImplementedError


def _unchanged(image):
    return image


class ExportNormalize(nn.Module):
    """``(x - mean) / std`` on 0..1 images inside an exported graph, or nothing when not ``active``."""

    def __init__(self, mean, std, active: bool):
        super().__init__()
        c = len(mean)
        self.active = active
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.active else x
