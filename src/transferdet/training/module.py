"""The DetectNet_v2 LightningModule: model, rasterizer, cost, optimizer and schedule, validation mAP.

The module is built from a plain, resolved config dict (the eight spec groups and the class list),
which is all a checkpoint needs to rebuild it: no modules are pickled into the hyperparameters.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn

from transferdet.config import schema as S
from transferdet.errors import ConfigError, TransferdetError
from transferdet.evaluation import Evaluator
from transferdet.losses.cost import OBJECTIVES, DetectNetCost, regularization
from transferdet.losses.rasterizer import Rasterizer
from transferdet.models.detectnet import STRIDE, DetectNetV2
from transferdet.postprocess import Postprocessor
from transferdet.training.schedule import soft_start_annealing

log = logging.getLogger(__name__)

GROUPS = ("augmentation", "model", "training", "evaluation", "rasterizer", "postprocessing", "cost")


class TrainingDiverged(TransferdetError):
    """The loss became NaN or infinite."""


def typed_group(group: str, values: dict) -> Any:
    """A config group's dataclass from its plain dict (as stored in a checkpoint)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(S.GROUP_SCHEMAS[group]), values))


def validation_due(epoch: int, num_epochs: int, ev: S.EvaluationConfig) -> bool:
    """After 1-based ``epoch``: first at ``first_validation_epoch``, then every period, and at the last."""
    if epoch == num_epochs:
        return True
    first = max(ev.first_validation_epoch, 1)
    return epoch >= first and (epoch - first) % ev.validation_period_during_training == 0


class DetectNetModule(pl.LightningModule):
    def __init__(self, config: dict, classes: list[str], channel_plan: dict[str, list[int]] | None = None) -> None:
        """``channel_plan``: the layer shapes of a pruned model (see transferdet.pruning), None = unpruned."""
        super().__init__()
        hparams = {"config": config, "classes": list(classes)}
        if channel_plan:
            hparams["channel_plan"] = channel_plan
        self.save_hyperparameters(hparams)
        self.classes = list(classes)
        g = {name: typed_group(name, config[name]) for name in GROUPS}
        self.aug, self.model_cfg, self.train_cfg = g["augmentation"], g["model"], g["training"]
        self.eval_cfg, self.postprocessor_config = g["evaluation"], g["postprocessing"]
        pre = self.aug.preprocessing
        self.width, self.height = pre.output_image_width, pre.output_image_height
        m = self.model_cfg
        self.model = DetectNetV2(
            len(classes),
            m.num_layers,
            use_batch_norm=m.use_batch_norm,
            mean=m.input_normalization.mean,
            std=m.input_normalization.std,
        )
        if channel_plan:
            from transferdet.pruning.pruner import apply_channel_plan

            apply_channel_plan(self.model, channel_plan)
        box = m.objective_set.bbox
        self.rasterizer = Rasterizer(
            classes,
            g["rasterizer"],
            width=self.width,
            height=self.height,
            stride=STRIDE,
            bbox_scale=box.scale,
            bbox_offset=box.offset,
        )
        self.cost = DetectNetCost(classes, g["cost"])
        self.postprocessor = Postprocessor(
            classes,
            g["postprocessing"],
            width=self.width,
            height=self.height,
            stride=STRIDE,
            bbox_scale=box.scale,
            bbox_offset=box.offset,
        )
        self.evaluator = Evaluator(classes, self.eval_cfg)
        self.apply_freezing()
        self.last_validation: dict[str, float] = {}
        self.validation_images_dir: Path | None = None
        # training.distillation's teacher: set by attach_teacher; a plain attribute, not a submodule, so it is
        # neither trained nor saved in checkpoints
        self.__dict__["teacher"] = None

    # ------------------------------------------------------------------ distillation
    def attach_teacher(self) -> None:
        """Load ``training.distillation.teacher`` (frozen, in eval mode) when distillation is configured."""
        d = self.train_cfg.distillation
        if not d.teacher or d.weight == 0:
            return
        from transferdet.inference.predictor import load_module

        key = "training.distillation.teacher"
        if not Path(d.teacher).is_file():
            raise ConfigError(key, d.teacher, "an existing transferdet checkpoint (.ckpt), e.g. the unpruned model's")
        if Path(d.teacher).suffix.lower() == ".onnx":
            raise ConfigError(key, d.teacher, "a transferdet checkpoint (.ckpt): an ONNX model cannot teach")
        teacher = load_module(d.teacher)
        if teacher.classes != self.classes:
            raise ConfigError(
                key,
                d.teacher,
                f"a checkpoint of the same classes in the same order "
                f"({', '.join(self.classes)}); it has {', '.join(teacher.classes)}",
            )
        model = teacher.model.eval()
        model.requires_grad_(False)
        self.__dict__["teacher"] = model
        log.info("distilling from %s (weight %g)", d.teacher, d.weight)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    # ------------------------------------------------------------------ freezing
    def apply_freezing(self) -> None:
        """``freeze_blocks``: the convolutions of those blocks get no gradient (BN affine stays trainable)."""
        for block_id in self.model_cfg.freeze_blocks:
            for module in self.model.blocks()[block_id]:
                for conv in (m for m in module.modules() if isinstance(m, nn.Conv2d)):
                    for p in conv.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> DetectNetModule:
        super().train(mode)
        if self.model_cfg.freeze_bn:  # BN uses its running statistics and does not update them
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ training
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        cov, bbox = self.model(batch.images)
        targets = self.rasterizer(batch.boxes, batch.classes, batch.image_index, len(batch.images))
        total, costs = self.cost(cov, bbox, targets)
        reg = regularization(self.model, self.train_cfg.regularizer)
        loss = total + reg
        bs = len(batch.images)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_cov, teacher_bbox = self.teacher(batch.images)
            distill = self.cost.distillation(cov, bbox, teacher_cov, teacher_bbox)
            loss = loss + self.train_cfg.distillation.weight * distill
            self.log("train/distillation", distill, batch_size=bs)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss.item()} at epoch {self.current_epoch + 1}, step {self.global_step}; "
                "lower training.learning_rate.soft_start_annealing_schedule.max_learning_rate or use "
                "training.training_precision.backend_floatx=FLOAT32. The last complete checkpoint is kept."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/regularization", float(reg.detach()) if torch.is_tensor(reg) else reg, batch_size=bs)
        for k, cls in enumerate(self.classes):
            for o, name in enumerate(OBJECTIVES):
                self.log(f"train/loss_{name}/{cls}", costs[k, o], batch_size=bs)
        return loss

    def on_train_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        self.cost.end_epoch()
        for k, cls in enumerate(self.classes):
            for o, name in enumerate(OBJECTIVES):
                self.log(f"train/objective_weight_{name}/{cls}", float(self.cost.objective_weight[k, o]))
        epoch = self.current_epoch + 1
        if validation_due(epoch, self.train_cfg.num_epochs, self.eval_cfg) and self.trainer.datamodule is not None:
            if self.trainer.is_global_zero:
                metrics = self.evaluate_loader(self.trainer.datamodule.val_dataloader(), log_images=True)
                self.last_validation = metrics
                for key, value in metrics.items():
                    if math.isfinite(value):
                        self.log(key, value, rank_zero_only=True)
                log.info("epoch %d: val/mAP %.4f", epoch, metrics.get("val/mAP", float("nan")))
            self.trainer.strategy.barrier()

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def evaluate_loader(self, loader, *, log_images: bool = False, prefix: str = "val/") -> dict[str, float]:
        """mAP of the model over a data loader (no augmentation); the model is put back in training mode."""
        was_training = self.training
        self.eval()
        gts, dets, shown = [], [], []
        for batch in loader:
            batch = batch.to(self.device)
            cov, bbox = self.model(batch.images)
            found = self.postprocessor(cov.float().cpu().numpy(), bbox.float().cpu().numpy())
            dets.extend(found)
            gts.extend(batch.ground_truth())
            if log_images and len(shown) < 4:
                shown.extend(zip(batch.images[: 4 - len(shown)].cpu(), found, batch.ground_truth()))
        self.train(was_training)  # re-applies freeze_bn
        result = self.evaluator.evaluate(gts, dets)
        if shown:
            self._log_validation_images(shown)
        return result.metrics(prefix)

    def _log_validation_images(self, shown) -> None:
        from transferdet.visualize import draw_detections, save_grid

        images = [draw_detections(img, det, gt, self.classes) for img, det, gt in shown]
        if self.validation_images_dir is not None:
            save_grid(images, self.validation_images_dir / f"epoch_{self.current_epoch + 1:03d}.png")
        for logger in self.loggers:
            if hasattr(logger, "log_image"):  # W&B
                logger.log_image(key="val/images", images=[np.asarray(i) for i in images], step=self.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
                for n, im in enumerate(images):
                    logger.experiment.add_image(f"val/image_{n}", np.asarray(im), self.global_step, dataformats="HWC")

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        t = self.train_cfg
        schedule = t.learning_rate.soft_start_annealing_schedule
        adam = t.optimizer.adam
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(
            params, lr=schedule.max_learning_rate, betas=(adam.beta1, adam.beta2), eps=adam.epsilon
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: soft_start_annealing(step / total, schedule) / schedule.max_learning_rate
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
