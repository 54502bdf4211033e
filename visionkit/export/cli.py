"""``visionkit export`` arguments and command (kept out of ``visionkit/cli.py`` but wired there)."""

from __future__ import annotations

import argparse

from visionkit.export import DEFAULT_ATOL, DEFAULT_RTOL

HELP = f"""Write a checkpoint's model as ONNX or TorchScript, with its task, class names, input size and
mean/std inside the file. --verify runs the file (onnxruntime / torch.jit.load) on the first
--samples images of the config's val split and compares every output with PyTorch eager: it fails
(exit 1) unless |exported - eager| <= atol + rtol * |eager| everywhere (default atol {DEFAULT_ATOL:g},
rtol {DEFAULT_RTOL:g}). Detection exports hold one image per run (batch 1)."""


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} is below 0; a tolerance is 0 or more (e.g. 1e-4)")
    return value


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint as ONNX or TorchScript (and verify it)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config the checkpoint was trained with")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    p.add_argument("--checkpoint", required=True, help="checkpoint to export (e.g. runs/x/checkpoints/best.pt)")
    p.add_argument("--format", required=True, help="onnx or torchscript")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (e.g. model.onnx)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    p.add_argument("--dynamic", action="store_true",
                   help="variable batch (classification, segmentation, depth) and image size "
                        "(segmentation, depth, detection)")
    p.add_argument("--normalize-in-graph", action="store_true",
                   help="the graph takes 0..1 images and applies mean/std itself (always so for detection)")
    p.add_argument("--verify", action="store_true", help="compare the exported model with PyTorch eager")
    p.add_argument("--samples", type=int, default=4, help="images --verify runs (default 4)")
    p.add_argument("--atol", type=_tolerance, default=DEFAULT_ATOL,
                   help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    p.add_argument("--rtol", type=_tolerance, default=DEFAULT_RTOL,
                   help=f"relative tolerance (default {DEFAULT_RTOL:g})")


def cmd_export(args) -> int:
    from visionkit.export.api import export

    export(args.config, args.checkpoint, args.format, args.out, opset=args.opset, dynamic=args.dynamic,
           verify_export=args.verify, normalize_in_graph=args.normalize_in_graph, samples=args.samples,
           atol=args.atol, rtol=args.rtol, overrides=args.overrides)
    return 0
