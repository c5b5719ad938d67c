"""The pipeline's stages, in order: which task each runs, with which settings, and when it is skipped.

Each stage is an ordinary task run in its own numbered folder of the pipeline's run directory; its
settings (which checkpoint to read, ``training.resume=auto``, the retrain overrides ...) come from the
pipeline config and the earlier stages' folders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from transferdet.errors import ConfigError
from transferdet.export.exporter import ONNX_FILES

Dirs = dict[str, Path]


def _last(d: Path) -> str:
    return str(d / "checkpoints" / "last.ckpt")


@dataclass(frozen=True)
class Stage:
    name: str
    task: str
    title: str
    # stage settings (dotted key -> value) from the pipeline config and the stage folders
    settings: Callable[[DictConfig, Dirs], dict] = lambda cfg, dirs: {}
    # a reason to skip the stage, or None to run it
    skip: Callable[[DictConfig], str | None] = lambda cfg: None
    # nested overrides from the pipeline config merged over the stage config (e.g. pipeline.retrain)
    merge_key: str | None = None


def synthesize_mode(cfg: DictConfig) -> str:
    """``pipeline.synthesize`` as auto, true or false (ConfigError otherwise)."""
    value = cfg.pipeline.synthesize
    mode = str(value).lower() if isinstance(value, (bool, str)) else ""
    if mode not in ("auto", "true", "false"):
        raise ConfigError(
            "pipeline.synthesize", value, "auto (when dataset.root is absent and dataset=synthetic), true or false"
        )
    return mode


def _skip_synth(cfg: DictConfig) -> str | None:
    mode = synthesize_mode(cfg)
    root = Path(cfg.dataset.root)
    if mode == "false":
        return "pipeline.synthesize=false"
    if mode == "true":
        return None
    if (root / "synth.json").is_file():
        return None  # the synth task checks its settings still match (and does nothing when they do)
    if root.exists():
        return f"dataset.root {root} holds a user dataset"
    choice = _dataset_choice() or "synthetic"
    if choice != "synthetic":
        return f"dataset={choice} (not the synthetic dataset)"
    return None


def _dataset_choice() -> str | None:
    try:
        return HydraConfig.get().runtime.choices.get("dataset")
    except ValueError:  # composed outside a Hydra run (tests)
        return None


def _scoring(cfg: DictConfig) -> dict:  # noqa: ARG001 - a stage setting's signature
    """KITTI data (``dataset=kitti``) is scored by KITTI's own protocol as well: the evaluate stages' override of
    the model's evaluation settings (a model trained with evaluation.protocol=kitti has it already)."""
    return {"evaluation.protocol": "kitti"} if _dataset_choice() == "kitti" else {}


def retrain_epochs(cfg: DictConfig) -> int:
    """``pipeline.retrain``'s ``training.num_epochs`` when it sets one, else ``pipeline.retrain_epochs_factor``
    times the training epochs (an epoch of the pruned model costs a fraction of the unpruned one's)."""
    explicit = OmegaConf.select(cfg, "pipeline.retrain.training.num_epochs", default=None)
    if explicit is not None:
        return explicit
    factor = cfg.pipeline.get("retrain_epochs_factor", 1)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise ConfigError(
            "pipeline.retrain_epochs_factor", factor, "a number > 0 (retrain epochs = factor x training.num_epochs)"
        )
    return max(1, round(factor * cfg.training.num_epochs))


def distill_enabled(cfg: DictConfig) -> bool:
    """``pipeline.distill``: retrain with the unpruned model as the teacher."""
    value = cfg.pipeline.get("distill", False)
    if not isinstance(value, bool):
        raise ConfigError(
            "pipeline.distill",
            value,
            "true (retrain towards the unpruned model's outputs as well as the labels) or false",
        )
    return value


def _retrain_settings(cfg: DictConfig, d: Dirs) -> dict:
    settings = {
        "model.pruned_checkpoint": str(d["prune"] / "pruned.ckpt"),
        "training.resume": "auto",
        "training.num_epochs": retrain_epochs(cfg),
    }
    if distill_enabled(cfg):
        settings["training.distillation.teacher"] = _last(d["train"])
    return settings


STAGES: list[Stage] = [
    Stage("synth", "synth", "synthesise the default dataset (when absent)", skip=_skip_synth),
    Stage("convert", "convert", "validate and convert the dataset"),
    Stage("train", "train", "train the unpruned model", lambda cfg, d: {"training.resume": "auto"}),
    Stage(
        "evaluate",
        "evaluate",
        "evaluate the unpruned model",
        lambda cfg, d: {"checkpoint": _last(d["train"]), "runtime": "torch", **_scoring(cfg)},
    ),
    Stage(
        "prune",
        "prune",
        "prune the trained model (val mAP before and after)",
        lambda cfg, d: {"checkpoint": _last(d["train"]), "sweep": False, "evaluate": True},
    ),
    Stage("retrain", "train", "retrain the pruned model", _retrain_settings, merge_key="retrain"),
    Stage(
        "evaluate_pruned",
        "evaluate",
        "evaluate the pruned, retrained model",
        lambda cfg, d: {"checkpoint": _last(d["retrain"]), "runtime": "torch", **_scoring(cfg)},
    ),
    Stage(
        "calibrate",
        "calibrate",
        "write the INT8 calibration tensors",
        lambda cfg, d: {"checkpoint": _last(d["retrain"])},
    ),
    Stage(
        "export",
        "export",
        "export ONNX fp32 + INT8, TensorRT cache, DeepStream config; parity",
        lambda cfg, d: {
            "checkpoint": _last(d["retrain"]),
            "export.data_type": "int8",
            "calibration.cal_data_file": str(d["calibrate"] / "calibration.npy"),
        },
    ),
    Stage(
        "evaluate_int8",
        "evaluate",
        "evaluate the INT8 ONNX model with ONNX Runtime",
        lambda cfg, d: {
            "checkpoint": str(d["export"] / ONNX_FILES["int8"]),
            "runtime": "onnxruntime",
            **_scoring(cfg),
        },
    ),
    Stage(
        "benchmark",
        "benchmark",
        "benchmark unpruned vs pruned, PyTorch vs ONNX Runtime fp32/INT8",
        lambda cfg, d: {
            "benchmark.models": {"unpruned": _last(d["train"]), "pruned": _last(d["retrain"])},
            # the pruned model's INT8 row times (and scores) the very files the export stage wrote
            "benchmark.exported": {"pruned": str(d["export"])},
        },
    ),
]


def stage_dirs(run_dir: Path) -> Dirs:
    """Each stage's numbered folder under the pipeline's run directory."""
    return {s.name: run_dir / f"{i:02d}_{s.name}" for i, s in enumerate(STAGES, 1)}
