"""``transferdet infer checkpoint=PATH input=PATH``: detections for an image, a folder, or a video.

Writes ``labels/`` (KITTI files with the confidence as 16th field) and ``images_annotated/`` (or an
annotated video) into the run directory; see :mod:`transferdet.inference.outputs`. Images stream through
in batches of ``batch_size``, ``workers`` batches at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from transferdet.config.overrides import DetectorOverrides
from transferdet.config.tasks import task_args
from transferdet.errors import ConfigError
from transferdet.inference.backends import threads_per_worker, workers_or_default
from transferdet.inference.outputs import infer_path
from transferdet.inference.predictor import Predictor
from transferdet.utils.rundir import write_config

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Detections for ``input``, written as labels and annotated images or video."""
    args = task_args(cfg, "infer")
    if not args.checkpoint:
        raise ConfigError("checkpoint", None, "a transferdet checkpoint file (checkpoint=PATH)")
    workers = workers_or_default(args.workers)
    predictor = Predictor.load(
        args.checkpoint,
        args.runtime,
        DetectorOverrides.from_config(cfg),
        threads=threads_per_worker(workers),
        precision=args.precision,
    )
    write_config(run_dir, cfg, predictor.spec.as_config())
    n, kind = infer_path(predictor, Path(args.input), run_dir, args.batch_size, args.draw_threshold, workers)
    log.info("%d %s: labels in %s", n, kind, run_dir / "labels")
    return {"infer/num_images": n}
