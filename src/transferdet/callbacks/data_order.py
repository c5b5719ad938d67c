"""Records which samples each process trained on, batch by batch: ``data_order/rank<R>.tsv``.

For reproducibility checks (the same seed gives the same order) and to see how DDP split the data.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from typing_extensions import override


class DataOrderLog(pl.Callback):
    def __init__(self, dirname: str = "data_order") -> None:
        self.dirname = dirname
        self._file = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = Path(trainer.default_root_dir) / self.dirname
        folder.mkdir(parents=True, exist_ok=True)
        self._file = open(folder / f"rank{trainer.global_rank}.tsv", "a", encoding="utf-8")  # noqa: SIM115

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        indices = ",".join(str(int(i)) for i in batch.indices)
        self._file.write(f"{trainer.current_epoch}\t{trainer.global_step}\t{indices}\n")
        self._file.flush()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
