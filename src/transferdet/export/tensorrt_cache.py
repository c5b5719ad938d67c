"""TensorRT INT8 calibration cache in TensorRT's text format, from calibrated activation ranges.

Line 1 ``TRT-<version>-EntropyCalibration2``; then ``<tensor name>: <hex>`` per tensor, the hex being the
IEEE-754 float32 bit pattern of the scale amax / 127.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from pathlib import Path

from transferdet.utils.io import write_text_atomic

TRT_VERSION = 8601  # major*1000 + minor*100 + patch of the TensorRT the cache format is written for


def scale_hex(amax: float) -> str:
    """TensorRT's cache entry of a tensor: the big-endian float32 bits of amax / 127, in hex."""
    scale = max(float(amax), 1e-12) / 127.0
    return struct.pack(">f", scale).hex()


def write_cache(path: Path, ranges: Mapping[str, float], version: int = TRT_VERSION) -> Path:
    """``ranges``: tensor name -> absolute maximum of its activations."""
    lines = [f"TRT-{version}-EntropyCalibration2"]
    for name in sorted(ranges):
        amax = ranges[name]
        if not math.isfinite(amax) or amax <= 0:
            continue
        lines.append(f"{name}: {scale_hex(amax)}")
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def read_cache(path: Path) -> dict[str, float]:
    """Tensor name -> scale, parsed back (checks the format)."""
    text = Path(path).read_text().splitlines()
    if not text or not text[0].startswith("TRT-") or not text[0].endswith("Calibration2"):
        raise ValueError(f"{path}:1: not a TensorRT calibration cache header: {text[:1]}")
    out = {}
    for n, line in enumerate(text[1:], start=2):
        name, _, hexval = line.rpartition(": ")
        if not name or len(hexval) != 8:
            raise ValueError(f"{path}:{n}: expected '<tensor>: <8 hex digits>', got {line!r}")
        out[name] = struct.unpack(">f", bytes.fromhex(hexval))[0]
    return out
