"""Lightning data module over a converted dataset: augmented training split, plain validation split."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from typing_extensions import override

from transferdet.config.schema import AugmentationConfig
from transferdet.data.augment import Augmenter
from transferdet.data.converted import ConvertedDataset
from transferdet.data.copy_paste import ObjectBank
from transferdet.data.loader import DetectionDataset, collate


class _SharedEpoch:
    """The current epoch in shared memory, so data-loader worker processes see it change."""

    def __init__(self) -> None:
        self.value = torch.zeros(1, dtype=torch.long).share_memory_()


class EpochDataset(DetectionDataset):
    def __init__(self, index, augmenter, epoch: _SharedEpoch, bank: ObjectBank | None = None) -> None:
        super().__init__(index, augmenter, bank)
        self._shared = epoch

    def __getitem__(self, i: int) -> dict:
        self.epoch = int(self._shared.value.item())
        return super().__getitem__(i)


class DetectionDataModule(pl.LightningDataModule):
    def __init__(
        self,
        converted_dir: str | Path,
        augmentation: AugmentationConfig,
        *,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.converted_dir = Path(converted_dir)
        self.augmentation, self.seed = augmentation, seed
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self._epoch = _SharedEpoch()
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        data = ConvertedDataset(self.converted_dir)
        self.classes = data.classes
        train = data.split("train")
        paste = self.augmentation.copy_paste
        bank = ObjectBank(train, paste, self.seed) if paste.probability > 0 and paste.max_objects > 0 else None
        augmenter = Augmenter(self.augmentation, train=True, seed=self.seed)
        self.train_set = EpochDataset(train, augmenter, self._epoch, bank)
        self.val_set = DetectionDataset(data.split("val"), Augmenter(self.augmentation, train=False, seed=self.seed))

    def set_epoch(self, epoch: int) -> None:
        """Tell the loader workers the epoch (it seeds the augmentation)."""
        self._epoch.value.fill_(epoch)

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)
