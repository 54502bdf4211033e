"""The shared trainer on a tiny classification run: learning, resume, logs, eval."""

from __future__ import annotations

import json

import pytest
import torch

from visionkit import Trainer
from visionkit.engine.hooks import Hook


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loss_falls_and_run_dir_has_everything(tiny_cfg, easy_root, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 4, "data.dataset": "image_folder", "data.root": str(easy_root),
                      "data.batch_size": 16})
    trainer = Trainer(cfg, tmp_path / "run", log=lambda *a: None)
    metrics = trainer.fit()
    run = tmp_path / "run"
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
    first = sum(r["loss"] for r in records[:3]) / 3
    last = sum(r["loss"] for r in records[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    assert metrics["accuracy"] >= 0.9  # three classes told apart by colour
    assert (run / "config.yaml").exists() and (run / "split.json").exists()
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)


class StopAfter(Hook):
    """Simulates an interrupted run: stop after ``n`` epochs (after the checkpoint is written)."""

    def __init__(self, n):
        self.n = n

    def after_epoch(self, trainer):
        if trainer.epoch >= self.n:
            trainer.should_stop = True


def test_resume_continues_at_the_right_epoch_with_equal_state(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 3, "train.optimizer.name": "sgd", "train.optimizer.lr": 0.05})
    full = Trainer(cfg, tmp_path / "full", log=lambda *a: None)
    full.fit()

    part = Trainer(cfg, tmp_path / "part", hooks=[StopAfter(1)], log=lambda *a: None)
    part.fit()
    assert part.epoch == 1
    logs = []
    resumed = Trainer(cfg, tmp_path / "part", resume=True, log=logs.append)
    assert resumed.epoch == 0  # restored in fit()
    resumed.fit()
    assert any("resumed from" in m and "epoch 1" in m for m in logs)
    assert resumed.epoch == 3 and resumed.global_step == full.global_step
    assert resumed.scheduler.state_dict()["last_epoch"] == full.scheduler.state_dict()["last_epoch"]
    for a, b in zip(resumed.optimizer.state_dict()["state"].values(), full.optimizer.state_dict()["state"].values()):
        assert torch.allclose(a["momentum_buffer"], b["momentum_buffer"], atol=1e-6)
    for (name, a), b in zip(resumed.task.state_dict().items(), full.task.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    # logged steps never go back after the resume
    steps = [r["step"] for r in read_jsonl(tmp_path / "part" / "metrics.jsonl") if r["split"] == "train"]
    assert steps == sorted(steps)


def test_resume_of_a_finished_run_does_nothing(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 1})
    Trainer(cfg, tmp_path / "r", log=lambda *a: None).fit()
    before = (tmp_path / "r" / "checkpoints" / "last.pt").stat().st_mtime_ns
    logs = []
    Trainer(cfg, tmp_path / "r", resume=True, log=logs.append).fit()
    assert any("already finished" in m for m in logs)
    assert (tmp_path / "r" / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_tensorboard_events_hold_the_expected_tags(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(tiny_cfg(**{"train.epochs": 1}), tmp_path / "tb", log=lambda *a: None).fit()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ["train/loss", "train/loss_ce", "train/lr", "train/images_per_s", "train/data_wait_s",
                "train/step_s", "train/data_share", "val/accuracy", "val/mean_class_accuracy"]:
        assert tag in tags["scalars"], tag
    assert "val/samples" in tags["images"]
    assert any(t.startswith("config") for t in tags["tensors"])  # add_text is stored as a tensor
    lr = [e.value for e in acc.Scalars("train/lr")]
    assert lr[0] > 0 and lr[-1] < lr[0]  # cosine decay


def test_eval_reproduces_the_validation_metrics(tiny_cfg, tmp_path):
    from visionkit import api

    cfg = tiny_cfg(**{"train.epochs": 2})
    trainer = Trainer(cfg, tmp_path / "e", log=lambda *a: None)
    val = trainer.fit()
    metrics, details, out = api.evaluate(cfg, tmp_path / "e" / "checkpoints" / "last.pt", "val", log=lambda *a: None)
    assert metrics == pytest.approx(val, abs=1e-9)
    assert len(details["confusion_matrix"]) == 6 and sum(map(sum, details["confusion_matrix"])) == 24
    assert json.loads(out.read_text())["metrics"] == pytest.approx(val)


def test_final_test_scores_the_test_split_only_at_the_end(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 1, "train.final_test": True})
    Trainer(cfg, tmp_path / "t", log=lambda *a: None).fit()
    test = json.loads((tmp_path / "t" / "test_metrics.json").read_text())
    assert 0 <= test["accuracy"] <= 1
    splits = {r["split"] for r in read_jsonl(tmp_path / "t" / "metrics.jsonl")}
    assert splits == {"train", "val", "test"}


def test_split_is_saved_and_reused(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 1})
    Trainer(cfg, tmp_path / "s", log=lambda *a: None).fit()
    split = json.loads((tmp_path / "s" / "split.json").read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [192, 24, 24]
    assert not set(split["train"]) & set(split["test"])


def test_early_stopping_and_grad_accumulation(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 6, "train.early_stopping": 1, "train.accumulate": 2,
                      "train.optimizer.lr": 0.0, "train.clip_grad_norm": 1.0})
    logs = []
    trainer = Trainer(cfg, tmp_path / "es", log=logs.append)
    trainer.fit()
    assert trainer.epoch < 6 and any("early stopping" in m for m in logs)
    assert trainer.global_step == trainer.epoch * 3  # 6 batches per epoch, 2 per optimizer step


def test_multi_label_mode(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 1, "model.head.multi_label": True})
    metrics = Trainer(cfg, tmp_path / "ml", log=lambda *a: None).fit()
    assert set(metrics) == {"accuracy", "exact_match", "mAP"}
    assert 0 <= metrics["mAP"] <= 1


def test_backbone_weights_from_a_torchvision_state_dict(tiny_cfg, tmp_path):
    import torchvision

    from visionkit.errors import CheckpointError

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    # the 1000-class fc does not fit 6 classes: refused unless the config lets it be skipped
    cfg = tiny_cfg(**{"model.backbone.name": "resnet18", "model.backbone.weights": str(path)})
    with pytest.raises(CheckpointError, match="weights_skip"):
        Trainer(cfg, tmp_path / "w0", log=lambda *a: None)
    logs = []
    cfg = tiny_cfg(**{"model.backbone.name": "resnet18", "model.backbone.weights": str(path),
                      "model.backbone.weights_skip": ["fc"]})
    trainer = Trainer(cfg, tmp_path / "w", log=logs.append)
    assert torch.equal(trainer.task.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert any("loaded backbone weights" in m for m in logs)

    vgg = tmp_path / "vgg.pth"
    torch.save(torchvision.models.vgg11(weights=None).features.state_dict(), vgg)
    cfg = tiny_cfg(**{"model.backbone.name": "resnet18", "model.backbone.weights": str(vgg)})
    with pytest.raises(CheckpointError, match="vgg.pth"):
        Trainer(cfg, tmp_path / "w2", log=lambda *a: None)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(tiny_cfg, easy_root, tmp_path, amp):
    cfg = tiny_cfg(**{"train.epochs": 1, "train.amp": amp, "data.dataset": "image_folder",
                      "data.root": str(easy_root), "model.backbone.name": "resnet18_w32"})
    trainer = Trainer(cfg, tmp_path / amp, log=lambda *a: None)
    before = trainer.task.head.fc.weight.clone()
    metrics = trainer.fit()
    assert not torch.equal(before, trainer.task.head.fc.weight)
    assert torch.isfinite(trainer.task.head.fc.weight).all() and "accuracy" in metrics
    assert trainer.scaler.is_enabled() == (amp == "fp16")


def test_fp16_steps_skipped_by_the_loss_scaler_raise_no_scheduler_order_warning(tiny_cfg, tmp_path):
    """GradScaler skips the optimizer step while its scale overflows (often the first steps of an
    fp16 run) and the schedule still advances. With a per-tensor optimizer torch then warns
    "lr_scheduler.step() before optimizer.step()"; the fused optimizers the trainer builds take
    the step call and skip inside their kernel, so an fp16 run starts quiet (fails with fused off)."""
    import warnings

    cfg = tiny_cfg(**{"train.epochs": 2, "train.amp": "fp16", "train.device": "cpu"})
    lines = []
    trainer = Trainer(cfg, tmp_path / "r", log=lines.append)
    # 2**24 overflows fp16 gradients at once; halving per skipped step it settles after a few
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    weights = lambda: torch.nn.utils.parameters_to_vector(trainer.task.parameters()).detach().clone()
    before = weights()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit()
    assert trainer.scaler.get_scale() < 2.0**24  # steps were skipped
    assert not torch.equal(before, weights())  # and later ones were taken
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "lr_scheduler.step()" in m], said
    assert not [m for m in lines if "train.amp" in m], lines  # nor our advice in its place


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_picks_bf16_only_where_the_device_has_it(tiny_cfg, tmp_path, monkeypatch, native):
    """On a CPU without AVX-512 BF16 / AMX bf16 is emulated and slower than fp32, so auto falls back."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    said = []
    trainer = Trainer(tiny_cfg(**{"train.amp": "auto", "train.device": "cpu", "train.epochs": 1}),
                      tmp_path / "r", log=said.append)
    trainer.fit()
    assert trainer.amp_dtype == (torch.bfloat16 if native else None)
    assert not trainer.scaler.is_enabled()
    line = next(x for x in said if x.startswith("device cpu"))
    assert ("amp bf16 (auto: native bf16" if native else "amp none (auto: no native bf16") in line


def test_non_finite_loss_stops_naming_the_step_and_saves_nothing(tiny_cfg, tmp_path):
    from visionkit.engine.trainer import NonFiniteLossError

    class Poison(Hook):  # a diverged weight, as a too-high learning rate would leave it
        def after_step(self, trainer, logs):
            if trainer.global_step == 2:
                next(trainer.task.head.parameters()).data.fill_(float("nan"))

    cfg = tiny_cfg(**{"train.epochs": 1})
    trainer = Trainer(cfg, tmp_path / "nan", hooks=[Poison()], log=lambda *a: None)
    with pytest.raises(NonFiniteLossError, match=r"step 2 \(loss_ce=nan"):
        trainer.fit()
    assert not (tmp_path / "nan" / "checkpoints").exists()
