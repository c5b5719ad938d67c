"""``report.md`` of a pipeline run: the whole story, accuracy to speed, with pictures.

Sections: headline numbers, stages and their times, the dataset, training curves, per-class AP and
precision/recall curves (unpruned, pruned + retrained, INT8), the pruning table, export parity, the
benchmark table and chart, and a speed-vs-mAP chart. Everything is read back from the stage folders,
so the report can be rebuilt from a finished run directory alone.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path

from omegaconf import DictConfig

from transferdet.config.validate import target_classes, typed
from transferdet.data.converted import converted_dir_for
from transferdet.evaluation.report import interval_text
from transferdet.pipeline.stages import STAGES, distill_enabled, retrain_epochs
from transferdet.utils.io import write_text_atomic
from transferdet.utils.logs import duration
from transferdet.utils.plots import figure, save_figure

log = logging.getLogger("transferdet.pipeline")

# the three models whose accuracy the report compares: stage -> label
ACCURACY = {
    "evaluate": "unpruned (PyTorch fp32)",
    "evaluate_pruned": "pruned + retrained (PyTorch fp32)",
    "evaluate_int8": "pruned + retrained, INT8 (ONNX Runtime)",
}


def _json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _csv_rows(stage_dir: Path) -> list[dict]:
    """The CSV logger's rows of a training stage, across resumed runs (one ``version_*`` each)."""
    rows: list[dict] = []
    for path in sorted(stage_dir.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1])):
        with open(path, newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


def _series(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = {}
    for r in rows:
        if r.get(y) not in (None, "") and r.get(x) not in (None, ""):
            pts[float(r[x])] = float(r[y])  # a resumed run repeats steps: the later value wins
    xs = sorted(pts)
    return xs, [pts[v] for v in xs]


def plot_training_curves(dirs: dict[str, Path], path: Path) -> bool:
    """``training_curves.png``: loss and val mAP of training and retraining; False when nothing was logged."""
    runs = {"train (unpruned)": _csv_rows(dirs["train"]), "retrain (pruned)": _csv_rows(dirs["retrain"])}
    if not any(runs.values()):
        return False
    fig, (loss_ax, map_ax) = figure(1, 2, figsize=(11, 4), dpi=100)
    for label, rows in runs.items():
        xs, ys = _series(rows, "step", "train/loss")
        if xs:
            loss_ax.plot(xs, ys, label=label)
        xs, ys = _series(rows, "epoch", "val/mAP")
        if xs:
            map_ax.plot([x + 1 for x in xs], ys, "o-", label=label)
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    map_ax.set(xlabel="epoch", ylabel="val mAP", title="validation mAP", ylim=(0, 1))
    for ax in (loss_ax, map_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(
                0.5,
                0.5,
                "nothing logged (fewer steps than trainer.log_every_n_steps)",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=9,
            )
    save_figure(fig, path)
    return True


def plot_speed_vs_map(rows: list[dict], path: Path) -> bool:
    """``speed_vs_map.png``: end-to-end latency against val mAP of every benchmark row."""
    if not rows:
        return False
    batch = min(r["batch"] for r in rows)
    sel = [r for r in rows if r["batch"] == batch and r.get("mAP") is not None and not math.isnan(r["mAP"])]
    if not sel:
        return False
    fig, ax = figure(figsize=(10.5, 4.5), dpi=100)
    for r in sel:
        marker = "o" if r["model"] == "unpruned" else "s"
        ax.scatter(
            r["e2e_ms_p50"],
            r["mAP"],
            marker=marker,
            s=70,
            alpha=0.85,
            label=f"{r['model']} {r['runtime']} {r['precision']}: {r['e2e_ms_p50']:.1f} ms, "
            f"{r['speedup_e2e']:.1f}x, mAP {r['mAP']:.3f}",
        )
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xscale("log")
    from matplotlib.ticker import LogFormatter  # loaded with matplotlib, by figure()

    # plain numbers on the log axis ("3", "20"), not 3×10⁰, with matplotlib's choice of which ticks to label
    ax.xaxis.set_major_formatter(LogFormatter())
    ax.xaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.4)))
    ax.set_xlabel(f"end-to-end ms per image, batch {batch} (log scale)")
    ax.set_ylabel("val mAP")
    ax.set_title("speed vs accuracy (up and left is better)")
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, path)
    return True


def _dataset_section(cfg: DictConfig, dirs: dict[str, Path], root: Path) -> list[str]:
    converted = converted_dir_for(typed(cfg, "dataset"))
    out = ["## Dataset", "", f"`{cfg.dataset.root}`, converted to `{converted}`.", ""]
    text = (converted / "report.md").read_text() if (converted / "report.md").is_file() else ""
    table = [line for line in text.splitlines() if line.startswith("|")]
    out += table or ["(no dataset report found)"]
    if (converted / "box_heights.png").is_file():
        shutil.copyfile(converted / "box_heights.png", dirs["convert"] / "box_heights.png")
        out += ["", f"![box heights]({_rel(dirs['convert'] / 'box_heights.png', root)})"]
    return out + [""]


def _accuracy_section(classes: list[str], dirs: dict[str, Path], root: Path, prune: dict) -> tuple[list[str], dict]:
    results = {stage: _json(dirs[stage] / "metrics.json") for stage in ACCURACY}
    out = [
        "## Accuracy (validation split)",
        "",
        "| model | mAP | " + " | ".join(f"AP {c}" for c in classes) + " | COCO mAP@[.5:.95] |",
        "|---|---:|" + "---:|" * len(classes) + "---:|",
    ]
    for stage, label in ACCURACY.items():
        m = results[stage]
        if stage == "evaluate_pruned" and "mAP_after" in prune:
            out.append(
                f"| pruned, before retraining | **{_pct(prune['mAP_after'])}** | "
                + " | ".join("" for _ in classes)
                + " |  |"
            )
        if m:
            span = interval_text(m.get("mAP_interval_low"), m.get("mAP_interval_high"))
            span = "" if span == "-" else f" ({span})"
            out.append(
                f"| {label} | **{_pct(m.get('mAP'))}**{span} | "
                + " | ".join(_pct(m.get(f"AP/{c}")) for c in classes)
                + f" | {_pct(m.get('mAP_coco'))} |"
            )
    out += ["", "AP in %, VOC-style with the evaluation config's IoU thresholds."]
    confidence = next((m["interval_confidence"] for m in results.values() if m and "interval_confidence" in m), None)
    if confidence:
        out[-1] += (
            f" In brackets: the {100 * confidence:g}% interval of mAP over the validation images (a bootstrap:"
            " the images drawn with replacement); a few images make it wide."
        )
    out += [""]
    kitti = [c for c in classes if any(f"kitti/AP_moderate/{c}" in m for m in results.values() if m)]
    if kitti:  # evaluation.protocol=kitti: the devkit's figures, comparable with published KITTI results
        levels = ("easy", "moderate", "hard")
        out += [
            "AP in % by KITTI's own protocol (the object devkit's rules; docs/evaluation.md):",
            "",
            "| model | " + " | ".join(f"{c} {lv}" for c in kitti for lv in levels) + " |",
            "|---|" + "---:|" * (len(kitti) * len(levels)),
        ]
        out += [
            f"| {label} | " + " | ".join(_pct(m.get(f"kitti/AP_{lv}/{c}")) for c in kitti for lv in levels) + " |"
            for stage, label in ACCURACY.items()
            if (m := results[stage])
        ]
        out.append("")
    pictures = [
        f"![{label}]({_rel(dirs[s] / 'pr_curves.png', root)})"
        for s, label in ACCURACY.items()
        if (dirs[s] / "pr_curves.png").is_file()
    ]
    if pictures:
        out += ["Precision / recall curves: unpruned, pruned + retrained, INT8.", "", " ".join(pictures), ""]
    return out, results


def write_report(cfg: DictConfig, run_dir: Path, dirs: dict[str, Path], records: dict[str, dict]) -> dict[str, float]:
    """Write ``report.md`` (and its charts) into ``run_dir``; returns the headline metrics."""
    classes = target_classes(typed(cfg, "dataset"))
    prune = _json(dirs["prune"] / "pruning_report.json")
    parity = _json(dirs["export"] / "parity.json")
    bench = _json(dirs["benchmark"] / "benchmark.json")
    rows = bench.get("rows", []) if isinstance(bench, dict) else []

    accuracy, results = _accuracy_section(classes, dirs, run_dir, prune)
    m_unpruned, m_pruned, m_int8 = (results[s].get("mAP") for s in ACCURACY)
    batch1 = {
        (r["model"], r["runtime"], r["precision"]): r for r in rows if r["batch"] == min(x["batch"] for x in rows)
    }
    best = batch1.get(("pruned", "onnxruntime", "int8"))
    metrics = {
        "pipeline/mAP_unpruned": m_unpruned,
        "pipeline/mAP_pruned_before_retraining": prune.get("mAP_after"),
        "pipeline/mAP_pruned_retrained": m_pruned,
        "pipeline/mAP_int8": m_int8,
        "pipeline/prune_ratio": prune.get("ratio"),
        "pipeline/params_unpruned": prune.get("params_before"),
        "pipeline/params_pruned": prune.get("params_after"),
    }
    if best:
        metrics["pipeline/speedup_pruned_int8_e2e"] = best["speedup_e2e"]
        metrics["pipeline/e2e_over_network_pruned_int8"] = best["e2e_over_network"]
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

    def fmt(key: str, scale: float = 100, digits: int = 2, suffix: str = "") -> str:
        v = metrics.get(key)
        return "-" if v is None else f"{v * scale:.{digits}f}{suffix}"

    lines = [
        "# transferdet pipeline report",
        "",
        f"Model `{cfg.model.arch}{cfg.model.num_layers}`, input {cfg.augmentation.preprocessing.output_image_width}"
        f"x{cfg.augmentation.preprocessing.output_image_height}, classes {', '.join(classes)}; "
        f"{cfg.training.num_epochs} training epochs, {retrain_epochs(cfg)} retraining epochs"
        f"{' distilled from the unpruned model' if distill_enabled(cfg) else ''}. Every stage's "
        "outputs are in its numbered folder.",
        "",
        "## Headline",
        "",
        "| | value |",
        "|---|---:|",
        f"| val mAP (%), unpruned | {fmt('pipeline/mAP_unpruned')} |",
        f"| val mAP (%), pruned, before retraining | {fmt('pipeline/mAP_pruned_before_retraining')} |",
        f"| val mAP (%), pruned + retrained | {fmt('pipeline/mAP_pruned_retrained')} |",
        f"| val mAP (%), pruned + retrained, INT8 | {fmt('pipeline/mAP_int8')} |",
        f"| pruning ratio (pruned model params / original) | {fmt('pipeline/prune_ratio', 1, 4)} |",
        f"| parameters | {prune.get('params_before', 0):,} -> {prune.get('params_after', 0):,} |",
        f"| end-to-end speedup, pruned INT8 (ONNX Runtime) vs unpruned fp32 (PyTorch), batch "
        f"{min((r['batch'] for r in rows), default=1)} | {fmt('pipeline/speedup_pruned_int8_e2e', 1, 2, 'x')} |",
        f"| end-to-end (streamed) / network-only throughput, pruned INT8 | "
        f"{fmt('pipeline/e2e_over_network_pruned_int8', 100, 0, ' %')} |",
        "",
        "## Stages",
        "",
        "| # | stage | status | time | folder |",
        "|---:|---|---|---:|---|",
    ]
    for i, stage in enumerate(STAGES, 1):
        r = records.get(stage.name, {})
        status = r.get("status", "not run") + (f" ({r['reason']})" if r.get("reason") else "")
        lines.append(
            f"| {i} | {stage.name} | {status} | {duration(r.get('seconds', 0.0))} | "
            f"`{_rel(dirs[stage.name], run_dir)}` |"
        )
    lines += ["", *_dataset_section(cfg, dirs, run_dir), "## Training", ""]
    if plot_training_curves(dirs, run_dir / "training_curves.png"):
        lines += ["![training curves](training_curves.png)", ""]
    lines += accuracy
    lines += ["## Pruning", ""]
    text = (dirs["prune"] / "pruning_report.md").read_text() if (dirs["prune"] / "pruning_report.md").is_file() else ""
    lines += [line for line in text.splitlines() if not line.startswith("# ")] or ["(not run)"]
    lines += ["", "## Export and parity", ""]
    if parity:
        diff = parity.get("max_abs_diff", {})
        lines += [
            f"- max |PyTorch - ONNX Runtime fp32| on validation images: coverage {diff.get('cov', float('nan')):.2e},"
            f" bbox {diff.get('bbox', float('nan')):.2e}",
            "- val mAP by model (ONNX Runtime; int8 is its own model, int8_qdq the portable one): "
            + ", ".join(f"{k} {_pct(v)}" for k, v in parity.get("mAP", {}).items()),
            f"- TensorRT engine: {parity.get('engine')}",
            "- files: "
            + ", ".join(f"`{_rel(dirs['export'] / f, run_dir)}`" for f in parity.get("files", {}).values())
            + "".join(
                f", `{_rel(dirs['export'] / f, run_dir)}`"
                for f in ("calibration.cache", "model.engine", "nvinfer_config.txt", "deepstream_app_config.txt")
                if (dirs["export"] / f).is_file()
            ),
            "",
        ]
    lines += ["## Speed", ""]
    if rows:
        lines += [
            f"Measured on {bench.get('device', '?')} with {bench.get('threads', '?')} threads, one run. Latencies "
            "and speedups are end to end (decode, preprocess, network, clustering), one batch at a time; a speedup "
            "times its row and the unpruned PyTorch fp32 one in turn, so the machine's load touches both alike; "
            "`e2e img/s streamed` is a stream of images with "
            f"{bench.get('workers', 1)} batches in flight, as `infer` runs them; network-only is one batch at a "
            "time.",
            "",
        ]
        bench_md = dirs["benchmark"] / "benchmark.md"
        lines += [bench_md.read_text().rstrip() if bench_md.is_file() else "", ""]
        if (dirs["benchmark"] / "benchmark.png").is_file():
            lines += [f"![benchmark]({_rel(dirs['benchmark'] / 'benchmark.png', run_dir)})", ""]
        if plot_speed_vs_map(rows, run_dir / "speed_vs_map.png"):
            lines += ["![speed vs mAP](speed_vs_map.png)", ""]
    else:
        lines += ["(not run)", ""]
    write_text_atomic(run_dir / "report.md", "\n".join(lines) + "\n")
    return metrics
