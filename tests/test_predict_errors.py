"""predict --on-error: an unreadable input is skipped and listed, the others still get their
results and predictions.json, and the exit code says something was skipped; the same from an
exported ONNX model."""

from __future__ import annotations

import json
import shutil

from conftest import run_cli
from test_export import ENV, checkpoint


def _inputs(shapes_root, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for src in sorted(shapes_root.rglob("*.png"))[:3]:
        shutil.copy(src, folder / f"{src.parent.name}_{src.name}")
    bad = folder / "b_broken.png"
    bad.write_text("not an image")
    return folder, bad


def _check_skipped(r, out, bad, good: int):
    assert r.returncode == 1, r.stderr
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == good and str(bad) not in [x["path"] for x in records]
    assert f"skipped 1 of {good + 1} inputs that could not be read:" in r.stdout
    listed = r.stdout.splitlines()[-1]
    assert listed.startswith(f"  {bad}: cannot decode image '{bad}'"), r.stdout
    assert r.stderr.strip() == ("error: 1 input(s) could not be read (listed above); the others were predicted")


def test_predict_skips_an_unreadable_input_by_default_and_raise_stops(make_config, shapes_root, tmp_path):
    cfg = make_config()
    ckpt = checkpoint(cfg)
    folder, bad = _inputs(shapes_root, tmp_path)
    out = tmp_path / "out"
    r = run_cli("predict", cfg, folder, "--checkpoint", ckpt, "--out", out, env=ENV)
    _check_skipped(r, out, bad, good=3)
    assert len(list(out.glob("*.png"))) == 3  # a drawing per image read

    r = run_cli("predict", cfg, folder, "--checkpoint", ckpt, "--out", tmp_path / "out2", "--on-error", "raise",
                env=ENV)
    assert r.returncode == 1
    assert r.stderr.strip().startswith(f"error: cannot decode image '{bad}'")
    assert r.stderr.strip().endswith("replace the file, leave it out of the inputs, or use --on-error skip")


def test_predict_from_onnx_skips_the_same_way(make_config, shapes_root, tmp_path):
    cfg = make_config()
    model = tmp_path / "m.onnx"
    r = run_cli("export", cfg, "--checkpoint", checkpoint(cfg), "--format", "onnx", "--out", model, env=ENV)
    assert r.returncode == 0, r.stderr
    folder, bad = _inputs(shapes_root, tmp_path)
    out = tmp_path / "out"
    _check_skipped(run_cli("predict", model, folder, "--out", out, env=ENV), out, bad, good=3)
