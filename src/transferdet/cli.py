"""``transferdet <task> [hydra overrides...]``: the command line.

Each task has a primary config ``conf/<task>.yaml``. Hydra composes it (with the user's overrides),
creates the run directory, and calls :func:`transferdet.tasks.run_task`, which validates the config,
runs the task and writes ``config.yaml`` and ``metrics.json``. A user's mistake
(:class:`~transferdet.errors.TransferdetError`) is one line on stderr and exit status 2, without a
traceback (``HYDRA_FULL_ERROR=1`` shows it).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from transferdet import __version__
from transferdet.config.overrides import checkpoint_override_args
from transferdet.config.schema import register_configs
from transferdet.config.tasks import runs_trained_models
from transferdet.errors import ConfigError, TransferdetError
from transferdet.tasks import TASKS, Task, run_task

log = logging.getLogger("transferdet")

CONFIG_PACKAGE = "pkg://transferdet.conf"
EXIT_USER_ERROR = 2


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


def _hydra_entry(task_name: str):
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


# Hydra's options that take a value (the value is not an override)
_VALUED_OPTIONS = {
    "-c",
    "--cfg",
    "-p",
    "--package",
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
    "--experimental-rerun",
    "-i",
    "--info",
}


def with_override(args: list[str], override: str) -> list[str]:
    """``args`` with one more override, placed next to the user's own: Hydra's parser takes the overrides as one
    run of positional arguments, so one put after a flag (``... -m``, ``--cfg job``) would be refused."""
    after_option = False
    for i, arg in enumerate(args):
        if not arg.startswith("-") and not after_option:
            return [*args[:i], override, *args[i:]]
        after_option = arg in _VALUED_OPTIONS
    return [*args, override]


def main(argv: list[str] | None = None) -> None:
    """The ``transferdet`` command: a task with its Hydra overrides, a command, or the usage."""
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
    if runs_trained_models(task_name):
        rest = checkpoint_override_args(rest)
    # Hydra reads its overrides from sys.argv; the task word is ours, so it travels as task_name=
    if f"task_name={task_name}" not in rest:
        rest = with_override(rest, f"task_name={task_name}")
    sys.argv = [sys.argv[0], *rest]
    _check_output_dir(task_name, rest)
    _hydra_entry(task_name)()


if __name__ == "__main__":
    main()
