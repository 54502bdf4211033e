"""The benchmark harness (``python tools/benchmark.py``): ``--quick`` runs every row end to end and
writes the JSON table.

No timing is asserted (the machine's speed is not the code's); the test checks that each
selected row is there, states what it ran on, and holds positive, finite numbers. The harness
lives in ``benchmarks/`` outside the package (pytest puts the checkout's root on ``sys.path``),
and the package neither imports it nor offers it as a subcommand.
"""

from __future__ import annotations

import ast
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.harness import main

ROOT = Path(__file__).resolve().parents[1]

ROW_KEYS = {"figure", "ours", "baseline", "ratio", "target", "met", "unit", "details"}
DETAIL_KEYS = {"model", "image_size", "batch", "threads", "device", "repeats"}


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_run_has_every_selected_row_with_sane_numbers(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VISIONKIT_BENCH_TMP", str(tmp_path))
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:  # one thread: steadier on a loaded machine, and what the rows must then report
        code = main(["--quick", "--threads", "1", "--out", str(out),
                     "--only", "trainer_step,end_to_end,pipeline,flops,coco_eval,memory,gpu"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    quick_run = json.loads(out.read_text())
    rows = quick_run["rows"]
    by_bench: dict[str, list] = {}
    for r in rows:
        assert ROW_KEYS <= set(r), r
        by_bench.setdefault(r["benchmark"], []).append(r)
    assert set(by_bench) == set(quick_run["benchmarks"])
    assert len(by_bench["trainer_step"]) == 2 and len(by_bench["end_to_end"]) == 2
    assert len(by_bench["pipeline"]) == 2
    for name in ("trainer_step", "end_to_end", "pipeline", "flops"):
        for r in by_bench[name]:
            assert "failed" not in r.get("note", ""), r
            assert positive(r["ours"]) and positive(r["baseline"]), r
            if "paired_ratios" in r["details"]:  # row 1: the median of each repeat's ratio
                pairs = [x / y for x, y in zip(r["details"]["ours_runs"], r["details"]["baseline_runs"])]
                assert r["details"]["paired_ratios"] == pytest.approx(pairs)
                assert r["ratio"] == pytest.approx(statistics.median(pairs))
            else:
                assert r["ratio"] == pytest.approx(r["ours"] / r["baseline"])
            assert r["met"] in (True, False)
            assert DETAIL_KEYS <= set(r["details"]), r["details"]
            assert r["details"]["threads"] == 1 and r["details"]["repeats"] >= 1
    flops = by_bench["flops"][0]
    assert flops["details"]["gflop_per_step"] > 0 and flops["ours"] < 5 * flops["baseline"]
    mem, mem_det = by_bench["memory"]
    # a training run holds at least the libraries (> 100 MiB) and far less than 2 GiB here
    assert 0.1 < mem["ours"] < 2 and mem["met"] is True and mem["details"]["processes"] >= 1
    assert "Mask R-CNN" in mem_det["figure"] and 0.1 < mem_det["ours"] < 4 and mem_det["target"] == "<= 4"
    # rows that cannot be measured here say why instead of showing numbers
    for name in ("coco_eval", "gpu"):
        for r in by_bench[name]:
            if r["ours"] is None:
                assert r["note"] and r["met"] is None
    printed = capsys.readouterr().out
    assert "ratio" in printed and "target" in printed and "threads 1" in printed


def test_only_rejects_unknown_names_with_a_suggestion(capsys):
    assert main(["--only", "trainer_stp"]) == 2
    err = capsys.readouterr().err
    assert "trainer_stp" in err and "trainer_step" in err


def test_list_names_every_benchmark(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("trainer_step", "end_to_end", "pipeline", "flops", "coco_eval", "memory", "gpu"):
        assert name in out


def test_alternate_flips_the_order_every_repeat_so_neither_side_always_runs_first():
    from benchmarks.common import alternate

    calls = []
    ours, base = alternate(lambda: calls.append("ours") or 1.0, lambda: calls.append("base") or 2.0, 4)
    assert calls == ["ours", "base", "base", "ours", "ours", "base", "base", "ours"]
    assert ours == [1.0] * 4 and base == [2.0] * 4


def test_training_benchmarks_run_only_when_named(capsys):
    from benchmarks.harness import benchmark_names, select

    names = benchmark_names()
    assert "detection_ap" in names and "detection_ap" not in select(names, None)
    assert select(names, "detection_ap") == ["detection_ap"]
    assert main(["--list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("detection_ap"))
    assert "only with --only" in line


def test_tools_benchmark_runs_from_a_checkout_without_pythonpath(tmp_path):
    """The script finds ``benchmarks/`` and the checkout's ``visionkit`` itself, from any folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert listed == ["trainer_step", "end_to_end", "pipeline", "flops", "detection", "detection_ap",
                      "coco_eval", "memory", "gpu", "onnx_runtime", "ddp"]


def test_visionkit_benchmark_says_where_the_benchmark_went(capsys):
    from visionkit.cli import main as visionkit_main

    assert visionkit_main(["benchmark", "--quick", "--only", "flops"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "python tools/benchmark.py" in lines[0] and "checkout" in lines[0]


def test_importing_visionkit_loads_no_benchmark_code():
    # torch itself imports torch.utils.throughput_benchmark; ours would be benchmarks.* or visionkit.*bench*
    code = ("import visionkit, sys; print([m for m in sys.modules if 'bench' in m and not m.startswith('torch.')])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=True)
    assert proc.stdout.strip() == "[]"


def test_nothing_in_the_package_imports_the_benchmarks():
    """Also imports inside functions, which importing the package would not show."""
    found = []
    for path in sorted((ROOT / "visionkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                      if n == "benchmarks" or n.startswith(("benchmarks.", "visionkit.bench"))]
    assert found == []


#: rows still allowed to reach into visionkit's private names, and why
PRIVATE_USE: dict[str, str] = {}  # file name -> why it may, while it must


def test_benchmark_rows_use_only_public_names():
    """No row but those listed imports or reads a leading-underscore name of visionkit (its own
    objects, ``self._x``, are its business)."""
    found = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        if path.name in PRIVATE_USE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("visionkit"):
                names = [node.module, *(a.name for a in node.names)]
            elif isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                names = [node.attr]
            else:
                continue
            found += [f"{path.name}:{node.lineno} {n}" for n in names
                      if any(part.startswith("_") and not part.startswith("__") for part in n.split("."))]
    assert found == []
