"""Starting weights for training: torchvision's ImageNet weights (``model.pretrained=imagenet``), a torchvision /
timm ResNet state dict, or a transferdet checkpoint (``model.pretrained_model_file``).

Tensors load by name and shape; everything that does not load is reported. Backbone tensors that would
stay random (another ResNet depth, full-width weights for a pruned model) are refused instead of
half-loading. From a checkpoint trained on other classes the heads keep their fresh initialisation.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from transferdet.config.schema import ModelConfig
from transferdet.config.validate import require_imagenet_depth
from transferdet.detector import checkpoint
from transferdet.errors import DataError
from transferdet.utils.io import make_folder

log = logging.getLogger(__name__)
OFFLINE_VARIABLE = "TRANSFERDET_OFFLINE"  # "1": never download (CI and the tests set it)


def imagenet_url(depth: int) -> str:
    """The URL of torchvision's ImageNet weights (IMAGENET1K_V1) of a ResNet of ``depth`` layers."""
    require_imagenet_depth(depth)
    return torchvision.models.get_weight(f"ResNet{depth}_Weights.IMAGENET1K_V1").url


def imagenet_file(depth: int) -> Path:
    """torchvision's ImageNet weights of a ResNet of ``depth`` layers in the torch hub cache (where torchvision
    keeps them), downloaded there once when missing unless ``TRANSFERDET_OFFLINE=1``. Without a network, one
    clear error names the file to place there."""
    url = imagenet_url(depth)
    name = Path(urlparse(url).path).name
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    if path.is_file():
        return path
    if os.environ.get(OFFLINE_VARIABLE) == "1":
        raise DataError(
            path,
            f"torchvision's ImageNet weights are not in the cache and downloads are off ({OFFLINE_VARIABLE}=1): "
            f"download {url} and place it at this path",
        )
    make_folder(path.parent)
    digest = re.search(r"-([a-f0-9]{8,})\.", name)
    log.info("downloading %s to %s", url, path)
    try:  # torch downloads to a temporary file, checks the hash prefix of the name, then renames
        torch.hub.download_url_to_file(url, str(path), hash_prefix=digest.group(1) if digest else None)
    except (OSError, RuntimeError, ValueError) as err:
        raise DataError(
            path,
            f"cannot download torchvision's ImageNet weights ({str(err).splitlines()[0][:200]}); without a network, "
            f"download {url} elsewhere and place it at this path",
        ) from None
    return path


def starting_weights(model: ModelConfig) -> Path | None:
    """The file a training run starts from: ``model.pretrained_model_file``, torchvision's ImageNet weights for
    ``model.pretrained=imagenet``, or none (said in the log: a fine-tune from random weights is rarely meant)."""
    if model.pretrained_model_file:
        return Path(model.pretrained_model_file)
    if model.pretrained == "imagenet":
        return imagenet_file(model.num_layers)
    if not model.pruned_checkpoint:  # a pruned model's retraining starts from its own weights
        log.info("starting from random weights (neither model.pretrained_model_file nor model.pretrained=imagenet)")
    return None


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


def _weights_classes_depth(obj: dict, path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None, int | None]:
    """The model tensors of a loaded file, named as in DetectNetV2, and the checkpoint's classes and ResNet depth
    if it is a transferdet checkpoint."""
    if checkpoint.is_checkpoint(obj):
        spec = checkpoint.spec_of(obj, path)
        return checkpoint.network_weights(obj), list(spec.classes), spec.model.num_layers
    # a torchvision / timm ResNet state dict: backbone tensors, classifier dropped
    return {f"backbone.{k}": v for k, v in obj.items() if isinstance(v, torch.Tensor)}, None, None


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
    state, source_classes, source_depth = _weights_classes_depth(obj, path)
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
        depth = getattr(model, "depth", "?")
        # a transferdet checkpoint says what it is: name the setting that fits it
        fix = (
            f"it is a ResNet-{source_depth} model: set model.num_layers={source_depth}"
            if source_depth is not None and source_depth != depth
            else "use weights of the same ResNet depth as model.num_layers"
        )
        raise DataError(
            path,
            f"does not fit this model's backbone (ResNet-{depth}): {'; '.join(parts)}; {fix}, or "
            "model.pretrained_strict=false to load only the tensors that fit",
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(k for k in own if k not in to_load and k not in ("mean", "std"))
    report.log(path)
    return report
