"""Guarantee 5: a non-finite loss is caught before the optimizer step. Default: stop naming the
step and the loss terms, with no checkpoint holding NaN. ``train.on_nonfinite: skip``: skip the
batch, stop after ``max_nonfinite_steps`` in a row; steps AMP's scaler skips do not count."""

from __future__ import annotations

import math

import pytest
import torch
from relhelp import read_jsonl

from visionkit import Trainer
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.engine.hooks import Hook
from visionkit.engine.trainer import NonFiniteLossError


def nan_at(trainer, calls):
    """Make the task's loss NaN on the given (1-based) calls, as a bad batch would."""
    loss, count = trainer.task.loss, [0]

    def patched(batch):
        count[0] += 1
        out = loss(batch)
        return {k: v * math.nan for k, v in out.items()} if count[0] in calls else out

    trainer.task.loss = patched


def test_default_stops_naming_step_and_terms_and_saves_nothing(tiny_cfg, tmp_path):
    trainer = Trainer(tiny_cfg(**{"train.epochs": 1}), tmp_path / "r", log=lambda *a: None)
    nan_at(trainer, {4})
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 step 3 \(loss_ce=nan\)"):
        trainer.fit()
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_deferred_loss_reads_stop_at_the_same_step_before_any_checkpoint(tiny_cfg, tmp_path):
    # on CUDA the losses are read every log_every steps (one device sync), not after every step;
    # forced here on the CPU: the NaN of batch 4 is still named as step 3, and the mid-epoch
    # checkpoint due after step 4 (checkpoint_every_steps 2) is never written with it
    cfg = tiny_cfg(**{"train.epochs": 1, "train.log_every": 5, "train.checkpoint_every_steps": 4})
    trainer = Trainer(cfg, tmp_path / "r", log=lambda *a: None)
    assert trainer.losses.deferred is False  # CPU: read at once
    trainer.losses.deferred = True
    nan_at(trainer, {4})
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 step 3 \(loss_ce=nan\)"):
        trainer.fit()
    assert not list((tmp_path / "r" / "checkpoints").glob("*.pt"))


def test_deferred_loss_reads_log_and_train_exactly_as_reading_at_once(tiny_cfg, tmp_path):
    runs = {}
    for defer in (False, True):
        # a mid-epoch checkpoint every 3 steps reads the losses inside a log window
        trainer = Trainer(tiny_cfg(**{"train.epochs": 2, "train.log_every": 4, "train.checkpoint_every_steps": 3}),
                          tmp_path / str(defer), log=lambda *a: None)
        trainer.losses.deferred = defer
        trainer.fit()
        rows = [r for r in read_jsonl(tmp_path / str(defer) / "metrics.jsonl") if r["split"] == "train"]
        runs[defer] = ([(r["step"], round(r["loss"], 5), r["lr"]) for r in rows], trainer.task.state_dict())
    assert runs[True][0] == runs[False][0] and len(runs[True][0]) == 4  # steps 4, 6 (epoch end), 10, 12
    for k, v in runs[False][1].items():
        assert torch.equal(v, runs[True][1][k]), k


def test_skip_drops_bad_batches_and_counts_them(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 2, "train.on_nonfinite": "skip", "train.max_nonfinite_steps": 3})
    logs = []
    trainer = Trainer(cfg, tmp_path / "r", log=logs.append)
    nan_at(trainer, {2, 3, 8})  # two in a row, then one more: never 3 in a row
    trainer.fit()
    assert trainer.global_step == 12 - 3  # 6 batches an epoch, 3 skipped
    assert sum("skipped a batch with a non-finite loss" in m for m in logs) == 3
    train = [r for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if r["split"] == "train"]
    assert train[-1]["skipped_steps"] == 3 and all(math.isfinite(r["loss"]) for r in train)
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_skip_stops_after_too_many_in_a_row(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 2, "train.on_nonfinite": "skip", "train.max_nonfinite_steps": 3})
    trainer = Trainer(cfg, tmp_path / "r", log=lambda *a: None)
    nan_at(trainer, set(range(8, 100)))  # from batch 2 of epoch 2 on
    with pytest.raises(NonFiniteLossError, match="3 batches in a row"):
        trainer.fit()
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("epoch_*.pt"))
    assert names == ["epoch_0001.pt"]  # the epoch that was fine, nothing after


def test_steps_the_amp_scaler_skips_do_not_count(tiny_cfg, tmp_path):
    class HugeScale(Hook):  # every scaled gradient overflows, so the scaler skips every step
        def before_fit(self, trainer):  # the scale is made from _init_scale at the first step
            trainer.scaler._init_scale = 2.0 ** 120

    cfg = tiny_cfg(**{"train.epochs": 1, "train.amp": "fp16", "train.on_nonfinite": "skip",
                      "train.max_nonfinite_steps": 1})
    trainer = Trainer(cfg, tmp_path / "r", hooks=[HugeScale()], log=lambda *a: None)
    before = {k: v.clone() for k, v in trainer.task.state_dict().items()}
    trainer.fit()  # a finite loss each time: nothing counts, the run ends normally
    after = trainer.task.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)
    assert trainer.scaler.get_scale() < 2.0 ** 120  # the scaler did skip and back off
