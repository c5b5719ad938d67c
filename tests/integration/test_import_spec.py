"""``transferdet import-spec``: a TLT spec in the tutorial's style (all eight blocks, per-class maps,
typographic quotes, comments, keys we do not have) becomes an experiment that trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli, small_synth_config
from transferdet.config.tlt_spec import parse
from transferdet.data.synth import generate

SPEC = Path(__file__).parent.parent / "data" / "tlt_tutorial_style_spec.txt"


@pytest.fixture
def spec(tmp_path) -> Path:
    root = tmp_path / "data"
    generate(small_synth_config(12, image_width=128, image_height=64), root, progress=False)
    path = tmp_path / "detectnet_v2_train_resnet10_kitti.txt"
    path.write_text(SPEC.read_text().replace("@DATASET_ROOT@", str(root)))
    return path


def test_imported_spec_maps_every_block_and_trains_one_step(spec, tmp_path):
    conf = tmp_path / "conf"
    r = run_cli("import-spec", str(spec), "--name", "tutorial", "--output-dir", str(conf))
    assert r.returncode == 0, r.stderr
    assert "model_config.all_projections (line 54)" in r.stdout and "training_config.visualizer (line 95)" in r.stdout
    assert "resnet18.hdf5 is a TLT/Keras model" in r.stdout
    text = (conf / "experiment" / "tutorial.yaml").read_text()
    assert text.startswith("# @package _global_") and "#   model_config.all_projections (line 54)" in text
    exp = yaml.safe_load(text)
    assert [next(iter(d)) for d in exp["defaults"]] == [
        f"override /{g}"
        for g in ("dataset", "augmentation", "model", "training", "evaluation", "rasterizer", "postprocessing", "cost")
    ]
    assert exp["dataset"]["target_class_mapping"] == {
        "car": "car",
        "pedestrian": "pedestrian",
        "cyclist": "cyclist",
        "van": "car",
    }
    assert exp["dataset"]["image_extension"] == ".png" and exp["dataset"]["root"] == str(tmp_path / "data")
    assert exp["model"]["num_layers"] == 10 and exp["model"]["freeze_blocks"] == [0]
    assert "pretrained_model_file" not in exp["model"]
    assert exp["training"]["random_seed"] == 42
    assert exp["training"]["training_precision"] == {"backend_floatx": "FLOAT32"}  # a model_config key in TLT
    assert exp["training"]["regularizer"] == {"type": "L1", "weight": 3e-09}
    assert exp["evaluation"]["minimum_detection_ground_truth_overlap"] == {
        "car": 0.7,
        "pedestrian": 0.5,
        "cyclist": 0.5,
    }
    assert exp["evaluation"]["evaluation_box_config"]["car"]["minimum_height"] == 4.0
    assert exp["rasterizer"]["target_class_config"]["car"]["cov_radius_x"] == 0.4
    assert exp["postprocessing"]["target_class_config"]["cyclist"]["clustering_config"]["dbscan_eps"] == 0.15
    cyclist = exp["cost"]["target_classes"]["cyclist"]
    assert cyclist["class_weight"] == 8.0 and cyclist["objectives"]["bbox"] == {
        "initial_weight": 10.0,
        "weight_target": 1.0,
    }

    run = tmp_path / "run"
    r = run_cli(
        "train",
        "experiment=tutorial",
        f"hydra.searchpath=[file://{conf}]",
        "training.num_workers=0",
        "callbacks.progress_bar=null",
        "+trainer.limit_train_batches=1",
        f"hydra.run.dir={run}",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train/steps"] == 1
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["cost"]["target_classes"]["cyclist"]["class_weight"] == 8.0
    assert resolved["augmentation"]["preprocessing"]["output_image_width"] == 128
    # the schema's defaults, not the quickstart's: the spec's blocks replace ours whole
    assert resolved["cost"]["enable_autoweighting"] is True


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.replace("deadzone_radius: 0.67\n}", "deadzone_radius: 0.67\n"),
            ":176: block 'bbox_rasterizer_config' opened at line 109 has no closing '}'",
        ),
        (lambda t: t.replace("num_epochs: 1", "num_epochs: {"), "block 'training_config' opened at line 67"),
        (
            lambda t: t.replace("average_precision_mode: INTEGRATE", "average_precision_mode: MEDIAN"),
            "evaluation_config.average_precision_mode' has value 'MEDIAN'; allowed: SAMPLE, INTEGRATE",
        ),
        (
            lambda t: t.replace("batch_size_per_gpu: 4", 'batch_size_per_gpu: "four"'),
            "training_config.batch_size_per_gpu' has value 'four'",
        ),
        (lambda t: t.replace("num_layers: 10", "num_layers: 11"), "model.num_layers"),
        (lambda t: t.replace("validation_fold: 0", "validation_fold: 0 $"), ":24: unexpected character '$'"),
    ],
)
def test_bad_spec_is_one_clear_error_and_writes_nothing(spec, tmp_path, edit, message):
    spec.write_text(edit(spec.read_text()))
    conf = tmp_path / "conf"
    r = run_cli("import-spec", str(spec), "--output-dir", str(conf))
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not list(conf.rglob("*.yaml")) and not list(conf.rglob("*.tmp"))


def test_existing_experiment_is_not_replaced_without_force(spec, tmp_path):
    conf = tmp_path / "conf"
    assert run_cli("import-spec", str(spec), "--output-dir", str(conf)).returncode == 0
    target = conf / "experiment" / f"{spec.stem}.yaml"
    target.write_text("# mine\n")
    r = run_cli("import-spec", str(spec), "--output-dir", str(conf))
    assert r.returncode == 2 and "--force replaces it" in r.stderr and target.read_text() == "# mine\n"
    assert run_cli("import-spec", str(spec), "--output-dir", str(conf), "--force").returncode == 0
    assert target.read_text().startswith("# @package _global_")


def test_parser_reads_lists_comments_and_angle_brackets(tmp_path):
    fields = parse('a: [1, 2.5, "x"]  # comment\nb < c: true > // more\nd { }', tmp_path / "s.txt")
    assert [(f.name, f.value) for f in fields[:3]] == [("a", 1), ("a", 2.5), ("a", "x")]
    assert fields[3].name == "b" and fields[3].value[0].value is True and fields[4].value == []


CONVERT_SPEC = """kitti_config {
  root_directory_path: "@ROOT@"
  image_dir_name: "image_2"
  label_dir_name: "label_2"
  image_extension: ".png"
  partition_mode: "random"
  num_partitions: 2
  val_split: 25
  num_shards: 3
  point_clouds_dir: "velodyne"
}
image_directory_path: "@ROOT@"
target_class_mapping {
  key: "car"
  value: "car"
}
target_class_mapping {
  key: "pedestrian"
  value: "pedestrian"
}
"""


def test_dataset_convert_spec_becomes_a_dataset_config_that_converts(tmp_path):
    root = tmp_path / "data"
    generate(small_synth_config(12, image_width=128, image_height=64), root, progress=False)
    spec = tmp_path / "convert_spec.txt"
    spec.write_text(CONVERT_SPEC.replace("@ROOT@", str(root)))
    conf = tmp_path / "conf"
    r = run_cli("import-spec", str(spec), "--name", "kitti_data", "--output-dir", str(conf))
    assert r.returncode == 0, r.stderr
    assert "kitti_config.point_clouds_dir (line 10)" in r.stdout  # said, not silently dropped
    exp = yaml.safe_load((conf / "experiment" / "kitti_data.yaml").read_text())
    assert exp["dataset"] == {
        "root": str(root),
        "image_dir_name": "image_2",
        "label_dir_name": "label_2",
        "image_extension": ".png",
        "partition_mode": "random",
        "num_partitions": 2,
        "val_split": 25.0,
        "num_shards": 3,
        "target_class_mapping": {"car": "car", "pedestrian": "pedestrian"},
    }
    r = run_cli(
        "convert", "experiment=kitti_data", f"hydra.searchpath=[file://{conf}]", f"hydra.run.dir={tmp_path / 'c'}"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((root / "converted" / "manifest.json").read_text())
    assert manifest["classes"] == ["car", "pedestrian"] and len(manifest["splits"]["train"]["shards"]) == 3


def test_two_data_sources_are_one_clear_error(spec, tmp_path):
    text = spec.read_text()
    start = text.index("  data_sources: {")
    block = text[start : text.index("}", start) + 2]
    spec.write_text(text.replace(block, block + block))
    conf = tmp_path / "conf"
    r = run_cli("import-spec", str(spec), "--output-dir", str(conf))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "dataset_config.data_sources' has value '2 sources (lines" in r.stderr and "one KITTI folder" in r.stderr
    assert not list(conf.rglob("*.yaml"))


@pytest.mark.parametrize("mode", [None, "MULTISOURCE"])
def test_zoom_and_rotation_follow_the_loader_the_spec_names(spec, tmp_path, mode):
    text = spec.read_text()
    assert "zoom_min: 1.0" in text and "zoom_max: 1.0" in text
    text = text.replace("zoom_min: 1.0", "zoom_min: 0.5")
    text = text.replace("zoom_max: 1.0", "zoom_max: 1.6\n    rotate_rad_max: 10.0\n    rotate_probability: 0.5")
    if mode:
        text = text.replace("dataset_config {", f"dataset_config {{\n  dataloader_mode: {mode}", 1)
    spec.write_text(text)
    conf = tmp_path / "conf"
    r = run_cli("import-spec", str(spec), "--name", "aug", "--output-dir", str(conf))
    assert r.returncode == 0, r.stderr
    aug = yaml.safe_load((conf / "experiment" / "aug.yaml").read_text())["augmentation"]["spatial_augmentation"]
    if mode:  # TAO's multisource loader: r > 1 zooms out, degrees
        assert (aug["zoom_min"], aug["zoom_max"]) == pytest.approx((0.625, 2.0))  # 1/1.6, 1/0.5
        assert "converted to zoom_min=0.625, zoom_max=2" in r.stdout
        assert aug["rotate_rad_max"] == pytest.approx(math.radians(10)) and "0.174533 radians" in r.stdout
    else:
        assert (aug["zoom_min"], aug["zoom_max"], aug["rotate_rad_max"]) == (0.5, 1.6, 10.0)
        assert "taken with TLT v1/2's meaning" in r.stdout and "dataloader_mode: MULTISOURCE" in r.stdout
