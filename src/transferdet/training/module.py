"""The DetectNet_v2 LightningModule: the detector of a spec, with rasterizer, cost, optimizer and schedule.

The module is built from a :class:`~transferdet.detector.DetectorSpec` (what the detector is) plus the
training, rasterizer and cost settings (how it learns). Its hyperparameters are exactly what a checkpoint
records (:func:`transferdet.detector.checkpoint.hyper_parameters`): plain dicts, no pickled modules.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import nn
from typing_extensions import override

from transferdet.config.inputs import existing_teacher
from transferdet.config.schema import CostConfig, DatasetConfig, RasterizerConfig, TrainingConfig
from transferdet.config.structured import to_plain
from transferdet.detector import checkpoint
from transferdet.detector.spec import ChannelPlan, DetectorSpec
from transferdet.errors import ConfigError, TransferdetError
from transferdet.evaluation.loop import evaluate_batches
from transferdet.losses.cost import OBJECTIVES, DetectNetCost, regularization
from transferdet.losses.rasterizer import Rasterizer
from transferdet.models.detectnet import STRIDE, DetectNetV2
from transferdet.training.schedule import soft_start_annealing
from transferdet.visualize import draw_detections, save_grid

log = logging.getLogger(__name__)


class TrainingDiverged(TransferdetError):
    """The loss became NaN or infinite."""


def validation_due(epoch: int, num_epochs: int, ev) -> bool:
    """After 1-based ``epoch``: first at ``first_validation_epoch``, then every period, and at the last."""
    if epoch == num_epochs:
        return True
    first = max(ev.first_validation_epoch, 1)
    return epoch >= first and (epoch - first) % ev.validation_period_during_training == 0


class DetectNetModule(pl.LightningModule):
    def __init__(
        self,
        spec: DetectorSpec,
        training: TrainingConfig,
        rasterizer: RasterizerConfig,
        cost: CostConfig,
        dataset: DatasetConfig | None = None,
    ) -> None:
        """``dataset``: recorded in checkpoints, so the tasks that run the model can default to it."""
        super().__init__()
        self.spec = spec
        self.train_cfg = training
        record = {"training": to_plain(training), "rasterizer": to_plain(rasterizer), "cost": to_plain(cost)}
        if dataset is not None:  # with an absolute root: the model is used from other folders later
            record["dataset"] = {**to_plain(dataset), "root": str(Path(dataset.root).absolute())}
        self.save_hyperparameters(checkpoint.hyper_parameters(spec, record))
        self.classes = list(spec.classes)
        self.model_cfg, self.eval_cfg = spec.model, spec.evaluation
        self.width, self.height = spec.width, spec.height
        self.model: DetectNetV2 = spec.build_network()
        box = spec.model.objective_set.bbox
        self.rasterizer = Rasterizer(
            self.classes,
            rasterizer,
            width=self.width,
            height=self.height,
            stride=STRIDE,
            bbox_scale=box.scale,
            bbox_offset=box.offset,
        )
        self.cost = DetectNetCost(self.classes, cost)
        self.postprocessor = spec.postprocessor()
        self.evaluator = spec.evaluator()
        self.apply_freezing()
        self.last_validation: dict[str, float] = {}
        self.validation_images_dir: Path | None = None
        # training.distillation's teacher: set by attach_teacher; a plain attribute, not a submodule, so it is
        # neither trained nor saved in checkpoints
        self.__dict__["teacher"] = None

    def set_channel_plan(self, plan: ChannelPlan) -> None:
        """The model was pruned in place: later checkpoints record (and rebuild) its new shape."""
        self.spec = self.spec.replace(channel_plan={k: tuple(v) for k, v in plan.items()})
        self.hparams[checkpoint.SPEC_KEY] = self.spec.to_dict()

    # ------------------------------------------------------------------ distillation
    def attach_teacher(self) -> None:
        """Load ``training.distillation.teacher`` (frozen, in eval mode) when distillation is configured."""
        d = self.train_cfg.distillation
        if not d.teacher or d.weight == 0:
            return
        key = "training.distillation.teacher"
        existing_teacher(d.teacher, key)
        teacher = checkpoint.load(d.teacher, key=key)
        if list(teacher.spec.classes) != self.classes:
            raise ConfigError(
                key,
                d.teacher,
                f"a checkpoint of the same classes in the same order "
                f"({', '.join(self.classes)}); it has {', '.join(teacher.spec.classes)}",
            )
        model = teacher.network.eval()
        model.requires_grad_(False)
        self.__dict__["teacher"] = model
        log.info("distilling from %s (weight %g)", d.teacher, d.weight)

    @override
    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)
        if self.trainer.is_global_zero:
            params = sum(p.numel() for p in self.model.parameters())
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            log.info(
                "model: ResNet-%d DetectNet_v2%s, %d classes, %.2f M parameters (%.2f M trainable), on %s",
                self.spec.model.num_layers,
                " (pruned)" if self.spec.channel_plan else "",
                len(self.classes),
                params / 1e6,
                trainable / 1e6,
                self.device,
            )
            if not self._has_validation():
                log.info(
                    "the validation split has no images (dataset.val_split=0): training without validation; "
                    "`transferdet evaluate checkpoint=... dataset.root=DIR dataset.val_split=100` scores the model "
                    "on other frames"
                )

    def _has_validation(self) -> bool:
        """False where the data module has no validation images (``dataset.val_split=0``: train on every frame)."""
        dm = self.trainer.datamodule
        val = getattr(dm, "val_set", None)
        return dm is not None and (val is None or len(val) > 0)

    # ------------------------------------------------------------------ freezing
    def apply_freezing(self) -> None:
        """``freeze_blocks``: the convolutions of those blocks get no gradient (BN affine stays trainable)."""
        for block_id in self.model_cfg.freeze_blocks:
            for module in self.model.blocks()[block_id]:
                for conv in (m for m in module.modules() if isinstance(m, nn.Conv2d)):
                    for p in conv.parameters():
                        p.requires_grad_(False)

    @override
    def train(self, mode: bool = True) -> DetectNetModule:
        super().train(mode)
        if self.model_cfg.freeze_bn:  # BN uses its running statistics and does not update them
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ training
    @override
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images)

    @override
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

    @override
    def on_train_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    @override
    def on_train_epoch_end(self) -> None:
        self.cost.end_epoch()
        for k, cls in enumerate(self.classes):
            for o, name in enumerate(OBJECTIVES):
                self.log(f"train/objective_weight_{name}/{cls}", float(self.cost.objective_weight[k, o]))
        epoch = self.current_epoch + 1
        if validation_due(epoch, self.train_cfg.num_epochs, self.eval_cfg) and self._has_validation():
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
    def _network(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        cov, bbox = self.model(images.to(self.device))
        return cov.float().cpu().numpy(), bbox.float().cpu().numpy()

    def _outputs(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return self.spec.network_outputs(self._network)(images)

    def evaluate_loader(self, loader, *, log_images: bool = False, prefix: str = "val/") -> dict[str, float]:
        """mAP of the model over a data loader (no augmentation); the model is put back in training mode. During
        fit with ``training.ema_decay``, of the averaged weights (the ones checkpoints hold)."""
        averaging = self._weight_averaging()
        if averaging is not None:  # validation runs here, not in Lightning's loop: the callback's swap, called here
            averaging.on_validation_epoch_start(self.trainer, self)
        was_training = self.training
        self.eval()
        try:
            ev = evaluate_batches(
                loader, self._outputs, self.postprocessor, self.evaluator, samples=4 if log_images else 0
            )
        finally:
            self.train(was_training)  # re-applies freeze_bn
            if averaging is not None:
                averaging.on_validation_epoch_end(self.trainer, self)
        if ev.samples:
            self._log_validation_images(ev.samples)
        return ev.result.metrics(prefix)

    def _weight_averaging(self) -> WeightAveraging | None:
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return None
        return next((c for c in trainer.callbacks if isinstance(c, WeightAveraging)), None)

    def _log_validation_images(self, shown) -> None:
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
    @override
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
