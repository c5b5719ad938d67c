"""``transferdet <task> [hydra overrides...]``: one explicit table from task name to task function.

Each task has a primary config ``conf/<task>.yaml``. Hydra composes it (with the user's overrides),
creates the run directory, and calls the task's ``run(cfg, run_dir) -> dict`` function through
:func:`run_task`, which validates the config, writes the resolved config and ``metrics.json``, and
turns a user's mistake (:class:`~transferdet.errors.TransferdetError`) into one line on stderr and
exit status 2, without a traceback (``HYDRA_FULL_ERROR=1`` shows it).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferdet import __version__
from transferdet.errors import TransferdetError

log = logging.getLogger("transferdet")

CONFIG_PACKAGE = "pkg://transferdet.conf"
EXIT_USER_ERROR = 2


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
        "detect objects in images, folders or videos; annotated outputs + KITTI labels", "transferdet.tasks.infer:run"
    ),
    "prune": Task("structured channel pruning of a trained model", "transferdet.tasks.prune:run"),
    "calibrate": Task(
        "write an INT8 calibration tensor file from the training data", "transferdet.tasks.calibrate:run"
    ),
    "export": Task("ONNX fp32/fp16/int8, TensorRT cache and engine, DeepStream config", "transferdet.tasks.export:run"),
    "benchmark": Task(
        "latency / throughput table across runtimes, precisions and batch sizes", "transferdet.tasks.benchmark:run"
    ),
    "pipeline": Task(
        "the whole workflow, synth to report, in one command (resumable)", "transferdet.tasks.pipeline:run"
    ),
}


# commands that are not Hydra tasks: name -> (summary, "module:function" taking argv)
COMMANDS: dict[str, Task] = {
    "import-spec": Task(
        "convert a TLT/TAO DetectNet_v2 spec file into conf/experiment/<name>.yaml",
        "transferdet.config.import_command:main",
    ),
}


def _usage() -> str:
    width = max(map(len, [*TASKS, *COMMANDS]))
    lines = [
        f"transferdet {__version__}: transfer-learning toolkit for object detection",
        "",
        "usage: transferdet <task> [key=value ...] [group=option ...] [-m]",
        "       transferdet <task> --help      (the task's config and options)",
        "",
        "tasks:",
    ]
    for name, task in TASKS.items():
        lines.append(f"  {name:<{width}}  {task.summary}")
    for name, command in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {command.summary} (transferdet {name} --help)")
    lines += [
        "",
        "Each run writes to its own directory under outputs/ (hydra.run.dir=DIR to choose it),",
        "holding the resolved config.yaml and metrics.json.",
    ]
    return "\n".join(lines)


def _resolve(task_name: str) -> Callable[[DictConfig, Path], dict]:
    module, func = TASKS[task_name].target.split(":")
    return getattr(importlib.import_module(module), func)


def _flat_numbers(metrics: dict) -> dict[str, float | None]:
    """metrics.json is a flat object of numbers (a non-finite value is written as null)."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"metric {key!r} is {type(value).__name__}; metrics must be numbers")
        out[str(key)] = value if math.isfinite(value) else None
    return out


def run_task(task_name: str, cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Validate, run one task, and write ``config.yaml`` and ``metrics.json`` into ``run_dir``."""
    from transferdet.config import validate
    from transferdet.utils.dist import is_global_zero
    from transferdet.utils.io import make_folder, write_json_atomic, write_text_atomic

    make_folder(run_dir)
    validate(cfg)
    fn = _resolve(task_name)
    writer = is_global_zero()  # the other processes of a distributed run share the run directory
    if writer:
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(resolved))
    metrics = _flat_numbers(fn(cfg, run_dir))
    if writer:
        write_json_atomic(run_dir / "metrics.json", metrics)
        log.info("run directory: %s", run_dir)
    return metrics


def _hydra_entry(task_name: str) -> Callable[[], None]:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from transferdet.config import register_configs

    register_configs()

    @hydra.main(version_base="1.3", config_path=CONFIG_PACKAGE, config_name=task_name)
    def _main(cfg: DictConfig) -> float | None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            metrics = run_task(task_name, cfg, run_dir)
        except TransferdetError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"transferdet {task_name}: error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        # a hyperparameter sweeper (hparams_search/*.yaml) optimises the value of this metric
        objective = cfg.get("optimized_metric")
        if not objective:
            return None
        if objective not in metrics:
            print(
                f"transferdet {task_name}: error: config key 'optimized_metric' has value {objective!r}; allowed: "
                f"one of the run's metrics ({', '.join(sorted(metrics))})",
                file=sys.stderr,
            )
            sys.exit(EXIT_USER_ERROR)
        value = metrics[objective]
        return float("nan") if value is None else value  # null = not finite

    return _main


def _check_output_dir(task_name: str, args: list[str]) -> None:
    """Hydra creates the run directory before any task code runs: check that it can, so a path under a
    file or in a read-only place is one clear line instead of Hydra's traceback."""
    from transferdet.errors import ConfigError

    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    value = next((a.split("=", 1)[1] for a in reversed(args) if a.startswith(f"{key}=")), "outputs")
    fixed = Path(value.split("$", 1)[0] or ".")  # the part before any ${...} interpolation
    probe = fixed if fixed.is_absolute() else Path.cwd() / fixed
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    problem = None
    if not probe.is_dir():
        problem = f"{probe} is a file, not a folder"
    elif not os.access(probe, os.W_OK | os.X_OK):
        problem = f"{probe} is not writable"
    if problem:
        err = ConfigError(key, value, f"a folder that can be created and written ({problem})")
        print(f"transferdet {task_name}: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if argv else EXIT_USER_ERROR)
    if argv[0] in ("-V", "--version"):
        print(f"transferdet {__version__}")
        return
    if argv[0] in COMMANDS:
        module, func = COMMANDS[argv[0]].target.split(":")
        sys.exit(getattr(importlib.import_module(module), func)(argv[1:]))
    if argv[0] in TASKS:
        task_name, rest = argv[0], argv[1:]
    else:
        # a re-launched DDP worker: Lightning repeats the overrides (which name the task), not the task word
        named = [a.split("=", 1)[1] for a in argv if a.startswith("task_name=")]
        if not named or named[-1] not in TASKS:
            print(f"transferdet: unknown task {argv[0]!r}; tasks: {', '.join(TASKS)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        task_name, rest = named[-1], argv
    # Hydra reads its overrides from sys.argv; the task word is ours, so it travels as task_name=
    if f"task_name={task_name}" not in rest:
        rest = [*rest, f"task_name={task_name}"]
    sys.argv = [sys.argv[0], *rest]
    _check_output_dir(task_name, rest)
    _hydra_entry(task_name)()


if __name__ == "__main__":
    main()
