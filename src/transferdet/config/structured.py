"""Typed config objects to and from plain containers, with OmegaConf's errors as one-line :class:`ConfigError`.

Checkpoints, ONNX metadata and run directories hold settings as plain dicts (JSON/YAML, enums as their
names); the library works on the schemas' dataclasses. :func:`from_plain` is the one way back: a value of
the wrong type, an unknown key or an enum value that does not exist is a ConfigError naming the key, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from transferdet.errors import ConfigError

T = TypeVar("T")


def to_plain(obj: Any) -> Any:
    """A dataclass instance (or a DictConfig) as plain dicts and lists, enums as their values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = OmegaConf.structured(obj)
    return OmegaConf.to_container(obj, resolve=True, enum_to_str=True)


def allowed_from(err: OmegaConfBaseException) -> str:
    """What OmegaConf's message says is allowed, in our words."""
    msg = str(getattr(err, "msg", err)).splitlines()[0]
    if m := re.search(r"expected one of \[(.*)\]", msg):
        return f"one of {m.group(1)}"
    # OmegaConf names the type one way on conversion and another when a value is merged into a typed node
    words = {"a number": ("Float", "float"), "an integer": ("Integer", "int"), "true or false": ("Boolean", "bool")}
    names = {name: word for word, spellings in words.items() for name in spellings}
    if m := re.search(r"could not be converted to (\w+)|is not a valid (\w+)", msg):
        kind = m.group(1) or m.group(2)
        return names.get(kind, kind)
    if m := re.search(r"Key '(.+)' not in '(\w+)'", msg):
        owner = getattr(err, "object_type", None)
        names = [f.name for f in dataclasses.fields(owner)] if dataclasses.is_dataclass(owner) else []
        return f"a key of {m.group(2)}" + (f" ({', '.join(names)})" if names else "")
    if m := re.search(r"is not a subclass of (\w+)", msg):
        return f"a {m.group(1)} block: set its keys one by one (key.subkey=value), not a single value"
    if "Invalid type assigned" in msg:
        return f"a {getattr(err, 'ref_type_str', None) or 'value of the documented type'}"
    return msg


def _lookup(values: Any, dotted: str) -> Any:
    for part in dotted.split(".") if dotted else []:
        if not isinstance(values, Mapping) or part not in values:
            return None
        values = values[part]
    return values


def config_error(err: OmegaConfBaseException, prefix: str = "", values: Any = None) -> ConfigError:
    """OmegaConf's validation or key error as our ConfigError; ``prefix`` is where the merged node sits and
    ``values`` what was merged (to name the bad value of an unknown key)."""
    key = str(getattr(err, "full_key", "") or "")
    full = ".".join(p for p in (prefix, key) if p)
    value = getattr(err, "value", None)
    if value is None:
        value = _lookup(values, key)
    return ConfigError(full or prefix or "config", value, allowed_from(err))


def from_plain(schema: type[T], values: Mapping[str, Any] | None, prefix: str = "") -> T:
    """``values`` (plain, possibly partial) over the defaults of dataclass ``schema``, type-checked."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), dict(values or {}))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise config_error(err, prefix, values) from None


def merge_plain(base: T, values: Mapping[str, Any] | None, prefix: str = "") -> T:
    """A copy of the typed ``base`` with the (partial, plain) ``values`` merged over it, type-checked."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(base), dict(values or {}))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise config_error(err, prefix, values) from None
