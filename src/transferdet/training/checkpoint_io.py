"""Checkpoints written under a temporary name and renamed when complete, with a checksum of their
weights: a crash never leaves a truncated file under a checkpoint's name, and a damaged file is refused
when Lightning resumes from it."""

from __future__ import annotations

import logging
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from transferdet.models.checkpoint import load_tensor_file, save_checkpoint

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        save_checkpoint(checkpoint, path)
        log.info(
            "saved checkpoint %s (epoch %s, step %s)", path, checkpoint.get("epoch"), checkpoint.get("global_step")
        )

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        # checkpoints are tensors and plain containers (never arbitrary objects), with a verified checksum
        return load_tensor_file(path, "training.resume")
