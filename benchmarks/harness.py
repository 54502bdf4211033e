"""Run the registered benchmarks, print one table and write the rows as JSON.

Each row compares ours with a baseline measured in the same run (see :mod:`benchmarks.common`)
and states what it ran on; the JSON adds the machine, the library versions and the time.
Run from a checkout: ``python tools/benchmark.py [--quick] [--only NAME[,NAME]] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks import (
    BENCHMARKS,
    ON_REQUEST,
    coco_eval,
    common,
    ddp_scaling,
    detection,
    end_to_end,
    flops,
    gpu,
    memory,
    onnx_runtime,
    pipeline,
    trainer_step,
)
from visionkit.errors import ConfigError, VisionKitError

#: the row modules in table order (importing them registered their benchmarks)
ROWS = (trainer_step, end_to_end, pipeline, flops, detection, coco_eval, memory, gpu, onnx_runtime, ddp_scaling)


def benchmark_names() -> list[str]:
    """Every registered benchmark, in table order (a module's own benchmarks in their order)."""
    order = [m.__name__ for m in ROWS]
    return sorted(BENCHMARKS.names(), key=lambda n: order.index(BENCHMARKS.get(n).__module__))


def select(names: list[str], only: str | None) -> list[str]:
    if not only:
        return [n for n in names if n not in ON_REQUEST]
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    for n in wanted:
        if n not in BENCHMARKS:
            raise ConfigError(f"--only: {BENCHMARKS.unknown_message(n)}")
    return [n for n in names if n in wanted]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1e9:
            return f"{v / 1e9:.1f}G"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table, with what each was measured on beneath it."""
    head = ("figure", "ours", "baseline", "ratio", "target", "met?", "unit")
    body = []
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r.get("met")]
        body.append((r["figure"], fmt(r["ours"]), fmt(r["baseline"]), fmt(r["ratio"]), r["target"], met,
                     r.get("unit", "")))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r, cells in zip(rows, body):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)))
        d = r.get("details", {})
        keys = ("model", "image_size", "batch", "threads", "device", "repeats")
        said = ", ".join(f"{k} {d[k]}" for k in keys if k in d)
        if said:
            lines.append(f"    {said}")
        if r.get("note"):
            lines.append(f"    note: {r['note']}")
    return "\n".join(lines)


def run(names: list[str], quick: bool, log=print) -> list[dict]:
    """Run the benchmarks ``names``; a benchmark that fails gives a row saying so, not a crash."""
    rows = []
    for name in names:
        start = time.perf_counter()
        log(f"running {name}{' (quick)' if quick else ''} ...")
        try:
            got = BENCHMARKS.get(name)(quick)
        except Exception as e:  # noqa: BLE001  (one broken row must not lose the others)
            traceback.print_exc()
            got = [common.unavailable(f"{name}", "-", "-", f"failed: {type(e).__name__}: {e}")]
        for r in got:
            r["benchmark"] = name
            r["seconds"] = round(time.perf_counter() - start, 2)
        rows.extend(got)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tools/benchmark.py",
                                     description="speed and memory figures side by side with baselines")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (about a minute)")
    parser.add_argument("--only", metavar="NAME[,NAME]", help="run only these benchmarks (see --list)")
    parser.add_argument("--out", metavar="FILE", help="write the rows as JSON")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a usage error")
    return parser


def run_args(args) -> int:
    """List or run the benchmarks as parsed by :func:`build_parser`."""
    names = benchmark_names()
    if args.list:
        for n in names:
            fn = BENCHMARKS.get(n)  # its own docstring when it says which row, else its module's
            own = (fn.__doc__ or "").strip()
            doc = (own if own.startswith("Row") else sys.modules[fn.__module__].__doc__ or "").strip().splitlines()
            when = "  (only with --only)" if n in ON_REQUEST else ""
            print(f"{n:<14} {doc[0] if doc else ''}{when}")
        return 0
    if args.device != "auto":
        try:
            dev = torch.device(args.device)
        except RuntimeError:
            raise ConfigError(f"--device '{args.device}': use auto, cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device '{args.device}' but no CUDA device is available; use auto or cpu")
    common.SETTINGS["device"] = args.device
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads is {args.threads}; give 1 or more")
        torch.set_num_threads(args.threads)
    chosen = select(names, args.only)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = run(chosen, args.quick)
    print()
    print(table(rows))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"started": started, "quick": args.quick, "device": str(common.device()),
                  "threads": torch.get_num_threads(),
                  "machine": machine(), "benchmarks": chosen, "rows": rows}
        out.write_text(json.dumps(record, indent=2, default=str))
        print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python tools/benchmark.py ARGS``; exit 0, or 2 with one line for a usage error."""
    args = build_parser().parse_args(argv)  # bad flags exit 2 here
    try:
        return run_args(args)
    except VisionKitError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
