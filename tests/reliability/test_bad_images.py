"""Guarantee 6: bad images never cost a run. ``data.on_error: raise`` fails naming the file;
``skip`` finishes, lists each bad file in ``bad_samples.jsonl``, counts them in the metrics and
replaces them without touching the global RNG (equal weights with 0 or 2 loader workers);
``visionkit data check`` reports every one. Odd but valid files (PNG named .jpg, CMYK, 16-bit,
1x1) are decoded correctly."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import write_colour_classes
from PIL import Image
from relhelp import read_jsonl, run_cli

from visionkit import Trainer, load_config
from visionkit.data.datasets.folder import read_image


def png16(path, rgb8):
    """A 16-bit RGB PNG holding ``rgb8 * 257`` (PIL cannot write 16-bit colour)."""
    h, w, _ = rgb8.shape
    rows = b"".join(b"\0" + (rgb8[y].astype(">u2") * 257).tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    """Three colour classes of 12 good 32 px images each, plus every kind of awkward file."""
    root = tmp_path_factory.mktemp("bad") / "images"
    rng = np.random.default_rng(0)
    write_colour_classes(root, 12, rng)
    px = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(px).save(root / "red" / "full.jpg", quality=90)
    data = (root / "red" / "full.jpg").read_bytes()
    bad = {
        "truncated": root / "red" / "truncated.jpg",
        "empty": root / "green" / "empty.png",
        "missing": root / "blue" / "missing.png",
    }
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["empty"].write_bytes(b"")
    os.symlink(root / "gone.png", bad["missing"])  # listed, but the file is not there
    Image.fromarray(px).save(root / "blue" / "png_named.jpg", format="PNG")
    Image.fromarray(px).convert("CMYK").save(root / "green" / "cmyk.jpg")
    png16(root / "red" / "deep16.png", px)
    Image.fromarray(px[:1, :1]).save(root / "green" / "one_pixel.png")
    return root, {k: str(v) for k, v in bad.items()}, px


def config(make_config, root, **over):
    return make_config(**{"data.dataset": "image_folder", "data.root": str(root), "data.split.ratios": [1, 0, 0],
                          "data.batch_size": 8, "train.epochs": 2, "model.head.dropout": 0.3, **over})


def test_odd_but_valid_files_decode_to_the_right_pixels(bad_root):
    root, _, px = bad_root
    want = torch.from_numpy(px).permute(2, 0, 1)
    assert torch.equal(read_image(str(root / "red" / "deep16.png")), want)
    assert torch.equal(read_image(str(root / "blue" / "png_named.jpg")), want)
    cmyk = read_image(str(root / "green" / "cmyk.jpg"))
    assert cmyk.shape == want.shape and (cmyk.float() - want.float()).abs().mean() < 8  # lossy JPEG
    assert read_image(str(root / "green" / "one_pixel.png")).shape == (3, 1, 1)


def test_raise_fails_naming_the_file(make_config, bad_root, tmp_path):
    root, bad, _ = bad_root
    r = run_cli("train", config(make_config, root), "--run-dir", tmp_path / "run")
    assert r.returncode == 1
    assert any(f"'{p}'" in r.stderr for p in bad.values()), r.stderr
    assert "on_error" in r.stderr and "Traceback" not in r.stderr


def test_skip_finishes_logs_counts_and_replaces_deterministically(make_config, bad_root, tmp_path):
    root, bad, _ = bad_root
    runs = {}
    for workers in (0, 2):
        cfg = load_config(config(make_config, root, **{"data.on_error": "skip", "data.num_workers": workers,
                                                       "data.cache": workers == 0}))
        trainer = Trainer(cfg, tmp_path / f"w{workers}", log=lambda *a: None)
        trainer.fit()
        runs[workers] = trainer
        run = tmp_path / f"w{workers}"
        logged = read_jsonl(run / "bad_samples.jsonl")
        assert sorted(r["path"] for r in logged) == sorted(bad.values())
        assert all(r["reason"] for r in logged)
        train = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
        assert train[-1]["bad_samples"] == 3
        # replacements keep all 44 items of an epoch: 5 batches of 8 and one of 4, 6 steps
        assert trainer.global_step == 12 and sum(1 for r in train if r["epoch"] == 0) == 6
    for (k, a), b in zip(runs[0].task.state_dict().items(), runs[2].task.state_dict().values()):
        assert torch.equal(a, b), k  # same replacements, and the global RNG (dropout) untouched


def test_replacement_leaves_the_global_rng_alone(make_config, bad_root, tmp_path):
    root, bad, _ = bad_root
    cfg = load_config(config(make_config, root, **{"data.on_error": "skip", "data.cache": False}))
    trainer = Trainer(cfg, tmp_path / "r", log=lambda *a: None)
    view = trainer.datasets["train"]
    pos = next(p for p, i in enumerate(view.indices) if view.base.samples[i][0] == bad["empty"])
    before = torch.get_rng_state()
    sample = view[(0, pos)]
    assert torch.equal(before, torch.get_rng_state())
    assert sample["bad_samples"][0][0] == bad["empty"] and sample["image"].shape == (3, 32, 32)
    assert view[(0, pos)]["path"] == sample["path"]  # the same replacement every time


def test_data_check_reports_every_bad_file(make_config, bad_root, easy_root):
    root, bad, _ = bad_root
    r = run_cli("data", "check", config(make_config, root), "--json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert sorted(e["path"] for e in report["errors"]) == sorted(bad.values())
    assert [w["path"] for w in report["warnings"]] == [str(root / "green" / "one_pixel.png")]
    assert report["splits"]["all"] == {**report["splits"]["all"], "samples": 44, "ok": 41}

    r = run_cli("data", "check", config(make_config, easy_root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all: 120/120 samples ok" in r.stdout and "no problems found" in r.stdout
    assert "per class: blue 40, green 40, red 40" in r.stdout


def test_data_check_validates_labels(tiny_cfg, monkeypatch):
    from visionkit.data.check import check_data
    from visionkit.data.datasets.folder import ImageFolderDataset

    cfg = tiny_cfg()
    original = ImageFolderDataset.__getitem__

    def wrong_label(self, i):  # a data set bug: one label out of range
        s = original(self, i)
        if i == 5:
            s["labels"] = torch.tensor(17)
        return s

    monkeypatch.setattr(ImageFolderDataset, "__getitem__", wrong_label)
    report = check_data(cfg)
    assert [e["problem"] for e in report["errors"]] == ["label 17 is outside 0..5"]


def test_skip_in_evaluation_names_and_counts_the_bad_samples(make_config, bad_root, tmp_path):
    root, bad, _ = bad_root
    cfg = load_config(config(make_config, root, **{"data.on_error": "skip", "data.split.ratios": [1, 1, 0], "data.cache": False,
                                                   "train.epochs": 1}))
    trainer = Trainer(cfg, tmp_path / "e", log=lambda *a: None)
    trainer.fit()
    val = trainer.datasets["val"]
    in_val = sorted(p for p in bad.values() if p in {val.base.samples[i][0] for i in val.indices})
    assert in_val, "the split put no bad file into val; pick another split seed"
    metrics = trainer.validate("val")
    assert metrics["bad_samples"] == len(in_val)
    logged = {r["path"] for r in read_jsonl(tmp_path / "e" / "bad_samples.jsonl")}
    assert set(in_val) <= logged
