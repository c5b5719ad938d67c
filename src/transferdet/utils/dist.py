"""Which process of a distributed run this is, read from the launcher's environment (torchrun, SLURM,
Lightning's DDP launcher) before any process group exists."""

from __future__ import annotations

import os


def global_rank_from_env() -> int:
    """This process's rank in a distributed run (0 outside one)."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return local if node == 0 else node * 1000 + local  # only "zero or not" matters to callers


def is_global_zero() -> bool:
    """Whether this process writes the run directory's files."""
    return global_rank_from_env() == 0
