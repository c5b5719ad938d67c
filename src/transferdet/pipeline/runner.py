"""Running the pipeline's stages: synth -> convert -> train -> evaluate -> prune -> retrain -> evaluate ->
calibrate -> export (fp32 + INT8, parity) -> evaluate INT8 -> benchmark (the report is :mod:`.report`'s).

Each stage is one ordinary task (the same code as ``transferdet <task>``) run in its own numbered
subfolder of the run directory, with the config that task would compose: the pipeline's groups (with
the user's overrides) restricted to the keys of the task's primary config, plus the stage's own
settings (which checkpoint to read, ``training.resume=auto``, the retrain overrides ...). So every
stage folder holds a ``config.yaml`` that reruns that stage by hand, and its ``metrics.json``.

Resuming: a stage is complete when its ``stage.json`` says so for the same config. Re-running the
pipeline in the same run directory (``pipeline.name``) skips complete stages, resumes an interrupted
training stage from its ``checkpoints/last.ckpt``, and reruns a stage (and every stage after it) whose
config changed; a superseded stage folder is moved under ``superseded/``, not deleted.
A stage that fails stops the pipeline with its error; the finished stages' outputs stay as they are.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from transferdet.config.validate import validate
from transferdet.errors import ConfigError, TransferdetError
from transferdet.pipeline.stages import STAGES, Dirs, Stage, stage_dirs, synthesize_mode
from transferdet.utils.io import make_folder, write_json_atomic
from transferdet.utils.logs import duration

log = logging.getLogger("transferdet.pipeline")

RECORD = "stage.json"
# groups of a primary config that are Hydra's, not the task's
NOT_TASK_GROUPS = {"hydra", "experiment", "debug", "hparams_search", "_self_"}

# how a stage's task runs: transferdet.tasks.run_task (passed in: the tasks are the pipeline's caller)
RunTask = Callable[[str, DictConfig, Path], dict]


class StageFailed(TransferdetError):
    def __init__(self, stage: str, folder: Path, err: TransferdetError) -> None:
        super().__init__(
            f"stage '{stage}' failed: {err} (finished stages are kept; fix the cause and run the same "
            f"command again to resume at '{stage}'; this stage's outputs: {folder})"
        )


def _primary(task: str) -> DictConfig:
    return OmegaConf.create((resources.files("transferdet.conf") / f"{task}.yaml").read_text(encoding="utf-8"))


def _groups(primary: DictConfig) -> set[str]:
    return {next(iter(e)) if isinstance(e, (dict, DictConfig)) else str(e) for e in primary.get("defaults", [])}


def stage_config(cfg: DictConfig, stage: Stage, dirs: Dirs) -> DictConfig:
    """The config ``transferdet <stage.task>`` would compose with the pipeline's choices and overrides."""
    primary = _primary(stage.task)
    own, task_groups = {k for k in primary if k != "defaults"}, _groups(primary) - NOT_TASK_GROUPS
    keys = task_groups | own
    pipeline_groups = _groups(_primary("pipeline"))
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key in list(out):
            if key not in keys:
                del out[key]
        for key in keys - set(out):  # top-level task keys the pipeline does not set: the task's defaults
            if key in primary:
                out[key] = primary[key]
        # a task's own key that is one of the pipeline's groups but none of the task's is the task's: e.g. the
        # postprocessing overrides of a task that runs a checkpoint, which carries the training's settings itself
        for key in (own - task_groups) & pipeline_groups:
            out[key] = copy.deepcopy(primary[key])
        out.task_name = stage.task
        if stage.merge_key:
            extra = cfg.pipeline.get(stage.merge_key)
            if extra:
                try:
                    out.merge_with(extra)
                except OmegaConfBaseException as err:
                    raise ConfigError(
                        f"pipeline.{stage.merge_key}",
                        OmegaConf.to_container(extra),
                        f"overrides of the {stage.task} config's keys ({str(err.msg).splitlines()[0]})",
                    ) from None
        for key, value in stage.settings(cfg, dirs).items():
            OmegaConf.update(out, key, value, merge=False, force_add=True)
    return out


def config_digest(cfg: DictConfig, run_dir: Path) -> str:
    """A fingerprint of a stage's config; paths inside the run directory count relative to it, so a run
    directory that was moved or copied still resumes."""
    text = OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), sort_keys=True)
    return hashlib.sha256(text.replace(str(run_dir), "<run_dir>").encode()).hexdigest()


def read_record(folder: Path) -> dict:
    """A stage folder's ``stage.json`` (empty when there is none or it is unreadable)."""
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _supersede(run_dir: Path, folder: Path) -> None:
    if folder.exists():
        target = run_dir / "superseded" / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), target)
        log.info("moved the outputs of an earlier config to %s", target)


def run_stages(cfg: DictConfig, run_dir: Path, run_task: RunTask) -> dict[str, dict]:
    """Run (or skip, or resume) every stage with ``run_task``; returns each stage's record."""
    dirs = stage_dirs(run_dir)
    records: dict[str, dict] = {}
    rerun = False  # once a stage runs, every later stage runs too (its inputs may have changed)
    n = len(STAGES)
    synthesize_mode(cfg)
    # a config mistake in any stage stops the run before it starts
    configs = {s.name: stage_config(cfg, s, dirs) for s in STAGES}
    for stage in STAGES:
        validate(configs[stage.name], stage.task)
    for i, stage in enumerate(STAGES, 1):
        folder, head = dirs[stage.name], f"[{i:2d}/{n}] {stage.name:<15}"
        reason = stage.skip(cfg)
        if reason:
            records[stage.name] = {"status": "skipped", "reason": reason, "seconds": 0.0}
            log.info("%s skipped: %s", head, reason)
            continue
        scfg = configs[stage.name]
        digest = config_digest(scfg, run_dir)
        record = read_record(folder)
        same = record.get("config_sha256") == digest and not rerun
        if same and record.get("status") == "complete" and (folder / "metrics.json").is_file():
            records[stage.name] = record
            log.info("%s complete earlier (%s); skipped", head, duration(record.get("seconds", 0.0)))
            continue
        if not same:
            _supersede(run_dir, folder)
        elif record:
            log.info("%s resuming an interrupted run in %s", head, folder)
        rerun = True
        make_folder(folder)
        write_json_atomic(
            folder / RECORD,
            {
                "status": "running",
                "task": stage.task,
                "config_sha256": digest,
                "seconds": record.get("seconds", 0.0) if same else 0.0,
            },
        )
        log.info("%s %s ...", head, stage.title)
        start = time.perf_counter()
        try:
            run_task(stage.task, scfg, folder)
        except TransferdetError as err:
            raise StageFailed(stage.name, folder, err) from err
        seconds = (record.get("seconds", 0.0) if same else 0.0) + time.perf_counter() - start
        records[stage.name] = {"status": "complete", "task": stage.task, "config_sha256": digest, "seconds": seconds}
        write_json_atomic(folder / RECORD, records[stage.name])
        log.info("%s done in %s", head, duration(seconds))
    return records
