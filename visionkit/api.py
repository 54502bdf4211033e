"""The functions behind every CLI command; notebooks and tools/*.py call the same ones."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torchvision.io import ImageReadMode
from torchvision.utils import save_image

from visionkit.config import Config, as_config
from visionkit.data.build import build_datasets, build_loader, build_source
from visionkit.data.datasets.folder import IMAGE_EXTENSIONS, is_image, read_image
from visionkit.engine import distributed
from visionkit.engine.evaluate import evaluate as run_evaluation
from visionkit.engine.loading import load_weights, task_from_checkpoint
from visionkit.engine.runtime import (
    AMP_DTYPES,
    autocast,
    prepare_task,
    resolve_amp,
    resolve_device,
    seed_everything,
    stop_workers,
)
from visionkit.engine.trainer import Trainer
from visionkit.errors import ConfigError, DataError
from visionkit.registry import TASKS


def _cfg(config: str | Path | Config, overrides: Iterable[str] = ()) -> Config:
    return as_config(config, overrides)


def train(config, overrides: Sequence[str] = (), run_dir=None, resume=False, log=print) -> Trainer:
    """Train a model from a config; returns the finished, closed Trainer (``trainer.run_dir`` has it all)."""
    with Trainer(_cfg(config, overrides), run_dir, resume=resume, log=log) as trainer:
        trainer.fit()
    return trainer


def evaluate(config, checkpoint, split: str = "val", output=None, overrides: Sequence[str] = (),
             log=print) -> tuple[dict, dict, Path]:
    """Score ``checkpoint`` on ``split``; writes the metrics and details as JSON.

    The samples of ``split`` are those of the run's ``split.json`` when the checkpoint sits in a
    run directory. The JSON goes to ``output`` or, by default, ``eval_<split>.json`` beside the
    run's checkpoints.
    """
    cfg = _cfg(config, overrides)
    group, device = distributed.setup(resolve_device(cfg.train.device))
    log = log if group.is_main else (lambda *a, **k: None)
    seed_everything(cfg.train.seed)
    source = build_source(cfg)
    task_cls = TASKS.get(cfg.task)
    task = task_cls.from_config(cfg, {**source.info, "classes": source.classes})
    channels_last = prepare_task(task, cfg, device)
    load_weights(task, checkpoint, cfg, source.classes)
    run_dir = Path(checkpoint).parent.parent
    split_dir = run_dir if (run_dir / "split.json").exists() else None
    if split_dir is None and source.splits is None:  # a data set with its own splits needs none
        log(f"note: no split.json in '{run_dir}'; splitting the data with data.split.seed")
    data = group.main_first(lambda: build_datasets(cfg, task_cls, split_dir, (split,), source=source)[0])
    if split not in data:
        raise ConfigError(source.no_split(split))
    loader = build_loader(data[split], cfg, False, device, **distributed.loader_args(len(data[split]), cfg, False, group))
    dtype = AMP_DTYPES.get(resolve_amp(cfg.train.amp, device)[0])
    try:
        result = run_evaluation(task, loader, task.evaluator(), device, channels_last=channels_last, group=group,
                                autocast=lambda: autocast(device, dtype), log=log, split=split)
    finally:
        stop_workers(loader)
    details = result.evaluator.details()
    out = Path(output) if output else run_dir / f"eval_{split}.json"
    if not group.is_main:  # under torchrun rank 0 holds the reduced results and writes them
        return result.metrics, details, out
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": str(checkpoint), "split": split, "samples": len(data[split]),
              "metrics": result.metrics, **details}
    files = result.evaluator.write(out.parent, split)  # e.g. a COCO results json
    if files:
        record["files"] = [str(f) for f in files]
    out.write_text(json.dumps(record, indent=2))
    return result.metrics, details, out


def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the images inside given directories (recursively, sorted; hidden files
    such as macOS' ``._x.png`` left out, as the training reader does)."""
    files: list[Path] = []
    empty: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image(f.name))
            files += found
            if not found:
                empty.append(p)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input '{p}' does not exist")
    if not files:
        where = ""
        if empty:
            names = ", ".join(f"'{p}'" for p in empty)
            where = (f": {'folder' if len(empty) == 1 else 'folders'} {names} "
                     f"{'holds' if len(empty) == 1 else 'hold'} no {'/'.join(IMAGE_EXTENSIONS)} files "
                     "(sub-folders included)")
        raise DataError(f"no input images found{where}; pass image files or folders holding them")
    return files


def predict(config, checkpoint, inputs: Sequence[str], out_dir=None, overrides: Sequence[str] = (),
            log=print, on_error: str = "skip") -> Predictions:
    """Predict every input image; prints one line each and, with ``out_dir``, writes drawings and
    ``predictions.json``. An unreadable input is skipped and listed (``on_error="raise"``: stops)."""
    cfg = _cfg(config, overrides)
    device = resolve_device(cfg.train.device)
    task, _ = task_from_checkpoint(cfg, checkpoint)
    task.to(device)
    transform = type(task).sample_transform(cfg, train=False)
    mode = ImageReadMode.GRAY if cfg.data.channels == 1 else ImageReadMode.RGB

    def infer(image, path):
        sample = transform({"image": image, "path": str(path)})
        batch = task.preprocess({"images": sample["image"][None].to(device)})
        with torch.no_grad():
            return batch, task.predict(batch)

    return predict_images(task, inputs, mode, infer, out_dir, log, on_error)


class Predictions(list):
    """The records of the inputs that were predicted, one dict each (what ``predictions.json``
    holds), and ``skipped``: ``(path, reason)`` of each input that could not be read."""

    def __init__(self, records=(), skipped=()):
        super().__init__(records)
        self.skipped: list[tuple[str, str]] = list(skipped)


def predict_images(task, inputs: Sequence[str], mode: ImageReadMode, infer, out_dir=None, log=print,
                   on_error: str = "skip") -> Predictions:
    """The loop of every ``visionkit predict``: decode each input, ``infer(image, path) -> (batch,
    preds)``, print the task's one-line description; with ``out_dir``, write each drawing, the
    task's own files and ``predictions.json`` (always, for the inputs that were read).

    ``on_error="skip"``: an input that cannot be read or taken (a DataError about that file) is left
    out and listed with its reason at the end; the others still get their results. ``"raise"``:
    the first such input stops the run (training data keeps that default)."""
    if on_error not in ("skip", "raise"):
        raise ConfigError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    records = Predictions()
    channels = 1 if mode == ImageReadMode.GRAY else 3
    fix = "" if on_error == "skip" else "replace the file, leave it out of the inputs, or use --on-error skip"
    for i, path in enumerate(list_images(inputs)):
        try:
            # the training reader: the same pixels a model was trained on (BMP, 16-bit PNG, GIF
            # frame included) and the same DataError, with a fix that fits predict
            image = read_image(str(path), channels, fix=fix).as_subclass(torch.Tensor)
            batch, preds = infer(image, path)
        except DataError as e:
            if on_error == "raise":
                raise
            records.skipped.append((str(path), str(e).rstrip("; ")))
            continue
        rec = {"path": str(path), **task.record(preds, 0)}
        log(f"{path}: {task.describe(preds, 0)}")
        if out:
            stem = f"{i:05d}_{path.stem}"
            vis = task.visualize(batch, preds, 1)
            save_image(vis.float() / 255, out / f"{stem}.png")
            files = task.write_outputs(preds, 0, out, stem)
            if files:
                rec["files"] = files
        records.append(rec)
    if out:
        (out / "predictions.json").write_text(json.dumps(records, indent=2))
        log(f"wrote {len(records)} drawings and predictions.json to {out}")
    if records.skipped:
        log(f"skipped {len(records.skipped)} of {len(records) + len(records.skipped)} inputs that could not be read:")
        for path, reason in records.skipped:
            log(f"  {path}: {reason}")
    return records


def export(config, checkpoint, fmt: str, out, overrides: Sequence[str] = (), log=print, **options) -> dict:
    """Write ``checkpoint``'s model as ONNX or TorchScript (``visionkit export``); ``options`` are
    those of :func:`visionkit.export.api.export` (opset, dynamic, verify_export, normalize_in_graph,
    samples, atol, rtol)."""
    from visionkit.export.api import export as run

    return run(config, checkpoint, fmt, out, overrides=overrides, log=log, **options)
