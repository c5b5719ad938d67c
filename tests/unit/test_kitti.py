"""KITTI label reading, writing and validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferdet.data.kitti import (
    KittiObject,
    check_box,
    find_files,
    format_label_line,
    read_label_file,
    scan_dataset,
    write_label_file,
)
from transferdet.errors import DataError

LINE = "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59"


def test_reads_the_15_kitti_fields(tmp_path):
    p = tmp_path / "000001.txt"
    p.write_text(LINE + "\n\nDontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10\n")
    a, b = read_label_file(p)
    assert a.cls == "car" and b.cls == "dontcare"  # lower-cased
    assert (a.x1, a.y1, a.x2, a.y2) == (587.01, 173.33, 614.12, 200.12)
    assert a.dimensions == (1.65, 1.67, 3.64) and a.location == (-0.65, 1.71, 46.70) and a.rotation_y == -1.59
    assert a.truncated == 0.0 and a.occluded == 0 and a.alpha == -1.58 and a.score is None
    assert (a.line, b.line) == (1, 3)  # blank line skipped but counted


def test_write_then_read_round_trip(tmp_path):
    objs = [
        KittiObject(
            "car",
            1.5,
            2.25,
            30.0,
            40.75,
            truncated=0.3,
            occluded=1,
            alpha=0.1,
            dimensions=(1.5, 1.6, 4.0),
            location=(1.0, 1.65, 20.0),
            rotation_y=-1.5,
        ),
        KittiObject("pedestrian", 5, 6, 7, 8, score=0.875),
    ]
    p = tmp_path / "x.txt"
    write_label_file(p, objs)
    back = read_label_file(p, allow_score=True)
    assert [(o.cls, o.x1, o.y1, o.x2, o.y2, o.score) for o in back] == [
        ("car", 1.5, 2.25, 30.0, 40.75, None),
        ("pedestrian", 5, 6, 7, 8, 0.875),
    ]
    assert format_label_line(back[0]).split()[1:4] == ["0.30", "1", "0.10"]


@pytest.mark.parametrize(
    "line,fragment",
    [
        (LINE.rsplit(" ", 1)[0], "14 fields, expected 15"),
        (LINE + " 0.9", "16 fields: a 16th field (confidence score) marks a prediction file"),
        (LINE.replace("587.01", "abc"), "field 5 (x1) is 'abc', expected a number"),
        (LINE.replace("46.70", "nan"), "field 14 (z) is 'nan', expected a finite number"),
    ],
)
def test_bad_label_lines_name_file_and_line(tmp_path, line, fragment):
    p = tmp_path / "000007.txt"
    p.write_text(LINE + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        read_label_file(p)
    assert f"{p}:2:" in str(err.value) and fragment in str(err.value)


def test_prediction_files_accept_a_score(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text(LINE + " 0.9\n")
    assert read_label_file(p, allow_score=True)[0].score == 0.9
    p.write_text(LINE + " 0.9 1\n")
    with pytest.raises(DataError, match="17 fields, expected 15 or 16"):
        read_label_file(p, allow_score=True)


def test_check_box_drops_empty_and_outside_and_clips_partial():
    ok = KittiObject("car", 10, 10, 20, 20, line=3)
    assert check_box(ok, 100, 50, "f:3") == (ok, None)
    kept, w = check_box(KittiObject("car", 20, 10, 10, 20), 100, 50, "f:4")
    assert kept is None and w.kind == "empty box" and str(w).startswith("f:4: car: empty box")
    kept, w = check_box(KittiObject("car", 120, 10, 130, 20), 100, 50, "f:5")
    assert kept is None and w.kind == "outside" and "outside the 100x50 image" in w.message
    kept, w = check_box(KittiObject("car", -5, 40, 30, 60), 100, 50, "f:6")
    assert (kept.x1, kept.y1, kept.x2, kept.y2) == (0, 40, 30, 50) and w.kind == "clipped"


def _image(path: Path, w: int = 64, h: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def test_scan_counts_warnings_and_keeps_valid_objects(tmp_path):
    _image(tmp_path / "image_2" / "a.png")
    _image(tmp_path / "image_2" / "b.png")
    (tmp_path / "label_2").mkdir()
    (tmp_path / "label_2" / "a.txt").write_text(
        "car 0 0 0 1 1 10 10 0 0 0 0 0 0 0\ncar 0 0 0 10 1 5 10 0 0 0 0 0 0 0\ncar 0 0 0 60 1 70 10 0 0 0 0 0 0 0\n"
    )
    records, warnings = scan_dataset(tmp_path, progress=False)
    assert [r.id for r in records] == ["a", "b"]
    assert [(o.x1, o.x2) for o in records[0].objects] == [(1, 10), (60, 64)]
    assert records[1].objects == [] and records[1].label_path is None
    assert sorted(w.kind for w in warnings) == ["clipped", "empty box", "no label"]
    assert (records[0].width, records[0].height) == (64, 32)


def test_duplicate_ids_are_an_error(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "A.PNG")
    with pytest.raises(DataError, match="duplicate id"):
        find_files(tmp_path, ".png")
