"""The pipeline report's accuracy section: VOC table always, KITTI's protocol table when the evaluations have it,
mAP's interval where the evaluations have one."""

from __future__ import annotations

import json

from transferdet.pipeline.report import ACCURACY, _accuracy_section

CLASSES = ["car", "pedestrian", "cyclist"]


def _dirs(tmp_path, kitti: bool, intervals: bool = False):
    dirs = {}
    for n, stage in enumerate(ACCURACY):
        dirs[stage] = tmp_path / stage
        dirs[stage].mkdir(parents=True)
        m = {"mAP": 0.5, **{f"AP/{c}": 0.5 for c in CLASSES}}
        if kitti:
            m.update({f"kitti/AP_{lv}/{c}": 0.1 * (n + 1) for lv in ("easy", "moderate", "hard") for c in CLASSES})
        if intervals:
            m.update({"mAP_interval_low": 0.25, "mAP_interval_high": 0.75, "interval_confidence": 0.9})
        (dirs[stage] / "metrics.json").write_text(json.dumps(m))
    return dirs


def test_kitti_table_appears_only_with_kitti_figures(tmp_path):
    lines, _ = _accuracy_section(CLASSES, _dirs(tmp_path / "a", kitti=True), tmp_path, {})
    text = "\n".join(lines)
    assert "KITTI's own protocol" in text and "| car easy | car moderate | car hard |" in text
    rows = [line for line in lines if line.startswith("| ") and "10.00" in line]
    assert len(rows) == 1 and rows[0].count("10.00") == 9  # the first stage's nine figures, in %
    lines, _ = _accuracy_section(CLASSES, _dirs(tmp_path / "b", kitti=False), tmp_path, {})
    assert "KITTI's own protocol" not in "\n".join(lines)


def test_map_intervals_appear_beside_map_when_evaluated(tmp_path):
    lines, _ = _accuracy_section(CLASSES, _dirs(tmp_path / "a", kitti=False, intervals=True), tmp_path, {})
    rows = [line for line in lines if line.startswith("| ") and "**50.00**" in line]
    assert len(rows) == len(ACCURACY) and all("**50.00** (25.0-75.0) |" in row for row in rows)
    assert "the 90% interval of mAP over the validation images" in "\n".join(lines)
    lines, _ = _accuracy_section(CLASSES, _dirs(tmp_path / "b", kitti=False), tmp_path, {})
    assert "(25.0" not in "\n".join(lines) and "interval" not in "\n".join(lines)
