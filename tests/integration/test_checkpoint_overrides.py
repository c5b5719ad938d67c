"""The six tasks that run a trained model take the same overrides of its settings the same way: each applies
them, and each run directory's config.yaml records the settings that applied (the checkpoint's, overridden)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import yaml

from tests.conftest import LOW_CONFIDENCE
from transferdet.data.kitti import read_label_file
from transferdet.detector import checkpoint
from transferdet.pruning.pruner import count

WIDTH = 96  # the checkpoint's canvas is 128 wide: the network is fully convolutional, any multiple of 16 runs
OVERRIDES = [f"augmentation.preprocessing.output_image_width={WIDTH}", *LOW_CONFIDENCE]


def test_six_tasks_apply_and_record_the_same_override(trained, tmp_path, cli):
    root, ckpt = trained["root"], trained["ckpt"]
    runs = {
        "evaluate": [f"checkpoint={ckpt}", f"dataset.root={root}"],
        "infer": [f"checkpoint={ckpt}", f"input={trained['images']}"],
        "prune": [f"checkpoint={ckpt}", "pruning.target_ratio=0.5"],
        "calibrate": [
            f"checkpoint={ckpt}",
            f"dataset.root={root}",
            "calibration.batches=1",
            "calibration.batch_size=2",
        ],
        "export": [f"checkpoint={ckpt}", f"dataset.root={root}", "export.max_map_drop=100", "export.parity_images=2"],
        "benchmark": [
            f"benchmark.models={{m: {ckpt}}}",
            f"dataset.root={root}",
            "benchmark.batch_sizes=[1]",
            "benchmark.repeats=1",
            "benchmark.precisions=[fp32]",
        ],
    }
    for task, args in runs.items():
        r = cli(task, *args, *OVERRIDES, f"hydra.run.dir={tmp_path / task}")
        assert r.returncode == 0, (task, r.stderr[-3000:])
        recorded = yaml.safe_load((tmp_path / task / "config.yaml").read_text())
        if task == "benchmark":  # the settings of each benchmarked model
            recorded = {**recorded["models_settings"]["m"], "overrides_asked": recorded["overrides_asked"]}
        # the effective settings: the checkpoint's architecture (ResNet-10, as trained) with the override on top
        assert recorded["model"]["num_layers"] == 10, task
        assert recorded["augmentation"]["preprocessing"]["output_image_width"] == WIDTH, task
        assert recorded["augmentation"]["preprocessing"]["output_image_height"] == 64, task
        clustering = recorded["postprocessing"]["target_class_config"]["car"]["clustering_config"]
        assert clustering["dbscan_confidence_threshold"] == 0.001 and clustering["dbscan_eps"] == 0.2, task
        assert recorded["overrides_asked"]["augmentation"]["preprocessing"] == {"output_image_width": WIDTH}, task

    # ... and each applied it
    ev = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    canvas = {
        c: sum(1 for p in trained["labels"].glob("*.txt") for o in read_label_file(p) if o.cls == c)
        for c in ("car", "pedestrian", "cyclist")
    }
    assert sum(ev[f"num_gt/{c}"] for c in canvas) < sum(canvas.values())  # objects right of x=96 are cut off
    boxes = [o for p in (tmp_path / "infer" / "labels").glob("*.txt") for o in read_label_file(p, allow_score=True)]
    assert boxes and max(o.x2 for o in boxes) <= WIDTH
    pruned = json.loads((tmp_path / "prune" / "metrics.json").read_text())
    assert pruned["prune/flops_before"] == count(checkpoint.load(ckpt).network, 64, WIDTH)[0]
    assert checkpoint.read_spec(tmp_path / "prune" / "pruned.ckpt").width == WIDTH
    assert np.load(tmp_path / "calibrate" / "calibration.npy").shape == (2, 3, 64, WIDTH)
    dims = onnx.load(str(tmp_path / "export" / "model_fp32.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 64, WIDTH]
    assert checkpoint.read_onnx_spec(tmp_path / "export" / "model_fp32.onnx").width == WIDTH
    dims = onnx.load(str(tmp_path / "benchmark" / "m_model_fp32.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 64, WIDTH]


def test_an_override_the_model_cannot_take_is_one_clear_error(trained, tmp_path, cli):
    key = "postprocessing.target_class_config"
    cases = {  # override -> (the key the error names, what it says is allowed)
        "augmentation.spatial_augmentation.zoom_max=2": ("augmentation.spatial_augmentation", "only augmentation."),
        f"{key}.truck.clustering_config.dbscan_eps=0.3": (f"{key}.truck", "a class of the model"),
        f"{key}.car.clustering_config.dbscan_eps=wide": (f"{key}.car.clustering_config.dbscan_eps", "a number"),
        "augmentation.preprocessing.output_image_width=100": (
            "augmentation.preprocessing.output_image_width",
            "a positive multiple of 16",
        ),
        "evaluation.average_precision_mode=TRAPEZOID": ("evaluation.average_precision_mode", "SAMPLE, INTEGRATE"),
    }
    for override, (named, allowed) in cases.items():
        r = cli(
            "evaluate",
            f"checkpoint={trained['ckpt']}",
            f"dataset.root={trained['root']}",
            override,
            f"hydra.run.dir={tmp_path / 'run'}",
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr, (override, r.stderr[-800:])
        assert f"config key '{named}'" in r.stderr and allowed in r.stderr, (override, r.stderr[-800:])
        assert not (tmp_path / "run" / "metrics.json").exists()


def test_tasks_run_a_model_on_the_dataset_it_was_trained_on_unless_told_otherwise(trained, tmp_path, cli):
    """The checkpoint records its dataset; export records it in the ONNX models; dataset.root names another."""
    r = cli(
        "export",
        f"checkpoint={trained['ckpt']}",
        "export.max_map_drop=100",
        "export.parity_images=2",
        f"hydra.run.dir={tmp_path / 'export'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"dataset: {trained['root']}, the one last.ckpt was trained on" in r.stdout
    assert checkpoint.trained_dataset(tmp_path / "export" / "model_fp32.onnx")["root"] == str(trained["root"])
    r = cli(
        "evaluate",
        f"checkpoint={tmp_path / 'export' / 'model_fp32.onnx'}",
        "runtime=onnxruntime",
        f"hydra.run.dir={tmp_path / 'ev'}",
    )
    assert r.returncode == 0 and "the one model_fp32.onnx was trained on" in r.stdout, r.stderr[-3000:]
    recorded = yaml.safe_load((tmp_path / "ev" / "config.yaml").read_text())
    assert recorded["dataset"]["root"] is None  # what was asked: the model's own
    r = cli(
        "evaluate",
        f"checkpoint={trained['ckpt']}",
        f"dataset.root={tmp_path / 'elsewhere'}",
        f"hydra.run.dir={tmp_path / 'other'}",
    )
    assert r.returncode == 2 and "elsewhere: dataset root does not exist" in r.stderr
