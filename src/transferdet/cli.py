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
import re
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from transferdet import __version__
from transferdet.config.overrides import checkpoint_override_args
from transferdet.config.schema import register_configs
from transferdet.config.structured import config_error
from transferdet.config.tasks import runs_trained_models
from transferdet.errors import ConfigError, TransferdetError
from transferdet.tasks import TASKS, Task, run_task
from transferdet.utils.io import WRITE_ERRNOS
from transferdet.utils.logs import capture_warnings

log = logging.getLogger("transferdet")

CONFIG_PACKAGE = "pkg://transferdet.conf"
EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130
TRACEBACKS_VARIABLE = "TRANSFERDET_TRACEBACKS"


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


# set once Hydra has written the run directory's own files and hands over to the task
_task_started = False


def _hydra_entry(task_name: str):
    register_configs()

    @hydra.main(version_base="1.3", config_path=CONFIG_PACKAGE, config_name=task_name)
    def _main(cfg: DictConfig) -> float | None:
        global _task_started
        _task_started = True
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            metrics = run_task(task_name, cfg, run_dir)
        except TransferdetError as err:
            if show_tracebacks():
                raise
            fail(task_name, str(err))
        # a hyperparameter sweeper (hparams_search/*.yaml) optimises the value of this metric
        objective = cfg.get("optimized_metric")
        if not objective:
            return None
        if objective not in metrics:
            fail(
                task_name,
                f"config key 'optimized_metric' has value {objective!r}; allowed: one of the run's "
                f"metrics ({', '.join(sorted(metrics))})",
            )
        value = metrics[objective]
        return float("nan") if value is None else value  # null = not finite

    return _main


def show_tracebacks() -> bool:
    """``HYDRA_FULL_ERROR=1`` as the user set it (Hydra's own variable is ours to set: see :func:`main`)."""
    return os.environ.get(TRACEBACKS_VARIABLE, os.environ.get("HYDRA_FULL_ERROR")) == "1"


def fail(task_name: str, message: str, status: int = EXIT_USER_ERROR) -> NoReturn:
    print(f"transferdet {task_name}: error: {message}", file=sys.stderr)
    sys.exit(status)


def hydra_error(err: Exception, task_name: str) -> str:
    """Hydra's composition errors as our one line: the key, the bad value and what is allowed."""
    text = str(err)
    first = text.splitlines()[0] if text else type(err).__name__
    cause = err.__cause__
    if m := re.match(r"Could not override '([^']+)'\.\s*No match in the defaults list", text):
        group = m.group(1)
        why = (
            (
                "it runs a trained model, whose checkpoint holds its settings: override them key by key, e.g. "
                "postprocessing.target_class_config.car.clustering_config.dbscan_eps=0.3"
            )
            if runs_trained_models(task_name)
            else f"the groups `transferdet {task_name} --help` lists"
        )
        return str(ConfigError(group, _asked(group), f"no {group} group in `transferdet {task_name}`: {why}"))
    if m := re.match(r"Could not override '([^']+)'", text):
        return str(
            ConfigError(
                m.group(1),
                _asked(m.group(1)),
                f"a key of the {task_name} config (`transferdet {task_name} --help` lists them)",
            )
        )
    if isinstance(cause, OmegaConfBaseException):
        return str(config_error(cause))  # a value of the wrong type, or not one of an enum's
    if m := re.search(r"Could not find '([^'/]+)/([^']+)'", text):
        options = [o.strip() for o in re.findall(r"^\t(\S+)$", text, re.M) if o.strip() != "base"]
        return f"config group '{m.group(1)}' has no option {m.group(2)!r}; allowed: " + (
            ", ".join(options) if options else f"the options `transferdet {task_name} --help` lists"
        )
    if isinstance(err, OverrideParseException):
        return f"cannot read an override ({first}); allowed: key=value with a YAML value, e.g. training.num_epochs=20"
    return first


def _asked(key: str) -> str | None:
    """The value the command line gave ``key`` (for the error message)."""
    for arg in reversed(sys.argv[1:]):
        name, _, value = arg.lstrip("+~").partition("=")
        if name == key:
            return value
    return None


def _check_output_dir(task_name: str, args: list[str]) -> None:
    """Hydra creates the run directory before any task code runs: check that it can, so a path under a
    file or in a read-only place is one clear line instead of Hydra's traceback."""
    key, value = _output_dir_arg(args)
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
        fail(task_name, str(ConfigError(key, value, f"a folder that can be created and written ({problem})")))


def _output_dir_arg(args: list[str]) -> tuple[str, str]:
    """The config key of the run (or sweep) directory and its value on the command line (else ``outputs``)."""
    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    return key, next((a.split("=", 1)[1] for a in reversed(args) if a.startswith(f"{key}=")), "outputs")


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
    # Hydra prints its own errors as several lines and exits 1; told to raise them instead, it lets us print
    # one line and exit 2 (the user's choice of tracebacks travels in our own variable, to DDP workers too)
    os.environ.setdefault(TRACEBACKS_VARIABLE, "1" if os.environ.get("HYDRA_FULL_ERROR") == "1" else "0")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    capture_warnings()
    try:
        _hydra_entry(task_name)()
    except KeyboardInterrupt:
        fail(
            task_name,
            "interrupted (Ctrl-C); files are written complete or not at all, so what is there is "
            "whole; run the same command again to resume where a task can",
            EXIT_INTERRUPTED,
        )
    except (HydraException, OmegaConfBaseException) as err:
        if show_tracebacks():
            raise
        fail(task_name, hydra_error(err, task_name))
    except OSError as err:
        # Hydra writing the run directory's .hydra/ files before the task; the task's own writes report their file
        if err.errno not in WRITE_ERRNOS or _task_started or show_tracebacks():
            raise
        fail(
            task_name,
            f"the run directory {_output_dir_arg(rest)[1]} cannot be written: {err.strerror} (is the disk full, "
            "or a file size limit set?); the task did not start",
        )


if __name__ == "__main__":
    main()
