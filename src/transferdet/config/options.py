"""The values of one option of a config group (``conf/<group>/<name>.yaml``), read outside a Hydra composition:
for settings a task needs only in one of its modes (e.g. ``evaluate predictions=... labels=...``, which has no
model to take its evaluation settings from)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from omegaconf import OmegaConf


def group_option(group: str, name: str) -> dict[str, Any]:
    """The option's own values (its defaults list left out: the group's schema supplies the rest)."""
    text = (resources.files("transferdet.conf") / group / f"{name}.yaml").read_text(encoding="utf-8")
    values = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    assert isinstance(values, dict)
    values.pop("defaults", None)
    return values
