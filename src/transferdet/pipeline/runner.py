"""``transferdet pipeline``: synth -> convert -> train -> evaluate -> prune -> retrain -> evaluate -> calibrate
-> export (fp32 + INT8, parity) -> evaluate INT8 -> benchmark -> ``report.md``.

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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from transferdet.errors import ConfigError, TransferdetError
from transferdet.utils.io import write_json_atomic

log = logging.getLogger("transferdet.pipeline")

RECORD = "stage.json"
# groups of a primary config that are Hydra's, not the task's
NOT_TASK_GROUPS = {"hydra", "experiment", "debug", "hparams_search", "_self_"}

Dirs = dict[str, Path]


class StageFailed(TransferdetError):
    def __init__(self, stage: str, folder: Path, err: TransferdetError) -> None:
        super().__init__(
            f"stage '{stage}' failed: {err} (finished stages are kept; fix the cause and run the same "
            f"command again to resume at '{stage}'; this stage's outputs: {folder})"
        )


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


def _synthesize_mode(cfg: DictConfig) -> str:
    value = cfg.pipeline.synthesize
    mode = str(value).lower() if isinstance(value, (bool, str)) else ""
    if mode not in ("auto", "true", "false"):
        raise ConfigError(
            "pipeline.synthesize", value, "auto (when dataset.root is absent and dataset=synthetic), true or false"
        )
    return mode


def _skip_synth(cfg: DictConfig) -> str | None:
    mode = _synthesize_mode(cfg)
    root = Path(cfg.dataset.root)
    if mode == "false":
        return "pipeline.synthesize=false"
    if mode == "true":
        return None
    if (root / "synth.json").is_file():
        return None  # the synth task checks its settings still match (and does nothing when they do)
    if root.exists():
        return f"dataset.root {root} holds a user dataset"
    from hydra.core.hydra_config import HydraConfig

    try:
        choice = HydraConfig.get().runtime.choices.get("dataset")
    except ValueError:
        choice = "synthetic"
    if choice != "synthetic":
        return f"dataset={choice} (not the synthetic dataset)"
    return None


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
        lambda cfg, d: {"checkpoint": _last(d["train"]), "runtime": "torch"},
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
        lambda cfg, d: {"checkpoint": _last(d["retrain"]), "runtime": "torch"},
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
        lambda cfg, d: {"checkpoint": str(d["export"] / "model_int8.onnx"), "runtime": "onnxruntime"},
    ),
    Stage(
        "benchmark",
        "benchmark",
        "benchmark unpruned vs pruned, PyTorch vs ONNX Runtime fp32/INT8",
        lambda cfg, d: {"benchmark.models": {"unpruned": _last(d["train"]), "pruned": _last(d["retrain"])}},
    ),
]


def stage_dirs(run_dir: Path) -> Dirs:
    return {s.name: run_dir / f"{i:02d}_{s.name}" for i, s in enumerate(STAGES, 1)}


def _primary(task: str) -> DictConfig:
    return OmegaConf.create((resources.files("transferdet.conf") / f"{task}.yaml").read_text(encoding="utf-8"))


def stage_config(cfg: DictConfig, stage: Stage, dirs: Dirs) -> DictConfig:
    """The config ``transferdet <stage.task>`` would compose with the pipeline's choices and overrides."""
    primary = _primary(stage.task)
    groups = {next(iter(e)) if isinstance(e, (dict, DictConfig)) else str(e) for e in primary.get("defaults", [])}
    keys = (groups - NOT_TASK_GROUPS) | {k for k in primary if k != "defaults"}
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key in list(out):
            if key not in keys:
                del out[key]
        for key in keys - set(out):  # top-level task keys the pipeline does not set: the task's defaults
            if key in primary:
                out[key] = primary[key]
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
                        f"overrides of the {stage.task} config's keys ({err.msg})",
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


def duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def run_stages(cfg: DictConfig, run_dir: Path) -> dict[str, dict]:
    """Run (or skip, or resume) every stage; returns each stage's record."""
    from transferdet.cli import run_task
    from transferdet.config import validate

    dirs = stage_dirs(run_dir)
    records: dict[str, dict] = {}
    rerun = False  # once a stage runs, every later stage runs too (its inputs may have changed)
    n = len(STAGES)
    _synthesize_mode(cfg)
    # a config mistake in any stage stops the run before it starts
    configs = {s.name: stage_config(cfg, s, dirs) for s in STAGES}
    for c in configs.values():
        validate(c)
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
        folder.mkdir(parents=True, exist_ok=True)
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


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    from transferdet.pipeline.report import write_report

    start = time.perf_counter()
    records = run_stages(cfg, run_dir)
    metrics = write_report(cfg, run_dir, stage_dirs(run_dir), records)
    metrics["pipeline/seconds_this_run"] = time.perf_counter() - start
    metrics["pipeline/seconds_all_stages"] = sum(r.get("seconds", 0.0) for r in records.values())
    log.info(
        "pipeline finished: %s of stage time; report: %s",
        duration(metrics["pipeline/seconds_all_stages"]),
        run_dir / "report.md",
    )
    return metrics
