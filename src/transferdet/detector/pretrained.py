"""Starting weights for training: a torchvision / timm ResNet state dict, or a transferdet checkpoint.

Tensors load by name and shape; everything that does not load is reported. Backbone tensors that would
stay random (another ResNet depth, full-width weights for a pruned model) are refused instead of
half-loading. From a checkpoint trained on other classes the heads keep their fresh initialisation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from transferdet.detector import checkpoint
from transferdet.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[str] = field(default_factory=list)  # same name, other shape
    missing: list[str] = field(default_factory=list)  # in the model, not filled from the file

    def log(self, source: Path) -> None:
        """Log what loaded, what was skipped and what keeps its initialisation."""
        log.info("pretrained weights from %s: %d tensors loaded", source, len(self.loaded))
        for name in self.skipped:
            log.info("  skipped (not in the model): %s", name)
        for name in self.mismatched:
            log.warning("  shape mismatch, not loaded: %s", name)
        for name in self.missing:
            log.info("  not in the file, keeps its initialisation: %s", name)


def _weights_and_classes(obj: dict, path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """The model tensors of a loaded file, named as in DetectNetV2, and the checkpoint's classes if any."""
    if checkpoint.is_checkpoint(obj):
        return checkpoint.network_weights(obj), list(checkpoint.spec_of(obj, path).classes)
    # a torchvision / timm ResNet state dict: backbone tensors, classifier dropped
    return {f"backbone.{k}": v for k, v in obj.items() if isinstance(v, torch.Tensor)}, None


def load_pretrained(model: nn.Module, path: str | Path, classes: list[str]) -> LoadReport:
    """Fill ``model`` from a pretrained file: matching names and shapes load, everything else is reported."""
    path = Path(path)
    obj = checkpoint.read(path, "model.pretrained_model_file")
    state, source_classes = _weights_and_classes(obj, path)
    own = model.state_dict()
    report = LoadReport()
    same_classes = source_classes == list(classes)
    to_load = {}
    for name, tensor in state.items():
        if name.startswith(("output_cov.", "output_bbox.")) and not same_classes:
            report.skipped.append(f"{name} (class list differs: heads re-initialised)")
        elif name not in own:
            report.skipped.append(name)
        elif own[name].shape != tensor.shape:
            report.mismatched.append(f"{name}: file {tuple(tensor.shape)} vs model {tuple(own[name].shape)}")
        else:
            to_load[name] = tensor
    unfilled = [
        k for k in own if k.startswith("backbone.") and k not in to_load and not k.endswith("num_batches_tracked")
    ]
    if unfilled:  # another ResNet depth, or full-width weights for a pruned model: refuse, do not half-load
        why = next((m for m in report.mismatched if m.startswith(unfilled[0])), "not in the file")
        raise DataError(
            path,
            f"does not fit this model's backbone: {len(unfilled)} backbone tensors would stay "
            f"random, e.g. {unfilled[0]} ({why}); use weights of the same ResNet depth as "
            "model.num_layers",
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(k for k in own if k not in to_load and k not in ("mean", "std"))
    report.log(path)
    return report
