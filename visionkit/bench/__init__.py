"""Side-by-side benchmarks: each module registers rows in ``visionkit.registry.BENCHMARKS``.

A benchmark is ``fn(quick: bool) -> list[dict]``; :mod:`visionkit.bench.harness` runs the
selected ones, prints the table and writes the JSON (``tools/benchmark.py``, ``visionkit benchmark``).
"""

#: modules whose import registers a benchmark, in table order; ``detection`` may be absent
MODULES = ("trainer_step", "end_to_end", "pipeline", "flops", "detection", "coco_eval", "memory", "gpu",
           "onnx_runtime", "ddp_scaling")
OPTIONAL = ("detection",)
#: benchmarks that train models for many minutes: run only when ``--only`` names them
ON_REQUEST = ("detection_ap",)
