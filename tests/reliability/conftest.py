"""Fixtures of the reliability tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def cli_config(make_config):
    """A tiny LeNet run for the CLI: 6 batches of 32 per epoch, shuffled, randomly cropped and
    flipped, with dropout (so the global RNG matters), two loader workers."""

    def make(name="rel.yaml", **over):
        base = {"train.epochs": 2, "data.num_workers": 2, "model.head.dropout": 0.3,
                "train.optimizer.name": "sgd", "train.optimizer.lr": 0.05, "data.cache": False}
        return make_config(name, **{**base, **over})

    return make
