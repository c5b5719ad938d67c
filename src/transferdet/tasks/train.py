"""``transferdet train``: train a DetectNet_v2 detector on a KITTI-layout dataset.

The dataset is converted first unless its converted form matches the dataset settings. The run directory
gets ``checkpoints/last.ckpt`` (plus one every ``training.checkpoint_interval`` epochs), the logger outputs,
``val_images/`` and ``metrics.json`` with the final ``val/mAP`` and ``val/AP/<class>``. With
``model.pruned_checkpoint`` it retrains a pruned model (TLT's ``load_graph: true``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from transferdet.config.validate import typed
from transferdet.data.prepare import ensure_converted
from transferdet.detector.pretrained import starting_weights
from transferdet.training.datamodule import DetectionDataModule
from transferdet.training.setup import (
    build_trainer,
    finish_wandb,
    fit,
    module_from_config,
    resume_path,
    write_augmented_samples,
)
from transferdet.utils.dist import is_global_zero

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train (or resume, or retrain a pruned model) and return the final validation metrics."""
    t, m, aug = typed(cfg, "training"), typed(cfg, "model"), typed(cfg, "augmentation")
    pl.seed_everything(t.random_seed, workers=True, verbose=False)
    ckpt = resume_path(t.resume, run_dir)
    start = None if ckpt else starting_weights(m)  # a download or a missing file shows before anything else
    converted = ensure_converted(typed(cfg, "dataset"))
    dm = DetectionDataModule(
        converted,
        aug,
        batch_size=t.batch_size_per_gpu,
        num_workers=t.num_workers,
        eval_batch_size=typed(cfg, "evaluation").batch_size,
        seed=t.random_seed,
    )
    module = module_from_config(
        cfg,
        resume_from=ckpt,
        pruned_checkpoint=m.pruned_checkpoint,
        pretrained=start,
        pretrained_strict=m.pretrained_strict,
    )
    module.validation_images_dir = run_dir / "val_images"
    module.attach_teacher()
    if aug.debug_samples and is_global_zero():
        write_augmented_samples(dm, module.classes, aug.debug_samples, run_dir / "augmented_samples")
    trainer = build_trainer(cfg.trainer, cfg.get("callbacks"), cfg.get("logger"), t, run_dir)
    fit(trainer, module, dm, ckpt)
    if t.checkpoint_interval <= 0 or t.num_epochs % t.checkpoint_interval:
        # ModelCheckpoint wrote last.ckpt at the last multiple of checkpoint_interval: make it the final state
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    finish_wandb(trainer)
    metrics = {k: v for k, v in module.last_validation.items() if not k.startswith("val/num_gt")}
    metrics["train/loss"] = float(trainer.callback_metrics.get("train/loss", float("nan")))
    metrics["train/epochs"], metrics["train/steps"] = trainer.current_epoch, trainer.global_step
    if is_global_zero() and math.isfinite(metrics.get("val/mAP", float("nan"))):
        per_class = ", ".join(f"{c} {metrics.get(f'val/AP/{c}', float('nan')):.3f}" for c in module.classes)
        log.info("final val/mAP %.4f (%s)", metrics["val/mAP"], per_class)
    return metrics
