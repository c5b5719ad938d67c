"""``transferdet pipeline``: the whole workflow in one resumable command (see :mod:`transferdet.pipeline`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from transferdet.pipeline.report import write_report
from transferdet.pipeline.runner import run_stages
from transferdet.pipeline.stages import stage_dirs
from transferdet.tasks import run_task
from transferdet.utils.logs import duration

log = logging.getLogger("transferdet.pipeline")


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Run (or resume) every stage, then write ``report.md``."""
    start = time.perf_counter()
    records = run_stages(cfg, run_dir, run_task)
    metrics = write_report(cfg, run_dir, stage_dirs(run_dir), records)
    metrics["pipeline/seconds_this_run"] = time.perf_counter() - start
    metrics["pipeline/seconds_all_stages"] = sum(r.get("seconds", 0.0) for r in records.values())
    log.info(
        "pipeline finished: %s of stage time; report: %s",
        duration(metrics["pipeline/seconds_all_stages"]),
        run_dir / "report.md",
    )
    return metrics
