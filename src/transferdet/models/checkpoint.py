"""Loading weights: pretrained backbones (torchvision / timm state dicts) and transferdet checkpoints.

Files are loaded with ``weights_only=True``: a file that would need arbitrary unpickling is refused.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferdet.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def load_tensor_file(path: str | Path, key: str) -> dict[str, Any]:
    """A torch file as plain containers and tensors; every failure names the file (and config ``key``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), "an existing file (a .pth state dict or a transferdet .ckpt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise DataError(path, "refused: the file needs arbitrary code to load (only tensors and plain "
                              f"containers are accepted, weights_only=True): {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise DataError(path, f"not a readable torch file (truncated or corrupt?): {str(err).splitlines()[0]}") \
            from None
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a state dict or a checkpoint (a dict), found {type(obj).__name__}")
    return obj


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[str] = field(default_factory=list)  # same name, other shape
    missing: list[str] = field(default_factory=list)  # in the model, not filled from the file

    def log(self, source: Path) -> None:
        log.info("pretrained weights from %s: %d tensors loaded", source, len(self.loaded))
        for name in self.skipped:
            log.info("  skipped (not in the model): %s", name)
        for name in self.mismatched:
            log.warning("  shape mismatch, not loaded: %s", name)
        for name in self.missing:
            log.info("  not in the file, keeps its initialisation: %s", name)


def model_state_of(obj: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The model tensors of a loaded file, named as in DetectNetV2, and the checkpoint's hparams if any."""
    if "state_dict" in obj:  # a transferdet (Lightning) checkpoint
        state = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        return state, obj.get("hyper_parameters")
    # a torchvision / timm ResNet state dict: backbone tensors, classifier dropped
    return {f"backbone.{k}": v for k, v in obj.items() if isinstance(v, torch.Tensor)}, None


def load_pretrained(model: nn.Module, path: str | Path, classes: list[str]) -> LoadReport:
    """Fill ``model`` from a pretrained file: matching names and shapes load, everything else is reported.

    From a transferdet checkpoint trained on other classes the heads are left re-initialised.
    """
    obj = load_tensor_file(path, "model.pretrained_model_file")
    state, hparams = model_state_of(obj)
    own = model.state_dict()
    report = LoadReport()
    same_classes = hparams is not None and list(hparams.get("classes", [])) == list(classes)
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
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(k for k in own if k not in to_load and k not in ("mean", "std"))
    report.log(Path(path))
    return report
