"""Everything a training run is assembled from: the module (fresh, resumed, or a pruned model to retrain),
the Lightning trainer with its precision, callbacks and loggers, and the resume point."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.plugins.precision import MixedPrecision

from transferdet.config.inputs import RESUME_FILE, existing_file
from transferdet.config.schema import BackendFloatx, CostConfig, DatasetConfig, RasterizerConfig, TrainingConfig
from transferdet.config.validate import target_classes, typed
from transferdet.detector import checkpoint
from transferdet.detector.pretrained import load_pretrained
from transferdet.detector.spec import DetectorSpec
from transferdet.errors import ConfigError, DataError
from transferdet.structures import GroundTruth
from transferdet.training.checkpoint_io import AtomicCheckpointIO
from transferdet.training.datamodule import DetectionDataModule
from transferdet.training.module import DetectNetModule
from transferdet.utils.dist import is_global_zero
from transferdet.utils.io import atomic_path, make_folder
from transferdet.visualize import draw_detections

log = logging.getLogger(__name__)

PRECISION = {BackendFloatx.FLOAT32: "32-true", BackendFloatx.FLOAT16: "16-mixed", BackendFloatx.BFLOAT16: "bf16-mixed"}


def precision_plugins(t: TrainingConfig, accelerator: str) -> tuple[str | None, list]:
    """Lightning precision for ``training_precision``; ``cost_scaling`` drives fp16's gradient scaler."""
    precision: str | None = PRECISION[t.training_precision.backend_floatx]
    plugins: list = [AtomicCheckpointIO()]
    if precision == "16-mixed" and t.cost_scaling.enabled:
        cs = t.cost_scaling
        gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        device = "cuda" if gpu else "cpu"
        # TLT: loss * 2^e; e += increment after a finite step, e -= decrement after an overflow
        scaler = torch.amp.GradScaler(
            device,
            init_scale=2.0**cs.initial_exponent,
            growth_factor=2.0**cs.increment,
            backoff_factor=2.0**-cs.decrement,
            growth_interval=1,
        )
        plugins.append(MixedPrecision(precision, device, scaler=scaler))
        precision = None
    return precision, plugins


def resume_path(resume: str | None, run_dir: Path) -> str | None:
    """The checkpoint ``training.resume`` names: ``auto`` = the newest complete one of this run directory."""
    if resume is None:
        return None
    if resume == "auto":
        # the newest complete checkpoint (files appear under their names only when complete): a kill between
        # writing epoch_N.ckpt and last.ckpt resumes from epoch_N.ckpt
        folder = run_dir / "checkpoints"
        if is_global_zero():
            for stale in folder.glob(".*.ckpt.*.tmp"):  # a write a crash interrupted: never a checkpoint
                stale.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted checkpoint write", stale.name)
        found = sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))
        if found:
            log.info("resuming from %s", found[-1])
            return str(found[-1])
        log.info("training.resume=auto: no checkpoint in %s yet, starting fresh", folder)
        return None
    return str(existing_file(resume, "training.resume", RESUME_FILE))


def build_trainer(
    trainer: DictConfig,
    callbacks: DictConfig | None,
    loggers: DictConfig | None,
    training: TrainingConfig,
    run_dir: Path,
) -> pl.Trainer:
    """The Lightning trainer of the ``trainer``, ``callbacks`` and ``logger`` groups (``_target_`` nodes)."""
    precision, plugins = precision_plugins(training, str(trainer.get("accelerator", "auto")))
    made = [_instantiate(f"callbacks.{k}", c) for k, c in (callbacks or {}).items() if c is not None]
    for cb in made:
        if isinstance(cb, pl.callbacks.ModelCheckpoint):
            cb.dirpath = str(run_dir / "checkpoints")
    if training.ema_decay > 0:
        # validation and checkpoints (state_dict) get the averaged weights; a resume restores both
        made.append(EMAWeightAveraging(decay=training.ema_decay))
    logs = [_instantiate(f"logger.{k}", c, save_dir=str(run_dir)) for k, c in (loggers or {}).items() if c is not None]
    kwargs = dict(default_root_dir=str(run_dir), callbacks=made, logger=logs or False, plugins=plugins)
    if precision is not None:
        kwargs["precision"] = precision
    return _instantiate("trainer", trainer, **kwargs)


def _instantiate(key: str, node: DictConfig, **kwargs):
    """A Lightning object from its ``_target_`` node; a constructor that refuses its arguments is a ConfigError
    naming the group (e.g. ``trainer.devices=abc``)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        first = (str(cause).splitlines() or [type(cause).__name__])[0].strip("'\" ")
        raise ConfigError(
            key, node.get("_target_"), f"arguments its target accepts ({type(cause).__name__}: {first})"
        ) from None


def build_module(
    spec: DetectorSpec,
    training: TrainingConfig,
    rasterizer: RasterizerConfig,
    cost: CostConfig,
    *,
    resume_from: str | None = None,
    pruned_checkpoint: str | None = None,
    pretrained: str | None = None,
    pretrained_strict: bool = True,
    dataset: DatasetConfig | None = None,
) -> DetectNetModule:
    """The module to train: with ``pruned_checkpoint`` the pruned architecture and its weights (TLT's
    ``load_graph: true``); when resuming, the architecture of the checkpoint resumed from (which a pruning
    callback may have shrunk); else fresh, filled from ``pretrained`` weights if given."""
    if resume_from:
        plan = checkpoint.read_spec(resume_from, "training.resume").channel_plan
        return DetectNetModule(spec.replace(channel_plan=plan), training, rasterizer, cost, dataset)
    if pruned_checkpoint:
        pruned = checkpoint.load(pruned_checkpoint, key="model.pruned_checkpoint")
        if not pruned.spec.channel_plan:
            raise DataError(
                pruned_checkpoint, "not a pruned checkpoint (no channel plan): write one with `transferdet prune`"
            )
        if pruned.spec.classes != spec.classes:
            raise ConfigError(
                "dataset.target_class_mapping",
                list(spec.classes),
                f"the pruned checkpoint's classes in the same order: {', '.join(pruned.spec.classes)}",
            )
        module = DetectNetModule(
            spec.replace(channel_plan=pruned.spec.channel_plan), training, rasterizer, cost, dataset
        )
        module.model.load_state_dict(pruned.network.state_dict())
        log.info(
            "retraining the pruned model of %s (%d parameters)",
            pruned_checkpoint,
            sum(p.numel() for p in module.model.parameters()),
        )
        return module
    module = DetectNetModule(spec, training, rasterizer, cost, dataset)
    if pretrained:
        load_pretrained(module.model, pretrained, list(spec.classes), strict=pretrained_strict)
    return module


def training_spec(cfg: DictConfig) -> DetectorSpec:
    """The spec a training config describes: its classes, preprocessing, model, post-processing, evaluation."""
    aug = typed(cfg, "augmentation")
    return DetectorSpec.from_groups(
        target_classes(typed(cfg, "dataset")),
        aug.preprocessing,
        typed(cfg, "model"),
        typed(cfg, "postprocessing"),
        typed(cfg, "evaluation"),
    )


def module_from_config(cfg: DictConfig, **kwargs) -> DetectNetModule:
    """:func:`build_module` with every setting from a composed training config."""
    return build_module(
        training_spec(cfg),
        typed(cfg, "training"),
        typed(cfg, "rasterizer"),
        typed(cfg, "cost"),
        dataset=typed(cfg, "dataset"),
        **kwargs,
    )


def write_augmented_samples(dm: DetectionDataModule, classes: list[str], count: int, folder: Path) -> None:
    """``augmentation.debug_samples``: the first training samples as the network sees them, boxes drawn."""
    dm.setup()
    make_folder(folder)
    for i in range(min(count, len(dm.train_set))):
        s = dm.train_set[i]
        image = draw_detections(s["image"], None, GroundTruth(s["boxes"].numpy(), s["classes"].numpy()), classes)
        with atomic_path(folder / f"sample_{i:03d}.png") as tmp:
            image.save(tmp, format="PNG")
    log.info("wrote %d augmented samples to %s", min(count, len(dm.train_set)), folder)


def fit(trainer: pl.Trainer, module: DetectNetModule, dm: DetectionDataModule, ckpt_path: str | None) -> None:
    """``trainer.fit``; Lightning turns Ctrl-C into ``exit(1)`` after its graceful shutdown: it is Ctrl-C again here,
    so the command line says so (exit status 130) instead of failing silently."""
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def finish_wandb(trainer: pl.Trainer) -> None:
    """End this run's W&B run: the next training in the same process (a sweep's next trial, the pipeline's
    retraining) must start its own run instead of logging into this one."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
