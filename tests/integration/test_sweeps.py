"""Sweeps of ``train``: a Hydra multirun over learning rates, and an Optuna search (hparams_search=map)
whose trials return val/mAP to the sweeper and share one W&B group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import small_synth_config, wandb_records
from transferdet.data.synth import generate

TINY = [
    "model=resnet10",
    "training.num_workers=0",
    "training.num_epochs=1",
    "training.batch_size_per_gpu=8",
    "augmentation.preprocessing.output_image_width=128",
    "augmentation.preprocessing.output_image_height=64",
    "callbacks.progress_bar=null",
]
LR = "training.learning_rate.soft_start_annealing_schedule.max_learning_rate"
OFFLINE = {"WANDB_SILENT": "true", "WANDB_API_KEY": "", "WANDB_MODE": "offline"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep") / "ds"
    generate(small_synth_config(24, seed=5, image_width=128, image_height=64), root, progress=False)
    return root


def _run_groups(run_file: Path) -> set[str]:
    """The W&B group of an offline run, read from its run record."""
    return {r.run.run_group for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run"}


def test_multirun_over_learning_rates_trains_each(cli, root, tmp_path):
    r = cli("train", "-m", f"dataset.root={root}", *TINY, f"{LR}=1e-3,3e-3", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    lrs = [
        yaml.safe_load((tmp_path / str(i) / "config.yaml").read_text())["training"]["learning_rate"][
            "soft_start_annealing_schedule"
        ]["max_learning_rate"]
        for i in (0, 1)
    ]
    assert lrs == [1e-3, 3e-3]
    for i in (0, 1):
        assert json.loads((tmp_path / str(i) / "metrics.json").read_text())["train/steps"] == 3


def test_optuna_search_maximises_val_map_and_groups_trials_in_wandb(cli, root, tmp_path):
    r = cli(
        "train",
        "hparams_search=map",
        "hydra.sweeper.n_trials=2",
        f"dataset.root={root}",
        *TINY,
        "logger=wandb",
        "logger.wandb.offline=true",
        f"hydra.sweep.dir={tmp_path}",
        env=OFFLINE,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    trials = [yaml.safe_load((tmp_path / str(i) / "config.yaml").read_text()) for i in (0, 1)]
    values = [json.loads((tmp_path / str(i) / "metrics.json").read_text())["val/mAP"] for i in (0, 1)]
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert result["best_value"] == max(values)
    best = trials[values.index(max(values))]
    assert (
        result["best_params"][LR]
        == best["training"]["learning_rate"]["soft_start_annealing_schedule"]["max_learning_rate"]
    )
    # the sampler chose different learning rates for the two trials, inside the search space
    sampled = [t["training"]["learning_rate"]["soft_start_annealing_schedule"]["max_learning_rate"] for t in trials]
    assert sampled[0] != sampled[1] and all(5e-4 <= v <= 1e-2 for v in sampled)
    groups = [_run_groups(next((tmp_path / str(i)).glob("wandb/offline-run-*/run-*.wandb"))) for i in (0, 1)]
    assert groups[0] == groups[1] == {f"train-{tmp_path.name}"}


def test_optimized_metric_that_the_run_does_not_have_is_a_clear_error(cli, root, tmp_path):
    r = cli(
        "train",
        "hparams_search=map",
        "hydra.sweeper.n_trials=1",
        "optimized_metric=val/mAP_typo",
        f"dataset.root={root}",
        *TINY,
        f"hydra.sweep.dir={tmp_path}",
        timeout=600,
    )
    assert r.returncode == 2
    assert "config key 'optimized_metric' has value 'val/mAP_typo'" in r.stderr and "Traceback" not in r.stderr
