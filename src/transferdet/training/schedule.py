"""TLT's soft-start annealing learning-rate schedule (log-linear between min and max)."""

from __future__ import annotations

import math

from transferdet.config.schema import SoftStartAnnealingScheduleConfig


def soft_start_annealing(progress: float, cfg: SoftStartAnnealingScheduleConfig) -> float:
    """Learning rate at ``progress`` = step / total steps.

    t = p / soft_start while p < soft_start, 1 until annealing, then (1 - p) / (1 - annealing);
    lr = exp(ln min_lr + t * (ln max_lr - ln min_lr)).
    """
    p = min(max(progress, 0.0), 1.0)
    if p < cfg.soft_start:
        t = p / cfg.soft_start
    elif p <= cfg.annealing:
        t = 1.0
    else:
        t = (1.0 - p) / (1.0 - cfg.annealing)
    lo, hi = math.log(cfg.min_learning_rate), math.log(cfg.max_learning_rate)
    return math.exp(lo + t * (hi - lo))
