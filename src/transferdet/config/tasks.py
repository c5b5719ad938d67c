"""Typed schemas of the tasks' own top-level keys (``checkpoint``, ``runtime``, ``benchmark.*`` ...).

The eight spec groups have their schemas in :mod:`transferdet.config.schema`; these are the keys a task's
primary config (``conf/<task>.yaml``) adds. :func:`task_args` converts them once, at the task boundary:
a value of the wrong type or out of range is a ConfigError naming the key, enums arrive as enums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from transferdet.config.schema import DataType
from transferdet.config.structured import from_plain
from transferdet.errors import ConfigError

T = TypeVar("T")


class Runtime(Enum):
    """Where a model runs: PyTorch (.ckpt), ONNX Runtime (.onnx from export), TensorRT (an engine)."""

    torch = "torch"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


class ImageEncoding(Enum):
    """The files the benchmark's end-to-end timings decode: the dataset's own, or re-encoded as JPEG (quality
    95: a camera's format, decoded by nvJPEG on a GPU)."""

    source = "source"
    jpeg = "jpeg"


class Precision(Enum):
    """The torch runtime's precision: fp16 on a CUDA GPU only (an exported model has its own)."""

    fp32 = "fp32"
    fp16 = "fp16"


class ModelTask:
    """Marks the schema of a task that runs trained models: its config holds no training groups, only the
    overrides of the model's own settings (:class:`~transferdet.config.overrides.DetectorOverrides`)."""


@dataclass
class EvaluateTask(ModelTask):
    checkpoint: str | None = None
    predictions: str | None = None  # a folder of KITTI prediction files (16 fields, score last)
    labels: str | None = None  # ... and the ground-truth label folder they are scored against
    runtime: Runtime = Runtime.torch
    precision: Precision = Precision.fp32


@dataclass
class InferTask(ModelTask):
    checkpoint: str | None = None
    input: str | None = None
    batch_size: int = 8
    workers: int | None = None  # None: one per core
    draw_threshold: float = 0.0
    runtime: Runtime = Runtime.torch
    precision: Precision = Precision.fp32


@dataclass
class PruneTask(ModelTask):
    checkpoint: str | None = None
    evaluate: bool = False
    sweep: bool = False
    sweep_ratios: list[float] = field(default_factory=lambda: [0.5, 0.3, 0.2, 0.15, 0.1])


@dataclass
class CalibrateTask(ModelTask):
    checkpoint: str | None = None


@dataclass
class ExportTask(ModelTask):
    checkpoint: str | None = None


@dataclass
class BenchmarkSettings:
    # name -> checkpoint; the first model's PyTorch fp32 rows are the speedup baseline
    models: dict[str, str] | None = None
    # name -> the run directory of `transferdet export` of that model: its ONNX files are timed as they are
    exported: dict[str, str] | None = None
    precisions: list[DataType] = field(default_factory=lambda: [DataType.fp32, DataType.int8])
    runtimes: list[Runtime] = field(default_factory=lambda: [Runtime.torch, Runtime.onnxruntime])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    gpu_batch_sizes: list[int] = field(default_factory=lambda: [16, 64])
    repeats: int = 10
    threads: int | None = None
    workers: int | None = None  # None: one per core
    map: bool = True
    # numbers of concurrent video streams to measure (e.g. [1, 2, 4, 8]); None: no video streams
    video_streams: list[int] | None = None
    video_frames: int = 60  # frames each stream plays
    image_encoding: ImageEncoding = ImageEncoding.source


@dataclass
class BenchmarkTask(ModelTask):
    benchmark: BenchmarkSettings = field(default_factory=BenchmarkSettings)


TASK_SCHEMAS: dict[str, type] = {
    "evaluate": EvaluateTask,
    "infer": InferTask,
    "prune": PruneTask,
    "calibrate": CalibrateTask,
    "export": ExportTask,
    "benchmark": BenchmarkTask,
}


def _positive(key: str, value: Any, allowed: str = "an integer >= 1") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, value, allowed)


def _check(args: Any) -> None:
    """Ranges a type cannot express."""
    if isinstance(args, InferTask):
        _positive("batch_size", args.batch_size)
        if args.workers is not None:
            _positive("workers", args.workers, "an integer >= 1, or null for one per core")
        if not (math.isfinite(args.draw_threshold) and 0 <= args.draw_threshold <= 1):
            raise ConfigError("draw_threshold", args.draw_threshold, "a number in [0, 1]")
    if isinstance(args, PruneTask) and (not args.sweep_ratios or not all(0 < r < 1 for r in args.sweep_ratios)):
        raise ConfigError(
            "sweep_ratios", list(args.sweep_ratios), "a list of parameter ratios in (0, 1), e.g. [0.5,0.3]"
        )
    if isinstance(args, BenchmarkTask):
        b = args.benchmark
        if b.workers is not None:
            _positive("benchmark.workers", b.workers, "an integer >= 1 (batches in flight in the streamed run)")
        _positive("benchmark.repeats", b.repeats)
        if b.threads is not None:
            _positive("benchmark.threads", b.threads, "an integer >= 1, or null for the machine's default")
        _positive("benchmark.video_frames", b.video_frames)
        for name in ("batch_sizes", "gpu_batch_sizes", "video_streams"):
            for i, v in enumerate(getattr(b, name) or []):
                _positive(f"benchmark.{name}[{i}]", v)
        if not b.batch_sizes:
            raise ConfigError("benchmark.batch_sizes", [], "at least one batch size")


def runs_trained_models(task: str | None) -> bool:
    """Whether ``task`` runs trained models (and takes overrides of their settings)."""
    return issubclass(TASK_SCHEMAS.get(task or "", object), ModelTask)


def task_args(cfg: DictConfig, task: str) -> Any:
    """The typed top-level keys of ``task``'s config (a dataclass of :data:`TASK_SCHEMAS`)."""
    schema = TASK_SCHEMAS[task]
    names = [f for f in schema.__dataclass_fields__ if f in cfg]
    values = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k] for k in names
    }
    args = from_plain(schema, values)
    _check(args)
    return args


def typed_args(schema: type[T], values: dict) -> T:
    """A task schema from plain values (for code that runs a task's library without Hydra)."""
    args = from_plain(schema, values)
    _check(args)
    return args
