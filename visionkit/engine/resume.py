"""``--resume``: which checkpoint continues which run, and the settings that changed since it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from visionkit.config import flatten
from visionkit.engine import distributed
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.errors import CheckpointError, ConfigError


def locate_run(group, run_dir, resume, log) -> tuple[Path | None, Path | None, dict | None]:
    """(checkpoint to resume from, run directory, the checkpoint's state) from ``--run-dir`` and
    ``--resume`` (True: the run directory's newest checkpoint that verifies; a path: that one)."""
    if not resume:
        return None, Path(run_dir) if run_dir else None, None
    if resume is True:
        if run_dir is None:
            raise ConfigError("--resume without a path needs --run-dir (the run to continue)")
        if not (Path(run_dir) / "checkpoints").is_dir():
            raise CheckpointError(f"no checkpoint to resume in '{run_dir}' (it has no checkpoints/); "
                                  "check --run-dir, or drop --resume to start a new run")
        # corrupt newer checkpoints are named and skipped (rank 0 picks, every rank loads that one)
        path, state = distributed.find_resumable_everywhere(group, Path(run_dir) / "checkpoints", log)
    else:
        path = Path(resume)
        state = load_checkpoint(path)  # fails here, naming the path
    return path, Path(run_dir) if run_dir else path.parent.parent, state


def note_changed_settings(saved: dict | None, cfg, record: Path, log: Callable[[str], None], write: bool) -> None:
    """A resume whose config differs from the checkpoint's says which keys changed and keeps the
    config as resumed in ``record`` beside the run's first one (config.yaml is never rewritten)."""
    if not saved:
        return
    before, now = flatten(saved), flatten(cfg.to_dict())
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if not changed:
        return
    shown = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:8])
    more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
    log(f"note: resuming with {len(changed)} setting(s) changed since the checkpoint: "
        f"{shown}{more}; the config as resumed is in {record}")
    if any(k.startswith("train.optimizer.") for k in changed):
        log("note: train.optimizer changes do not apply on resume: the optimizer's learning rate "
            "and hyper-parameters come from the checkpoint; start a new run (model.backbone.weights "
            "can take the checkpoint) to train with others")
    if write:
        record.write_text(cfg.to_yaml())


def hook_states(state: dict) -> dict:
    """The hooks' states in a checkpoint; one written before the hooks kept their own carries
    the best value and the non-finite streak at its top level."""
    if "hooks" in state:
        return state["hooks"]
    legacy = {}
    if "best" in state:
        legacy["best"] = {"best": state["best"], "stale": state["stale"]}
    if "nonfinite_streak" in state:
        legacy["nonfinite"] = {"streak": state["nonfinite_streak"],
                               "skipped_steps": state.get("counters", {}).get("skipped_steps", 0)}
    return legacy
