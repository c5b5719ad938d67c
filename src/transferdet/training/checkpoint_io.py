"""Lightning's checkpoint I/O through :mod:`transferdet.detector.checkpoint`: written under a temporary name and
renamed when complete, with a checksum of weights and settings, so a crash never leaves a truncated file under a
checkpoint's name and a damaged file is refused when Lightning resumes from it."""

from __future__ import annotations

import logging
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from transferdet.detector import checkpoint as model_file

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        model_file.write(checkpoint, path)
        log.info(
            "saved checkpoint %s (epoch %s, step %s)", path, checkpoint.get("epoch"), checkpoint.get("global_step")
        )

    @override
    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        # checkpoints are tensors and plain containers (never arbitrary objects), with a verified checksum
        return model_file.read(path, "training.resume")
