"""``transferdet pipeline``: the whole workflow in one resumable command (see :mod:`transferdet.pipeline`)."""

from transferdet.pipeline import run

__all__ = ["run"]
