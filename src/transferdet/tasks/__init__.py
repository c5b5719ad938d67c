"""The tasks a user runs, and how one runs: an explicit table from task name to its ``run`` function.

Each task module has ``run(cfg, run_dir) -> metrics``: a short composition of library calls. A module is
imported only when its task runs (``transferdet --help`` imports no task). :func:`run_task` is the one
way a task runs, from the CLI or as a pipeline stage: validate the config, check that its input files exist,
write ``config.yaml``, run, write ``metrics.json``. Task modules import the library, never each other.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from transferdet.config.inputs import check_inputs
from transferdet.config.validate import validate
from transferdet.utils.dist import is_global_zero
from transferdet.utils.io import make_folder, write_json_atomic
from transferdet.utils.rundir import METRICS_FILE, flat_numbers, write_config

log = logging.getLogger("transferdet")


@dataclass(frozen=True)
class Task:
    summary: str
    target: str  # "module:function"


TASKS: dict[str, Task] = {
    "synth": Task(
        "write a synthetic KITTI-format road-scene dataset (the embedded default data)", "transferdet.tasks.synth:run"
    ),
    "convert": Task(
        "validate and partition a KITTI dataset into the indexed training format, with a report",
        "transferdet.tasks.convert:run",
    ),
    "train": Task("train (or retrain a pruned) DetectNet_v2 detector", "transferdet.tasks.train:run"),
    "evaluate": Task(
        "mAP of a checkpoint, an exported model, or a folder of KITTI prediction files",
        "transferdet.tasks.evaluate:run",
    ),
    "infer": Task(
        "detect objects in images, folders or videos; annotated outputs + KITTI labels",
        "transferdet.tasks.infer:run",
    ),
    "prune": Task("structured channel pruning of a trained model", "transferdet.tasks.prune:run"),
    "calibrate": Task(
        "write an INT8 calibration tensor file from the training data", "transferdet.tasks.calibrate:run"
    ),
    "export": Task("ONNX fp32/fp16/int8, TensorRT cache and engine, DeepStream config", "transferdet.tasks.export:run"),
    "benchmark": Task(
        "latency / throughput table across runtimes, precisions and batch sizes",
        "transferdet.tasks.benchmark:run",
    ),
    "pipeline": Task(
        "the whole workflow, synth to report, in one command (resumable)", "transferdet.tasks.pipeline:run"
    ),
}

TaskFunction = Callable[[DictConfig, Path], dict]


def resolve(task_name: str) -> TaskFunction:
    """The ``run`` function of a task, imported when the task runs."""
    module, func = TASKS[task_name].target.split(":")
    return getattr(importlib.import_module(module), func)


def run_task(task_name: str, cfg: DictConfig, run_dir: Path) -> dict[str, float | None]:
    """Validate, run one task, and write ``config.yaml`` and ``metrics.json`` into ``run_dir``."""
    make_folder(run_dir)
    validate(cfg, task_name)
    check_inputs(cfg, task_name)  # before the task imports its libraries: a missing file answers at once
    fn = resolve(task_name)
    writer = is_global_zero()  # the other processes of a distributed run share the run directory
    if writer:
        write_config(run_dir, cfg)
    metrics = flat_numbers(fn(cfg, run_dir))
    if writer:
        write_json_atomic(run_dir / METRICS_FILE, metrics)
        log.info("run directory: %s", run_dir)
    return metrics
