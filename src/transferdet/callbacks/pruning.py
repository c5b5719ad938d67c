"""Iterative prune-retrain inside one training run: the network physically shrinks at chosen epochs.

At the end of each epoch in ``epochs`` (1-based) the model is pruned with TLT's criterion (see
:mod:`transferdet.pruning.pruner`), the optimizer and LR schedule are rebuilt for the smaller
parameters (the schedule continues at the current step), and the channel plan goes into the module's
hyperparameters, so every later checkpoint rebuilds the pruned shape. The callback's own state (which
epochs are done) is saved in checkpoints: a resumed run neither re-prunes nor forgets the shape.

Select it with ``+callbacks.pruning={_target_: transferdet.callbacks.PruningCallback, epochs: [5, 10],
target_ratio: 0.5}``. Single-process training only (DDP would need the process group's model wrapper
rebuilt).
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import WeightAveraging
from typing_extensions import override

from transferdet.config.schema import EqualizationCriterion, Normalizer, PruningConfig
from transferdet.errors import ConfigError
from transferdet.models.detectnet import channel_plan
from transferdet.pruning.pruner import prune, prune_to_ratio

log = logging.getLogger(__name__)


class PruningCallback(pl.Callback):
    def __init__(
        self,
        epochs: list[int],
        target_ratio: float | None = None,
        pruning_threshold: float = 0.1,
        normalizer: str = "max",
        equalization_criterion: str = "union",
        pruning_granularity: int = 8,
        min_num_filters: int = 16,
    ) -> None:
        epochs = [int(e) for e in epochs]
        if not epochs or min(epochs) < 1:
            raise ConfigError("callbacks.pruning.epochs", epochs, "a non-empty list of 1-based epoch numbers")
        if target_ratio is not None and not 0 < target_ratio < 1:
            raise ConfigError("callbacks.pruning.target_ratio", target_ratio, "a parameter ratio in (0, 1) per step")
        try:
            self.cfg = PruningConfig(
                pruning_threshold=pruning_threshold,
                normalizer=Normalizer(normalizer),
                equalization_criterion=EqualizationCriterion(equalization_criterion),
                pruning_granularity=pruning_granularity,
                min_num_filters=min_num_filters,
                target_ratio=target_ratio,
            )
        except ValueError as err:
            raise ConfigError(
                "callbacks.pruning",
                str(err),
                "normalizer max|L2, equalization_criterion union|intersection|arithmetic_mean|geometric_mean",
            ) from None
        self.epochs = sorted(epochs)
        self.done: list[int] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            raise ConfigError("callbacks.pruning", "DDP", "single-process training (trainer=cpu or trainer=gpu)")
        if any(isinstance(c, WeightAveraging) for c in trainer.callbacks):
            raise ConfigError(
                "training.ema_decay",
                pl_module.train_cfg.ema_decay,
                "0 (off) with callbacks.pruning: an average of the weights cannot follow the network as it shrinks",
            )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch not in self.epochs or epoch in self.done:
            return
        model = pl_module.model
        if self.cfg.target_ratio is not None:
            report, _ = prune_to_ratio(model, self.cfg, pl_module.height, pl_module.width)
        else:
            report = prune(model, self.cfg, pl_module.height, pl_module.width)
        model.train()
        pl_module.set_channel_plan(channel_plan(model))
        trainer.strategy.setup_optimizers(trainer)  # new Adam state for the new parameters
        for config in trainer.lr_scheduler_configs:
            config.scheduler.last_epoch = trainer.global_step - 1
            config.scheduler.step()  # the schedule continues where it was
        self.done.append(epoch)
        log.info(
            "epoch %d: pruned to %d parameters (ratio %.4f of this step's start)",
            epoch,
            report.params_after,
            report.ratio,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"done": list(self.done)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = [int(e) for e in state_dict.get("done", [])]
