"""Dataset report of a converted dataset: counts per class and split, box heights, warnings.

The counts are taken from the converted shards (what training reads), not from the label files, so
the report checks the conversion too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferdet.data.convert import IGNORE_ID, SPLITS
from transferdet.data.converted import SplitIndex
from transferdet.data.kitti import WARNING_KINDS, ImageRecord, Warning_
from transferdet.utils.io import write_json_atomic, write_text_atomic
from transferdet.utils.plots import figure, save_figure

# KITTI's minimum box heights: easy 40 px, moderate and hard 25 px
KITTI_HEIGHT_LINES = (25, 40)
MAX_WARNINGS_IN_MARKDOWN = 50


def summarise(
    splits: dict[str, SplitIndex],
    classes: list[str],
    records: Sequence[ImageRecord],
    mapping: dict[str, str],
    warnings: Sequence[Warning_],
) -> dict:
    """Counts as a nested dict: per split, images / objects per class / ignore regions / empty images."""
    out: dict = {"classes": classes, "splits": {}}
    for split, index in splits.items():
        ids = index.class_ids
        per_image = np.diff(index.object_offsets)
        counts = {c: int((ids == k).sum()) for k, c in enumerate(classes)}
        owner = np.repeat(np.arange(len(index)), per_image)  # image index of each object
        has_object = np.zeros(len(index), bool)
        has_object[owner[ids >= 0]] = True
        out["splits"][split] = {
            "num_images": len(index),
            "num_objects": counts,
            "num_ignore_regions": int((ids == IGNORE_ID).sum()),
            "num_images_without_objects": int((~has_object).sum()),
        }
    unmapped = Counter(o.cls for r in records for o in r.objects if o.cls not in mapping)
    out["unmapped_classes"] = dict(sorted(unmapped.items()))
    out["num_warnings"] = len(warnings)
    out["warnings_by_kind"] = dict(sorted(Counter(WARNING_KINDS[w.kind] for w in warnings).items()))
    return out


def metrics_of(summary: dict) -> dict[str, float]:
    """Flat ``dataset/...`` metrics for metrics.json."""
    m: dict[str, float] = {}
    total_images = 0
    totals: Counter[str] = Counter()
    for split, s in summary["splits"].items():
        total_images += s["num_images"]
        m[f"dataset/{split}/num_images"] = s["num_images"]
        m[f"dataset/{split}/num_ignore_regions"] = s["num_ignore_regions"]
        for c, n in s["num_objects"].items():
            m[f"dataset/{split}/num_objects/{c}"] = n
            totals[c] += n
    m["dataset/num_images"] = total_images
    for c in summary["classes"]:
        m[f"dataset/num_objects/{c}"] = totals[c]
    m["dataset/num_warnings"] = summary["num_warnings"]
    return m


def plot_box_heights(path: Path, splits: dict[str, SplitIndex], classes: list[str]) -> None:
    """``box_heights.png``: the box heights of every class, KITTI's level heights marked."""
    fig, ax = figure(figsize=(8, 4.5), dpi=100)
    heights = {
        c: np.concatenate([s.boxes[s.class_ids == k, 3] - s.boxes[s.class_ids == k, 1] for s in splits.values()])
        for k, c in enumerate(classes)
    }
    top = max([float(h.max()) for h in heights.values() if len(h)] + [50.0])
    bins = np.linspace(0, top, 40)
    for c, h in heights.items():
        ax.hist(h, bins=bins, histtype="step", linewidth=1.6, label=f"{c} ({len(h)})")
    for y in KITTI_HEIGHT_LINES:
        ax.axvline(y, color="grey", linestyle=":", linewidth=1)
        ax.text(y, ax.get_ylim()[1] * 0.95, f" {y}px", color="grey", va="top", fontsize=8)
    ax.set_xlabel("box height (pixels)")
    ax.set_ylabel("objects")
    ax.set_title("Box heights per class (train + val); dotted: KITTI hard/easy minimum heights")
    ax.legend()
    save_figure(fig, path)


def markdown(summary: dict, warnings: Sequence[Warning_], source: str) -> str:
    """``report.md``: images and objects per class and split, warnings by kind."""
    classes = summary["classes"]
    lines = [
        f"# Dataset report: {source}",
        "",
        "| split | images | " + " | ".join(classes) + " | ignore regions | images without objects |",
        "|---|---:|" + "---:|" * len(classes) + "---:|---:|",
    ]
    for split in SPLITS:
        s = summary["splits"][split]
        lines.append(
            f"| {split} | {s['num_images']} | "
            + " | ".join(str(s["num_objects"][c]) for c in classes)
            + f" | {s['num_ignore_regions']} | {s['num_images_without_objects']} |"
        )
    lines += ["", "![box heights](box_heights.png)", ""]
    if summary["unmapped_classes"]:
        lines += [
            "Objects of classes not in `dataset.target_class_mapping` (left out): "
            + ", ".join(f"{k} {v}" for k, v in summary["unmapped_classes"].items()),
            "",
        ]
    lines.append(f"## Warnings: {summary['num_warnings']}")
    for kind, n in summary["warnings_by_kind"].items():
        lines.append(f"- {kind}: {n}")
    if warnings:
        lines += ["", "```"] + [str(w) for w in warnings[:MAX_WARNINGS_IN_MARKDOWN]]
        if len(warnings) > MAX_WARNINGS_IN_MARKDOWN:
            lines.append(f"... {len(warnings) - MAX_WARNINGS_IN_MARKDOWN} more in warnings.txt")
        lines.append("```")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    splits: dict[str, SplitIndex],
    classes: list[str],
    records: Sequence[ImageRecord],
    mapping: dict[str, str],
    warnings: Sequence[Warning_],
    source: str,
) -> dict:
    """``report.md``, ``report.json``, ``box_heights.png`` and ``warnings.txt``; returns the summary."""
    summary = summarise(splits, classes, records, mapping, warnings)
    write_json_atomic(out_dir / "report.json", summary)
    write_text_atomic(out_dir / "report.md", markdown(summary, warnings, source))
    write_text_atomic(out_dir / "warnings.txt", "".join(f"{w}\n" for w in warnings))
    plot_box_heights(out_dir / "box_heights.png", splits, classes)
    return summary
