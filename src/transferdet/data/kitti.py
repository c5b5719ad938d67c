"""KITTI label files and dataset folders: reading, writing and validation.

A label line has 15 whitespace-separated fields
``type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y``; a 16th field, a confidence
score, marks a *prediction* file. Class names are lower-cased on read.

Errors (raised as :class:`~transferdet.errors.DataError`, naming file:line) stop the run; problems
that only affect one object are :class:`Warning_` records: the object is dropped or clipped and the
warning is counted in the dataset report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from transferdet.config.inputs import existing_root
from transferdet.errors import DataError
from transferdet.utils.io import resolved

NUM_FIELDS = 15
NUM_FIELDS_WITH_SCORE = 16
FIELD_NAMES = "type truncated occluded alpha x1 y1 x2 y2 height width length x y z rotation_y score".split()


@dataclass(frozen=True)
class KittiObject:
    """One label line. Box in pixels, (x1, y1) top-left, (x2, y2) bottom-right."""

    cls: str
    x1: float
    y1: float
    x2: float
    y2: float
    truncated: float = 0.0
    occluded: int = 0
    alpha: float = 0.0
    dimensions: tuple[float, float, float] = (0.0, 0.0, 0.0)  # height, width, length (m)
    location: tuple[float, float, float] = (0.0, 0.0, 0.0)  # x, y, z in camera coordinates (m)
    rotation_y: float = 0.0
    score: float | None = None
    line: int = 0  # 1-based line number in the file it came from (0 = not from a file)

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1


WARNING_KINDS = {
    "empty box": "x2 <= x1 or y2 <= y1 (object dropped)",
    "outside": "box outside the image (object dropped)",
    "clipped": "box partly outside the image (clipped)",
    "no label": "image without a label file (no objects)",
}


@dataclass(frozen=True)
class Warning_:
    """A problem that drops or changes one object; ``where`` is ``file:line`` or ``file``."""

    where: str
    message: str
    kind: str  # one of WARNING_KINDS, for counting

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ImageRecord:
    """One image of a KITTI folder with its validated objects (boxes clipped to the image)."""

    id: str
    image_path: Path
    label_path: Path | None
    width: int
    height: int
    objects: list[KittiObject] = field(default_factory=list)


def _number(path: Path, lineno: int, index: int, token: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise DataError(
            path, f"field {index + 1} ({FIELD_NAMES[index]}) is {token!r}, expected a number", lineno
        ) from None
    if not math.isfinite(value):
        raise DataError(
            path, f"field {index + 1} ({FIELD_NAMES[index]}) is {token!r}, expected a finite number", lineno
        )
    return value


def parse_label_line(path: Path, lineno: int, text: str, *, allow_score: bool) -> KittiObject:
    """One label line as a KittiObject; a malformed line is a DataError naming file:line."""
    tokens = text.split()
    allowed = (NUM_FIELDS, NUM_FIELDS_WITH_SCORE) if allow_score else (NUM_FIELDS,)
    if len(tokens) not in allowed:
        if len(tokens) == NUM_FIELDS_WITH_SCORE:
            raise DataError(
                path,
                "16 fields: a 16th field (confidence score) marks a prediction file; "
                "ground-truth labels have 15 fields",
                lineno,
            )
        expected = " or ".join(map(str, allowed))
        raise DataError(
            path,
            f"{len(tokens)} fields, expected {expected} "
            f"({' '.join(FIELD_NAMES[:NUM_FIELDS])}{' [score]' if allow_score else ''})",
            lineno,
        )
    v = [_number(path, lineno, i, t) for i, t in enumerate(tokens[1:], start=1)]
    # KITTI: truncated in [0, 1], occluded 0..3 (fully visible .. unknown); DontCare lines carry -1 for both
    if not -1 <= v[0] <= 1:
        raise DataError(
            path, f"field 2 (truncated) is {tokens[1]!r}, expected a number in [0, 1] (-1 on DontCare lines)", lineno
        )
    if v[1] != int(v[1]) or not -1 <= v[1] <= 3:
        raise DataError(
            path, f"field 3 (occluded) is {tokens[2]!r}, expected 0, 1, 2 or 3 (-1 on DontCare lines)", lineno
        )
    return KittiObject(
        cls=tokens[0].lower(),
        truncated=v[0],
        occluded=int(v[1]),
        alpha=v[2],
        x1=v[3],
        y1=v[4],
        x2=v[5],
        y2=v[6],
        dimensions=(v[7], v[8], v[9]),
        location=(v[10], v[11], v[12]),
        rotation_y=v[13],
        score=v[14] if len(v) == NUM_FIELDS_WITH_SCORE - 1 else None,
        line=lineno,
    )


def read_label_file(path: str | Path, *, allow_score: bool = False) -> list[KittiObject]:
    """All objects of one label file, in file order; blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not part of line 1
    except UnicodeDecodeError:
        raise DataError(path, "not a text file (KITTI labels are UTF-8/ASCII text)") from None
    except OSError as err:
        raise DataError(path, f"cannot read label file ({err.strerror})") from None
    return [
        parse_label_line(path, n, line, allow_score=allow_score)
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def format_label_line(obj: KittiObject) -> str:
    """A KittiObject as one label line (the score as a 16th field, if it has one)."""
    h, w, length = obj.dimensions
    x, y, z = obj.location
    fields = [
        obj.cls,
        f"{obj.truncated:.2f}",
        str(int(obj.occluded)),
        f"{obj.alpha:.2f}",
        f"{obj.x1:.2f}",
        f"{obj.y1:.2f}",
        f"{obj.x2:.2f}",
        f"{obj.y2:.2f}",
        f"{h:.2f}",
        f"{w:.2f}",
        f"{length:.2f}",
        f"{x:.2f}",
        f"{y:.2f}",
        f"{z:.2f}",
        f"{obj.rotation_y:.2f}",
    ]
    if obj.score is not None:
        fields.append(f"{obj.score:.6f}")
    return " ".join(fields)


def write_label_file(path: str | Path, objects: Iterable[KittiObject]) -> None:
    """Write one label file (a line per object; empty for no objects)."""
    lines = [format_label_line(o) for o in objects]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def check_box(obj: KittiObject, width: int, height: int, where: str) -> tuple[KittiObject | None, Warning_ | None]:
    """Validate one box against its image: returns the (possibly clipped) object or None, and a warning."""
    if obj.x2 <= obj.x1 or obj.y2 <= obj.y1:
        return None, Warning_(
            where,
            f"{obj.cls}: empty box (x1={obj.x1:g}, y1={obj.y1:g}, x2={obj.x2:g}, "
            f"y2={obj.y2:g}: needs x2 > x1 and y2 > y1); object dropped",
            "empty box",
        )
    if obj.x2 <= 0 or obj.y2 <= 0 or obj.x1 >= width or obj.y1 >= height:
        return None, Warning_(
            where,
            f"{obj.cls}: box ({obj.x1:g}, {obj.y1:g}, {obj.x2:g}, {obj.y2:g}) lies "
            f"outside the {width}x{height} image; object dropped",
            "outside",
        )
    clipped = replace(
        obj, x1=max(obj.x1, 0.0), y1=max(obj.y1, 0.0), x2=min(obj.x2, float(width)), y2=min(obj.y2, float(height))
    )
    if clipped != obj:
        return clipped, Warning_(
            where,
            f"{obj.cls}: box ({obj.x1:g}, {obj.y1:g}, {obj.x2:g}, {obj.y2:g}) extends "
            f"outside the {width}x{height} image; clipped",
            "clipped",
        )
    return obj, None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, after checking that the file decodes."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()  # checks the file's structure and checksums without a full decode
    except Image.DecompressionBombError as err:
        raise DataError(path, f"refused: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(path, f"cannot decode image ({err.__class__.__name__}: {err})") from None
    return size


def find_files(folder: Path, extension: str) -> dict[str, Path]:
    """id -> path of the files in ``folder`` ending in ``extension`` (case-insensitive); duplicate ids fail."""
    out: dict[str, Path] = {}
    seen: dict[str, Path] = {}
    ext = extension.lower()
    for p in sorted(folder.iterdir()):
        if not p.is_file() or not p.name.lower().endswith(ext):
            continue
        id_ = p.name[: len(p.name) - len(ext)]
        key = id_.lower()
        if key in seen:
            raise DataError(
                p,
                f"duplicate id {id_!r}: {seen[key].name} has the same id "
                "(ids compare case-insensitively); rename or remove one of them",
            )
        seen[key] = p
        out[id_] = p
    return out


def scan_dataset(
    root: str | Path,
    image_dir_name: str = "image_2",
    label_dir_name: str = "label_2",
    image_extension: str = ".png",
    *,
    progress: bool = True,
) -> tuple[list[ImageRecord], list[Warning_]]:
    """Read and validate a KITTI-layout folder. Returns records sorted by id, and the warnings."""
    root = resolved(root, "dataset.root")  # records carry absolute paths: the converted form is read from anywhere
    image_dir, label_dir = root / image_dir_name, root / label_dir_name
    existing_root(root)
    if not image_dir.is_dir():
        raise DataError(image_dir, "image folder does not exist (config keys dataset.root, dataset.image_dir_name)")
    images = find_files(image_dir, image_extension)
    labels = find_files(label_dir, ".txt") if label_dir.is_dir() else {}
    if not images:
        raise DataError(
            image_dir, f"empty dataset: no '*{image_extension}' images (config key dataset.image_extension)"
        )
    image_ids = {k.lower() for k in images}
    orphans = [p for k, p in labels.items() if k.lower() not in image_ids]
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise DataError(
            orphans[0], f"label file has no image: expected {image_dir / (orphans[0].stem + image_extension)}{more}"
        )
    labels_by_key = {k.lower(): p for k, p in labels.items()}

    records: list[ImageRecord] = []
    warnings: list[Warning_] = []
    for id_, img_path in tqdm(images.items(), desc="validate", unit="img", disable=not progress or None, leave=False):
        width, height = image_size(img_path)
        label_path = labels_by_key.get(id_.lower())
        objects: list[KittiObject] = []
        if label_path is None:
            warnings.append(
                Warning_(str(img_path), "image has no label file; treated as an image with no objects", "no label")
            )
        else:
            for obj in read_label_file(label_path):
                kept, warning = check_box(obj, width, height, f"{label_path}:{obj.line}")
                if warning is not None:
                    warnings.append(warning)
                if kept is not None:
                    objects.append(kept)
        records.append(ImageRecord(id_, img_path, label_path, width, height, objects))
    return records, warnings
