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
@pytest.mark.parametrize(
    "line,fragment",
    [
        (GOOD.rsplit(" ", 1)[0], "14 fields, expected 15"),
        (GOOD.replace("10.00", "ten"), "field 5 (x1) is 'ten', expected a number"),
        (GOOD + " 0.95", "16 fields: a 16th field (confidence score) marks a prediction file"),
        (GOOD.replace("20.0 0.00", "inf 0.00"), "field 14 (z) is 'inf', expected a finite number"),
    ],
    ids=["14-fields", "non-numeric", "16-fields-in-training-label", "non-finite"],
)
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


@pytest.mark.parametrize(
    "line,kind",
    [
        ("car 0 0 0 30 5 10 20 0 0 0 0 0 0 0", "empty box"),
        ("car 0 0 0 100 5 120 20 0 0 0 0 0 0 0", "lies outside the 64x32 image; object dropped"),
    ],
    ids=["x2<x1", "outside-image"],
)
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
@pytest.mark.parametrize(
    "task,overrides,fragments",
    [
        ("convert", ["dataset.val_split=120"], ["dataset.val_split", "120", "[0, 100)"]),
        (
            "convert",
            ["dataset.partition_mode=alphabetical"],
            ["dataset.partition_mode", "alphabetical", "expected one of [random, sequence]"],
        ),
        ("convert", ["dataset.val_splt=20"], ["dataset.val_splt", "not in 'DatasetConfig'"]),
        ("convert", ["dataset.num_shards=many"], ["dataset.num_shards", "'many'", "Integer"]),
        ("convert", ["dataset.image_extension=png"], ["dataset.image_extension", "starting with '.'"]),
        (
            "convert",
            ["dataset.partition_mode=sequence", "dataset.num_partitions=3"],
            ["dataset.kitti_sequence_to_frames_file", "a JSON file mapping sequence -> frame ids"],
        ),
        ("convert", ["dataset.num_partitions=3"], ["dataset.num_partitions", "2 with partition_mode=random"]),
        (
            "train",
            ["~evaluation.minimum_detection_ground_truth_overlap.cyclist"],
            ["evaluation.minimum_detection_ground_truth_overlap", "missing: cyclist"],
        ),
        ("train", ["~cost.target_classes.cyclist"], ["cost.target_classes", "missing: cyclist"]),
        (
            "train",
            ["+evaluation.minimum_detection_ground_truth_overlap.truck=0.5"],
            ["evaluation.minimum_detection_ground_truth_overlap", "unknown: truck"],
        ),
        (
            "train",
            ["augmentation.preprocessing.output_image_width=1250"],
            ["augmentation.preprocessing.output_image_width", "1250", "a positive multiple of 16"],
        ),
        ("train", ["model.num_layers=19"], ["model.num_layers", "19", "10, 18, 34, 50, 101"]),
        (
            "train",
            ["training.learning_rate.soft_start_annealing_schedule.soft_start=0.9"],
            ["training.learning_rate.soft_start_annealing_schedule.soft_start", "<= annealing (0.7)"],
        ),
        (
            "train",
            ["postprocessing.target_class_config.car.clustering_config.clustering_algorithm=kmeans"],
            ["clustering_algorithm", "kmeans", "dbscan, nms, hybrid"],
        ),
        ("train", ["dataset=kitti"], ["dataset.root", "no default"]),
        (
            "train",
            [
                "dataset.target_class_mapping.car=dontcare",
                "dataset.target_class_mapping.pedestrian=dontcare",
                "dataset.target_class_mapping.cyclist=dontcare",
            ],
            ["dataset.target_class_mapping", "at least one target class other than 'dontcare'"],
        ),
        ("synth", ["synth.max_objects=-1"], ["synth.max_objects", "min_objects"]),
        ("train", ["model=resnet99"], ["model", "resnet99", "resnet18"]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
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


# ---------------------------------------------------------------- checkpoints, ONNX models, calibration files,
# prediction files, infer inputs, outputs: built from one tiny trained model
SMALL = ["augmentation.preprocessing.output_image_width=128", "augmentation.preprocessing.output_image_height=64"]


@pytest.fixture(scope="module")
def art(tmp_path_factory, trained):
    """The suite's trained checkpoint with its dataset, its pruned checkpoint and its ONNX export."""
    import torch
    import torchvision

    from tests.conftest import run_cli

    base = tmp_path_factory.mktemp("artefacts")
    root = trained["root"]
    ckpt = trained["ckpt"]
    r = run_cli("prune", f"checkpoint={ckpt}", "pruning.target_ratio=0.3", f"hydra.run.dir={base / 'prune'}")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli(
        "export",
        f"checkpoint={ckpt}",
        f"dataset.root={root}",
        "export.parity_images=2",
        f"hydra.run.dir={base / 'export'}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    torch.save(torchvision.models.resnet18().state_dict(), base / "resnet18.pth")
    labels = base / "labels"
    labels.mkdir()
    for f in sorted((root / "label_2").iterdir())[:3]:
        (labels / f.name).write_text(f.read_text())
    return {
        "base": base,
        "root": root,
        "ckpt": ckpt,
        "pruned": base / "prune" / "pruned.ckpt",
        "onnx": base / "export" / "model_fp32.onnx",
        "labels": labels,
        "images": root / "image_2",
    }


def _resave(src: Path, dst: Path, change) -> Path:
    """A copy of a checkpoint changed by ``change(obj)``; the checksum is recomputed unless ``change`` returns
    "keep-checksum" (the weights were altered behind the checksum's back)."""
    import torch

    from transferdet.detector.checkpoint import CHECKSUM_KEY, checksum

    obj = torch.load(src, weights_only=True)
    if change(obj) != "keep-checksum" and CHECKSUM_KEY in obj:
        obj[CHECKSUM_KEY] = checksum(obj)
    torch.save(obj, dst)
    return dst


def _flip_weight(obj):
    key = next(k for k in obj["state_dict"] if k.endswith("conv1.weight"))
    obj["state_dict"][key] = obj["state_dict"][key] + 1e-3
    return "keep-checksum"


def _onnx_without_metadata(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [1, 3, 64, 128])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 128])
    onnx.save(
        helper.make_model(helper.make_graph([helper.make_node("Identity", ["input_1"], ["y"])], "g", [x], [y])), path
    )
    return path


def _npy(path: Path, array) -> Path:
    import numpy as np

    np.save(path, array, allow_pickle=True)
    return path


# each case: task, a function (art, tmp) -> overrides, and the fragments the one-line error must hold
ARTEFACT_CASES = {
    "evaluate-missing-checkpoint": (
        "evaluate",
        lambda a, t: [f"checkpoint={t / 'none.ckpt'}"],
        ["config key 'checkpoint'", "an existing file"],
    ),
    "evaluate-truncated-checkpoint": (
        "evaluate",
        lambda a, t: [f"checkpoint={_cut(a['ckpt'], t / 'cut.ckpt')}"],
        ["cut.ckpt: not a readable torch file (truncated or corrupt?)"],
    ),
    "infer-altered-weights": (
        "infer",
        lambda a, t: [f"checkpoint={_resave(a['ckpt'], t / 'alt.ckpt', _flip_weight)}", f"input={a['images']}"],
        ["alt.ckpt: checksum mismatch", "refused"],
    ),
    "export-checkpoint-without-checksum": (
        "export",
        lambda a, t: [f"checkpoint={_resave(a['ckpt'], t / 'nosum.ckpt', lambda o: o.pop('transferdet_checksum'))}"],
        ["nosum.ckpt: transferdet checkpoint without a checksum"],
    ),
    "prune-plain-state-dict": (
        "prune",
        lambda a, t: [f"checkpoint={a['base'] / 'resnet18.pth'}"],
        ["resnet18.pth: not a transferdet checkpoint", "model.pretrained_model_file"],
    ),
    "calibrate-text-file-as-checkpoint": (
        "calibrate",
        lambda a, t: [f"checkpoint={_text(t / 'notes.ckpt')}", f"dataset.root={a['root']}"],
        ["notes.ckpt: not a readable torch file"],
    ),
    "train-retrain-unpruned-checkpoint": (
        "train",
        lambda a, t: [f"model.pruned_checkpoint={a['ckpt']}", f"dataset.root={a['root']}", "model=resnet10", *SMALL],
        ["not a pruned checkpoint (no channel plan)", "transferdet prune"],
    ),
    "infer-pruned-checkpoint-without-channel-plan": (
        "infer",
        lambda a, t: [
            "checkpoint="
            + str(
                _resave(
                    a["pruned"], t / "noplan.ckpt", lambda o: o["hyper_parameters"]["spec"].update(channel_plan=None)
                )
            ),
            f"input={a['images']}",
        ],
        ["noplan.ckpt: tensor shapes do not match the architecture (a pruned checkpoint without its channel plan?)"],
    ),
    "train-pretrained-wrong-architecture": (
        "train",
        lambda a, t: [
            f"model.pretrained_model_file={a['base'] / 'resnet18.pth'}",
            f"dataset.root={a['root']}",
            "model=resnet34",
            *SMALL,
        ],
        ["resnet18.pth: does not fit this model's backbone", "backbone.layer1.2.conv1.weight (not in the file)"],
    ),
    "train-resume-missing": (
        "train",
        lambda a, t: [f"training.resume={t / 'gone.ckpt'}", f"dataset.root={a['root']}", "model=resnet10", *SMALL],
        ["config key 'training.resume'", "'auto'"],
    ),
    "train-resume-truncated": (
        "train",
        lambda a, t: [
            f"training.resume={_cut(a['ckpt'], t / 'half.ckpt')}",
            f"dataset.root={a['root']}",
            "model=resnet10",
            *SMALL,
            "training.num_workers=0",
            "callbacks.progress_bar=null",
        ],
        ["half.ckpt: not a readable torch file"],
    ),
    "benchmark-missing-model": (
        "benchmark",
        lambda a, t: [f"benchmark.models={{x: {t / 'none.ckpt'}}}"],
        ["benchmark.models.x", "an existing transferdet checkpoint file"],
    ),
    "evaluate-corrupt-onnx": (
        "evaluate",
        lambda a, t: [f"checkpoint={_text(t / 'm.onnx')}", "runtime=onnxruntime", f"dataset.root={a['root']}"],
        ["m.onnx: not a readable ONNX model"],
    ),
    "infer-onnx-without-metadata": (
        "infer",
        lambda a, t: [
            f"checkpoint={_onnx_without_metadata(t / 'id.onnx')}",
            "runtime=onnxruntime",
            f"input={a['images']}",
        ],
        ["id.onnx: ONNX model without transferdet metadata"],
    ),
    "infer-onnx-with-torch-runtime": (
        "infer",
        lambda a, t: [f"checkpoint={a['onnx']}", f"input={a['images']}"],
        ["config key 'runtime'", "onnxruntime for an ONNX model"],
    ),
    "infer-unknown-runtime": (
        "infer",
        lambda a, t: [f"checkpoint={a['ckpt']}", "runtime=openvino", f"input={a['images']}"],
        ["config key 'runtime' has value 'openvino'", "torch, onnxruntime, tensorrt"],
    ),
    "export-calibration-wrong-shape": (
        "export",
        lambda a, t: [
            f"checkpoint={a['ckpt']}",
            "export.data_type=int8",
            f"dataset.root={a['root']}",
            f"calibration.cal_data_file={_npy(t / 'c.npy', __import__('numpy').zeros((2, 3, 32, 32), 'float32'))}",
        ],
        ["c.npy: calibration tensors are float32 [2, 3, 32, 32]; the model needs float32 [N, 3, 64, 128]"],
    ),
    "export-calibration-pickled-objects": (
        "export",
        lambda a, t: [
            f"checkpoint={a['ckpt']}",
            "export.data_type=int8",
            f"dataset.root={a['root']}",
            f"calibration.cal_data_file={_npy(t / 'o.npy', __import__('numpy').array([{'a': 1}], dtype=object))}",
        ],
        ["o.npy: not a calibration tensor file"],
    ),
    "export-calibration-out-of-range": (
        "export",
        lambda a, t: [
            f"checkpoint={a['ckpt']}",
            "export.data_type=int8",
            f"dataset.root={a['root']}",
            f"calibration.cal_data_file={_npy(t / 'r.npy', __import__('numpy').full((2, 3, 64, 128), 255, 'float32'))}",
        ],
        ["r.npy: calibration tensors must be finite RGB values in [0, 1]"],
    ),
    "evaluate-predictions-without-scores": (
        "evaluate",
        lambda a, t: [f"predictions={_preds(a, t, score=False)}", f"labels={a['labels']}"],
        [":1: 15 fields: prediction files need a 16th field, the confidence score"],
    ),
    "evaluate-missing-labels-folder": (
        "evaluate",
        lambda a, t: [f"predictions={_preds(a, t)}", f"labels={t / 'nolabels'}"],
        ["config key 'labels'", "an existing folder of KITTI .txt files"],
    ),
    "evaluate-checkpoint-and-predictions": (
        "evaluate",
        lambda a, t: [f"checkpoint={a['ckpt']}", f"predictions={_preds(a, t)}", f"labels={a['labels']}"],
        ["either checkpoint=PATH or predictions=DIR labels=DIR, not both"],
    ),
    "infer-corrupt-video": (
        "infer",
        lambda a, t: [f"checkpoint={a['ckpt']}", f"input={_text(t / 'clip.mp4')}"],
        ["clip.mp4: cannot read video"],
    ),
    "infer-empty-folder": (
        "infer",
        lambda a, t: [f"checkpoint={a['ckpt']}", f"input={_folder(t / 'empty')}"],
        ["empty: no images here"],
    ),
    "infer-corrupt-image": (
        "infer",
        lambda a, t: [f"checkpoint={a['ckpt']}", f"input={_text(t / 'photo.png')}"],
        ["photo.png: cannot decode image"],
    ),
    "run-dir-under-a-file": (
        "evaluate",
        lambda a, t: [f"checkpoint={a['ckpt']}", f"hydra.run.dir={_text(t / 'f')}/run"],
        ["config key 'hydra.run.dir'", "is a file, not a folder"],
    ),
    "synth-root-under-a-file": (
        "synth",
        lambda a, t: [f"dataset.root={_text(t / 'g')}/ds", "synth.num_images=2"],
        ["cannot create this folder", "is in the way"],
    ),
    "pipeline-bad-synthesize-value": (
        "pipeline",
        lambda a, t: [f"dataset.root={t / 'ds'}", "pipeline.synthesize=maybe"],
        ["config key 'pipeline.synthesize' has value 'maybe'", "auto"],
    ),
    "pipeline-retrain-unknown-key": (
        "pipeline",
        lambda a, t: [f"dataset.root={t / 'ds'}", "pipeline.retrain={training: {num_epoch: 3}}"],
        ["config key 'pipeline.retrain'", "num_epoch"],
    ),
}


def _cut(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


def _text(path: Path) -> Path:
    path.write_text("this is not what you think it is\n")
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _preds(a, t: Path, score: bool = True) -> Path:
    folder = t / "preds"
    folder.mkdir(exist_ok=True)
    for f in a["labels"].iterdir():
        lines = [line + (" 0.9" if score else "") for line in f.read_text().splitlines()]
        (folder / f.name).write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("case", list(ARTEFACT_CASES))
def test_bad_artefacts_and_outputs(cli, art, tmp_path, case):
    task, build, fragments = ARTEFACT_CASES[case]
    args = build(art, tmp_path)
    run_dir = tmp_path / "run"
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={run_dir}")
    r = cli(task, *args, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert_clean_failure(r, *fragments)
    assert not (run_dir / "metrics.json").exists()
    for leftover in ("pruned.ckpt", "model_fp32.onnx", "model_int8.onnx", "calibration.npy", "report.md"):
        assert not (run_dir / leftover).exists(), leftover


# ---------------------------------------------------------------- a full disk (simulated with a file size limit)
def _run_with_file_size_limit(args: list[str], limit: int):
    """``transferdet ARGS`` where no file may grow beyond ``limit`` bytes (writes fail with EFBIG, like ENOSPC)."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    from tests.conftest import CliResult

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "-m", "transferdet", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_files,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def test_disk_full_while_writing_a_dataset(tmp_path):
    root = tmp_path / "ds"
    r = _run_with_file_size_limit(
        ["synth", f"dataset.root={root}", "synth.num_images=3", f"hydra.run.dir={tmp_path / 'run'}"], limit=4000
    )
    assert_clean_failure(r, "cannot be written", "File too large", "nothing was left under this name")
    assert r.returncode == 2 and not root.exists()  # no half-written dataset under the dataset's name


def test_disk_full_while_writing_a_checkpoint(tmp_path):
    from tests.conftest import small_synth_config
    from transferdet.data.synth import generate

    root, run = tmp_path / "ds", tmp_path / "run"
    generate(small_synth_config(10, seed=2, image_width=128, image_height=64), root, progress=False)
    r = _run_with_file_size_limit(
        [
            "train",
            f"dataset.root={root}",
            "model=resnet10",
            "training.num_workers=0",
            "training.num_epochs=1",
            "callbacks.progress_bar=null",
            *SMALL,
            f"hydra.run.dir={run}",
        ],
        limit=2_000_000,
    )
    assert_clean_failure(r, "last.ckpt", "cannot be written", "is the disk full")
    assert r.returncode == 2
    assert not list((run / "checkpoints").glob("*.ckpt")) and not (run / "metrics.json").exists()
