"""``transferdet prune checkpoint=PATH [pruning.pruning_threshold=T | pruning.target_ratio=R]``.

Writes ``pruned.ckpt`` (weights + the channel plan that rebuilds the pruned architecture; retrain it
with ``transferdet train model.pruned_checkpoint=.../pruned.ckpt``), ``pruning_report.json`` and
``pruning_report.md`` (ratio, parameters and FLOPs before/after, kept/total filters per layer).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from transferdet.config import typed
from transferdet.errors import ConfigError
from transferdet.inference.predictor import load_module
from transferdet.pruning.pruner import PruneReport, channel_plan, prune, prune_to_ratio
from transferdet.utils.io import atomic_path, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)
PRUNED_CHECKPOINT = "pruned.ckpt"


def report_markdown(r: PruneReport, threshold: float) -> str:
    lines = [f"# Pruning report", "",
             f"- pruning ratio (params pruned / original): **{r.ratio:.4f}** (threshold {threshold:.6g})",
             f"- parameters: {r.params_before:,} -> {r.params_after:,}",
             f"- FLOPs per image: {r.flops_before / 1e9:.3f} G -> {r.flops_after / 1e9:.3f} G "
             f"({r.flops_after / r.flops_before:.3f})", "",
             "| layer | kept | total |", "|---|---:|---:|"]
    lines += [f"| {p.name} | {p.kept} | {p.total} |" for p in r.layers]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    checkpoint = cfg.get("checkpoint")
    if not checkpoint:
        raise ConfigError("checkpoint", checkpoint, "a trained transferdet checkpoint (checkpoint=PATH)")
    p = typed(cfg, "pruning")
    module = load_module(checkpoint)
    model = module.model
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
    summary = {"ratio": report.ratio, "threshold": threshold, "params_before": report.params_before,
               "params_after": report.params_after, "flops_before": report.flops_before,
               "flops_after": report.flops_after, "groups": report.groups,
               "layers": [{"name": x.name, "kept": x.kept, "total": x.total} for x in report.layers]}
    with atomic_path(run_dir / PRUNED_CHECKPOINT) as tmp:
        torch.save({"state_dict": state, "hyper_parameters": hp, "pruning": summary,
                    "epoch": 0, "global_step": 0}, tmp)
    write_json_atomic(run_dir / "pruning_report.json", summary)
    text = report_markdown(report, threshold)
    write_text_atomic(run_dir / "pruning_report.md", text)
    print(text)
    return {"prune/ratio": report.ratio, "prune/threshold": threshold, "prune/params_before": report.params_before,
            "prune/params_after": report.params_after, "prune/flops_before": report.flops_before,
            "prune/flops_after": report.flops_after}
