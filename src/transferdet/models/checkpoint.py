"""Loading weights: pretrained backbones (torchvision / timm state dicts) and transferdet checkpoints.

Files are loaded with ``weights_only=True``: a file that would need arbitrary unpickling is refused.
A transferdet checkpoint carries a SHA-256 checksum of its weights (:func:`save_checkpoint`), verified
on every load: a corrupt or altered file is refused instead of silently giving wrong results.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferdet.errors import ConfigError, DataError

log = logging.getLogger(__name__)


CHECKSUM_KEY = "transferdet_checksum"


def weights_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint with the checksum of its ``state_dict``, under a temporary name renamed when complete."""
    from transferdet.utils.io import atomic_path

    obj = {**obj, CHECKSUM_KEY: weights_checksum(obj["state_dict"])}
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # torch's zip writer reports a failed write (disk full ...) this way
            raise DataError(
                path,
                f"cannot be written ({str(err).splitlines()[0]}): is the disk full, or a file "
                "size limit set? nothing was left under this name",
            ) from None


def verify_checksum(obj: dict[str, Any], path: Path) -> None:
    """A transferdet checkpoint (``state_dict`` + ``hyper_parameters``) must carry the checksum of its weights."""
    if not isinstance(obj.get("state_dict"), dict) or "hyper_parameters" not in obj:
        return  # a plain state dict (pretrained backbone): no checksum to verify
    expected = obj.get(CHECKSUM_KEY)
    if expected is None:
        raise DataError(
            path,
            "transferdet checkpoint without a weights checksum: not written by transferdet "
            "(or edited by hand); refused",
        )
    if weights_checksum(obj["state_dict"]) != expected:
        raise DataError(
            path,
            "weights checksum mismatch: the file was corrupted or altered after it was written; "
            "refused (use an earlier checkpoint)",
        )


def load_tensor_file(path: str | Path, key: str) -> dict[str, Any]:
    """A torch file as plain containers and tensors, its checksum verified; every failure names the file (and
    config ``key``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), "an existing file (a .pth state dict or a transferdet .ckpt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):  # a pickle that would build arbitrary objects (run code)
            raise DataError(
                path,
                "refused: the file needs arbitrary code to load (only tensors and plain "
                "containers are accepted, weights_only=True)",
            ) from None
        raise DataError(
            path, f"not a readable torch file (truncated or corrupt?): {str(err).splitlines()[0]}"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch's unpickler raises anything on garbage (IndexError, ...)
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataError(path, f"not a readable torch file (truncated or corrupt?): {first}") from None
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a state dict or a checkpoint (a dict), found {type(obj).__name__}")
    verify_checksum(obj, path)
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
        state = {k[len("model.") :]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
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
    report.log(Path(path))
    return report
