"""Side-by-side benchmarks, run from a checkout with ``python tools/benchmark.py``.

They live outside the installed package (as torchvision keeps its ``references/``): the toolkit
does not know about them, they only use it. Each row module registers its benchmarks in
:data:`BENCHMARKS`; a benchmark is ``fn(quick: bool) -> list[dict]``, and
:mod:`benchmarks.harness` runs the selected ones, prints the table and writes the JSON.
"""

from visionkit.registry import Registry

#: name -> ``fn(quick: bool) -> list[dict]``, filled when :mod:`benchmarks.harness` imports the rows
BENCHMARKS = Registry("benchmark")
#: benchmarks that train models for many minutes: run only when ``--only`` names them
ON_REQUEST = ("detection_ap",)
