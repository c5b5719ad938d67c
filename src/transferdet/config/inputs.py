"""The files a task reads, checked before the task's module loads.

A task imports PyTorch, Lightning or ONNX Runtime before it reads its first file: 5 to 10 seconds on a
small CPU before a mistyped path is reported. :func:`check_inputs` runs first (``run_task``, after the
config checks), so a missing checkpoint, input or dataset folder is one error in about a second. It checks
when a stage starts, not when a pipeline is composed: earlier stages write the later stages' inputs. The
readers keep their own checks (with these messages) for code that calls the library directly.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferdet.errors import ConfigError, DataError

CHECKPOINT_FILE = "an existing file (a transferdet .ckpt, or a .pth state dict)"
RESUME_FILE = "'auto' (this run directory's last.ckpt) or an existing .ckpt file"
INPUT_PATH = "an existing image file, folder of images, or video file (input=PATH)"
BENCHMARK_MODEL = "an existing transferdet checkpoint file"
MISSING_ROOT = "dataset root does not exist (config key dataset.root)"


def onnx_file(runtime: str) -> str:
    """What ``checkpoint`` must be for a runtime that runs exported models."""
    return (
        f"an existing .onnx file written by `transferdet export` with runtime={runtime} "
        "(runtime=torch runs .ckpt checkpoints)"
    )


def existing_file(path: str | Path, key: str, allowed: str = CHECKPOINT_FILE) -> Path:
    """``path`` when it is a file, else a ConfigError naming ``key``."""
    if not Path(path).is_file():
        raise ConfigError(key, str(path), allowed)
    return Path(path)


def existing_onnx(path: str | Path, runtime: str, key: str = "checkpoint") -> Path:
    """``path`` when it is an ``.onnx`` file, else a ConfigError naming ``key``."""
    if Path(path).suffix.lower() != ".onnx":
        raise ConfigError(key, str(path), onnx_file(runtime))
    return existing_file(path, key, onnx_file(runtime))


def existing_teacher(path: str | Path, key: str = "training.distillation.teacher") -> Path:
    """A distillation teacher: an existing checkpoint, not an exported model."""
    if Path(path).suffix.lower() == ".onnx":
        raise ConfigError(key, str(path), "a transferdet checkpoint (.ckpt): an ONNX model cannot teach")
    return existing_file(path, key, "an existing transferdet checkpoint (.ckpt), e.g. the unpruned model's")


def existing_root(root: str | Path) -> Path:
    """A dataset's root folder, else a DataError naming it."""
    if not Path(root).is_dir():
        raise DataError(Path(root), MISSING_ROOT)
    return Path(root)


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def check_inputs(cfg: DictConfig, task: str) -> None:
    """Raise the error a task would raise for the first of its input files that does not exist."""
    if task == "train":
        for key in ("model.pretrained_model_file", "model.pruned_checkpoint"):
            if _get(cfg, key):
                existing_file(_get(cfg, key), key)
        if _get(cfg, "training.distillation.teacher") and _get(cfg, "training.distillation.weight") != 0:
            existing_teacher(cfg.training.distillation.teacher)
        resume = _get(cfg, "training.resume")
        if resume and resume != "auto":
            existing_file(resume, "training.resume", RESUME_FILE)
    checkpoint = _get(cfg, "checkpoint")
    if task == "infer" and checkpoint:  # infer names a missing input before a missing checkpoint
        source = _get(cfg, "input")
        if not source or not Path(source).exists():
            raise ConfigError("input", source, INPUT_PATH)
    if checkpoint and task in ("evaluate", "infer", "prune", "calibrate", "export"):
        runtime = _get(cfg, "runtime")
        runtime = str(getattr(runtime, "value", runtime) or "torch")
        # existence only: the reader checks the kind of file, after the runtime itself (TensorRT) is there
        existing_file(checkpoint, "checkpoint", CHECKPOINT_FILE if runtime == "torch" else onnx_file(runtime))
    if task == "benchmark":
        for name, path in (_get(cfg, "benchmark.models") or {}).items():
            existing_file(path, f"benchmark.models.{name}", BENCHMARK_MODEL)
    # the datasets these tasks read (a task that runs a model reads the model's own where dataset.root is null)
    reads_dataset = task in ("train", "calibrate") or (task == "evaluate" and checkpoint)
    if reads_dataset and _get(cfg, "dataset.root") is not None:
        existing_root(cfg.dataset.root)
