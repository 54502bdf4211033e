"""Run the registered benchmarks, print one table and write the rows as JSON.

Each row compares ours with a baseline measured in the same run (see :mod:`visionkit.bench.common`)
and states what it ran on; the JSON adds the machine, the library versions and the time.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

from visionkit.bench import MODULES, ON_REQUEST, OPTIONAL, common
from visionkit.errors import ConfigError
from visionkit.registry import BENCHMARKS


def load_benchmarks() -> list[str]:
    """Import every benchmark module (a missing optional one is skipped); the registered names."""
    for name in MODULES:
        module = f"visionkit.bench.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if name in OPTIONAL and e.name == module:
                continue
            raise
    return BENCHMARKS.names()


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


def main_args(args) -> int:
    """``visionkit benchmark`` (arguments parsed by visionkit.cli)."""
    names = load_benchmarks()
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
    common.SETTINGS["baseline_from"] = getattr(args, "baseline_from", None)
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

