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


def blocks_of(names: list[str]) -> list[str]:
    """Tensor names grouped by their block (``backbone.layer1.2.*``), in order, for messages."""
    out: dict[str, int] = {}
    for n in names:
        parts = n.split(".")
        key = ".".join(parts[:3]) + ".*" if len(parts) > 3 else n
        out[key] = out.get(key, 0) + 1
    return [f"{k} ({v})" if v > 1 else k for k, v in out.items()]


def load_pretrained(model: nn.Module, path: str | Path, classes: list[str], strict: bool = True) -> LoadReport:
    """Fill ``model`` from a pretrained file: matching names and shapes load, everything else is reported.

    ``strict``: a file whose backbone does not match the model's (tensors the model lacks, e.g. a ResNet-34 file
    for a ResNet-18, or backbone tensors the file lacks or has in another shape) is refused, listing them;
    ``strict=False`` loads what fits and leaves the rest initialised.
    """
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
    # tensors of the file the model lacks (the ImageNet classifier aside, which detection never has)
    unexpected = [k for k in state if k.startswith("backbone.") and k not in own and not k.startswith("backbone.fc.")]
    if strict and (unfilled or unexpected or report.mismatched):
        parts = []
        if unexpected:
            parts.append(f"the model has no {', '.join(blocks_of(unexpected)[:4])}")
        if unfilled:
            parts.append(f"the file has no (or other shapes of) {', '.join(blocks_of(unfilled)[:4])}")
        raise DataError(
            path,
            f"does not fit this model's backbone (ResNet-{getattr(model, 'depth', '?')}): {'; '.join(parts)}; use "
            "weights of the same ResNet depth as model.num_layers, or model.pretrained_strict=false to load only "
            "the tensors that fit",
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(k for k in own if k not in to_load and k not in ("mean", "std"))
    report.log(path)
    return report
