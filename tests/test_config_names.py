"""Configs that work wherever they are: shipped configs found by name from any folder, ``_base_``
found among them when it is not beside a copied file, the package data that carries them, and
``config list``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli, write_colour_classes

from visionkit.config import load_config
from visionkit.config_names import list_shipped
from visionkit.errors import ConfigError

TINY = ["train.epochs=1", "train.device=cpu", "train.progress=false", "data.num_workers=0", "train.vis_images=0"]


@pytest.fixture(scope="module")
def colour_root(tmp_path_factory) -> Path:
    """An ImageFolder of three colour classes, 8 images each, 32 px."""
    root = tmp_path_factory.mktemp("own") / "images"
    write_colour_classes(root, 8, np.random.default_rng(0))
    return root


def test_a_shipped_config_is_found_by_name_from_another_folder(tmp_path):
    r = run_cli("config", "show", "quickstart", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "name: resnet18_w32" in r.stdout
    r = run_cli("config", "show", "detection/mask_rcnn_resnet18_fpn_shapes.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "task: detection" in r.stdout
    assert list(tmp_path.iterdir()) == []  # showing a config writes nothing


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    (tmp_path / "quickstart").write_text("task: depth\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("quickstart").task == "depth"
    assert load_config("quickstart.yaml").task == "classification"  # no such file here: the shipped one


def test_an_unknown_name_names_the_closest_shipped_configs(tmp_path):
    r = run_cli("train", "mask_rcnn_resnet18", cwd=tmp_path)
    assert r.returncode == 2
    assert "config file 'mask_rcnn_resnet18' does not exist" in r.stderr
    assert "detection/mask_rcnn_resnet18_fpn_shapes" in r.stderr
    r = run_cli("train", "quikstart", cwd=tmp_path)
    assert "closest shipped configs: quickstart" in r.stderr


def test_a_copied_template_finds_its_bases_among_the_shipped_configs(tmp_path):
    copy = tmp_path / "mine.yaml"
    shutil.copy(ROOT / "configs" / "classification" / "imagefolder_template.yaml", copy)
    cfg = load_config(copy)
    assert cfg.train.device == "auto" and cfg.train.optimizer.name == "sgd"  # runtime + sgd_cosine merged
    assert cfg.origins["train.device"].endswith("_base_/runtime.yaml")


def test_a_base_found_nowhere_names_both_places(tmp_path):
    (tmp_path / "c.yaml").write_text("_base_: ../_base_/no_such.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "c.yaml")
    msg = str(e.value)
    assert f"looked at {tmp_path / '../_base_/no_such.yaml'} (beside the file)" in msg
    assert "shipped config '_base_/no_such'" in msg


def test_a_copied_template_trains_one_epoch_from_a_folder_outside_the_checkout(tmp_path, colour_root):
    copy = tmp_path / "my_config.yaml"
    shutil.copy(ROOT / "configs" / "classification" / "imagefolder_template.yaml", copy)
    r = run_cli("train", copy, f"data.root={colour_root}", "data.image_size=32", "model.backbone.name=lenet5",
                "data.batch_size=8", "data.augment.resize_ratio=1.0", *TINY, "--run-dir", tmp_path / "run",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "final val: accuracy" in r.stdout
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_config_list_shows_every_recipe_with_its_description():
    listed = dict(list_shipped())
    assert listed["quickstart"].startswith("The quickstart: a half-width ResNet-18")
    assert "detection/mask_rcnn_resnet18_fpn_shapes" in listed
    assert not any(n.startswith("_base_") or "/_" in n for n in listed)  # fragments are no recipes
    r = run_cli("config", "list")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("classification/imagefolder_template"))
    assert "Your own images" in line


def test_a_wheel_carries_every_shipped_config_as_package_data(tmp_path):
    """What ``pip install .`` installs: the wheel built from a copy of the checkout (the build
    writes build/ and egg-info folders, which the checkout should not get)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("visionkit", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path / "dist")], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "dist").glob("visionkit-*.whl"))
    packaged = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("visionkit/configs/")}
    shipped = {"visionkit/configs/" + p.relative_to(ROOT / "configs").as_posix()
               for p in (ROOT / "configs").rglob("*.yaml")}
    assert shipped and packaged == shipped
    assert "visionkit/config_names.py" in zipfile.ZipFile(wheel).namelist()
