"""Every primary config, every experiment and every group option composes and validates."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import compose_task
from transferdet.cli import TASKS
from transferdet.config import schema as S
from transferdet.config import target_classes, typed, validate
from transferdet.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# settings an experiment cannot know: where the user's data is
EXPERIMENT_NEEDS = {
    "kitti_resnet18": ["dataset.root=/data/kitti/training"],
    "kitti_finetune": ["dataset.root=/data/kitti/training"],
}


def test_one_primary_config_per_task():
    assert set(PRIMARY) == set(TASKS)


@pytest.mark.parametrize("task", PRIMARY)
def test_primary_config_composes_and_validates(task):
    cfg = compose_task(task)
    assert cfg.task_name == task
    validate(cfg)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name):
    cfg = compose_task("train", [f"experiment={name}", *EXPERIMENT_NEEDS.get(name, [])])
    validate(cfg)


def test_int8_weight_bits_are_7_or_8():
    validate(compose_task("export", ["export.int8_weight_bits=8"]))
    with pytest.raises(ConfigError, match=r"export.int8_weight_bits' has value 6; allowed: 7 or 8"):
        validate(compose_task("export", ["export.int8_weight_bits=6"]))


def test_experiments_exist():
    assert "quickstart" in EXPERIMENTS and "kitti_resnet18" in EXPERIMENTS


def test_kitti_experiment_is_the_tlt_tutorial():
    cfg = compose_task("train", ["experiment=kitti_resnet18", "dataset.root=/x"])
    assert (cfg.augmentation.preprocessing.output_image_width, cfg.augmentation.preprocessing.output_image_height) == (
        1248,
        384,
    )
    assert cfg.training.batch_size_per_gpu == 24 and cfg.training.num_epochs == 120
    assert cfg.evaluation.minimum_detection_ground_truth_overlap.car == 0.7
    assert cfg.rasterizer.target_class_config.car.cov_radius_x == 0.4
    assert cfg.cost.target_classes.car.coverage_foreground_weight == 0.05
    assert cfg.postprocessing.target_class_config.car.clustering_config.dbscan_eps == 0.13


GROUP_OPTIONS = [
    (group, p.stem)
    for group in (
        "dataset",
        "augmentation",
        "model",
        "training",
        "evaluation",
        "rasterizer",
        "postprocessing",
        "cost",
        "trainer",
        "logger",
        "callbacks",
        "debug",
    )
    for p in sorted((CONF / group).glob("*.yaml"))
]


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_every_group_option_composes(group, option):
    overrides = [f"{group}={option}"] + (
        ["dataset.root=/data/kitti"] if (group, option) == ("dataset", "kitti") else []
    )
    cfg = compose_task("train", overrides)
    validate(cfg)


@pytest.mark.parametrize("option", ["default", "cpu"])
def test_trainer_configs_build_a_real_trainer(option, tmp_path):
    cfg = compose_task("train", [f"trainer={option}", "training.num_epochs=3"])
    trainer = instantiate(
        cfg.trainer, default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    assert trainer.max_epochs == 3


def test_callbacks_and_loggers_instantiate(tmp_path):
    cfg = compose_task("train", ["logger=many"])
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    names = {type(c).__name__ for c in callbacks}
    assert names == {"ModelCheckpoint", "LearningRateMonitor", "RichProgressBar", "EpochLog"}
    loggers = [instantiate(c, save_dir=str(tmp_path)) for c in cfg.logger.values()]
    assert {type(lg).__name__ for lg in loggers} == {"CSVLogger", "TensorBoardLogger"}


def test_typed_groups_are_dataclasses():
    cfg = compose_task("train")
    for group, schema in S.GROUP_SCHEMAS.items():
        if group in cfg:
            assert isinstance(typed(cfg, group), schema)
    assert target_classes(typed(cfg, "dataset")) == ["car", "pedestrian", "cyclist"]


def test_schema_defaults_hold_no_classes():
    """A YAML option that lists other classes must not inherit car/pedestrian/cyclist from the schema."""
    cfg = OmegaConf.structured(S.DatasetConfig)
    assert len(cfg.target_class_mapping) == 0
    assert len(OmegaConf.structured(S.CostConfig).target_classes) == 0


def test_config_tree_ships_in_the_wheel(tmp_path):
    """The config tree must be found when installed from a wheel, not only in an editable install."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("transferdet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"transferdet/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}
    assert expected and expected <= names
    assert "transferdet/cli.py" in names
