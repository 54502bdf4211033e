"""Checkpoint -> task: the one path by which saved weights become a model.

``eval``, ``predict``, ``export``, the Python API and ``--resume`` all go through
:func:`load_weights`, so a checkpoint is refused for the same reasons, with the same messages,
whatever command reads it:

- its recorded task or backbone is not the config's (use the checkpoint's own config);
- its class names are not the data set's (when the caller knows the data set's classes);
- its weights do not fit the model the config builds: a missing or unexpected key, or a tensor
  of another shape. Loading is strict; the error names the keys and, from the config saved in
  the checkpoint, the ``model`` overrides that rebuild the model it was trained as.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from visionkit.engine.checkpoint import load_checkpoint
from visionkit.errors import CheckpointError
from visionkit.registry import TASKS


def model_settings_hint(saved: dict | None, current: dict, added: dict) -> str:
    """The ``model`` settings in which a checkpoint's own config differs from the current one, as
    the overrides that rebuild the checkpoint's model. ``added`` maps keys that came to visionkit
    after a checkpoint may have been trained to the value that reproduces the model before them."""
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        return ""
    fixes, unknown = [], []

    def walk(old: dict, new: dict, prefix: str) -> None:
        for key, value in new.items():
            name = f"{prefix}.{key}"
            if key not in old:
                if name in added and added[name] != value:
                    fixes.append(f"{name}={added[name]}")
                elif name not in added:
                    unknown.append(name)
            elif isinstance(value, dict) and isinstance(old[key], dict):
                walk(old[key], value, name)
            elif old[key] != value:
                fixes.append(f"{name}={old[key]}")

    walk(saved["model"], current, "model")
    hint = f"; the checkpoint's model was built with {' '.join(fixes)}: pass those overrides" if fixes else ""
    if unknown:
        hint += f"; its config does not record {', '.join(unknown[:5])}"
    return hint


def check_meta(meta: dict, cfg, path) -> None:
    """Refuse a checkpoint recorded for another task or backbone than ``cfg`` builds."""
    want = (cfg.task, cfg.model.backbone.name)
    if (meta.get("task"), meta.get("backbone")) != want:
        raise CheckpointError(
            f"checkpoint '{path}' holds a {meta.get('task')} model on {meta.get('backbone')}, but the config "
            f"builds {want[0]} on {want[1]}; use the config the checkpoint was trained with (config.yaml in "
            "its run directory)"
        )


def _shape_mismatches(model: nn.Module, weights: dict) -> list[str]:
    own = model.state_dict()
    return [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
            for k, v in weights.items() if k in own and hasattr(v, "shape") and v.shape != own[k].shape]


def load_weights(task: nn.Module, state_or_path, cfg, classes: list[str] | None = None,
                 path: str | Path | None = None, key: str = "model") -> dict:
    """Load a checkpoint's model weights into ``task`` (built from ``cfg``) after the checks of the
    module docstring; ``state_or_path`` is a checkpoint file or its already-read dict (then
    ``path`` names it in messages). ``classes``: the data set's class names, when known. Returns
    the checkpoint dict. ``key``: which weights of the checkpoint (``train_model``: the trained ones
    of a run whose ``model`` is their EMA)."""
    if isinstance(state_or_path, dict):
        state = state_or_path
    else:
        path = state_or_path if path is None else path
        state = load_checkpoint(state_or_path, map_location="cpu")
    meta = state.get("meta", {})
    check_meta(meta, cfg, path)
    if classes is not None and "classes" in meta and list(meta["classes"]) != list(classes):
        raise CheckpointError(
            f"checkpoint '{path}' was trained on classes {meta['classes']} but the data set has "
            f"{list(classes)}; evaluate it on the data it was trained for"
        )
    shapes = _shape_mismatches(task, state[key])
    result = None if shapes else task.load_state_dict(state[key], strict=False)
    if shapes or result.missing_keys or result.unexpected_keys:
        found = (f"other shapes {shapes[:3]}" if shapes else
                 f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
        raise CheckpointError(
            f"checkpoint '{path}' does not fit the model built from the config: {found}"
            + model_settings_hint(state.get("config"), cfg.model.to_dict(), getattr(task, "added_settings", {}))
        )
    return state


def task_from_checkpoint(cfg, checkpoint: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the task a checkpoint was trained as (in eval mode, on the CPU), without reading any
    data set: the class names and what else the task saved come from the checkpoint's meta.
    Returns ``(task, meta)``."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    meta = state.get("meta", {})
    check_meta(meta, cfg, checkpoint)  # before building: another task's meta would not build this one
    task = TASKS.get(cfg.task).from_config(cfg, dict(meta))
    load_weights(task, state, cfg, path=checkpoint)
    return task.eval(), meta
