"""Helpers of the reliability tests (imported as ``relhelp``): the CLI in a subprocess, paused at
an exact point by the fault-injection hooks of :mod:`visionkit.engine.faults`, then killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def cli_env(**faults) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("VISIONKIT_FAULTS", None)
    if faults:
        env["VISIONKIT_FAULTS"] = ",".join(f"{k}={v}" for k, v in faults.items())
    return env


def run_cli(*args, timeout=300, **faults) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "visionkit", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, check=False, env=cli_env(**faults), timeout=timeout)


class Paused:
    """A CLI run that pauses at a fault point; ``wait()`` returns once it is there."""

    def __init__(self, tmp_path: Path, *args, **faults):
        self.marker = tmp_path / f"paused-{time.monotonic_ns()}"
        env = cli_env(**faults)
        env["VISIONKIT_FAULT_MARKER"] = str(self.marker)
        # its own session (process group), so a test can signal the run and its loader workers
        # together, as a job scheduler or `timeout` does, without signalling pytest
        self.proc = subprocess.Popen([sys.executable, "-m", "visionkit", *map(str, args)], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def wait(self, timeout=240) -> Paused:
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"the run ended (exit {self.proc.returncode}) before pausing:\n{out}\n{err}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("the run did not reach its pause point")
            time.sleep(0.05)
        return self

    def signal(self, sig=signal.SIGKILL, timeout=120, group=False) -> tuple[int, str, str]:
        if group:  # the run and every process it started (its DataLoader workers)
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), f"'{k}' differs"




def tiny_config_dict(shapes_root: Path, **over) -> dict:
    """tests/conftest.py's tiny config, for module-scoped fixtures (which cannot use make_config)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_visionkit_tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_config_dict(shapes_root, **over)
