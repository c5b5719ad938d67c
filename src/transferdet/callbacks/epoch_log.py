"""A log line an epoch where no progress bar can be seen: output to a file or a pipe (a run in the background, a
pipeline's stage, a scheduler's job log), which otherwise shows nothing between validations."""

from __future__ import annotations

import logging
import sys
import time

import pytorch_lightning as pl
from typing_extensions import override

from transferdet.utils.logs import duration

log = logging.getLogger("transferdet.training")


class EpochLog(pl.Callback):
    """``epoch 12/60: train/loss 0.0213, 58s an epoch, about 46m24s left``, by the first process only.
    ``always``: on a terminal too (where the progress bar shows the same)."""

    def __init__(self, always: bool = False) -> None:
        self.always = always
        self._on = False
        self._losses: list[float] = []  # of the current epoch

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._on = trainer.is_global_zero and (self.always or not sys.stderr.isatty())
        self._start, self._first = time.monotonic(), trainer.current_epoch  # a resumed run starts mid-way

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._losses = []

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        if self._on:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is not None:
                self._losses.append(float(loss))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._on:
            return
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        each = (time.monotonic() - self._start) / max(epoch - self._first, 1)
        loss = sum(self._losses) / len(self._losses) if self._losses else float("nan")
        left = f", about {duration(each * (total - epoch))} left" if epoch < total else ""
        log.info("epoch %d/%d: train/loss %.4f, %s an epoch%s", epoch, total, loss, duration(each), left)
