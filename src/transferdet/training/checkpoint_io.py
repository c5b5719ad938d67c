"""Checkpoints written under a temporary name and renamed when complete: a crash never leaves a
truncated file under a checkpoint's name."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from transferdet.utils.io import atomic_path

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(Path(path)) as tmp:
            torch.save(checkpoint, tmp)
        log.info("saved checkpoint %s (epoch %s, step %s)", path, checkpoint.get("epoch"), checkpoint.get("global_step"))

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        # checkpoints are tensors and plain containers: never unpickle arbitrary objects
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)
