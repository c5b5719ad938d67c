"""``transferdet prune checkpoint=PATH [pruning.pruning_threshold=T | pruning.target_ratio=R]``.

Writes ``pruned.ckpt`` (weights + the channel plan that rebuilds the pruned architecture; retrain it
with ``transferdet train model.pruned_checkpoint=.../pruned.ckpt``), ``pruning_report.json`` and
``pruning_report.md`` (ratio, parameters and FLOPs before/after, kept/total filters per layer).

``sweep=true`` prunes copies of the model to each of ``sweep_ratios`` instead and writes ``sweep.json``,
``sweep.md`` and ``sweep_pareto.png``: mAP before retraining, parameters, FLOPs and CPU latency.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from transferdet.config import typed
from transferdet.errors import ConfigError
from transferdet.inference.predictor import load_module
from transferdet.models.checkpoint import save_checkpoint
from transferdet.pruning.pruner import PruneReport, channel_plan, count, prune, prune_to_ratio
from transferdet.utils.io import atomic_path, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)
PRUNED_CHECKPOINT = "pruned.ckpt"


def report_markdown(r: PruneReport, threshold: float) -> str:
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


def latency_ms(model: torch.nn.Module, height: int, width: int, repeats: int = 10) -> float:
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


def val_loader(cfg: DictConfig, module):
    """The validation split of ``cfg.dataset`` as ``module`` sees it (no augmentation)."""
    from transferdet.tasks.train import ensure_converted
    from transferdet.training.datamodule import DetectionDataModule

    dm = DetectionDataModule(ensure_converted(cfg), module.aug, batch_size=1, eval_batch_size=16, num_workers=0, seed=0)
    dm.setup()
    return dm.val_dataloader()


def sweep(cfg: DictConfig, module, p, ratios: list[float], run_dir: Path) -> dict[str, float]:
    """Sensitivity sweep: per target ratio, mAP before retraining, params, FLOPs and CPU latency; a Pareto plot."""
    loader = val_loader(cfg, module)
    original = copy.deepcopy(module.model)
    rows = [
        {
            "target_ratio": 1.0,
            "ratio": 1.0,
            "threshold": 0.0,
            "params": sum(x.numel() for x in original.parameters()),
            "mAP": module.evaluate_loader(loader, prefix="")["mAP"],
            "latency_ms": latency_ms(original, module.height, module.width),
        }
    ]
    rows[0]["flops"] = count(original, module.height, module.width)[0]
    for ratio in tqdm(ratios, desc="sweep", unit="ratio", disable=None):
        trial = copy.copy(p)
        trial.target_ratio = ratio
        model = copy.deepcopy(original)
        report, threshold = prune_to_ratio(model, trial, module.height, module.width)
        module.model = model
        rows.append(
            {
                "target_ratio": ratio,
                "ratio": report.ratio,
                "threshold": threshold,
                "params": report.params_after,
                "flops": report.flops_after,
                "mAP": module.evaluate_loader(loader, prefix="")["mAP"],
                "latency_ms": latency_ms(model, module.height, module.width),
            }
        )
    module.model = original
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
    _plot_pareto(rows, run_dir / "sweep_pareto.png")
    print(text)
    return {f"sweep/ratio_{r['target_ratio']:g}/mAP": r["mAP"] for r in rows} | {
        f"sweep/ratio_{r['target_ratio']:g}/latency_ms": r["latency_ms"] for r in rows
    }


def _plot_pareto(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    checkpoint = cfg.get("checkpoint")
    if not checkpoint:
        raise ConfigError("checkpoint", checkpoint, "a trained transferdet checkpoint (checkpoint=PATH)")
    p = typed(cfg, "pruning")
    module = load_module(checkpoint)
    if cfg.get("sweep"):
        ratios = [float(r) for r in cfg.get("sweep_ratios") or []]
        if not ratios or not all(0 < r < 1 for r in ratios):
            raise ConfigError("sweep_ratios", ratios, "a list of parameter ratios in (0, 1), e.g. [0.5,0.3,0.15]")
        return sweep(cfg, module, p, ratios, run_dir)
    model = module.model
    loader = val_loader(cfg, module) if cfg.get("evaluate") else None
    map_before = module.evaluate_loader(loader, prefix="")["mAP"] if loader else None
    if p.target_ratio is not None:
        report, threshold = prune_to_ratio(model, p, module.height, module.width)
        log.info("pruning.target_ratio=%g: threshold %.6g gives ratio %.4f", p.target_ratio, threshold, report.ratio)
    else:
        report, threshold = prune(model, p, module.height, module.width), p.pruning_threshold
    plan = channel_plan(model)
    hp = dict(module.hparams)
    hp["channel_plan"] = plan
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"cost.{k}": v for k, v in module.cost.state_dict().items()})
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
    save_checkpoint(
        {"state_dict": state, "hyper_parameters": hp, "pruning": summary, "epoch": 0, "global_step": 0},
        run_dir / PRUNED_CHECKPOINT,
    )
    if loader:
        summary["mAP_before"], summary["mAP_after"] = map_before, module.evaluate_loader(loader, prefix="")["mAP"]
        log.info(
            "val mAP %.4f before pruning, %.4f after (before retraining)", summary["mAP_before"], summary["mAP_after"]
        )
    write_json_atomic(run_dir / "pruning_report.json", summary)
    text = report_markdown(report, threshold)
    write_text_atomic(run_dir / "pruning_report.md", text)
    print(text)
    metrics = {
        "prune/ratio": report.ratio,
        "prune/threshold": threshold,
        "prune/params_before": report.params_before,
        "prune/params_after": report.params_after,
        "prune/flops_before": report.flops_before,
        "prune/flops_after": report.flops_after,
    }
    if loader:
        metrics.update({"prune/mAP_before": summary["mAP_before"], "prune/mAP_after": summary["mAP_after"]})
    return metrics
