"""train.compile (issue 9): the task's forward under torch.compile trains like the eager one, and its
checkpoints load into an eager model for eval (nn.Module.compile keeps the state-dict keys)."""

from __future__ import annotations

import pytest
import torch

from visionkit import api
from visionkit.engine.trainer import Trainer


def test_compiled_training_matches_eager_and_its_checkpoint_evaluates_eagerly(tiny_cfg, tmp_path):
    quiet = lambda *a, **k: None
    eager = Trainer(tiny_cfg(**{"train.epochs": 1}), tmp_path / "eager", log=quiet)
    eager_metrics = eager.fit()
    compiled = Trainer(tiny_cfg(**{"train.epochs": 1, "train.compile": True}), tmp_path / "compiled", log=quiet)
    assert compiled.task._compiled_call_impl is not None  # compiled in place, not wrapped
    metrics = compiled.fit()
    # same seed, same batches: the compiled kernels round differently, the training is the same
    for name, value in eager.task.state_dict().items():
        torch.testing.assert_close(compiled.task.state_dict()[name], value, rtol=1e-3, atol=1e-4)
    assert abs(metrics["accuracy"] - eager_metrics["accuracy"]) <= 1 / 24  # one val image of 24

    saved = torch.load(tmp_path / "compiled" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("_orig_mod") for k in saved["model"])
    # eval builds the model uncompiled (train.compile is off in this config) from the compiled run's checkpoint
    reloaded, _, _ = api.evaluate(tiny_cfg(), tmp_path / "compiled" / "checkpoints" / "last.pt", "val",
                                  output=tmp_path / "eval.json", log=quiet)
    assert abs(reloaded["accuracy"] - metrics["accuracy"]) < 1e-6


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection", "depth"])
def test_compile_reaches_what_each_tasks_loss_runs(task, tmp_path, shapes_root, make_config, monkeypatch):
    """A compiled module the training step never calls would make train.compile a silent no-op
    (segmentation's and detection's losses bypass the task's forward)."""
    import torch._dynamo
    from test_spawn_workers import _configs

    from visionkit.config import load_config

    compiled = []
    original = torch.nn.Module.compile

    def eager_compile(self, *args, **kwargs):  # dynamo's capture without inductor's C++ build
        compiled.append(self)
        return original(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    torch._dynamo.reset()
    path = _configs(tmp_path, shapes_root, make_config)[task]
    trainer = Trainer(load_config(path, ["train.compile=true"]), tmp_path / "run", log=lambda *a, **k: None)
    assert compiled and all(m._compiled_call_impl is not None for m in compiled)
    counters = torch._dynamo.utils.counters["stats"]
    before = counters["unique_graphs"]
    trainer.task.train()
    losses = trainer.task.loss(trainer.to_device(next(iter(trainer.loader("train")))))
    assert counters["unique_graphs"] > before, f"{task}: the training step ran no compiled graph"
    assert all(torch.isfinite(v) for v in losses.values())
