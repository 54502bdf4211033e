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


# -- where a missing split would come from (said by the data set kind) ----------------------------

def test_coco_without_a_test_file_names_the_file_that_would_hold_it(tiny_cfg, shapes_root, tmp_path):
    import shutil

    from visionkit.data.build import build_source
    from visionkit.data.datasets.coco import write_shapes_coco

    root = tmp_path / "coco"
    shutil.copytree(shapes_root, root)
    write_shapes_coco(root)
    (root / "annotations" / "instances_test.json").unlink()
    cfg = tiny_cfg(**{"task": "detection", "data.dataset": "coco", "data.root": str(root)})
    said = build_source(cfg).no_split("test")
    assert said == (f"the data set has no 'test' split: this data set keeps its own splits; test would be "
                    f"'{root / 'annotations' / 'instances_test.json'}' (its images in '{root / 'test'}')")


def test_pool_without_a_test_share_names_data_split_ratios(tiny_cfg):
    from visionkit.data.build import build_source

    said = build_source(tiny_cfg(**{"data.split.ratios": [8, 1, 0]})).no_split("test")
    assert "data.split.ratios" in said and "give test a share above 0" in said, said


def test_folders_without_test_say_so_at_the_start_and_eval_names_the_folder(make_config, tmp_path):
    """train.final_test on a data set with train/ and val/ folders only: the run says at its start
    where the test split would be; eval --split test names the same folder; a checkpoints folder
    given as --checkpoint is refused first, without a note about another folder's split.json."""
    import numpy as np
    from conftest import write_colour_classes

    from visionkit import load_config
    from visionkit.engine.trainer import Trainer

    root = tmp_path / "own"
    for split in ("train", "val"):
        write_colour_classes(root / split, 6, np.random.default_rng(0))
    cfg_path = make_config(**{"data.dataset": "image_folder", "data.root": str(root), "train.epochs": 1,
                              "train.final_test": True, "data.batch_size": 8})
    said = []
    with Trainer(load_config(cfg_path), tmp_path / "run", log=said.append) as trainer:
        trainer.fit()
    note = next(i for i, x in enumerate(said) if x.startswith("note: train.final_test is on"))
    first_epoch = next(i for i, x in enumerate(said) if x.startswith("epoch 1/1"))
    assert note < first_epoch, said
    assert f"test would be the folder '{root / 'test'}' of class folders" in said[note]
    assert not (tmp_path / "run" / "test_metrics.json").exists()

    res = run_cli("eval", cfg_path, "--checkpoint", tmp_path / "run" / "checkpoints" / "last.pt", "--split", "test")
    assert res.returncode == 2 and f"test would be the folder '{root / 'test'}'" in res.stderr, res.stderr
    assert "data.split.ratios" not in res.stderr

    res = run_cli("eval", cfg_path, "--checkpoint", tmp_path / "run" / "checkpoints")
    assert res.returncode != 0 and "is a folder; pass a .pt file in it" in res.stderr, res.stderr
    assert "split.json" not in res.stdout + res.stderr


# -- reading a config has no side effects; data messages fit the settings -------------------------

def test_info_and_config_show_write_nothing(tmp_path):
    """The quickstart's built-in data is generated on first training, never by reading its config."""
    from conftest import ROOT

    for args in (["info", ROOT / "configs" / "quickstart.yaml"], ["config", "show", ROOT / "configs" / "quickstart.yaml"]):
        res = run_cli(*args, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert list(tmp_path.iterdir()) == [], args
    assert "classes           6" in run_cli("info", ROOT / "configs" / "quickstart.yaml", cwd=tmp_path).stdout


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation", "depth"])
def test_the_shapes_outline_is_what_the_generated_data_gives(tiny_cfg, task):
    """What info builds a model from (no data) is what training reads from the generated scenes."""
    from visionkit.data.build import build_source

    cfg = tiny_cfg(task=task)
    outline, real = build_source(cfg, write=False), build_source(cfg)
    assert outline.pool is None and real.pool is not None
    assert outline.classes == real.classes and outline.info == real.info


def test_a_shapes_root_made_with_other_settings_names_data_root_and_the_fix(make_config, shapes_root, tmp_path):
    res = run_cli("train", make_config(), "data.synth.num_images=200", "--run-dir", tmp_path / "run")
    assert res.returncode != 0
    assert res.stderr.strip() == (
        f"error: {shapes_root} already holds a shapes data set made with other parameters: "
        f"data.synth.num_images=240 (requested 200); point data.root at another folder for these settings "
        f"(e.g. data.root={shapes_root}-200-32px-seed0) or delete '{shapes_root}' to generate it anew")
    assert not (tmp_path / "run").exists()


def test_skipped_images_are_not_told_to_set_on_error_skip(tmp_path):
    from visionkit.data.datasets.folder import ImageFolderDataset
    from visionkit.errors import DataError

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_text("not an image")
    skipping = ImageFolderDataset(tmp_path, on_error="skip")
    assert skipping[0] is None
    assert skipping.describe_bad(0)[1].endswith("; replace or delete the file"), skipping.describe_bad(0)
    with pytest.raises(DataError, match=r"\(or set data.on_error=skip to drop unreadable images\)$"):
        ImageFolderDataset(tmp_path)[0]
