"""What every run directory holds: ``config.yaml`` (the settings that applied) and ``metrics.json``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferdet.config.overrides import OVERRIDE_ROOTS
from transferdet.utils.io import write_text_atomic

CONFIG_FILE, METRICS_FILE = "config.yaml", "metrics.json"


def write_config(run_dir: Path, cfg: DictConfig, effective: Mapping[str, Any] | None = None) -> None:
    """The resolved config. ``effective``: the settings that applied to a trained model (its checkpoint's with the
    user's overrides), written in place of the override nodes, which stay under ``overrides_asked``."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(resolved, dict)
    if effective is not None:
        asked = {k: resolved.pop(k) for k in OVERRIDE_ROOTS if k in resolved}
        resolved.update(effective)
        asked = {k: v for k, v in asked.items() if _set(v)}
        if asked:
            resolved["overrides_asked"] = asked
    write_text_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(resolved))


def _set(value: Any) -> bool:
    """Whether a config node holds any value (an override node of empty maps holds none)."""
    if isinstance(value, Mapping):
        return any(_set(v) for v in value.values())
    return value is not None


def flat_numbers(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """metrics.json is a flat object of numbers (a non-finite value is written as null)."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"metric {key!r} is {type(value).__name__}; metrics must be numbers")
        out[str(key)] = value if math.isfinite(value) else None
    return out
