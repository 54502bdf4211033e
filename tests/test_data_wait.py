"""The trainer tells users how much of each step waited for input; channels_last (issue 9)."""

from __future__ import annotations

import json
import re

from visionkit.engine.trainer import Trainer


def test_trainer_logs_the_data_wait_share_per_window_and_epoch(tiny_cfg, tmp_path):
    logs: list[str] = []
    cfg = tiny_cfg(**{"train.epochs": 2, "train.log_every": 2})
    Trainer(cfg, tmp_path / "run", log=logs.append).fit()

    line = re.compile(r"epoch \d/2 train: loss .*, [\d.]+ images/s, \d+% of the time waiting for data")
    lines = [m for m in logs if line.match(m)]
    assert len(lines) == 2, logs
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train, records
    for r in train:
        assert 0 <= r["data_share"] <= 1
        assert r["data_wait_s"] >= 0 and r["step_s"] > 0
        # the share is the wait over wait + step time of the same window
        assert abs(r["data_share"] - r["data_wait_s"] / (r["data_wait_s"] + r["step_s"])) < 1e-6


def test_slow_input_is_called_the_bottleneck(tmp_path):
    """An epoch whose steps mostly waited for batches points the user at the input settings."""
    from types import SimpleNamespace

    from visionkit.engine.hooks import Console

    logs: list[str] = []
    trainer = SimpleNamespace(epoch=1, global_step=4, log=logs.append,
                              cfg=SimpleNamespace(train=SimpleNamespace(epochs=3)))
    hook = Console(progress=False)
    for wait in (0.3, 0.1, 0.0, 0.0):  # 0.4 s of 1.2 s waiting for data
        hook.after_step(trainer, {"loss": 1.0, "losses": {"loss_ce": 1.0}, "lr": 0.1, "batch_size": 6,
                                  "time": 0.3, "data_wait": wait})
    hook.after_epoch(trainer)
    assert logs[-1].startswith("epoch 1/3 train: loss 1.0000 (loss_ce 1.0000), lr 0.1, 20 images/s, "
                               "33% of the time waiting for data")
    assert "the input is the bottleneck" in logs[-1] and "data.num_workers" in logs[-1]
    for wait in (0.01, 0.01):  # a fast input says nothing more
        hook.after_step(trainer, {"loss": 1.0, "losses": {"loss_ce": 1.0}, "lr": 0.1, "batch_size": 6,
                                  "time": 0.3, "data_wait": wait})
    hook.after_epoch(trainer)
    assert logs[-1] == "epoch 1/3 train: loss 1.0000 (loss_ce 1.0000), lr 0.1, 20 images/s, 3% of the time waiting for data"
    for _ in range(2):  # a slow model (8 images in 14.5 s) keeps two digits instead of "0"
        hook.after_step(trainer, {"loss": 1.0, "losses": {"loss_ce": 1.0}, "lr": 0.1, "batch_size": 8,
                                  "time": 14.5, "data_wait": 0.0})
    hook.after_epoch(trainer)
    assert logs[-1] == "epoch 1/3 train: loss 1.0000 (loss_ce 1.0000), lr 0.1, 0.55 images/s, 0% of the time waiting for data"


def test_channels_last_trains_and_auto_keeps_cpu_layout(tiny_cfg, tmp_path):
    import torch

    auto = Trainer(tiny_cfg(**{"train.epochs": 1}), tmp_path / "auto", log=lambda *a: None)
    assert auto.channels_last is False  # auto is on only for CUDA
    cl = Trainer(tiny_cfg(**{"train.epochs": 1, "train.channels_last": True}), tmp_path / "cl",
                 log=lambda *a: None)
    conv = next(m for m in cl.task.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = cl.to_device(next(iter(cl.loader("train"))))
    assert batch["images"].is_contiguous(memory_format=torch.channels_last)
    metrics = cl.fit()
    assert 0 <= metrics["accuracy"] <= 1 and (tmp_path / "cl" / "checkpoints" / "last.pt").exists()
