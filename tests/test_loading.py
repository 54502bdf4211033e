"""One path from a checkpoint to a task (visionkit/engine/loading.py): every command refuses a
checkpoint for the same reasons, with a message naming the file and the fix."""

from __future__ import annotations

import pytest
import torch

from visionkit.engine.checkpoint import FORMAT
from visionkit.engine.loading import load_weights, task_from_checkpoint
from visionkit.errors import CheckpointError
from visionkit.registry import TASKS

CLASSES = ["a", "b", "c"]


def _task(cfg, classes=CLASSES):
    torch.manual_seed(0)
    return TASKS.get(cfg.task).from_config(cfg, {"classes": classes})


def _state(cfg, task) -> dict:
    return {"format": FORMAT, "model": task.state_dict(), "config": cfg.to_dict(),
            "meta": {"task": cfg.task, "backbone": cfg.model.backbone.name, **task.metadata()}}


def test_a_fitting_checkpoint_loads_every_weight(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    saved = _task(cfg)
    path = tmp_path / "best.pt"
    torch.save(_state(cfg, saved), path)
    task, meta = task_from_checkpoint(cfg, path)
    assert meta["classes"] == CLASSES and list(task.classes) == CLASSES and not task.training
    for name, value in saved.state_dict().items():
        assert torch.equal(task.state_dict()[name], value), name
    fresh = _task(cfg)
    torch.nn.init.zeros_(next(fresh.parameters()))
    load_weights(fresh, path, cfg, CLASSES)
    assert torch.equal(next(fresh.parameters()), next(saved.parameters()))


def test_each_misfit_is_refused_naming_the_file_and_the_fix(tiny_cfg):
    cfg = tiny_cfg()
    state = _state(cfg, _task(cfg))

    other = tiny_cfg(**{"model.backbone.name": "resnet18_w32"})
    with pytest.raises(CheckpointError, match=r"'x\.pt' holds a classification model on lenet5, but the "
                                              r"config builds classification on resnet18_w32; use the config"):
        load_weights(_task(other), state, other, path="x.pt")

    with pytest.raises(CheckpointError, match=r"trained on classes \['a', 'b', 'c'\] but the data set has "
                                              r"\['a', 'b'\]"):
        load_weights(_task(cfg), state, cfg, ["a", "b"], path="x.pt")

    # another class count: the head's shapes differ (strict about shapes as about names)
    with pytest.raises(CheckpointError, match=r"'x\.pt' does not fit the model built from the config: other "
                                              r"shapes \['head\..*\(3, .* in the checkpoint, \(2, "):
        load_weights(_task(cfg, ["a", "b"]), state, cfg, path="x.pt")

    extra = {**state, "model": {**state["model"], "head.extra": torch.zeros(1)}}
    with pytest.raises(CheckpointError, match=r"missing \[\], unexpected \['head\.extra'\]"):
        load_weights(_task(cfg), extra, cfg, path="x.pt")

    # a checkpoint whose own config built another head: the overrides that rebuild it are named
    wider = tiny_cfg(**{"model.head.name": "linear"})
    with pytest.raises(CheckpointError, match="built with model.head.name=auto: pass those overrides"):
        load_weights(_task(wider), state, wider, path="x.pt")
