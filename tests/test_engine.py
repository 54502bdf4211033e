"""The trainer as a loop with hooks: the events a custom hook sees, EMA as a hook, the lifetimes
(fit then test, then the process exits), and one process per run directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from visionkit import Trainer
from visionkit.engine.hooks import EVENTS, Hook

ROOT = Path(__file__).resolve().parents[1]


def quiet(*args, **kwargs):
    pass


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), f"'{k}' differs"


class Recorder(Hook):
    """Writes down every event it is given, with the epoch and step it came at."""

    def __init__(self):
        self.seen: list[tuple] = []


def _recording(event: str):
    def record(self, trainer, *args):
        self.seen.append((event, trainer.epoch, trainer.global_step))

    return record


for _event in EVENTS:
    setattr(Recorder, _event, _recording(_event))


def test_a_custom_hook_sees_every_event_in_order(tiny_cfg, tmp_path):
    # 240 scenes, 80 % train at batch 32: 6 batches an epoch; accumulate 2 -> 3 optimizer steps
    cfg = tiny_cfg(**{"train.epochs": 2, "train.accumulate": 2, "train.final_test": True})
    rec = Recorder()
    with Trainer(cfg, tmp_path / "r", hooks=[rec], log=quiet) as trainer:
        trainer.fit()
    names = [e[0] for e in rec.seen]
    assert names[0] == "setup" and names[1] == "before_fit"
    epoch = ["before_epoch"] + ["before_step", "after_step", "before_step", "after_step", "after_optimizer_step"] * 3
    epoch += ["after_validate", "after_epoch"]
    assert names[2:2 + 2 * len(epoch)] == epoch * 2
    # the final test is a validation of the test split, then the end of training and of fit
    assert names[2 + 2 * len(epoch):] == ["after_validate", "after_train", "after_fit", "close"]
    steps = [step for name, _, step in rec.seen if name == "after_optimizer_step"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_fit_ends_with_after_fit_even_when_a_hook_fails(tiny_cfg, tmp_path):
    class Boom(Recorder):
        def after_epoch(self, trainer):
            raise RuntimeError("boom")

    rec = Boom()
    trainer = Trainer(tiny_cfg(), tmp_path / "r", hooks=[rec], log=quiet)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    assert rec.seen[-1][0] == "after_fit"


def _ema_cfg(tiny_cfg, **over):
    return tiny_cfg(**{"train.epochs": 3, "train.ema.decay": 0.9, "train.ema.warmup": True,
                       "train.checkpoint_every_steps": 4, **over})


def test_ema_is_what_validation_scores_and_best_pt_holds(tiny_cfg, tmp_path):
    with Trainer(_ema_cfg(tiny_cfg), tmp_path / "ema", log=quiet) as trainer:
        metrics = trainer.fit()
        raw, avg = trainer.task.state_dict(), trainer.eval_task.state_dict()
    assert trainer.eval_task is not trainer.task
    assert any(not torch.equal(raw[k], avg[k]) for k in raw if raw[k].is_floating_point())
    # validation scored the average, and logged the trained weights' metrics beside it
    assert {"accuracy", "raw_accuracy"} <= set(metrics)
    val = [r for r in read_jsonl(tmp_path / "ema" / "metrics.jsonl") if r["split"] == "val"]
    assert len(val) == 3 and all("raw_accuracy" in r for r in val)
    # every checkpoint's model is the average (what eval, predict and export load); train_model the raw weights
    last = torch.load(tmp_path / "ema" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert_bitwise_equal(last["model"], avg)
    assert_bitwise_equal(last["train_model"], raw)
    assert last["hooks"]["ema"]["updates"] == trainer.global_step

    with Trainer(tiny_cfg(**{"train.epochs": 3}), tmp_path / "plain", log=quiet) as plain:
        plain.fit()
    assert plain.eval_task is plain.task
    state = torch.load(tmp_path / "plain" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert "train_model" not in state and "ema" not in state["hooks"]


def test_ema_warmup_ramps_the_decay(tiny_cfg, tmp_path):
    from visionkit.engine.hooks import EMA

    ema = EMA(0.999, warmup=True)
    decays = []
    for n in (0, 1, 10, 10_000):
        ema.updates = n
        decays.append(ema.current_decay())
    assert decays == pytest.approx([1 / 10, 2 / 11, 11 / 20, 0.999])
    assert EMA(0.999).current_decay() == 0.999


def test_a_resumed_ema_run_is_bitwise_equal_to_an_uninterrupted_one(tiny_cfg, tmp_path):
    class StopAtStep(Hook):
        def after_optimizer_step(self, trainer):
            if trainer.global_step == 8:  # mid-epoch 2, right after the step-8 checkpoint
                raise KeyboardInterrupt

    cfg = _ema_cfg(tiny_cfg)
    with Trainer(cfg, tmp_path / "full", log=quiet) as full:
        full.fit()
    part = Trainer(cfg, tmp_path / "part", hooks=[StopAtStep()], log=quiet)
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    part.close()
    assert (tmp_path / "part" / "checkpoints" / "step_00000008.pt").exists()
    with Trainer(cfg, tmp_path / "part", resume=True, log=quiet) as resumed:
        resumed.fit()
    for name in ("last.pt", "best.pt"):
        a = torch.load(tmp_path / "full" / "checkpoints" / name, map_location="cpu", weights_only=True)
        b = torch.load(tmp_path / "part" / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert_bitwise_equal(a["model"], b["model"])
        assert_bitwise_equal(a["train_model"], b["train_model"])
        assert a["hooks"] == b["hooks"]


def test_fit_then_test_then_the_process_exits(make_config, tmp_path):
    """README's Python snippet, as written there, on a tiny config with loader workers: it runs,
    and the process ends soon after its last call (persistent workers were left to a 120 s grace)."""
    readme = (ROOT / "README.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "trainer.fit()" in block)
    cfg = make_config(**{"data.num_workers": 2})
    code, n = re.subn(r'load_config\("[^"]+"', f'load_config("{cfg}"', snippet)
    assert n == 1, "the README snippet no longer calls load_config(PATH, ...)"
    code += '\nimport sys, time\nprint("LAST CALL DONE", time.time(), flush=True)\n'
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = proc.communicate(timeout=600)
    ended = time.time()
    assert proc.returncode == 0, err[-2000:]
    done = float(re.search(r"LAST CALL DONE ([\d.]+)", out).group(1))
    assert ended - done < 30, f"the process took {ended - done:.0f} s to exit after its last call"
    assert re.search(r"epoch \d+/\d+ test: accuracy", out)  # test() after fit() scored and logged the test split
    run = next((tmp_path / "runs").glob("*/*"))
    splits = {r["split"] for r in read_jsonl(run / "metrics.jsonl")}
    assert splits == {"train", "val", "test"}
