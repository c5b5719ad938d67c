"""PyTorch datasets over a converted split, and their collate function."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferdet.config.schema import AugmentationConfig, PreprocessingConfig
from transferdet.data.augment import Augmenter
from transferdet.data.converted import ConvertedDataset, SplitIndex
from transferdet.data.copy_paste import ObjectBank
from transferdet.data.images import load_rgb
from transferdet.structures import GroundTruth

PASTE_STREAM = 1  # the copy-paste draws' generator: seeded by (seed, epoch, index, this)


class DetectionDataset(torch.utils.data.Dataset):
    """Samples of one split: the augmented/preprocessed image and its boxes in canvas pixels (objects of the
    ``bank`` pasted in first, where there is one)."""

    def __init__(self, index: SplitIndex, augmenter: Augmenter, bank: ObjectBank | None = None) -> None:
        self.index, self.augmenter, self.bank = index, augmenter, bank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch seeds the augmentation (with the seed and the sample index)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        s = self.index[i]
        image, boxes = load_rgb(s.image_path), s.boxes
        labels = {"class_ids": s.class_ids, "truncated": s.truncated, "occluded": s.occluded}
        if self.bank is not None:  # its own random stream: the other augmentation draws stay as without it
            rng = np.random.default_rng([self.augmenter.seed, self.epoch, i, PASTE_STREAM])
            image, boxes, labels = self.bank.paste(image, boxes, labels, rng)
        out = self.augmenter(image, boxes, labels["class_ids"] >= 0, i, self.epoch)
        keep = out.keep.numpy()
        return {
            "image": out.image,
            "boxes": out.boxes,
            "classes": torch.from_numpy(labels["class_ids"][keep].astype(np.int64)),
            "truncated": torch.from_numpy(labels["truncated"][keep].astype(np.float32)),
            "occluded": torch.from_numpy(labels["occluded"][keep].astype(np.int64)),
            "index": i,
        }


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W]
    boxes: torch.Tensor  # [M, 4] all boxes of the batch
    classes: torch.Tensor  # [M] (-1 = ignore region)
    image_index: torch.Tensor  # [M] which image of the batch each box belongs to
    truncated: torch.Tensor  # [M]
    occluded: torch.Tensor  # [M]
    indices: torch.Tensor  # [B] dataset index of each image

    def to(self, device: torch.device) -> Batch:
        """The batch's tensors on ``device``."""
        return Batch(
            *(
                t.to(device)
                for t in (
                    self.images,
                    self.boxes,
                    self.classes,
                    self.image_index,
                    self.truncated,
                    self.occluded,
                    self.indices,
                )
            )
        )

    def ground_truth(self) -> list[GroundTruth]:
        """Per-image ground truth (numpy) for the evaluator."""
        out = []
        boxes, classes = self.boxes.cpu().numpy(), self.classes.cpu().numpy()
        trunc, occ, owner = self.truncated.cpu().numpy(), self.occluded.cpu().numpy(), self.image_index.cpu().numpy()
        for b in range(len(self.images)):
            m = owner == b
            out.append(GroundTruth(boxes[m], classes[m], trunc[m], occ[m]))
        return out


def collate(samples: list[dict]) -> Batch:
    """Samples as one Batch: images stacked, boxes concatenated with their image index."""
    counts = [len(s["boxes"]) for s in samples]
    return Batch(
        images=torch.stack([s["image"] for s in samples]),
        boxes=torch.cat([s["boxes"] for s in samples]).reshape(-1, 4),
        classes=torch.cat([s["classes"] for s in samples]),
        image_index=torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(counts, dtype=torch.long)),
        truncated=torch.cat([s["truncated"] for s in samples]),
        occluded=torch.cat([s["occluded"] for s in samples]),
        indices=torch.tensor([s["index"] for s in samples]),
    )


def split_loader(
    converted_dir: str | Path, split: str, preprocessing: PreprocessingConfig, batch_size: int, num_workers: int = 0
) -> torch.utils.data.DataLoader:
    """Batches of one split of a converted dataset as a model sees them at evaluation (no augmentation)."""
    data = ConvertedDataset(converted_dir)
    augmenter = Augmenter(AugmentationConfig(preprocessing=preprocessing), train=False)
    return torch.utils.data.DataLoader(
        DetectionDataset(data.split(split), augmenter),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
    )
