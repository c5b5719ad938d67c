"""Bad input gets one clear error naming the file:line or config key, with no traceback and nothing
half-written left behind. Each case drives the CLI in a subprocess, as a user would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

GOOD = "car 0.00 0 0.00 10.00 5.00 30.00 20.00 1.5 1.6 4.0 1.0 1.65 20.0 0.00"


def make_dataset(root: Path, labels: dict[str, str], images: list[str] | None = None) -> Path:
    """A tiny KITTI folder: 64x32 PNGs for ``images`` (default: every label id) and the given label texts."""
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    for id_ in labels if images is None else images:
        Image.fromarray(np.full((32, 64, 3), 90, np.uint8)).save(root / "image_2" / f"{id_}.png")
    for id_, text in labels.items():
        (root / "label_2" / f"{id_}.txt").write_text(text)
    return root


def assert_clean_failure(result, *fragments: str) -> None:
    assert result.returncode != 0, "expected a failure"
    assert "Traceback" not in result.stderr, result.stderr
    for f in fragments:
        assert f in result.stderr, f"{f!r} not in stderr:\n{result.stderr}"


def convert(cli, tmp_path: Path, root: Path, *overrides: str):
    return cli("convert", f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'run'}", *overrides)


# ---------------------------------------------------------------- label and image files (file:line errors)
@pytest.mark.parametrize("line,fragment", [
    (GOOD.rsplit(" ", 1)[0], "14 fields, expected 15"),
    (GOOD.replace("10.00", "ten"), "field 5 (x1) is 'ten', expected a number"),
    (GOOD + " 0.95", "16 fields: a 16th field (confidence score) marks a prediction file"),
    (GOOD.replace("20.0 0.00", "inf 0.00"), "field 14 (z) is 'inf', expected a finite number"),
], ids=["14-fields", "non-numeric", "16-fields-in-training-label", "non-finite"])
def test_malformed_label_line(cli, tmp_path, line, fragment):
    root = make_dataset(tmp_path / "ds", {"000000": GOOD + "\n", "000001": GOOD + "\n" + line + "\n"})
    r = convert(cli, tmp_path, root)
    assert_clean_failure(r, f"{root / 'label_2' / '000001.txt'}:2: {fragment}")
    assert not (root / "converted").exists()


def test_label_without_image(cli, tmp_path):
    root = make_dataset(tmp_path / "ds", {"000000": GOOD, "000001": GOOD}, images=["000000"])
    r = convert(cli, tmp_path, root)
    assert_clean_failure(r, f"{root / 'label_2' / '000001.txt'}: label file has no image")
    assert not (root / "converted").exists()


def test_corrupt_png(cli, tmp_path):
    root = make_dataset(tmp_path / "ds", {"000000": GOOD, "000001": GOOD})
    png = root / "image_2" / "000001.png"
    png.write_bytes(png.read_bytes()[:40])
    r = convert(cli, tmp_path, root)
    assert_clean_failure(r, f"{png}: cannot decode image")
    assert not (root / "converted").exists()


def test_not_an_image_at_all(cli, tmp_path):
    root = make_dataset(tmp_path / "ds", {"000000": GOOD})
    (root / "image_2" / "000001.png").write_text("this is not a png")
    r = convert(cli, tmp_path, root)
    assert_clean_failure(r, f"{root / 'image_2' / '000001.png'}: cannot decode image")


def test_duplicate_id(cli, tmp_path):
    root = make_dataset(tmp_path / "ds", {"a": GOOD})
    (root / "image_2" / "A.PNG").write_bytes((root / "image_2" / "a.png").read_bytes())
    r = convert(cli, tmp_path, root)
    assert_clean_failure(r, "duplicate id", "(ids compare case-insensitively)")


def test_empty_dataset(cli, tmp_path):
    root = make_dataset(tmp_path / "ds", {})
    r = convert(cli, tmp_path, root)
    assert_clean_failure(r, f"{root / 'image_2'}: empty dataset: no '*.png' images", "dataset.image_extension")


def test_missing_dataset_root(cli, tmp_path):
    r = convert(cli, tmp_path, tmp_path / "nowhere")
    assert_clean_failure(r, f"{tmp_path / 'nowhere'}: dataset root does not exist (config key dataset.root)")


def test_label_file_that_is_not_text(cli, tmp_path):
    root = make_dataset(tmp_path / "ds", {"000000": GOOD})
    (root / "label_2" / "000000.txt").write_bytes(b"\xff\xfe\x00binary")
    r = convert(cli, tmp_path, root)
    assert_clean_failure(r, f"{root / 'label_2' / '000000.txt'}: not a text file")


@pytest.mark.parametrize("line,kind", [
    ("car 0 0 0 30 5 10 20 0 0 0 0 0 0 0", "empty box"),
    ("car 0 0 0 100 5 120 20 0 0 0 0 0 0 0", "lies outside the 64x32 image; object dropped"),
], ids=["x2<x1", "outside-image"])
def test_bad_box_is_a_warning_and_dropped(cli, tmp_path, line, kind):
    root = make_dataset(tmp_path / "ds", {"000000": GOOD + "\n" + line + "\n"})
    r = convert(cli, tmp_path, root, "dataset.val_split=0")
    assert r.returncode == 0, r.stderr
    warnings = (root / "converted" / "warnings.txt").read_text()
    assert f"{root / 'label_2' / '000000.txt'}:2: car: " in warnings and kind in warnings
    assert '"dataset/train/num_objects/car": 1' in (tmp_path / "run" / "metrics.json").read_text()


def test_bad_sequence_map_names_file_and_line(cli, tmp_path):
    root = make_dataset(tmp_path / "ds", {"000000": GOOD, "000001": GOOD})
    seq = tmp_path / "seq.json"
    seq.write_text('{"s1": ["000000",\n "000001",]}')
    r = convert(cli, tmp_path, root, "dataset.partition_mode=sequence", f"dataset.kitti_sequence_to_frames_file={seq}")
    assert_clean_failure(r, f"{seq}:2: not valid JSON")
    assert not (root / "converted").exists()


# ---------------------------------------------------------------- config values (key errors)
@pytest.mark.parametrize("task,overrides,fragments", [
    ("convert", ["dataset.val_split=120"], ["dataset.val_split", "120", "[0, 100)"]),
    ("convert", ["dataset.partition_mode=alphabetical"], ["dataset.partition_mode", "alphabetical",
                                                          "expected one of [random, sequence]"]),
    ("convert", ["dataset.val_splt=20"], ["dataset.val_splt", "not in 'DatasetConfig'"]),
    ("convert", ["dataset.num_shards=many"], ["dataset.num_shards", "'many'", "Integer"]),
    ("convert", ["dataset.image_extension=png"], ["dataset.image_extension", "starting with '.'"]),
    ("convert", ["dataset.partition_mode=sequence", "dataset.num_partitions=3"],
     ["dataset.kitti_sequence_to_frames_file", "a JSON file mapping sequence -> frame ids"]),
    ("convert", ["dataset.num_partitions=3"], ["dataset.num_partitions", "2 with partition_mode=random"]),
    ("train", ["~evaluation.minimum_detection_ground_truth_overlap.cyclist"],
     ["evaluation.minimum_detection_ground_truth_overlap", "missing: cyclist"]),
    ("train", ["~cost.target_classes.cyclist"], ["cost.target_classes", "missing: cyclist"]),
    ("train", ["+evaluation.minimum_detection_ground_truth_overlap.truck=0.5"],
     ["evaluation.minimum_detection_ground_truth_overlap", "unknown: truck"]),
    ("train", ["augmentation.preprocessing.output_image_width=1250"],
     ["augmentation.preprocessing.output_image_width", "1250", "a positive multiple of 16"]),
    ("train", ["model.num_layers=19"], ["model.num_layers", "19", "10, 18, 34, 50, 101"]),
    ("train", ["training.learning_rate.soft_start_annealing_schedule.soft_start=0.9"],
     ["training.learning_rate.soft_start_annealing_schedule.soft_start", "<= annealing (0.7)"]),
    ("train", ["postprocessing.target_class_config.car.clustering_config.clustering_algorithm=kmeans"],
     ["clustering_algorithm", "kmeans", "dbscan, nms, hybrid"]),
    ("train", ["dataset=kitti"], ["dataset.root", "no default"]),
    ("train", ["dataset.target_class_mapping.car=dontcare", "dataset.target_class_mapping.pedestrian=dontcare",
               "dataset.target_class_mapping.cyclist=dontcare"],
     ["dataset.target_class_mapping", "at least one target class other than 'dontcare'"]),
    ("synth", ["synth.max_objects=-1"], ["synth.max_objects", "min_objects"]),
    ("train", ["model=resnet99"], ["model", "resnet99", "resnet18"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_config_values_name_the_key(cli, tmp_path, task, overrides, fragments):
    root = [] if "dataset=kitti" in overrides else [f"dataset.root={tmp_path / 'ds'}"]
    r = cli(task, *overrides, *root, f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_failure(r, *fragments)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_synth_refuses_to_overwrite_a_dataset(cli, tmp_path):
    root = make_dataset(tmp_path / "ds", {"000000": GOOD})
    r = cli("synth", f"dataset.root={root}", "synth.num_images=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_failure(r, "dataset.root", "synth.overwrite=true")
    assert (root / "label_2" / "000000.txt").read_text() == GOOD  # nothing lost


def test_synth_rerun_with_same_settings_is_a_no_op(cli, tmp_path):
    args = [f"dataset.root={tmp_path / 'ds'}", "synth.num_images=3"]
    assert cli("synth", *args, f"hydra.run.dir={tmp_path / 'r1'}").returncode == 0
    first = (tmp_path / "ds" / "image_2" / "000000.png").stat().st_mtime_ns
    r = cli("synth", *args, f"hydra.run.dir={tmp_path / 'r2'}")
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert (tmp_path / "ds" / "image_2" / "000000.png").stat().st_mtime_ns == first
    assert (tmp_path / "r1" / "metrics.json").read_text() == (tmp_path / "r2" / "metrics.json").read_text()
    r = cli("synth", f"dataset.root={tmp_path / 'ds'}", "synth.num_images=4", f"hydra.run.dir={tmp_path / 'r3'}")
    assert_clean_failure(r, "dataset.root", "synth.overwrite=true")
