"""Package discovery only; all metadata is in pyproject.toml.

The config tree (top-level ``conf/``) is mapped onto the package ``transferdet.conf`` in
pyproject.toml; it has to be listed here because automatic discovery only looks under ``src/``.
"""
from setuptools import find_packages, setup

setup(packages=find_packages("src") + ["transferdet.conf"])
