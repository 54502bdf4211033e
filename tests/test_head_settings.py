"""``model.head.name`` picks the head in every task, the keys it replaced are refused naming it,
and each task's ``model.head`` keys come from one settings dataclass."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from visionkit import load_config
from visionkit.errors import ConfigError
from visionkit.models.heads.settings import option
from visionkit.registry import TASKS
from visionkit.tasks.base import settings_schema


@pytest.mark.parametrize(("task", "old", "value"), [("classification", "classifier", "linear"),
                                                    ("depth", "decoder", "fpn")])
def test_a_renamed_head_key_is_refused_naming_the_new_one(make_config, task, old, value):
    path = make_config(**{"task": task, f"model.head.{old}": value})
    renamed = rf"'model.head.{old}' was renamed: use model.head.name$"
    with pytest.raises(ConfigError, match=rf"tiny.yaml: {renamed}"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"command line: {renamed}"):
        load_config(make_config(task=task), [f"model.head.{old}={value}"])


@pytest.mark.parametrize(("task", "name", "backbone"), [("classification", "linear", "lenet5"),
                                                        ("segmentation", "fcn", "resnet18_w32"),
                                                        ("depth", "fpn", "resnet18_w32"),
                                                        ("detection", "faster_rcnn", "resnet18_w32")])
def test_model_head_name_picks_the_head_in_every_task(make_config, task, name, backbone):
    cfg = load_config(make_config(**{"task": task, "model.backbone.name": backbone, "model.head.name": name}))
    built = TASKS.get(task).from_config(cfg, {"classes": ["a", "b", "c"]})
    head = {"classification": lambda t: type(t.head).__name__ == "PoolLinear",
            "segmentation": lambda t: type(t.head.head).__name__ == "FCNHead",
            "depth": lambda t: t.head.decoder == "fpn" and hasattr(t.head, "fpn"),
            "detection": lambda t: t.variant == "faster_rcnn" and not t.model.has_masks}[task]
    assert head(built)


@pytest.mark.parametrize(("task", "typo", "meant"), [("classification", "liner", "linear"),
                                                     ("segmentation", "semantic_fp", "semantic_fpn"),
                                                     ("depth", "unt", "unet"),
                                                     ("detection", "mask_rcn", "mask_rcnn")])
def test_an_unknown_head_name_lists_the_tasks_own_heads(make_config, task, typo, meant):
    message = rf"'model.head.name' is '{typo}', not one of: .*did you mean '{meant}'"
    with pytest.raises(ConfigError, match=message):
        load_config(make_config(**{"task": task, "model.head.name": typo}))


def test_a_settings_dataclass_generates_its_schema():
    @dataclass
    class Toy:
        name: str = option("a", choices=("a", "b"), help="which")
        width: int | None = option(None, min=1)
        rates: list[float] = option([1.0, 2.0], length=2)  # noqa: RUF009

    schema = settings_schema(Toy)
    assert list(schema) == ["name", "width", "rates"]
    assert (schema["name"].type, schema["name"].default, schema["name"].choices, schema["name"].help) == \
        (str, "a", ("a", "b"), "which")
    assert (schema["width"].type, schema["width"].nullable, schema["width"].min) == (int, True, 1)
    assert (schema["rates"].type, schema["rates"].default, schema["rates"].length) == ([float], [1.0, 2.0], 2)
    assert Toy().rates is not Toy().rates  # a list default is each instance's own


@pytest.mark.parametrize("task", ["classification", "segmentation", "depth"])
def test_every_head_key_is_a_settings_field(task):
    cls = TASKS.get(task)
    assert list(cls.head_schema()) == list(settings_schema(cls.settings))
