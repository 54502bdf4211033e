"""Guarantee 2: a run SIGKILLed mid-epoch and resumed ends bitwise equal to an uninterrupted one;
its logged steps never repeat or go back. The SIGTERM checkpoint (of guarantee 2's signal
handling) resumes to the same result."""

from __future__ import annotations

import signal

import pytest
import torch
from relhelp import Paused, assert_bitwise_equal, read_jsonl, run_cli, weights


def train_losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"]


ON_CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))


@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
def test_sigkill_mid_epoch_then_resume_is_bitwise_equal(cli_config, tmp_path, device):
    # 6 batches per epoch; mid-epoch checkpoints every 2 optimizer steps (2, 4, 8, 10; 6 and 12
    # are epoch ends). The kill strikes after step 9, so the resume starts from step 8, batch 2 of
    # epoch 2, and must redo step 9 exactly as the killed process did. On CUDA the dropout draws
    # from the CUDA generator, whose state the checkpoint must restore too.
    cfg = cli_config(**{"train.checkpoint_every_steps": 2, "train.device": device,
                        "train.deterministic": device == "cuda"})
    full = tmp_path / "full"
    r = run_cli("train", cfg, "--run-dir", full)
    assert r.returncode == 0, r.stderr

    part = tmp_path / "part"
    code, _, _ = Paused(tmp_path, "train", cfg, "--run-dir", part, pause_after_step=9).wait().signal(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert max(s for s, _ in train_losses(part)) == 9  # the killed run had logged step 9
    r = run_cli("train", cfg, "--run-dir", part, "--resume")
    assert r.returncode == 0, r.stderr
    assert "step_00000008.pt at epoch 1 batch 2 (step 8)" in r.stdout, r.stdout

    assert_bitwise_equal(weights(part / "checkpoints" / "last.pt"), weights(full / "checkpoints" / "last.pt"))
    # metrics.jsonl: the same steps with the same losses, none repeated
    assert train_losses(part) == train_losses(full)
    # TensorBoard: the killed run's step 9 is purged, so train/loss steps strictly increase
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(part), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, 13)), steps
    full_tb = EventAccumulator(str(full), size_guidance={"scalars": 0})
    full_tb.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == [e.value for e in full_tb.Scalars("train/loss")]


def test_sigterm_saves_a_checkpoint_and_resumes_to_the_same_weights(cli_config, tmp_path):
    cfg = cli_config(**{"data.num_workers": 0, "train.epochs": 1})
    full = tmp_path / "full"
    assert run_cli("train", cfg, "--run-dir", full).returncode == 0

    part = tmp_path / "part"
    code, _, err = Paused(tmp_path, "train", cfg, "--run-dir", part, pause_after_step=3).wait().signal(signal.SIGTERM)
    assert code == 130, err
    assert "stopped by SIGTERM at epoch 1 batch 3 (step 3)" in err and "--resume" in err
    assert (part / "checkpoints" / "step_00000003.pt").exists()
    r = run_cli("train", cfg, "--run-dir", part, "--resume")
    assert r.returncode == 0, r.stderr
    assert_bitwise_equal(weights(part / "checkpoints" / "last.pt"), weights(full / "checkpoints" / "last.pt"))


def test_sigterm_to_the_whole_process_group_still_checkpoints_and_resumes(cli_config, tmp_path):
    # SLURM's scancel, `timeout` and `kill -TERM -PGID` signal the loader workers too; they must
    # leave the stop to the main process (a worker dying first used to fail the run with "data
    # loading failed" and no checkpoint of the last step)
    cfg = cli_config(**{"train.epochs": 1})  # two loader workers
    full = tmp_path / "full"
    assert run_cli("train", cfg, "--run-dir", full).returncode == 0

    part = tmp_path / "part"
    code, _, err = Paused(tmp_path, "train", cfg, "--run-dir", part, pause_after_step=3).wait().signal(
        signal.SIGTERM, group=True)
    assert code == 130, err
    assert "stopped by SIGTERM at epoch 1 batch 3 (step 3)" in err
    r = run_cli("train", cfg, "--run-dir", part, "--resume")
    assert r.returncode == 0, r.stderr
    assert_bitwise_equal(weights(part / "checkpoints" / "last.pt"), weights(full / "checkpoints" / "last.pt"))
