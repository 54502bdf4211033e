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
    r = run_cli("config", "show", "configs/quickstart.yaml", cwd=tmp_path)  # the README's spelling
    assert r.returncode == 0 and "name: resnet18_w32" in r.stdout
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


# -- config init and train --task --data ------------------------------------------------------------
def _coco(root: Path) -> Path:
    """20 shapes scenes at 64 px with their COCO instances files (annotations/instances_<split>.json)."""
    from visionkit.data.datasets.coco import write_shapes_coco
    from visionkit.data.datasets.synthetic import generate_shapes

    generate_shapes(root, num_images=20, size=64, seed=0)
    write_shapes_coco(root)
    return root


def _label_folders(root: Path, n: int = 12) -> Path:
    """images/ + labels/ pairs at 48 px: a bright square (class 2) and a dark band (class 1) on background 0."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for d in ("images", "labels"):
        (root / d).mkdir(parents=True)
    for i in range(n):
        label = np.zeros((48, 48), np.uint8)
        y, x = rng.integers(0, 28, 2)
        label[y:y + 16, x:x + 16] = 2
        label[40:, :] = 1
        image = (label[..., None] * 100 + rng.integers(0, 40, (48, 48, 3))).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(label).save(root / "labels" / f"{i:02d}.png")
    return root


def _depth_folders(root: Path, n: int = 12) -> Path:
    """image/ + depth/ pairs at 48x64: depth grows from 1 m at the bottom to 5 m at the top (NYU mm PNGs)."""
    from PIL import Image

    from visionkit.data.datasets.depth import write_depth_png

    rng = np.random.default_rng(0)
    for d in ("image", "depth"):
        (root / d).mkdir(parents=True)
    rows = np.linspace(5.0, 1.0, 48)[:, None].repeat(64, 1)
    for i in range(n):
        image = (rows[..., None] * 40 + rng.integers(0, 30, (48, 64, 3))).astype(np.uint8)
        Image.fromarray(image).save(root / "image" / f"{i:02d}.png")
        write_depth_png(root / "depth" / f"{i:02d}.png", rows * rng.uniform(0.9, 1.1), 1000)
    return root


DATA = {"classification": lambda root: write_colour_classes(root, 8, np.random.default_rng(0)) or root,
        "detection": _coco, "segmentation": _label_folders, "depth": _depth_folders}
FOUND = {"classification": "3 classes: blue, green, red", "detection": "6 categories: circle",
         "segmentation": "-> 3 classes", "depth": "read as nyu (1 m = 1000)"}


@pytest.mark.parametrize("task", list(DATA))
def test_config_init_writes_a_config_that_trains_one_epoch(task, tmp_path):
    data = DATA[task](tmp_path / "data")
    r = run_cli("config", "init", task, "--data", data, "--out", "mine.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "visionkit train mine.yaml" in r.stdout  # the command to run next
    text = (tmp_path / "mine.yaml").read_text()
    assert FOUND[task] in text
    assert f"root: \"{data}\"" in text
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.task == task and cfg.data.num_workers >= 0
    r = run_cli("train", "mine.yaml", *TINY, "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "final val:" in r.stdout
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    # written once: a second init refuses to overwrite the user's (maybe edited) file
    r = run_cli("config", "init", task, "--data", data, "--out", "mine.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "'mine.yaml' already exists" in r.stderr


def test_config_init_sizes_the_config_for_the_machine(tmp_path):
    from visionkit.config_init import starter_text
    from visionkit.tasks.starters import Machine

    data = write_colour_classes(tmp_path / "big", 2, np.random.default_rng(0)) or tmp_path / "big"
    cpu = starter_text("classification", data, Machine(gpu=False, cores=2))
    gpu = starter_text("classification", data, Machine(gpu=True, cores=16))
    assert "name: resnet18_w32" in cpu and "num_workers: 1 " in cpu
    assert "    name: resnet18\n" in gpu and "num_workers: 8 " in gpu


def test_config_init_names_a_wrong_layout_with_the_readers_message(tmp_path, monkeypatch, capsys):
    from visionkit.cli import main

    def init(*args) -> tuple[int, str]:  # the CLI in this process: four subprocesses cost a minute on 2 cores
        capsys.readouterr()
        code = main(["config", "init", *args])
        return code, capsys.readouterr().err

    monkeypatch.chdir(tmp_path)
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "a.png").write_bytes(b"")
    code, err = init("classification", "--data", "loose")
    assert code != 0 and "has no class folders" in err and "move them into one folder per class" in err
    code, err = init("detection", "--data", "loose")
    assert "no COCO training annotations" in err
    code, err = init("classification", "--data", "nowhere")
    assert "--data 'nowhere' does not exist" in err
    code, err = init("clasification", "--data", "loose")
    assert code == 2 and "classification" in err
    assert list(tmp_path.glob("*.yaml")) == []


def test_train_with_task_and_data_needs_no_config_file(tmp_path, colour_root):
    r = run_cli("train", "--task", "classification", "--data", colour_root, *TINY, "model.backbone.name=lenet5",
                "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "final val: accuracy" in r.stdout
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.data.root == str(colour_root) and saved.model.backbone.name == "lenet5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no config file left behind
    r = run_cli("train", "--task", "classification", cwd=tmp_path)
    assert r.returncode == 2 and "--data FOLDER" in r.stderr
