"""Shared fixtures: composed configs, synthetic datasets, and running the CLI as a user would."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from tests.warm_cli import run_warm, start_warm
from transferdet.config import register_configs
from transferdet.config.overrides import checkpoint_override_args
from transferdet.config.schema import SynthConfig
from transferdet.config.tasks import runs_trained_models
from transferdet.data.synth import generate

register_configs()
# tests download nothing: ImageNet weights come from a cache a test fills (the CLI runs inherit this)
os.environ["TRANSFERDET_OFFLINE"] = "1"


def compose_task(task: str, overrides: list[str] | None = None) -> DictConfig:
    """The config ``transferdet <task> <overrides>`` would run with (without Hydra's own node)."""
    overrides = list(overrides or [])
    if runs_trained_models(task):  # the model settings' overrides, spelt as on the command line
        overrides = checkpoint_override_args(overrides)
    with initialize_config_module("transferdet.conf", version_base="1.3"):
        return compose(task, overrides=overrides)


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


# a briefly trained model is unsure of itself: keep its weak detections so there is something to score
LOW_CONFIDENCE = [
    f"postprocessing.target_class_config.{c}.clustering_config.dbscan_confidence_threshold=0.001"
    for c in ("car", "pedestrian", "cyclist")
]
SMALL = ["augmentation.preprocessing.output_image_width=128", "augmentation.preprocessing.output_image_height=64"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """The one trained checkpoint of the suite: a ResNet-10 trained 3 epochs on 48 synthetic 128x64 images (on
    the GPU where there is one), with its dataset and a copy of its validation images and labels."""
    import json
    import shutil

    base = tmp_path_factory.mktemp("trained")
    root = base / "ds"
    generate(small_synth_config(48, seed=7, image_width=128, image_height=64), root, progress=False)
    r = run_cli(
        "train",
        f"dataset.root={root}",
        "model=resnet10",
        "training.num_workers=0",
        "training.num_epochs=3",
        "training.batch_size_per_gpu=8",
        "callbacks.progress_bar=null",
        "training.learning_rate.soft_start_annealing_schedule.max_learning_rate=2e-3",
        *SMALL,
        *LOW_CONFIDENCE,
        f"hydra.run.dir={base / 'train'}",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    val_ids = json.loads((root / "converted" / "manifest.json").read_text())["partition"]["folds"]["0"]
    images, labels = base / "val_images", base / "val_labels"
    images.mkdir()
    labels.mkdir()
    for i in val_ids:
        shutil.copy(root / "image_2" / f"{i}.png", images)
        shutil.copy(root / "label_2" / f"{i}.txt", labels)
    return {
        "root": root,
        "ckpt": base / "train" / "checkpoints" / "last.ckpt",
        "images": images,
        "labels": labels,
        "val_ids": val_ids,
        "log": r.stdout + r.stderr,
    }


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG of ``pixels`` (``[h, w]`` grey or ``[h, w, 3]`` RGB, uint16) written by hand: PIL writes
    only 8-bit RGB."""
    h, w = pixels.shape[:2]
    rgb = pixels.ndim == 3
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if rgb else 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


_CLI_CWD: list[Path] = []  # the session's working directory for CLI runs (the fixture below)


@pytest.fixture(scope="session", autouse=True)
def _cli_runs_outside_the_checkout(tmp_path_factory):
    """A CLI run that names no run directory writes ``outputs/`` under a temporary folder, not the checkout's."""
    _CLI_CWD.append(tmp_path_factory.mktemp("cwd"))


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300, fresh: bool = False
) -> CliResult:
    """Run ``transferdet ARGS`` in a process of its own, as a user would (in ``cwd``, else the session's own
    folder): a fork of a process that has imported everything already (``tests/warm_cli.py``), or with
    ``fresh`` a new interpreter, for what depends on how the process starts (signals, DDP, imports)."""
    full_env = _cli_env(env)
    if not fresh:
        return CliResult(*run_warm(list(args), cwd or _CLI_CWD[0], full_env, timeout))
    proc = subprocess.run(
        [sys.executable, "-m", "transferdet", *args],
        cwd=cwd or (_CLI_CWD[0] if _CLI_CWD else None),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def start_cli(*args: str, log: Path, env: dict | None = None):
    """Start ``transferdet ARGS`` as :func:`run_cli` does (warm), stdout and stderr to ``log``; the process, to kill
    or ``join``: for the tests that kill a run (SIGKILL: nothing of how the process started matters)."""
    return start_warm(list(args), _CLI_CWD[0], _cli_env(env), log)


def _cli_env(env: dict | None) -> dict:
    """This process's environment for a CLI run: Hydra's traceback switch off (as a user has it), unbuffered."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return full_env


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
