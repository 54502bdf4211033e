"""``visionkit`` command line: each subcommand parses arguments and calls one library function.

Exit codes: 0 ok, 2 config or usage error, 1 any other failure. Errors print as one line;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from visionkit.errors import VisionKitError


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file, or a shipped config's name (visionkit config list)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionkit", description="Train, evaluate and use image models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a config, or from --task and --data alone")
    p.add_argument("config", nargs="?", help="YAML config file, or a shipped config's name (visionkit config list)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    p.add_argument("--task", help="without a config: the task of a starter config for --data "
                   "(as `visionkit config init TASK --data PATH` writes)")
    p.add_argument("--data", help="with --task: the folder of your data")
    p.add_argument("--run-dir", help="run directory (default: runs/<config>/<time>)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                   help="continue --run-dir from its last checkpoint, or from PATH")

    p = sub.add_parser("eval", help="score a checkpoint on the val or test split")
    _add_config(p)
    p.add_argument("--checkpoint", required=True, help="a .pt file (a run's checkpoints/best.pt, ...)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--output", help="metrics JSON (default: <run dir>/eval_<split>.json)")

    p = sub.add_parser("predict", help="predict images with a checkpoint, or with an exported MODEL.onnx")
    p.add_argument("config", help="YAML config, or an exported .onnx model (then no --checkpoint)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (and key=value overrides)")
    p.add_argument("--checkpoint", help="checkpoint of the config's model (required with a config)")
    p.add_argument("--out", help="folder for drawings and predictions.json")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                   help="an unreadable input: skip it, list it at the end and exit 1 (default), or stop")

    from visionkit.export.cli import add_export_parser

    add_export_parser(sub)

    p = sub.add_parser("info", help="list what is registered; with a config, its size and FLOPs")
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--models", action="store_true", help="every backbone's parameters and GFLOPs at 224 px")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("config", help="config tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the resolved config")
    _add_config(show)
    keys = csub.add_parser("keys", help="every config key: type, default, allowed values, help")
    keys.add_argument("--task", help="only the keys a config of this task has (default: every task's)")
    keys.add_argument("--markdown", action="store_true", help="print Markdown tables (docs/config-keys.md)")
    csub.add_parser("list", help="the shipped configs, each with its description (train one by its name)")
    init = csub.add_parser("init", help="write a commented config for your data, sized for this machine")
    init.add_argument("task", help="classification, detection, segmentation or depth")
    init.add_argument("--data", required=True, help="the folder of your data (layout: docs, 'your own data')")
    init.add_argument("--out", help="the config file to write (default: <task>_<data folder>.yaml here); "
                      "an existing file is never overwritten")

    p = sub.add_parser("data", help="data tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    synth = dsub.add_parser("synth", help="generate a built-in synthetic data set")
    synth.add_argument("name", choices=("shapes",))
    synth.add_argument("--out", required=True, help="folder to write (root/<class>/<00000>.png)")
    synth.add_argument("--num-images", type=_at_least(1), default=3000, help="scenes to generate")
    synth.add_argument("--size", type=_at_least(16), default=64, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0, help="the same seed writes the same scenes")
    synth.add_argument("--coco", action="store_true",
                       help="also write COCO instances json (annotations/instances_<split>.json)")
    check = dsub.add_parser("check", help="decode every sample and validate its targets; exit 1 on problems")
    _add_config(check)
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    return parser


def _split_overrides(tokens: list[str]) -> tuple[list[str], list[str]]:
    """predict takes inputs and key=value overrides in one list; a token with '=' that is not an
    existing file is an override."""
    inputs, overrides = [], []
    for t in tokens:
        (overrides if "=" in t and not Path(t).exists() else inputs).append(t)
    return inputs, overrides


def cmd_train(args) -> int:
    from visionkit import api

    resume, overrides = args.resume, list(args.overrides)
    if args.task or args.data:
        return _train_from_data(args, overrides)
    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
        # `--resume key=value ...`: argparse hands the first override to --resume's optional PATH
        resume, overrides = True, [resume, *overrides]
    trainer = api.train(args.config, overrides, run_dir=args.run_dir, resume=resume)
    return _report(trainer)


def _train_from_data(args, overrides: list[str]) -> int:
    """``train --task T --data PATH [key=value ...]``: the starter config of ``config init``,
    written to a temporary file (the run directory keeps it resolved, as config.yaml)."""
    import tempfile

    from visionkit import api
    from visionkit.config_init import default_out, starter_text
    from visionkit.errors import ConfigError

    if not (args.task and args.data):
        raise ConfigError(f"train {'--task' if args.task else '--data'} needs "
                          f"{'--data FOLDER' if args.task else '--task TASK'} too")
    if args.config:  # argparse hands the first override to the optional config
        if "=" not in args.config or Path(args.config).exists():
            raise ConfigError("train takes a config or --task/--data, not both")
        overrides = [args.config, *overrides]
    if args.resume:
        raise ConfigError("--resume continues a run from its own config: `visionkit train RUN_DIR/config.yaml "
                          "--run-dir RUN_DIR --resume`")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / default_out(args.task, args.data)
        path.write_text(starter_text(args.task, args.data))
        print(f"config: the starter for {args.task} on {args.data} (write it with `visionkit config init "
              f"{args.task} --data {args.data}`; the run directory keeps it as config.yaml)")
        trainer = api.train(path, overrides, run_dir=args.run_dir)
    return _report(trainer)


def _report(trainer) -> int:
    if not trainer.group.is_main:  # under torchrun rank 0 reports for the group
        return 0
    if trainer.last_metrics:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in trainer.last_metrics.items())
        print(f"final val: {shown}")
    print(f"run directory: {trainer.run_dir}")
    return 0


def print_table(metrics: dict) -> None:
    width = max((len(k) for k in metrics), default=6)
    print(f"{'metric':<{width}}  value")
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}")


def cmd_eval(args) -> int:
    from visionkit import api

    metrics, _, out = api.evaluate(args.config, args.checkpoint, args.split, args.output, args.overrides)
    from visionkit.engine.distributed import is_main

    if not is_main():  # under torchrun rank 0 reports for the group
        return 0
    print_table(metrics)
    print(f"wrote {out}")
    return 0


def cmd_predict(args) -> int:
    from visionkit import api

    inputs, overrides = _split_overrides(args.inputs)
    if args.config.lower().endswith(".onnx"):
        from visionkit.export.runtime import predict_onnx

        result = predict_onnx(args.config, [*inputs, *overrides], args.out, checkpoint=args.checkpoint,
                              on_error=args.on_error)
        return _skipped_code(result)
    if not args.checkpoint:
        from visionkit.errors import ConfigError

        raise ConfigError("predict needs --checkpoint with a config (or pass an exported .onnx model "
                          "instead of the config)")
    return _skipped_code(api.predict(args.config, args.checkpoint, inputs, args.out, overrides, on_error=args.on_error))


def _skipped_code(result) -> int:
    """predict's exit code: 1 when an input was skipped, so a script notices."""
    if result.skipped:
        print(f"error: {len(result.skipped)} input(s) could not be read (listed above); the others "
              "were predicted", file=sys.stderr)
        return 1
    return 0


def cmd_info(args) -> int:
    from visionkit.registry import BACKBONES, DATASETS, TASKS

    if args.models:
        from visionkit.models.stats import model_stats

        rows = [model_stats(n) for n in BACKBONES.names()]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'backbone':<22} {'params':>12} {'GFLOPs@224':>11}")
            for r in rows:
                print(f"{r['name']:<22} {r['params']:>12,} {r['gflops']:>11.2f}")
        return 0
    if args.config:
        from visionkit.config import load_config
        from visionkit.data.build import build_source
        from visionkit.models.stats import count_macs, count_params

        cfg = load_config(args.config, args.overrides)
        source = build_source(cfg, write=False)  # reads a config: never generates data
        classes = source.classes
        task = TASKS.get(cfg.task).from_config(cfg, {**source.info, "classes": classes})
        size = cfg.data.image_size
        out = {"config": args.config, "task": cfg.task, "backbone": cfg.model.backbone.name,
               "classes": len(classes), "params": count_params(task),
               "trainable_params": sum(p.numel() for p in task.parameters() if p.requires_grad),
               "image_size": size, "gflops": count_macs(task, size, cfg.data.channels) / 1e9}
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            for k, v in out.items():
                print(f"{k:<17} {v:,.4f}" if isinstance(v, float) else f"{k:<17} {v}")
        return 0
    reg = {"tasks": TASKS.names(), "backbones": BACKBONES.names(), "datasets": DATASETS.names()}
    if args.json:
        print(json.dumps(reg, indent=2))
    else:
        for k, v in reg.items():
            print(f"{k}: {', '.join(v)}")
    return 0


def cmd_config(args) -> int:
    from visionkit.config import load_config

    if args.config_command == "keys":
        from visionkit.config_keys import keys_markdown, keys_text
        from visionkit.registry import TASKS

        if args.task and args.task not in TASKS.names():
            from visionkit.errors import ConfigError

            raise ConfigError(f"config keys --task: {TASKS.unknown_message(args.task)}")
        print(keys_markdown(args.task) if args.markdown else keys_text(args.task), end="")
        return 0
    if args.config_command == "init":
        import shlex

        from visionkit.config_init import init_config

        path, cfg = init_config(args.task, args.data, args.out)
        print(f"wrote {path} ({cfg.task}, backbone {cfg.model.backbone.name}, {cfg.train.epochs} epochs); "
              "read its comments, then train with:")
        print(f"  visionkit train {shlex.quote(str(path))}")
        return 0
    if args.config_command == "list":
        from visionkit.config_names import list_shipped, shipped_dir

        rows = list_shipped()
        width = max((len(n) for n, _ in rows), default=0)
        for name, text in rows:
            print(f"{name:<{width}}  {text}")
        print(f"({shipped_dir()}; `visionkit train NAME` trains one, `visionkit config show NAME` prints it)")
        return 0
    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def cmd_data(args) -> int:
    if args.data_command == "check":
        from visionkit.config import load_config
        from visionkit.data.check import check_data, format_report

        # every sample is read with on_error=raise semantics: nothing is skipped silently
        cfg = load_config(args.config, [*args.overrides, "data.on_error=raise"])
        report = check_data(cfg)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return 1 if report["errors"] else 0
    from visionkit.data.datasets.synthetic import generate_shapes

    out = generate_shapes(args.out, num_images=args.num_images, size=args.size, seed=args.seed, progress=True)
    print(f"wrote {args.num_images} images to {out}")
    if args.coco:
        from visionkit.data.datasets.coco import write_shapes_coco

        for path in write_shapes_coco(out):
            print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    from visionkit.export.cli import cmd_export as run

    return run(args)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "info": cmd_info,
            "config": cmd_config, "data": cmd_data,
            "export": cmd_export}


def one_line(e: BaseException) -> str:
    """The user's message of ``e``, also when a DataLoader worker wrapped it in its traceback."""
    text = str(e).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


# (command, option attribute, option as typed, what it must be) for paths a command writes
_OUTPUTS = (("train", "run_dir", "--run-dir", "folder"), ("eval", "output", "--output", "file"),
            ("predict", "out", "--out", "folder"), ("export", "out", "--out", "file"),
            ("data", "out", "--out", "folder"))


def _check_output_paths(parser: argparse.ArgumentParser, args) -> None:
    """A file where a folder is written (or the reverse) is a usage error before any work, not an
    OSError after it (an export that has already traced the model, say)."""
    for command, attr, option, kind in _OUTPUTS:
        value = getattr(args, attr, None) if args.command == command else None
        if not value:
            continue
        path = Path(value)
        if kind == "folder" and path.exists() and not path.is_dir():
            parser.error(f"{option} '{value}' is a file; give a folder (it is created if missing)")
        if kind == "file" and path.is_dir():
            ext = ".json" if command == "eval" else ".onnx" if str(args.format).lower() == "onnx" else ".pt"
            parser.error(f"{option} '{value}' is a folder; give a file path, e.g. {path / 'out'}{ext}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] == ["benchmark"]:  # the harness is not part of the installed package
        print("error: the benchmark moved out of the package: run `python tools/benchmark.py` in a checkout "
              "of visionkit (same flags)", file=sys.stderr)
        return 2
    parser = build_parser()
    # overrides may stand anywhere on the line, also after options (argparse stops at the first)
    args, extra = parser.parse_known_args(argv)  # usage errors exit 2 here
    if extra:
        if hasattr(args, "overrides") and all("=" in t and not t.startswith("-") for t in extra):
            args.overrides = [*args.overrides, *extra]
        elif hasattr(args, "inputs") and not any(t.startswith("-") for t in extra):
            args.inputs = [*args.inputs, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.debug = debug
    _check_output_paths(parser, args)
    if args.command == "train" and not (args.config or args.task or args.data):
        parser.error("train needs a config (a file, or a shipped config's name: `visionkit config list`), "
                     "or --task TASK --data FOLDER to train on your data with a starter config")
    try:
        from visionkit.advice import config_advice

        with config_advice(lambda text: print(text, file=sys.stderr)):  # torch's warnings about a key
            code = COMMANDS[args.command](args)
        if code == 0 and "visionkit.engine.distributed" in sys.modules:  # under torchrun: leave together
            sys.modules["visionkit.engine.distributed"].shutdown()
        return code
    except VisionKitError as e:
        if args.debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: {type(e).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
