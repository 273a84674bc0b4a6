"""Package discovery only; everything else is in pyproject.toml. The built-in bench targets
live in the top-level targets/ folder (the one source) and ship inside the package as
edgekd._targets, read with importlib.resources (edgekd/targets.py)."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["edgekd", "edgekd.*"]) + ["edgekd._targets"],
      package_dir={"edgekd._targets": "targets"},
      package_data={"edgekd._targets": ["*.toml"]})
