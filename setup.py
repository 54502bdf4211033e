"""Packaging beyond what pyproject.toml can say: the shipped ``configs/`` install as package data.

The recipes stay in the top-level ``configs/`` of a checkout (the layout people know, as
MMDetection's) and a wheel carries them as ``visionkit/configs/`` (as Ultralytics ships
``ultralytics/cfg/``): ``package_dir`` maps the folder into the package, ``package_data`` takes
every YAML file below it. A plain ``pip install .`` thus copies them next to the code, and an
editable install (``pip install -e .``) leaves them where they are; ``visionkit.config_names``
looks in the package first, then beside it in the checkout. Everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# every folder below configs/ is a data-only package of visionkit.configs (setuptools warns about
# data folders that no package names)
CONFIG_PACKAGES = ["visionkit.configs", *(f"visionkit.configs.{d.relative_to(HERE / 'configs').as_posix().replace('/', '.')}"
                                          for d in sorted((HERE / "configs").rglob("*")) if d.is_dir())]

setup(
    packages=[*find_packages(include=["visionkit", "visionkit.*"]), *CONFIG_PACKAGES],
    package_dir={"visionkit.configs": "configs"},
    package_data={p: ["*.yaml"] for p in CONFIG_PACKAGES},
)
