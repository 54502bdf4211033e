"""train.compile (issue 9): the task's forward under torch.compile trains like the eager one, and its
checkpoints load into an eager model for eval (nn.Module.compile keeps the state-dict keys)."""

from __future__ import annotations

import torch

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
    reloaded = Trainer(tiny_cfg(), checkpoint=tmp_path / "compiled" / "checkpoints" / "last.pt", log=quiet)
    assert reloaded.task._compiled_call_impl is None
    assert abs(reloaded.evaluate("val")["accuracy"] - metrics["accuracy"]) < 1e-6
