"""``transferdet prune checkpoint=PATH [pruning.pruning_threshold=T | pruning.target_ratio=R]``.

Writes ``pruned.ckpt`` (weights + the spec with its channel plan, which rebuilds the pruned architecture;
retrain it with ``transferdet train model.pruned_checkpoint=.../pruned.ckpt``), ``pruning_report.json`` and
``pruning_report.md`` (ratio, parameters and FLOPs before/after, kept/total filters per layer).
``evaluate=true`` adds the val mAP before and after pruning.

``sweep=true`` prunes copies of the model to each of ``sweep_ratios`` instead and writes ``sweep.json``,
``sweep.md`` and ``sweep_pareto.png``: mAP before retraining, parameters, FLOPs and CPU latency.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from transferdet.config.overrides import DetectorOverrides
from transferdet.config.tasks import task_args
from transferdet.config.validate import typed
from transferdet.data.prepare import ensure_converted
from transferdet.detector import checkpoint
from transferdet.errors import ConfigError
from transferdet.pruning.workflow import prune_and_save, sensitivity_sweep
from transferdet.utils.rundir import write_config


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Prune the checkpoint (or sweep target ratios) and report."""
    args, p = task_args(cfg, "prune"), typed(cfg, "pruning")
    if not args.checkpoint:
        raise ConfigError("checkpoint", None, "a trained transferdet checkpoint (checkpoint=PATH)")
    loaded = checkpoint.load(args.checkpoint, DetectorOverrides.from_config(cfg))
    write_config(run_dir, cfg, loaded.spec.as_config())
    dataset = (
        checkpoint.dataset_for_model(typed(cfg, "dataset"), args.checkpoint, loaded.spec.classes)
        if args.evaluate or args.sweep
        else None
    )
    converted = ensure_converted(dataset) if dataset else None
    if args.sweep:
        return sensitivity_sweep(loaded.spec, loaded.network, p, args.sweep_ratios, converted, run_dir)
    return prune_and_save(loaded.spec, loaded.network, p, run_dir, converted, loaded.training)
