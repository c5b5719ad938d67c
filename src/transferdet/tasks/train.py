"""``transferdet train``: train a DetectNet_v2 detector on a KITTI-layout dataset.

The dataset is converted first unless its converted form matches the dataset settings. The run
directory gets ``checkpoints/last.ckpt`` (plus one every ``training.checkpoint_interval`` epochs),
the logger outputs, ``val_images/`` and ``metrics.json`` with the final ``val/mAP`` and ``val/AP/<class>``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from transferdet.config import target_classes, typed
from transferdet.config.schema import BackendFloatx
from transferdet.data.converted import ConvertedDataset, converted_dir_for
from transferdet.errors import ConfigError, DataError
from transferdet.models.checkpoint import load_pretrained
from transferdet.training.checkpoint_io import AtomicCheckpointIO
from transferdet.training.datamodule import DetectionDataModule
from transferdet.training.module import GROUPS, DetectNetModule
from transferdet.utils.dist import is_global_zero

log = logging.getLogger(__name__)

PRECISION = {BackendFloatx.FLOAT32: "32-true", BackendFloatx.FLOAT16: "16-mixed", BackendFloatx.BFLOAT16: "bf16-mixed"}


def ensure_converted(cfg: DictConfig) -> Path:
    """The converted dataset for ``cfg.dataset``: reused when its settings match, else (re)converted."""
    d = typed(cfg, "dataset")
    out = converted_dir_for(d)
    try:
        if ConvertedDataset(out).matches(d):
            return out
        log.info("converted dataset at %s was made with other settings: converting again", out)
    except DataError:
        pass
    if not is_global_zero():  # DDP workers start after the launching process has converted
        raise DataError(out, "no converted dataset for these settings (the first process should have written it)")
    from transferdet.tasks.convert import convert

    convert(cfg)
    return out


def precision_plugins(cfg: DictConfig, accelerator: str) -> tuple[str, list]:
    """Lightning precision for ``training_precision``; ``cost_scaling`` drives fp16's gradient scaler."""
    t = typed(cfg, "training")
    precision = PRECISION[t.training_precision.backend_floatx]
    plugins: list = [AtomicCheckpointIO()]
    if precision == "16-mixed" and t.cost_scaling.enabled:
        from pytorch_lightning.plugins.precision import MixedPrecision

        cs = t.cost_scaling
        device = (
            "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"
        )
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


def resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    resume = typed(cfg, "training").resume
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
    if not Path(resume).is_file():
        raise ConfigError(
            "training.resume", resume, "'auto' (this run directory's last.ckpt) or an existing .ckpt file"
        )
    return resume


def build_trainer(cfg: DictConfig, run_dir: Path) -> pl.Trainer:
    precision, plugins = precision_plugins(cfg, str(cfg.trainer.get("accelerator", "auto")))
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    for cb in callbacks:
        if isinstance(cb, pl.callbacks.ModelCheckpoint):
            cb.dirpath = str(run_dir / "checkpoints")
    loggers = [instantiate(c, save_dir=str(run_dir)) for c in (cfg.get("logger") or {}).values() if c is not None]
    kwargs = dict(default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers or False, plugins=plugins)
    if precision is not None:
        kwargs["precision"] = precision
    return instantiate(cfg.trainer, **kwargs)


def build_module(cfg: DictConfig, classes: list[str], resume_from: str | None = None) -> DetectNetModule:
    """The module for ``cfg``; with ``model.pruned_checkpoint`` the pruned architecture and its weights
    (TLT's ``load_graph: true``); when resuming, the architecture of the checkpoint resumed from (which a
    pruning callback may have shrunk)."""
    from transferdet.models.checkpoint import load_tensor_file

    config = {g: OmegaConf.to_container(cfg[g], resolve=True, enum_to_str=True) for g in GROUPS}
    if resume_from:
        plan = (load_tensor_file(resume_from, "training.resume").get("hyper_parameters") or {}).get("channel_plan")
        return DetectNetModule(config, classes, plan)
    pruned = typed(cfg, "model").pruned_checkpoint
    if not pruned:
        return DetectNetModule(config, classes)

    obj = load_tensor_file(pruned, "model.pruned_checkpoint")
    hp = obj.get("hyper_parameters") or {}
    if "channel_plan" not in hp or "state_dict" not in obj:
        raise DataError(pruned, "not a pruned checkpoint (no channel plan): write one with `transferdet prune`")
    if list(hp.get("classes", [])) != list(classes):
        raise ConfigError(
            "dataset.target_class_mapping",
            classes,
            f"the pruned checkpoint's classes in the same order: {', '.join(hp.get('classes', []))}",
        )
    module = DetectNetModule(config, classes, hp["channel_plan"])
    state = {k[len("model.") :]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    try:
        module.model.load_state_dict(state)
    except RuntimeError as err:
        raise DataError(pruned, f"weights do not fit the channel plan: {str(err).splitlines()[0]}") from None
    log.info(
        "retraining the pruned model of %s (%d parameters)", pruned, sum(p.numel() for p in module.model.parameters())
    )
    return module


def write_augmented_samples(dm: DetectionDataModule, classes: list[str], count: int, folder: Path) -> None:
    """``augmentation.debug_samples``: the first training samples as the network sees them, boxes drawn."""
    from transferdet.structures import GroundTruth
    from transferdet.utils.io import atomic_path
    from transferdet.visualize import draw_detections

    dm.setup()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(min(count, len(dm.train_set))):
        s = dm.train_set[i]
        image = draw_detections(s["image"], None, GroundTruth(s["boxes"].numpy(), s["classes"].numpy()), classes)
        with atomic_path(folder / f"sample_{i:03d}.png") as tmp:
            image.save(tmp, format="PNG")
    log.info("wrote %d augmented samples to %s", min(count, len(dm.train_set)), folder)


def _finish_wandb(trainer: pl.Trainer) -> None:
    """End this run's W&B run: the next training in the same process (a sweep's next trial, the pipeline's
    retraining) must start its own run instead of logging into this one."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    t = typed(cfg, "training")
    pl.seed_everything(t.random_seed, workers=True, verbose=False)
    converted = ensure_converted(cfg)
    classes = target_classes(typed(cfg, "dataset"))
    ev = typed(cfg, "evaluation")
    dm = DetectionDataModule(
        converted,
        typed(cfg, "augmentation"),
        batch_size=t.batch_size_per_gpu,
        eval_batch_size=ev.batch_size,
        num_workers=t.num_workers,
        seed=t.random_seed,
    )
    ckpt = resume_path(cfg, run_dir)
    module = build_module(cfg, classes, resume_from=ckpt)
    module.validation_images_dir = run_dir / "val_images"
    module.attach_teacher()
    debug_samples = typed(cfg, "augmentation").debug_samples
    if debug_samples and is_global_zero():
        write_augmented_samples(dm, classes, debug_samples, run_dir / "augmented_samples")
    pretrained = typed(cfg, "model").pretrained_model_file
    if pretrained and ckpt is None:
        load_pretrained(module.model, pretrained, classes)
    trainer = build_trainer(cfg, run_dir)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    interval = t.checkpoint_interval
    if interval <= 0 or t.num_epochs % interval:
        # ModelCheckpoint wrote last.ckpt at the last multiple of checkpoint_interval: make it the final state
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")

    _finish_wandb(trainer)

    metrics = {k: v for k, v in module.last_validation.items() if not k.startswith("val/num_gt")}
    metrics["train/loss"] = float(trainer.callback_metrics.get("train/loss", float("nan")))
    metrics["train/epochs"] = trainer.current_epoch
    metrics["train/steps"] = trainer.global_step
    if is_global_zero() and math.isfinite(metrics.get("val/mAP", float("nan"))):
        log.info(
            "final val/mAP %.4f (%s)",
            metrics["val/mAP"],
            ", ".join(f"{c} {metrics.get(f'val/AP/{c}', float('nan')):.3f}" for c in classes),
        )
    return metrics
