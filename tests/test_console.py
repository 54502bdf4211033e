"""The console a user reads: the run's lines through the CLI without a terminal, and torch's
warnings about a config value said as our own advice naming the key."""

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch
from conftest import run_cli

from visionkit.advice import config_advice


def test_epoch_lines_in_order_with_progress_lines_when_no_terminal(make_config, tmp_path):
    """Per epoch: a plain progress line every train.log_every steps (no terminal: no bar), then one
    lasting train line (loss terms, lr, images/s, data wait), then that epoch's val line; the
    final test comes last."""
    cfg = make_config(**{"train.log_every": 2, "train.progress": True, "train.final_test": True})
    res = run_cli("train", cfg, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stdout.splitlines() if x.startswith("epoch ")]
    kinds = [re.sub(r"^epoch (\d)/2 (step \d/6|train|val|test).*", r"\1 \2", x) for x in lines]
    assert kinds == ["1 step 2/6", "1 step 4/6", "1 step 6/6", "1 train", "1 val",
                     "2 step 2/6", "2 step 4/6", "2 step 6/6", "2 train", "2 val", "2 test"], lines
    train = lines[3]
    assert re.fullmatch(r"epoch 1/2 train: loss \d+\.\d{4} \(loss_ce \d+\.\d{4}\), lr [\d.e-]+, [\d.]+ images/s, "
                        r"\d+% of the time waiting for data.*", train), train
    assert re.match(r"epoch 1/2 val: accuracy \d\.\d{4}", lines[4])
    assert "\r" not in res.stdout + res.stderr  # no bar drawn into a log file


def test_progress_off_prints_only_the_lasting_lines(make_config, tmp_path):
    res = run_cli("train", make_config(**{"train.epochs": 1}), "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    lines = [x.split(":")[0] for x in res.stdout.splitlines() if x.startswith("epoch ")]
    assert lines == ["epoch 1/1 train", "epoch 1/1 val"], res.stdout


def test_too_many_workers_is_advice_naming_data_num_workers():
    """torch's "suggested max number of worker" warning becomes one line naming the key and the count."""
    cores = len(os.sched_getaffinity(0))
    said = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with config_advice(said.append):
            loader = torch.utils.data.DataLoader(list(range(4)), num_workers=cores + 1)
            loader.check_worker_number_rationality()  # what creating its iterator runs
            loader.check_worker_number_rationality()  # a second loader: said once
    assert said == [(f"advice: data.num_workers={cores + 1} is more than the {cores} cores this process may use; "
                     f"set data.num_workers={cores} or fewer (more only pays when reading the files waits on a "
                     "slow disk or network)")]
    assert not caught  # torch's own text is not shown beside it


def test_scheduler_order_warning_is_advice_naming_train_amp_and_others_pass():
    said = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with config_advice(said.append):
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
            sched = torch.optim.lr_scheduler.StepLR(opt, 1)
            sched.step()  # as after a step the fp16 loss scaler skipped
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert len(said) == 1 and "train.amp=bf16" in said[0], said
    assert [str(w.message) for w in caught] == ["something else"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning needs a machine without a GPU")
def test_pin_memory_without_cuda_is_advice_naming_train_device():
    said = []
    with config_advice(said.append):
        iter(torch.utils.data.DataLoader([1, 2], pin_memory=True))
    assert len(said) == 1 and "train.device" in said[0], said
