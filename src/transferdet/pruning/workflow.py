"""Pruning a trained detector as ``transferdet prune`` does it: one pruning with its checkpoint and report, or
a sensitivity sweep over target ratios. Accuracy is measured through the same predictor and evaluation loop
as ``evaluate``."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from transferdet.config.schema import PruningConfig
from transferdet.detector import checkpoint
from transferdet.detector.spec import DetectorSpec
from transferdet.inference.backends import TorchBackend
from transferdet.inference.evaluate import evaluate_predictor
from transferdet.inference.predictor import Predictor
from transferdet.models.detectnet import channel_plan
from transferdet.pruning.pruner import PruneReport, count, prune, prune_to_ratio
from transferdet.utils.io import write_json_atomic, write_text_atomic
from transferdet.utils.plots import figure, save_figure

log = logging.getLogger(__name__)
PRUNED_CHECKPOINT = "pruned.ckpt"


def report_markdown(r: PruneReport, threshold: float) -> str:
    """``pruning_report.md``: ratio, parameters, FLOPs and kept/total filters per layer."""
    lines = [
        "# Pruning report",
        "",
        f"- pruning ratio (pruned model params / original): **{r.ratio:.4f}** (threshold {threshold:.6g})",
        f"- parameters: {r.params_before:,} -> {r.params_after:,}",
        f"- FLOPs per image: {r.flops_before / 1e9:.3f} G -> {r.flops_after / 1e9:.3f} G "
        f"({r.flops_after / r.flops_before:.3f})",
        "",
        "| layer | kept | total |",
        "|---|---:|---:|",
    ]
    lines += [f"| {p.name} | {p.kept} | {p.total} |" for p in r.layers]
    return "\n".join(lines) + "\n"


def latency_ms(model: nn.Module, height: int, width: int, repeats: int = 10) -> float:
    """Median PyTorch CPU latency of one image (batch 1), after a warm-up."""
    x = torch.rand(1, 3, height, width)
    model.eval()
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2]


def val_map(spec: DetectorSpec, network: nn.Module, converted: Path) -> float:
    """Validation mAP of ``network`` with ``spec``'s settings."""
    return evaluate_predictor(Predictor(spec, TorchBackend(network)), converted, progress=False).result.mean_ap()


def prune_once(network: nn.Module, p: PruningConfig, spec: DetectorSpec) -> tuple[PruneReport, float]:
    """Prune ``network`` in place by threshold or to ``p.target_ratio``; returns the report and the threshold."""
    if p.target_ratio is not None:
        report, threshold = prune_to_ratio(network, p, spec.height, spec.width)
        log.info("pruning.target_ratio=%g: threshold %.6g gives ratio %.4f", p.target_ratio, threshold, report.ratio)
        return report, threshold
    return prune(network, p, spec.height, spec.width), p.pruning_threshold


def prune_and_save(
    spec: DetectorSpec,
    network: nn.Module,
    p: PruningConfig,
    run_dir: Path,
    converted: Path | None,
    training: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Prune, write ``pruned.ckpt`` (with the ``training`` record of the model it was made from) and the
    reports; with ``converted``, val mAP before and after."""
    map_before = val_map(spec, network, converted) if converted else None
    report, threshold = prune_once(network, p, spec)
    pruned_spec = spec.replace(channel_plan=channel_plan(network))
    summary = {
        "ratio": report.ratio,
        "threshold": threshold,
        "params_before": report.params_before,
        "params_after": report.params_after,
        "flops_before": report.flops_before,
        "flops_after": report.flops_after,
        "groups": report.groups,
        "layers": [{"name": x.name, "kept": x.kept, "total": x.total} for x in report.layers],
    }
    checkpoint.save(run_dir / PRUNED_CHECKPOINT, pruned_spec, network, {"pruning": summary}, training)
    metrics = {
        f"prune/{k}": summary[k]
        for k in ("ratio", "threshold", "params_before", "params_after", "flops_before", "flops_after")
    }
    if converted:
        summary["mAP_before"], summary["mAP_after"] = map_before, val_map(pruned_spec, network, converted)
        log.info("val mAP %.4f before pruning, %.4f after (before retraining)", map_before, summary["mAP_after"])
        metrics.update({"prune/mAP_before": summary["mAP_before"], "prune/mAP_after": summary["mAP_after"]})
    write_json_atomic(run_dir / "pruning_report.json", summary)
    text = report_markdown(report, threshold)
    write_text_atomic(run_dir / "pruning_report.md", text)
    print(text)
    return metrics


def sensitivity_sweep(
    spec: DetectorSpec, network: nn.Module, p: PruningConfig, ratios: list[float], converted: Path, run_dir: Path
) -> dict[str, float]:
    """Per target ratio: mAP before retraining, params, FLOPs and CPU latency; ``sweep.md`` and a Pareto plot."""
    rows = [
        {
            "target_ratio": 1.0,
            "ratio": 1.0,
            "threshold": 0.0,
            "params": sum(x.numel() for x in network.parameters()),
            "flops": count(network, spec.height, spec.width)[0],
            "mAP": val_map(spec, network, converted),
            "latency_ms": latency_ms(network, spec.height, spec.width),
        }
    ]
    for ratio in tqdm(ratios, desc="sweep", unit="ratio", disable=None):
        model = copy.deepcopy(network)
        report, threshold = prune_to_ratio(model, dataclasses.replace(p, target_ratio=ratio), spec.height, spec.width)
        rows.append(
            {
                "target_ratio": ratio,
                "ratio": report.ratio,
                "threshold": threshold,
                "params": report.params_after,
                "flops": report.flops_after,
                "mAP": val_map(spec.replace(channel_plan=channel_plan(model)), model, converted),
                "latency_ms": latency_ms(model, spec.height, spec.width),
            }
        )
    for r in rows:
        r["speedup"] = rows[0]["latency_ms"] / r["latency_ms"]
    write_json_atomic(run_dir / "sweep.json", rows)
    lines = [
        "| target ratio | ratio | threshold | params | GFLOPs | mAP (before retraining) | CPU ms (batch 1) | speedup |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['target_ratio']:.3f} | {r['ratio']:.4f} | {r['threshold']:.4g} | {r['params']:,} | "
        f"{r['flops'] / 1e9:.3f} | {r['mAP']:.4f} | {r['latency_ms']:.2f} | {r['speedup']:.2f}x |"
        for r in rows
    ]
    text = "# Pruning sensitivity sweep\n\n![pareto](sweep_pareto.png)\n\n" + "\n".join(lines) + "\n"
    write_text_atomic(run_dir / "sweep.md", text)
    plot_pareto(rows, run_dir / "sweep_pareto.png")
    print(text)
    return {f"sweep/ratio_{r['target_ratio']:g}/mAP": r["mAP"] for r in rows} | {
        f"sweep/ratio_{r['target_ratio']:g}/latency_ms": r["latency_ms"] for r in rows
    }


def plot_pareto(rows: list[dict], path: Path) -> None:
    """``sweep_pareto.png``: CPU latency against mAP before retraining."""
    fig, ax = figure(figsize=(6.5, 4.5), dpi=100)
    ax.plot([r["latency_ms"] for r in rows], [r["mAP"] for r in rows], "o-")
    for r in rows:
        ax.annotate(
            f"ratio {r['ratio']:.2f}",
            (r["latency_ms"], r["mAP"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("PyTorch CPU latency, batch 1 (ms)")
    ax.set_ylabel("val mAP before retraining")
    ax.set_title("Pruning: accuracy vs speed")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
