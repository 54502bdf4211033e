"""Loader workers started by spawn or forkserver (macOS and Windows by default, Linux from Python
3.14, and any process that was itself spawned) receive the data set pickled: every task's train
and eval data sets, transforms included, must pickle and load back to the same samples."""

from __future__ import annotations

import pickle

import pytest
import torch
import yaml

from visionkit.config import load_config
from visionkit.engine.trainer import Trainer


def _configs(tmp_path, shapes_root, make_config):
    from test_depth_task import depth_config
    from test_detection_cli import tiny_detection_config
    from test_segmentation import seg_config

    return {"classification": make_config(), "segmentation": seg_config(tmp_path, shapes_root),
            "detection": tiny_detection_config(tmp_path, shapes_root), "depth": depth_config(shapes_root, tmp_path)}


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection", "depth"])
def test_every_tasks_data_sets_pickle_for_spawned_workers(task, tmp_path, shapes_root, make_config):
    path = _configs(tmp_path, shapes_root, make_config)[task]
    assert yaml.safe_load(path.read_text()).get("task", "classification") == task
    trainer = Trainer(load_config(path), tmp_path / "run", log=lambda *a, **k: None)
    for split in ("train", "val"):
        data = trainer.datasets[split]
        again = pickle.loads(pickle.dumps(data))
        torch.manual_seed(0)
        a = data[0]
        torch.manual_seed(0)
        b = again[0]
        for key, value in a.items():  # the same sample, augmentation draws included
            if isinstance(value, torch.Tensor):
                assert torch.equal(torch.as_tensor(b[key]), torch.as_tensor(value)), (split, key)
