"""The one module that reads and writes transferdet's model files: checkpoints (``.ckpt``) and the spec inside
exported ONNX models.

A checkpoint is a ``torch.save`` of plain containers and tensors (loaded with ``weights_only=True``: a file
that would need arbitrary unpickling is refused)::

    state_dict                       "model.<name>" -> tensor (the network), "cost.<name>" (training state)
    hyper_parameters.spec            DetectorSpec.to_dict(): classes, preprocessing, architecture + channel
                                     plan, post-processing, evaluation
    hyper_parameters.training        the training, rasterizer and cost settings it was trained with (record)
    transferdet_checksum             SHA-256 of the weights and of hyper_parameters: a corrupt or edited file
                                     is refused instead of silently giving wrong results
    epoch, global_step, optimizer_states, ...   Lightning's, for resuming

Checkpoints of the first format (``hyper_parameters.config`` with the training groups and ``classes``; a
checksum of the weights alone) are read too. An ONNX model carries ``DetectorSpec.to_dict()`` as the JSON of
its ``transferdet_spec`` metadata entry, so loading it builds no network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferdet.config.inputs import existing_file, existing_onnx
from transferdet.config.overrides import DetectorOverrides
from transferdet.config.schema import (
    DatasetConfig,
    EvaluationConfig,
    ModelConfig,
    PostprocessingConfig,
    PreprocessingConfig,
)
from transferdet.config.structured import from_plain
from transferdet.config.validate import target_classes
from transferdet.detector.spec import DetectorSpec
from transferdet.errors import ConfigError, DataError
from transferdet.models.detectnet import DetectNetV2
from transferdet.utils.io import atomic_path

CHECKSUM_KEY = "transferdet_checksum"
SPEC_KEY, TRAINING_KEY = "spec", "training"
MODEL_PREFIX = "model."
ONNX_SPEC_KEY, ONNX_DATASET_KEY = "transferdet_spec", "transferdet_dataset"
ONNX_INPUT = "input_1"
_LEGACY_ONNX_KEYS = ("transferdet_config", "transferdet_classes")

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- checksums
def _tensors_digest(h: Any, state_dict: Mapping[str, torch.Tensor]) -> None:
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def weights_checksum(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors, in name order (format 1)."""
    h = hashlib.sha256()
    _tensors_digest(h, state_dict)
    return h.hexdigest()


def checksum(obj: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint's weights and its hyper_parameters (the spec and the training record)."""
    h = hashlib.sha256()
    _tensors_digest(h, obj["state_dict"])
    h.update(json.dumps(obj.get("hyper_parameters"), sort_keys=True, default=str).encode())
    return h.hexdigest()


def _is_legacy(obj: Mapping[str, Any]) -> bool:
    hp = obj.get("hyper_parameters")
    return isinstance(hp, Mapping) and SPEC_KEY not in hp and "config" in hp


def _verify(obj: Mapping[str, Any], path: Path) -> None:
    """A transferdet checkpoint (``state_dict`` + ``hyper_parameters``) must carry its checksum."""
    if not isinstance(obj.get("state_dict"), dict) or "hyper_parameters" not in obj:
        return  # a plain state dict (pretrained backbone): no checksum to verify
    expected = obj.get(CHECKSUM_KEY)
    if expected is None:
        raise DataError(
            path, "transferdet checkpoint without a checksum: not written by transferdet (or edited by hand); refused"
        )
    actual = weights_checksum(obj["state_dict"]) if _is_legacy(obj) else checksum(obj)
    if actual != expected:
        raise DataError(
            path,
            "checksum mismatch: the weights or settings were corrupted or altered after the file "
            "was written; refused (use an earlier checkpoint)",
        )


# --------------------------------------------------------------------------- raw files
def write(obj: Mapping[str, Any], path: str | Path) -> None:
    """Write a checkpoint dict with its checksum, under a temporary name renamed when complete."""
    obj = {**obj, CHECKSUM_KEY: checksum(obj)}
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # torch's zip writer reports a failed write (disk full ...) this way
            raise DataError(
                path,
                f"cannot be written ({str(err).splitlines()[0]}): is the disk full, or a file "
                "size limit set? nothing was left under this name",
            ) from None


def read(path: str | Path, key: str = "checkpoint") -> dict[str, Any]:
    """A torch file as plain containers and tensors, its checksum verified; failures name the file (or ``key``)."""
    path = existing_file(path, key)
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
    _verify(obj, path)
    return obj


# --------------------------------------------------------------------------- the layout
def hyper_parameters(spec: DetectorSpec, training: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint's ``hyper_parameters`` hold (the LightningModule saves exactly this)."""
    out: dict[str, Any] = {SPEC_KEY: spec.to_dict()}
    if training is not None:
        out[TRAINING_KEY] = dict(training)
    return out


def network_weights(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's tensors of a checkpoint (or of a plain state dict), named as in DetectNetV2."""
    state = obj["state_dict"]
    return {k[len(MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def spec_of(obj: Mapping[str, Any], path: str | Path) -> DetectorSpec:
    """The spec a checkpoint dict carries (upgraded from the first format); DataError when it has none."""
    hp = obj.get("hyper_parameters")
    if "state_dict" not in obj or not isinstance(hp, Mapping) or (SPEC_KEY not in hp and "config" not in hp):
        raise DataError(
            path,
            "not a transferdet checkpoint (no state_dict with hyper_parameters spec); a plain "
            "backbone state dict goes to model.pretrained_model_file",
        )
    try:
        if SPEC_KEY in hp:
            return DetectorSpec.from_dict(hp[SPEC_KEY])
        config = hp["config"]
        return DetectorSpec.from_groups(
            hp["classes"],
            from_plain(PreprocessingConfig, config["augmentation"].get("preprocessing"), "config.augmentation"),
            from_plain(ModelConfig, config["model"], "config.model"),
            from_plain(PostprocessingConfig, config["postprocessing"], "config.postprocessing"),
            from_plain(EvaluationConfig, config["evaluation"], "config.evaluation"),
            hp.get("channel_plan"),
        )
    except (ConfigError, KeyError, TypeError, AttributeError) as err:
        raise DataError(path, f"the checkpoint's settings do not fit this transferdet: {err}") from None


def is_checkpoint(obj: Mapping[str, Any]) -> bool:
    """True for a transferdet checkpoint, False for a plain (pretrained backbone) state dict."""
    return isinstance(obj.get("state_dict"), dict) and isinstance(obj.get("hyper_parameters"), Mapping)


def save(
    path: str | Path,
    spec: DetectorSpec,
    network: nn.Module,
    extra: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> None:
    """A checkpoint of ``network`` described by ``spec`` (e.g. a pruned model, which ``train`` retrains), with the
    ``training`` record of the model it was made from."""
    state = {f"{MODEL_PREFIX}{k}": v for k, v in network.state_dict().items()}
    obj = {"state_dict": state, "hyper_parameters": hyper_parameters(spec, training), "epoch": 0, "global_step": 0}
    write({**obj, **(extra or {})}, path)


@dataclass
class Loaded:
    """A checkpoint read back: its spec (overrides applied) and its network in eval mode."""

    spec: DetectorSpec
    network: DetectNetV2
    path: Path
    training: Mapping[str, Any] | None = None  # the settings it was trained with (dataset included), if recorded


def build_network(spec: DetectorSpec, weights: Mapping[str, torch.Tensor], path: str | Path) -> DetectNetV2:
    """The network of ``spec`` with ``weights`` loaded strictly; a mismatch is a DataError naming the file."""
    try:
        # the random initial weights are replaced at once; building them must not move the caller's random
        # stream (a training run seeded before it loads a pruned model would draw other augmentations)
        with torch.random.fork_rng(devices=[]):
            network = spec.build_network()
    except KeyError as err:
        raise DataError(path, f"the channel plan does not fit a ResNet-{spec.model.num_layers}: {err}") from None
    try:
        missing, unexpected = network.load_state_dict(dict(weights), strict=False)
    except RuntimeError as err:  # tensor shapes differ from the architecture
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:200])
        raise DataError(
            path,
            f"tensor shapes do not match the architecture (a pruned checkpoint without its channel plan?): {first}",
        ) from None
    if missing or unexpected:
        raise DataError(
            path, f"checkpoint does not fit its own architecture: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return network.eval()


def load(path: str | Path, overrides: DetectorOverrides | None = None, key: str = "checkpoint") -> Loaded:
    """A checkpoint's spec (with ``overrides`` applied) and its network with the weights loaded."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        raise ConfigError("runtime", "torch", f"onnxruntime for an ONNX model ({path}); torch runs .ckpt checkpoints")
    obj = read(path, key)
    spec = spec_of(obj, path)
    network = build_network(spec, network_weights(obj), path)
    return Loaded(spec.with_overrides(overrides), network, path, training_record(obj))


def training_record(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The settings a checkpoint's model was trained with, as recorded (None when it records none)."""
    record = (obj.get("hyper_parameters") or {}).get(TRAINING_KEY)
    return dict(record) if isinstance(record, Mapping) else None


def trained_dataset(path: str | Path) -> dict[str, Any] | None:
    """The dataset settings a checkpoint's (or an exported ONNX model's) model was trained on, if recorded."""
    if Path(path).suffix.lower() == ".onnx":
        meta = _onnx_metadata(path)
        return _json_entry(meta, ONNX_DATASET_KEY, path) if ONNX_DATASET_KEY in meta else None
    dataset = (training_record(read(path)) or {}).get("dataset")
    return dict(dataset) if isinstance(dataset, Mapping) else None


def dataset_for_model(
    d: DatasetConfig, model: str | Path | None, classes: Sequence[str] | None = None
) -> DatasetConfig:
    """The dataset a task runs a trained model on: ``d`` when the command line names one (``dataset.root``),
    else the one the model was trained on, as its checkpoint (or ONNX export) records it, and said so. With the
    model's ``classes``, a dataset of other classes (or another order) is refused before anything is converted."""
    if d.root is not None:
        _same_classes(d, classes)
        return d
    if model is None:
        raise ConfigError(
            "dataset.root", None, "a dataset folder (dataset.root=DIR; there is no model to take it from)"
        )
    recorded = trained_dataset(model)
    if recorded is None:
        raise ConfigError(
            "dataset.root",
            None,
            f"a dataset folder: {model} does not record the dataset it was trained "
            "on (dataset=kitti dataset.root=DIR for KITTI)",
        )
    try:
        dataset = from_plain(DatasetConfig, recorded, "dataset")
    except ConfigError as err:
        raise DataError(model, f"the recorded dataset settings do not fit this transferdet: {err}") from None
    log.info("dataset: %s, the one %s was trained on (dataset.root=DIR for another)", dataset.root, Path(model).name)
    _same_classes(dataset, classes)
    return dataset


def _same_classes(d: DatasetConfig, classes: Sequence[str] | None) -> None:
    if classes is not None and target_classes(d) != list(classes):
        raise ConfigError(
            "dataset.target_class_mapping",
            target_classes(d),
            f"the model's classes in the same order: {', '.join(classes)}",
        )


def read_spec(path: str | Path, key: str = "checkpoint") -> DetectorSpec:
    """The spec of a checkpoint, without building its network."""
    return spec_of(read(path, key), path)


# --------------------------------------------------------------------------- ONNX models
def write_onnx_spec(path: str | Path, spec: DetectorSpec, dataset: Mapping[str, Any] | None = None) -> None:
    """Store ``spec`` (and the ``dataset`` settings it was trained on) in an ONNX model's metadata
    (``transferdet_spec``, ``transferdet_dataset``), rewriting the file atomically."""
    import onnx

    model = onnx.load(str(path))
    ours = (ONNX_SPEC_KEY, ONNX_DATASET_KEY, *_LEGACY_ONNX_KEYS)
    kept = [p for p in model.metadata_props if p.key not in ours]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entries = {ONNX_SPEC_KEY: spec.to_dict()} | ({ONNX_DATASET_KEY: dict(dataset)} if dataset else {})
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)  # in order: a class mapping's order is its class ids
    model.producer_name = "transferdet"
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def _onnx_metadata(path: str | Path, runtime: str = "onnxruntime") -> dict[str, str]:
    """The metadata of an exported DetectNet_v2 ONNX model (checked: a readable model with one input, input_1)."""
    import onnx

    path = existing_onnx(path, runtime)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - onnx raises DecodeError and friends for a broken file
        raise DataError(path, f"not a readable ONNX model ({err.__class__.__name__})") from None
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if inputs != [ONNX_INPUT]:
        raise DataError(path, f"the model's inputs are {inputs}; a DetectNet_v2 export has one input, {ONNX_INPUT!r}")
    return {p.key: p.value for p in model.metadata_props}


def _json_entry(meta: Mapping[str, str], key: str, path: str | Path) -> Any:
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as err:
        raise DataError(path, f"the ONNX metadata entry {key} is not valid JSON ({err.msg})") from None


def read_onnx_spec(
    path: str | Path, overrides: DetectorOverrides | None = None, runtime: str = "onnxruntime"
) -> DetectorSpec:
    """The spec an exported ONNX model carries (no network is built); every failure names the file."""
    meta = _onnx_metadata(path, runtime)
    try:
        if ONNX_SPEC_KEY in meta:
            spec = DetectorSpec.from_dict(_json_entry(meta, ONNX_SPEC_KEY, path))
        elif all(k in meta for k in _LEGACY_ONNX_KEYS):
            config, classes = (_json_entry(meta, k, path) for k in _LEGACY_ONNX_KEYS)
            spec = spec_of({"state_dict": {}, "hyper_parameters": {"config": config, "classes": classes}}, path)
        else:
            raise DataError(
                path,
                "ONNX model without transferdet metadata (classes and settings): export it with `transferdet export`",
            )
    except ConfigError as err:
        raise DataError(path, f"the transferdet metadata does not fit this transferdet: {err}") from None
    return spec.with_overrides(overrides)
