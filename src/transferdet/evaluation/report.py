"""Evaluation outputs a person looks at: the terminal table and the precision/recall curves PNG."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from transferdet.evaluation.evaluator import EvaluationResult
from transferdet.utils.plots import figure, save_figure


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:.2f}"


def interval_text(low: float | None, high: float | None) -> str:
    """An AP interval in %, ``12.3-45.6`` (``-`` where there is none: no ground truth, or not computed)."""
    return "-" if low is None or high is None or math.isnan(low) else f"{100 * low:.1f}-{100 * high:.1f}"


def print_table(result: EvaluationResult, title: str = "evaluation") -> None:
    """The per-class AP table (all and KITTI levels) on the terminal."""
    levels = [lv for lv in result.levels if lv in ("all", "easy", "moderate", "hard")]
    table = Table(title=f"{title}: AP (%)")
    table.add_column("class")
    table.add_column("ground truth", justify="right")
    table.add_column("detections", justify="right")
    for lv in levels:
        table.add_column("AP" if lv == "all" else lv, justify="right")
    for cls in result.classes:
        c = result.curves["all"][cls]
        table.add_row(cls, str(c.num_gt), str(len(c.is_tp)), *(_pct(result.ap(cls, lv)) for lv in levels))
    table.add_row("[bold]mean[/bold]", "", "", *(f"[bold]{_pct(result.mean_ap(lv))}[/bold]" for lv in levels))
    console = Console(stderr=True)
    console.print(table)
    if result.intervals:
        spans = [f"{cls or 'mean'} {interval_text(*result.intervals[cls])}" for cls in [*result.classes, ""]]
        console.print(f"AP {100 * result.interval_confidence:g}% intervals over the images: {', '.join(spans)}")
    for name, value in result.extra.items():
        console.print(f"{name}: {_pct(value)}")


def plot_pr_curves(result: EvaluationResult, path: Path, title: str = "precision / recall") -> None:
    """``pr_curves.png``: precision against recall of every class."""
    fig, ax = figure(figsize=(6, 5), dpi=100)
    for cls in result.classes:
        curve = result.curves["all"][cls]
        if curve.num_gt == 0:
            continue
        precision, recall = curve.precision_recall
        ax.plot(recall, precision, linewidth=1.6, label=f"{cls}: AP {_pct(curve.ap)}%")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{title} (mAP {_pct(result.mean_ap())}%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    save_figure(fig, path)
