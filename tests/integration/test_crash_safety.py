"""Crash safety and trust: training killed (SIGKILL) at five different points resumes from the last
complete checkpoint and never loads a damaged file; the same seed gives the same results; checkpoints
from strangers cannot run code; secrets stay out of what a run writes."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import compose_task, run_cli, start_cli
from transferdet.detector.checkpoint import read as load_tensor_file
from transferdet.detector.checkpoint import weights_checksum
from transferdet.errors import DataError
from transferdet.tasks import run_task

TINY = [
    "model=resnet10",
    "training.num_workers=0",
    "training.batch_size_per_gpu=4",
    "callbacks.progress_bar=null",
    "augmentation.preprocessing.output_image_width=128",
    "augmentation.preprocessing.output_image_height=64",
]


def _complete(ckpts: Path) -> list[Path]:
    return sorted(ckpts.glob("*.ckpt")) if ckpts.is_dir() else []


def _writing(ckpts: Path, since: float) -> bool:
    """A checkpoint write begun after ``since`` (wall clock) is in progress: its temporary file has bytes."""
    try:
        return any(
            p.name.endswith(".tmp") and p.stat().st_size > 0 and p.stat().st_mtime >= since for p in ckpts.iterdir()
        )
    except OSError:  # no folder yet, or the file was renamed while we looked
        return False


def _seen_for(state: dict, text: str, seconds: float) -> bool:
    """True once ``text`` has been in the current run's log for ``seconds``."""
    if "seen" not in state:
        if text not in state["log"].read_text():
            return False
        state["seen"] = time.monotonic()
    return time.monotonic() - state["seen"] >= seconds


def test_sigkill_at_five_points_resumes_from_the_last_complete_checkpoint(tiny_root, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    args = [
        "train",
        f"dataset.root={tiny_root}",
        *TINY,
        "training.num_epochs=5",
        "training.checkpoint_interval=1",
        "training.resume=auto",
        f"hydra.run.dir={run}",
    ]
    state: dict = {}
    kill_points = {
        # the task has started, no checkpoint exists yet
        "before-any-checkpoint": lambda: (run / "config.yaml").exists(),
        # a checkpoint is being written (its temporary file has bytes)
        "while-writing-a-checkpoint": lambda: _writing(ckpts, state["wall"]),
        # a checkpoint has just been completed
        "right-after-a-checkpoint": lambda: len(_complete(ckpts)) > state["count"],
        # in the middle of an epoch: 0.7 s after the resumed run said it restarted from a checkpoint
        "mid-epoch": lambda: _seen_for(state, "resuming from", 0.7),
        # while the next checkpoint is written again
        "while-writing-again": lambda: _writing(ckpts, state["wall"]),
    }
    logs = []
    for name, reached in kill_points.items():
        log = tmp_path / f"{name}.log"
        state.pop("seen", None)
        state.update(count=len(_complete(ckpts)), wall=time.time(), log=log)
        before = {p.name: p.stat().st_mtime_ns for p in _complete(ckpts)}
        proc = start_cli(*args, log=log)  # SIGKILL: how the process started does not matter
        deadline = time.monotonic() + 300
        while not reached() and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.is_alive(), f"{name}: training ended before the kill point was reached"
        proc.kill()
        proc.join()
        logs.append(log.read_text())
        assert not (run / "metrics.json").exists(), name
        # every file under a checkpoint's name is complete and intact (checksum verified), whatever the kill hit
        for ckpt in _complete(ckpts):
            obj = load_tensor_file(ckpt, "checkpoint")
            assert obj["state_dict"], ckpt
        if before:  # a resumed run said so and started from the newest complete checkpoint
            newest = max(before, key=lambda n: (before[n], n == "last.ckpt"))
            assert f"resuming from {ckpts / newest}" in logs[-1], name
    done = run_cli(*args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train/epochs"] == 5 and metrics["train/steps"] == 40
    assert not list(ckpts.glob(".*.tmp"))  # interrupted writes were cleaned up, never loaded
    final = load_tensor_file(ckpts / "last.ckpt", "checkpoint")
    assert final["global_step"] == 40
    assert sum("resuming from" in text for text in logs) >= 2 and "resuming from" in done.stdout + done.stderr


def _tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(s in p.name for s in skip)
    }


def test_same_seed_same_results_for_synth_convert_and_train(tmp_path):
    # new interpreters: forks of one warm process would share whatever state the imports left behind
    cli = functools.partial(run_cli, fresh=True)
    runs = []
    for k in (1, 2):
        ds = tmp_path / f"ds{k}"
        r = cli(
            "synth",
            f"dataset.root={ds}",
            "synth.num_images=24",
            "synth.image_width=128",
            "synth.image_height=64",
            "synth.seed=9",
            f"hydra.run.dir={tmp_path / f'synth{k}'}",
        )
        assert r.returncode == 0, r.stderr[-2000:]
        r = cli("convert", f"dataset.root={ds}", f"hydra.run.dir={tmp_path / f'convert{k}'}")
        assert r.returncode == 0, r.stderr[-2000:]
        r = cli(
            "train", f"dataset.root={ds}", *TINY, "training.num_epochs=2", f"hydra.run.dir={tmp_path / f'train{k}'}"
        )
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(ds)
    # the datasets are identical file by file (the converted form records its own root, so compare the rest)
    assert _tree_digest(runs[0], skip=("manifest.json", "report")) == _tree_digest(
        runs[1], skip=("manifest.json", "report")
    )
    manifests = [json.loads((d / "converted" / "manifest.json").read_text()) for d in runs]
    assert manifests[0]["partition"] == manifests[1]["partition"]
    for task in ("synth", "convert", "train"):
        a, b = (json.loads((tmp_path / f"{task}{k}" / "metrics.json").read_text()) for k in (1, 2))
        assert a == b, task
    # bit-identical weights after two epochs on this machine (the checkpoints' own checksums differ: each
    # records the dataset root it was trained on)
    weights = [
        weights_checksum(load_tensor_file(tmp_path / f"train{k}" / "checkpoints" / "last.ckpt", "c")["state_dict"])
        for k in (1, 2)
    ]
    assert weights[0] == weights[1]


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "task,key",
    [
        ("evaluate", "checkpoint"),
        ("infer", "checkpoint"),
        ("prune", "checkpoint"),
        ("export", "checkpoint"),
        ("calibrate", "checkpoint"),
        ("benchmark", "benchmark.models"),
        ("train", "model.pretrained_model_file"),
        ("train", "model.pruned_checkpoint"),
        ("train", "training.resume"),
    ],
)
def test_a_checkpoint_whose_pickle_runs_code_is_refused_by_every_loading_task(tiny_root, tmp_path, task, key):
    import torch

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "hyper_parameters": {"config": _RunsCode(marker)}}, evil)
    value = f"{{m: {evil}}}" if key == "benchmark.models" else str(evil)
    overrides = [f"{key}={value}", f"dataset.root={tiny_root}", *TINY]
    if task == "infer":
        overrides.append(f"input={tiny_root / 'image_2'}")
    keys = set(compose_task(task))  # the task's own groups and keys: drop the overrides of others
    cfg = compose_task(task, [o for o in overrides if o.split("=")[0].split(".")[0] in keys])
    with pytest.raises(DataError, match="refused: the file needs arbitrary code to load"):
        run_task(task, cfg, tmp_path / "run")
    assert not marker.exists()


def test_wandb_api_key_never_lands_in_what_a_run_writes(cli, tiny_root, tmp_path):
    secret = "a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0"  # the shape of a W&B API key
    run = tmp_path / "run"
    r = cli(
        "train",
        f"dataset.root={tiny_root}",
        *TINY,
        "training.num_epochs=1",
        "logger=wandb",
        "logger.wandb.offline=true",
        f"hydra.run.dir={run}",
        env={"WANDB_API_KEY": secret, "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    written = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written) and (run / "config.yaml").exists()
    for p in written:
        assert secret.encode() not in p.read_bytes(), p
    assert secret not in r.stdout + r.stderr
