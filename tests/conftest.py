"""Shared fixtures: composed configs, synthetic datasets, and running the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from transferdet.config import register_configs
from transferdet.config.schema import SynthConfig
from transferdet.data.synth import generate

register_configs()


def compose_task(task: str, overrides: list[str] | None = None) -> DictConfig:
    """The config ``transferdet <task> <overrides>`` would run with (without Hydra's own node)."""
    with initialize_config_module("transferdet.conf", version_base="1.3"):
        return compose(task, overrides=overrides or [])


def small_synth_config(num_images: int, seed: int = 0, **kw) -> SynthConfig:
    cfg = SynthConfig(num_images=num_images, seed=seed, **kw)
    cfg.class_frequencies = {"car": 0.68, "pedestrian": 0.22, "cyclist": 0.10}
    return cfg


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A 60-image synthetic KITTI dataset, shared read-only by the tests of a session."""
    root = tmp_path_factory.mktemp("synth") / "ds"
    generate(small_synth_config(60), root, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """40 synthetic 128x64 images (32 train: 8 steps of 4 an epoch; 8 val) for short training runs; shared
    by the tests of a session, which only read it (training converts it once, on first use)."""
    root = tmp_path_factory.mktemp("tiny") / "ds"
    generate(small_synth_config(40, seed=3, image_width=128, image_height=64), root, progress=False)
    return root


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> CliResult:
    """Run ``transferdet ARGS`` in a subprocess, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    proc = subprocess.run(
        [sys.executable, "-m", "transferdet", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    return run_cli


def wandb_records(run_file: Path):
    """The protobuf records of an offline W&B run file (a LevelDB-style log of 32 KiB blocks)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + payload if kind == 4 else payload)
            yield record
            pending = b""
        elif kind in (2, 3):
            pending += payload
