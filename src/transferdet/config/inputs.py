"""The files a task reads, checked before the task's module loads.

A task imports PyTorch, Lightning or ONNX Runtime before it reads its first file: 5 to 10 seconds on a
small CPU before a mistyped path is reported. :func:`check_inputs` runs first (``run_task``, after the
config checks), so a missing checkpoint, input or dataset folder is one error in about a second. It checks
when a stage starts, not when a pipeline is composed: earlier stages write the later stages' inputs. The
readers keep their own checks (with these messages) for code that calls the library directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferdet.errors import ConfigError, DataError

CHECKPOINT_FILE = "an existing file (a transferdet .ckpt, or a .pth state dict)"
RESUME_FILE = "'auto' (this run directory's last.ckpt) or an existing .ckpt file"
INPUT_PATH = "an existing image file, folder of images, or video file (input=PATH)"
BENCHMARK_MODEL = "an existing transferdet checkpoint file"
BENCHMARK_EXPORT = "the run directory of `transferdet export` of a model of benchmark.models"
KITTI_FOLDER = "an existing folder of KITTI .txt files"
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


def existing_folder(path: str | Path, key: str, allowed: str) -> Path:
    """``path`` when it is a folder, else a ConfigError naming ``key``."""
    if not Path(path).is_dir():
        raise ConfigError(key, str(path), allowed)
    return Path(path)


def deepstream_video(video: str | None) -> None:
    """``export.deepstream_video``: none, a URI, or an existing video file."""
    if video and "://" not in video and not Path(video).is_file():
        raise ConfigError("export.deepstream_video", video, "an existing video file or a URI (file://, rtsp://)")


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


def _training_files(cfg: DictConfig) -> None:
    for key in ("model.pretrained_model_file", "model.pruned_checkpoint"):
        if _get(cfg, key):
            existing_file(_get(cfg, key), key)
    if _get(cfg, "training.distillation.teacher") and _get(cfg, "training.distillation.weight") != 0:
        existing_teacher(cfg.training.distillation.teacher)
    resume = _get(cfg, "training.resume")
    if resume and resume != "auto":
        existing_file(resume, "training.resume", RESUME_FILE)


def _input(cfg: DictConfig) -> None:
    if _get(cfg, "checkpoint") and not (_get(cfg, "input") and Path(cfg.input).exists()):
        raise ConfigError("input", _get(cfg, "input"), INPUT_PATH)


def _checkpoint(cfg: DictConfig) -> None:
    if _get(cfg, "checkpoint"):
        runtime = _get(cfg, "runtime")
        runtime = str(getattr(runtime, "value", runtime) or "torch")
        # existence only: the reader checks the kind of file, after the runtime itself (TensorRT) is there
        existing_file(cfg.checkpoint, "checkpoint", CHECKPOINT_FILE if runtime == "torch" else onnx_file(runtime))


def _prediction_folders(cfg: DictConfig) -> None:
    for key in ("predictions", "labels"):
        if not _get(cfg, "checkpoint") and _get(cfg, key):
            existing_folder(_get(cfg, key), key, KITTI_FOLDER)


def _deepstream_video(cfg: DictConfig) -> None:
    deepstream_video(_get(cfg, "export.deepstream_video"))


def benchmark_files(models: Mapping[str, str], exported: Mapping[str, str]) -> None:
    """``benchmark.models`` (checkpoint files) and ``benchmark.exported`` (export folders of those models)."""
    for name, path in models.items():
        existing_file(path, f"benchmark.models.{name}", BENCHMARK_MODEL)
    for name, path in exported.items():
        if name not in models:
            raise ConfigError(f"benchmark.exported.{name}", path, BENCHMARK_EXPORT)
        existing_folder(path, f"benchmark.exported.{name}", BENCHMARK_EXPORT)


def _benchmark_models(cfg: DictConfig) -> None:
    benchmark_files(_get(cfg, "benchmark.models") or {}, _get(cfg, "benchmark.exported") or {})


def _dataset_root(cfg: DictConfig) -> None:
    # a task that runs a model reads the model's own dataset where dataset.root is null
    if _get(cfg, "dataset.root") is not None:
        existing_root(cfg.dataset.root)


def _scored_dataset_root(cfg: DictConfig) -> None:
    if _get(cfg, "checkpoint"):  # prediction files are scored against labels=DIR instead
        _dataset_root(cfg)


# task -> its checks, in the order the task itself would meet the files
CHECKS: dict[str, tuple[Callable[[DictConfig], None], ...]] = {
    "train": (_training_files, _dataset_root),
    "evaluate": (_checkpoint, _prediction_folders, _scored_dataset_root),
    "infer": (_input, _checkpoint),
    "prune": (_checkpoint,),
    "calibrate": (_checkpoint, _dataset_root),
    "export": (_checkpoint, _deepstream_video, _dataset_root),
    "benchmark": (_benchmark_models,),
}


def check_inputs(cfg: DictConfig, task: str) -> None:
    """Raise the error a task would raise for the first of its input files that does not exist."""
    for check in CHECKS.get(task, ()):
        check(cfg)
