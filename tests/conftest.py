"""Shared fixtures: a tiny shapes data set (made once per test session) and config writers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from visionkit import load_config
from visionkit.data.datasets.synthetic import generate_shapes

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """``python -m visionkit ARGS`` as a user runs it: a subprocess, from the repository root
    unless ``cwd`` is given, with ``env`` added to the environment."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "visionkit", *map(str, args)], check=False, capture_output=True,
                          text=True, cwd=cwd or ROOT, env=full_env, timeout=timeout)


def write_colour_classes(root: Path, per_class: int, rng) -> None:
    """An ImageFolder of three easily told classes (noisy blue, green, red 32 px PNGs)."""
    from PIL import Image

    for c, name in enumerate(["blue", "green", "red"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            px = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
            px[:, :, 2 - c] += 120
            Image.fromarray(px).save(root / name / f"{i:03d}.png")


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """240 shapes scenes at 32 px."""
    root = tmp_path_factory.mktemp("data") / "shapes"
    generate_shapes(root, num_images=240, size=32, seed=0)
    return root


@pytest.fixture(scope="session")
def easy_root(tmp_path_factory) -> Path:
    """An ImageFolder of three easily told classes (noisy red, green, blue squares), 32 px PNGs."""
    root = tmp_path_factory.mktemp("data") / "easy"
    write_colour_classes(root, 40, np.random.default_rng(0))
    return root


def tiny_config_dict(shapes_root: Path, **over) -> dict:
    """A LeNet-5 classification config on the tiny shapes set that trains in a few seconds."""
    cfg = {
        "task": "classification",
        "model": {"backbone": {"name": "lenet5"}},
        "data": {
            "dataset": "shapes", "root": str(shapes_root), "image_size": 32,
            "synth": {"num_images": 240, "size": 32, "seed": 0},
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "batch_size": 32, "num_workers": 0,
        },
        "train": {
            "epochs": 2, "device": "cpu", "log_every": 1, "vis_images": 4, "progress": False,
            "optimizer": {"name": "adam", "lr": 3e-3, "weight_decay": 0.0},
            "schedule": {"name": "cosine"},
        },
    }
    for key, value in over.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


@pytest.fixture
def make_config(tmp_path, shapes_root):
    """Write a tiny config (with dotted-key changes) to a file and return its path."""

    def make(name: str = "tiny.yaml", **over) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tiny_config_dict(shapes_root, **over)))
        return path

    return make


@pytest.fixture
def tiny_cfg(make_config):
    def build(**over):
        return load_config(make_config(**over))

    return build

# used by tests/reliability (kept here: a second conftest.py would shadow `from conftest import`)
@pytest.fixture
def cli_config(make_config):
    """A tiny LeNet run for the CLI: 6 batches of 32 per epoch, shuffled, randomly cropped and
    flipped, with dropout (so the global RNG matters), two loader workers."""

    def make(name="rel.yaml", **over):
        base = {"train.epochs": 2, "data.num_workers": 2, "model.head.dropout": 0.3,
                "train.optimizer.name": "sgd", "train.optimizer.lr": 0.05, "data.cache": False}
        return make_config(name, **{**base, **over})

    return make
