"""Partition a validated KITTI dataset and write the converted (indexed, sharded) training format.

Layout of a converted dataset (``dataset.converted_dir``)::

    manifest.json            what was converted and how: source files with sha256, class mapping,
                             partition (which id is in which fold), shards with their sha256
    shards/<split>-SSSSS-of-NNNNN.npz
                             labels of one shard as arrays (no pickles): ids, image paths relative to
                             the dataset root, image sizes, per-object boxes / class ids / truncation /
                             occlusion, with per-image offsets for random access by index
    report.md, report.json   images and objects per class and split, warnings, box-height histogram
    box_heights.png
    warnings.txt             every warning as file:line: message

Images stay where they are (as TLT's TFRecords did): a shard references them by path, and the manifest
records their hashes, so a changed source is detected. Writing is deterministic (sorted keys, fixed zip
timestamps), so converting the same input twice gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from transferdet.config.schema import IGNORE_CLASS, DatasetConfig, PartitionMode
from transferdet.config.validate import target_classes
from transferdet.data.kitti import ImageRecord, Warning_
from transferdet.errors import DataError
from transferdet.utils.io import resolved, sha256_file

FORMAT_NAME = "transferdet-kitti-index"
FORMAT_VERSION = 2  # 2: the class mapping in order, and each source file's size and mtime
IGNORE_ID = -1  # class id of an ignore region (dontcare)
SPLITS = ("train", "val")


@dataclass
class Partition:
    folds: list[list[str]]  # ids per fold, sorted
    validation_fold: int

    def split_ids(self, split: str) -> list[str]:
        """The sorted ids of ``split`` (``train``: every fold but the validation fold)."""
        if split == "val":
            return self.folds[self.validation_fold]
        return sorted(i for k, fold in enumerate(self.folds) if k != self.validation_fold for i in fold)


def partition_random(ids: Sequence[str], val_split: float, seed: int) -> Partition:
    """``val_split`` percent of the images, chosen by a seeded shuffle, form fold 0 (validation)."""
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(len(ids) * val_split / 100.0)
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return Partition([val, train], validation_fold=0)


def partition_sequence(
    ids: Sequence[str], sequence_file: str | Path, num_partitions: int, validation_fold: int
) -> Partition:
    """Whole sequences go to one fold: largest first, round robin over ``num_partitions`` folds."""
    path = Path(sequence_file)
    try:
        seq_map = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(
            path, f"cannot read sequence map ({err.strerror}) (config key dataset.kitti_sequence_to_frames_file)"
        ) from None
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err.msg}", err.lineno) from None
    if not isinstance(seq_map, dict) or not all(isinstance(v, list) for v in seq_map.values()):
        raise DataError(path, "expected a JSON object mapping sequence name -> list of frame ids")
    known = set(ids)
    owner: dict[str, str] = {}
    for seq, frames in seq_map.items():
        for f in map(str, frames):
            if f not in known:
                raise DataError(path, f"sequence {seq!r} lists frame {f!r}, which has no image in the dataset")
            if f in owner:
                raise DataError(path, f"frame {f!r} is in sequences {owner[f]!r} and {seq!r}; a frame belongs to one")
            owner[f] = seq
    missing = [i for i in ids if i not in owner]
    if missing:
        raise DataError(
            path, f"{len(missing)} images are in no sequence (first: {missing[0]!r}); every image needs a sequence"
        )
    folds: list[list[str]] = [[] for _ in range(num_partitions)]
    ordered = sorted(seq_map.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    for k, (_, frames) in enumerate(ordered):
        folds[k % num_partitions].extend(map(str, frames))
    return Partition([sorted(f) for f in folds], validation_fold)


def make_partition(records: Sequence[ImageRecord], d: DatasetConfig) -> Partition:
    """The partition ``d.partition_mode`` asks for."""
    ids = [r.id for r in records]
    if d.partition_mode is PartitionMode.random:
        return partition_random(ids, d.val_split, d.seed)
    assert d.kitti_sequence_to_frames_file is not None  # validate() guarantees it
    return partition_sequence(ids, d.kitti_sequence_to_frames_file, d.num_partitions, d.validation_fold)


def normalised_mapping(d: DatasetConfig) -> dict[str, str]:
    """``target_class_mapping`` with lower-cased names (class names compare case-insensitively)."""
    return {k.lower(): v.lower() for k, v in d.target_class_mapping.items()}


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` (readable by ``np.load``), but with fixed timestamps: equal data, equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)


def shard_arrays(
    records: Sequence[ImageRecord], root: Path, mapping: dict[str, str], classes: list[str]
) -> dict[str, np.ndarray]:
    """Label arrays of a list of images; objects of unmapped classes are left out."""
    class_id = {c: k for k, c in enumerate(classes)}
    boxes, cls, trunc, occl, offsets = [], [], [], [], [0]
    for r in records:
        for o in r.objects:
            target = mapping.get(o.cls)
            if target is None:
                continue
            boxes.append((o.x1, o.y1, o.x2, o.y2))
            cls.append(IGNORE_ID if target == IGNORE_CLASS else class_id[target])
            trunc.append(o.truncated)
            occl.append(o.occluded)
        offsets.append(len(cls))
    return {
        "ids": np.array([r.id for r in records], dtype=np.str_),
        "image_paths": np.array([r.image_path.relative_to(root).as_posix() for r in records], dtype=np.str_),
        "image_sizes": np.array([(r.width, r.height) for r in records], dtype=np.int32).reshape(-1, 2),
        "object_offsets": np.array(offsets, dtype=np.int64),
        "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
        "class_ids": np.array(cls, dtype=np.int16),
        "truncated": np.array(trunc, dtype=np.float32),
        "occluded": np.array(occl, dtype=np.int8),
    }


def source_entry(kind: str, path: Path | None, root: Path) -> dict:
    """A source file as the manifest records it: path relative to the root, size, mtime and SHA-256."""
    if path is None:
        return {kind: None, f"{kind}_sha256": None, f"{kind}_size": None, f"{kind}_mtime_ns": None}
    st = path.stat()
    return {
        kind: path.relative_to(root).as_posix(),
        f"{kind}_sha256": sha256_file(path),
        f"{kind}_size": st.st_size,
        f"{kind}_mtime_ns": st.st_mtime_ns,
    }


def fingerprint(d: DatasetConfig) -> str:
    """Hash of every setting that changes the converted output (train reuses a matching conversion)."""
    key = {
        "root": str(resolved(d.root, "dataset.root")),
        "image_dir_name": d.image_dir_name,
        "label_dir_name": d.label_dir_name,
        "image_extension": d.image_extension,
        # in order: the order of the mapping is the order of the class ids
        "target_class_mapping": list(normalised_mapping(d).items()),
        "partition_mode": d.partition_mode.value,
        "num_partitions": d.num_partitions,
        "val_split": d.val_split,
        "validation_fold": d.validation_fold,
        "num_shards": d.num_shards,
        "seed": d.seed,
        "kitti_sequence_to_frames_file": d.kitti_sequence_to_frames_file,
        "format_version": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def write_converted(
    out_dir: Path, records: list[ImageRecord], warnings: list[Warning_], d: DatasetConfig, progress: bool = True
) -> dict:
    """Write shards and manifest into ``out_dir`` (an empty directory). Returns the manifest."""
    root = resolved(d.root, "dataset.root")
    mapping = normalised_mapping(d)
    classes = target_classes(d)
    partition = make_partition(records, d)
    by_id = {r.id: r for r in records}

    shards_dir = out_dir / "shards"
    shards_dir.mkdir()
    splits: dict[str, dict] = {}
    for split in SPLITS:
        ids = partition.split_ids(split)
        n_shards = max(1, min(d.num_shards, len(ids)))
        shards = []
        for s, chunk in enumerate(np.array_split(np.arange(len(ids)), n_shards)):
            name = f"{split}-{s:05d}-of-{n_shards:05d}.npz"
            save_npz_deterministic(
                shards_dir / name, shard_arrays([by_id[ids[i]] for i in chunk], root, mapping, classes)
            )
            shards.append(
                {"file": f"shards/{name}", "num_images": int(len(chunk)), "sha256": sha256_file(shards_dir / name)}
            )
        splits[split] = {"num_images": len(ids), "shards": shards}

    files = {}
    for r in tqdm(records, desc="hash", unit="img", disable=not progress or None, leave=False):
        files[r.id] = {**source_entry("image", r.image_path, root), **source_entry("label", r.label_path, root)}
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fingerprint": fingerprint(d),
        "source": {
            "root": str(root),
            "image_dir_name": d.image_dir_name,
            "label_dir_name": d.label_dir_name,
            "image_extension": d.image_extension,
        },
        "classes": classes,
        "target_class_mapping": mapping,
        "partition": {
            "mode": d.partition_mode.value,
            "num_partitions": len(partition.folds),
            "val_split": d.val_split,
            "validation_fold": partition.validation_fold,
            "seed": d.seed,
            "kitti_sequence_to_frames_file": d.kitti_sequence_to_frames_file,
            "folds": {str(k): fold for k, fold in enumerate(partition.folds)},
        },
        "splits": splits,
        "num_warnings": len(warnings),
        "files": files,
    }
    return manifest
