"""Reading the converted format written by :mod:`transferdet.data.convert`: random access by index."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferdet.config.schema import DatasetConfig
from transferdet.data.convert import FORMAT_NAME, FORMAT_VERSION, IGNORE_ID, SPLITS, fingerprint
from transferdet.data.kitti import find_files
from transferdet.errors import DataError
from transferdet.utils.io import resolved, sha256_file


def converted_dir_for(d: DatasetConfig) -> Path:
    """Where the converted form of a dataset lives: ``dataset.converted_dir`` or ``<root>/converted``."""
    return Path(d.converted_dir) if d.converted_dir else Path(d.root) / "converted"


@dataclass(frozen=True)
class Sample:
    """Labels of one image. Boxes in pixels of the source image; class id -1 = ignore region."""

    id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] float32 x1 y1 x2 y2
    class_ids: np.ndarray  # [N] int16
    truncated: np.ndarray  # [N] float32
    occluded: np.ndarray  # [N] int8

    @property
    def ignore_mask(self) -> np.ndarray:
        return self.class_ids == IGNORE_ID


class SplitIndex:
    """All images of one split, concatenated over its shards, addressable by index."""

    def __init__(self, root: Path, shard_files: list[Path]) -> None:
        parts = [dict(np.load(f, allow_pickle=False)) for f in shard_files]
        self.root = root
        self.shard_sizes = [len(p["ids"]) for p in parts]
        self.ids = np.concatenate([p["ids"] for p in parts]) if parts else np.array([], np.str_)
        self.image_paths = np.concatenate([p["image_paths"] for p in parts]) if parts else np.array([], np.str_)
        self.image_sizes = np.concatenate([p["image_sizes"] for p in parts]).reshape(-1, 2)
        offsets, base = [np.zeros(1, np.int64)], 0
        for p in parts:
            offsets.append(p["object_offsets"][1:] + base)
            base += int(p["object_offsets"][-1])
        self.object_offsets = np.concatenate(offsets)
        self.boxes = np.concatenate([p["boxes"] for p in parts]).reshape(-1, 4)
        self.class_ids = np.concatenate([p["class_ids"] for p in parts])
        self.truncated = np.concatenate([p["truncated"] for p in parts])
        self.occluded = np.concatenate([p["occluded"] for p in parts])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a split of {len(self)} images")
        i = i % len(self)
        a, b = self.object_offsets[i], self.object_offsets[i + 1]
        w, h = self.image_sizes[i]
        return Sample(
            str(self.ids[i]),
            self.root / str(self.image_paths[i]),
            int(w),
            int(h),
            self.boxes[a:b],
            self.class_ids[a:b],
            self.truncated[a:b],
            self.occluded[a:b],
        )


def _unchanged(path: Path, entry: dict, kind: str) -> bool:
    """A source file is unchanged when its size and mtime are (or, when they are not, its content is)."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size == entry[f"{kind}_size"] and st.st_mtime_ns == entry[f"{kind}_mtime_ns"]:
        return True
    return st.st_size == entry[f"{kind}_size"] and sha256_file(path) == entry[f"{kind}_sha256"]


def is_conversion(folder: Path) -> bool:
    """Whether ``folder`` holds a conversion transferdet wrote (any format version): it may be replaced."""
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


class ConvertedDataset:
    """A converted dataset folder: its manifest and its splits."""

    def __init__(self, path: str | Path, *, verify: bool = True) -> None:
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(manifest_path, "no converted dataset here (run `transferdet convert` first)") from None
        except json.JSONDecodeError as err:
            raise DataError(manifest_path, f"corrupt manifest: {err.msg}", err.lineno) from None
        if self.manifest.get("format") != FORMAT_NAME or self.manifest.get("version") != FORMAT_VERSION:
            raise DataError(
                manifest_path,
                f"not a {FORMAT_NAME} v{FORMAT_VERSION} manifest "
                f"(found {self.manifest.get('format')!r} v{self.manifest.get('version')!r}); "
                "re-run `transferdet convert`",
            )
        if verify:
            for split in SPLITS:
                for shard in self.manifest["splits"][split]["shards"]:
                    f = self.path / shard["file"]
                    if not f.is_file() or sha256_file(f) != shard["sha256"]:
                        raise DataError(
                            f,
                            "shard is missing or differs from its manifest entry "
                            "(interrupted copy?); re-run `transferdet convert`",
                        )
        self.root = Path(self.manifest["source"]["root"])
        self.classes: list[str] = list(self.manifest["classes"])

    def stale_reason(self, d: DatasetConfig) -> str | None:
        """Why this conversion does not hold dataset ``d`` as it is now (None when it does): other settings
        (the class mapping in order included), another folder, or source files added, removed or changed
        (by size and mtime, then content)."""
        if self.manifest.get("fingerprint") != fingerprint(d):
            return "it was made with other dataset settings"
        root = resolved(d.root, "dataset.root")
        if self.manifest["source"]["root"] != str(root):
            return f"it was made from {self.manifest['source']['root']}, not {root}"
        files = self.manifest["files"]
        images = find_files(root / d.image_dir_name, d.image_extension)
        label_dir = root / d.label_dir_name
        labels = {k.lower() for k in find_files(label_dir, ".txt")} if label_dir.is_dir() else set()
        if set(images) != set(files):
            added, removed = sorted(set(images) - set(files)), sorted(set(files) - set(images))
            return f"images were added ({', '.join(added[:3])}) or removed ({', '.join(removed[:3])}) since"
        for id_, entry in files.items():
            if (entry["label"] is not None) != (id_.lower() in labels):
                return f"the label file of {id_} was added or removed since"
            for kind in ("image", "label"):
                if entry[kind] is not None and not _unchanged(root / entry[kind], entry, kind):
                    return f"{root / entry[kind]} changed since"
        return None

    def label_paths(self, split: str) -> list[Path | None]:
        """The source label file of each image of ``split``, in the split's order (None: the image has none)."""
        files = self.manifest["files"]
        return [
            self.root / files[str(i)]["label"] if files.get(str(i), {}).get("label") else None
            for i in self.split(split).ids
        ]

    def split(self, name: str) -> SplitIndex:
        """One split's images, addressable by index."""
        if name not in SPLITS:
            raise ValueError(f"split {name!r}; allowed: {', '.join(SPLITS)}")
        return SplitIndex(self.root, [self.path / s["file"] for s in self.manifest["splits"][name]["shards"]])
