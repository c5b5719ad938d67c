"""Bad and unusual input, tried as a user would: a catalogue of cases run through the CLI, grouped by task.

Every bad case must meet one contract: exit status 2, exactly one line on stderr (``transferdet <task>:
error: ...``) naming the file:line or the config key, the bad value and what is allowed, no traceback,
no ``metrics.json``, nothing half-written (no temporary file left anywhere) and the user's files untouched.
Legitimate variants (grey, RGBA, palette and 16-bit PNGs, JPEG bytes named .png, images of different sizes,
CRLF and BOM label files, tabs, empty label files, inputs sharing a stem ...) must be accepted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.conftest import SMALL, run_cli, write_png16
from transferdet.detector.checkpoint import CHECKSUM_KEY, checksum
from transferdet.inference.tensorrt import tensorrt_unavailable

SEQ_BAD_JSON, SEQ_UNKNOWN_FRAME = '{"s": [1,]}', '{"s": ["9"]}'
GOOD = "car 0.00 0 0.00 10.00 5.00 30.00 20.00 1.5 1.6 4.0 1.0 1.65 20.0 0.00"
DONTCARE = "DontCare -1 -1 -10 40.00 2.00 60.00 12.00 -1 -1 -1 -1000 -1000 -1000 -10"


# ---------------------------------------------------------------- building inputs
def make_dataset(
    root: Path, labels: dict[str, str | bytes], images: list[str] | None = None, size: tuple[int, int] = (64, 32)
) -> Path:
    """A tiny KITTI folder: PNGs of ``size`` for ``images`` (default: every label id) and the given labels."""
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    for id_ in labels if images is None else images:
        Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(root / "image_2" / f"{id_}.png")
    for id_, text in labels.items():
        path = root / "label_2" / f"{id_}.txt"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


def two_images(t: Path, first: str = GOOD, second: str = GOOD) -> Path:
    return make_dataset(t / "ds", {"000000": first + "\n", "000001": second + "\n"})


def png16(path: Path, rgb: bool) -> Path:
    """A 16-bit PNG (grey or RGB) of a horizontal gradient."""
    value = np.linspace(0, 65535, 64, dtype=np.uint16)[None, :].repeat(32, 0)
    return write_png16(path, np.stack([value] * 3, -1) if rgb else value)


def with_image(t: Path, write: Callable[[Path], object], labels: str = GOOD) -> Path:
    """A two-image dataset whose second image is written by ``write(path)``."""
    root = two_images(t, second=labels)
    write(root / "image_2" / "000001.png")
    return root


def text(path: Path, content: str = "this is not what you think it is\n") -> Path:
    path.write_text(content)
    return path


def folder(path: Path) -> Path:
    path.mkdir()
    return path


def cut(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


def resave(src: Path, dst: Path, change: Callable[[dict], object]) -> Path:
    """A copy of a checkpoint changed by ``change(obj)``, checksum recomputed unless ``change`` returns
    "keep-checksum" (an edit behind the checksum's back)."""
    obj = torch.load(src, weights_only=True)
    if change(obj) != "keep-checksum" and CHECKSUM_KEY in obj:
        obj[CHECKSUM_KEY] = checksum(obj)
    torch.save(obj, dst)
    return dst


def flip_weight(obj: dict) -> str:
    key = next(k for k in obj["state_dict"] if k.endswith("conv1.weight"))
    obj["state_dict"][key] = obj["state_dict"][key] + 1e-3
    return "keep-checksum"


def drop_channel_plan(obj: dict) -> None:
    obj["hyper_parameters"]["spec"]["channel_plan"] = None


def edit_classes(obj: dict) -> str:
    obj["hyper_parameters"]["spec"]["classes"] = ["cyclist", "pedestrian", "car"]
    return "keep-checksum"


def onnx_model(path: Path, input_name: str = "input_1", meta: dict | None = None) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, 64, 128])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 128])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", [input_name], ["y"])], "g", [x], [y]))
    for k, v in (meta or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, path)
    return path


def npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array, allow_pickle=True)
    return path


def npz(path: Path) -> Path:
    np.savez(path, images=np.zeros((2, 3, 64, 128), np.float32))
    return path


def predictions(a: dict, t: Path, score: bool = True) -> Path:
    out = t / "preds"
    out.mkdir(exist_ok=True)
    for f in a["labels"].iterdir():
        lines = [line + (" 0.9" if score else "") for line in f.read_text().splitlines()]
        (out / f.name).write_text("\n".join(lines) + "\n")
    return out


def noise_frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (64, 128, 3), dtype=np.uint8) for _ in range(n)]


def video(path: Path, frames: list[np.ndarray], truncate: bool = False) -> Path:
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:  # the index first: a cut file opens
        stream = out.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    if truncate:
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    return path


def spec_file(t: Path, body: str) -> Path:
    return text(t / "spec.txt", body)


def imported_root(t: Path) -> str:
    """``dataset.root`` of the experiment import-spec wrote, as OmegaConf resolves it (a live interpolation would
    read the environment, where the test put a secret)."""
    from omegaconf import OmegaConf

    experiment = OmegaConf.load(t / "conf" / "experiment" / "spec.yaml")
    return OmegaConf.to_container(experiment, resolve=True)["dataset"]["root"]


# ---------------------------------------------------------------- the catalogue
@dataclass(frozen=True)
class Case:
    task: str
    args: Callable[[Path, dict], list[str]]  # (tmp folder, artefacts) -> the task's command-line arguments
    expect: tuple[str, ...] = ()  # fragments of the one error line
    ok: bool = False  # a legitimate variant: it must be accepted
    check: Callable[[Path, dict, object], None] | None = None  # what must hold after the run


CASES: dict[str, Case] = {}
NO_TENSORRT = tensorrt_unavailable()


def case(
    name: str,
    task: str,
    args: Callable[[Path, dict], list[str]],
    *expect: str,
    ok: bool = False,
    check: Callable | None = None,
) -> None:
    CASES[f"{task}/{name}"] = Case(task, args, expect, ok, check)


def ds(root: Path) -> list[str]:
    return [f"dataset.root={root}"]


# ---- convert: label files (file:line), images, folders, settings
LBL = "label_2/000001.txt:2: "
for name, line, fragment in [
    ("label-14-fields", GOOD.rsplit(" ", 1)[0], "14 fields, expected 15"),
    ("label-non-numeric", GOOD.replace("10.00", "ten"), "field 5 (x1) is 'ten', expected a number"),
    ("label-16-fields", GOOD + " 0.95", "16 fields: a 16th field (confidence score) marks a prediction file"),
    ("label-non-finite", GOOD.replace("20.0 0.00", "inf 0.00"), "field 14 (z) is 'inf', expected a finite number"),
    ("label-nan", GOOD.replace("1.5 1.6", "nan 1.6"), "field 9 (height) is 'nan', expected a finite number"),
    ("label-occluded-7", GOOD.replace("0.00 0 0.00", "0.00 7 0.00", 1), "field 3 (occluded) is '7', expected 0, 1"),
    ("label-occluded-fraction", GOOD.replace("0.00 0 0.00", "0.00 1.5 0.00", 1), "field 3 (occluded) is '1.5'"),
    ("label-truncated-3", GOOD.replace("car 0.00", "car 3.00", 1), "field 2 (truncated) is '3.00'"),
    ("label-empty-class-fields", "car", "1 fields, expected 15"),
]:
    case(
        name,
        "convert",
        lambda t, a, line=line: ds(make_dataset(t / "ds", {"000000": GOOD, "000001": f"{GOOD}\n{line}\n"})),
        LBL + fragment,
    )
case(
    "label-without-image",
    "convert",
    lambda t, a: ds(make_dataset(t / "ds", {"a": GOOD, "b": GOOD}, ["a"])),
    "label_2/b.txt: label file has no image",
)
case(
    "corrupt-png",
    "convert",
    lambda t, a: ds(with_image(t, lambda p: p.write_bytes(p.read_bytes()[:40]))),
    "image_2/000001.png: cannot decode image",
)
case("not-an-image", "convert", lambda t, a: ds(with_image(t, text)), "image_2/000001.png: cannot decode image")
case(
    "decompression-bomb",
    "convert",
    lambda t, a: ds(with_image(t, lambda p: Image.new("1", (20000, 20000)).save(p))),
    "image_2/000001.png: refused",
    "decompression bomb",
)
case(
    "duplicate-id",
    "convert",
    lambda t, a: ds(with_image(t, lambda p: (p.parent / "000000.PNG").write_bytes(p.read_bytes()))),
    "duplicate id",
    "(ids compare case-insensitively)",
)
case(
    "empty-dataset",
    "convert",
    lambda t, a: ds(make_dataset(t / "ds", {})),
    "empty dataset: no '*.png' images",
    "dataset.image_extension",
)
case("missing-root", "convert", lambda t, a: ds(t / "nowhere"), "nowhere: dataset root does not exist", "dataset.root")
case("root-is-a-file", "convert", lambda t, a: ds(text(t / "ds")), "ds: dataset root does not exist")
case(
    "root-symlink-loop",
    "convert",
    lambda t, a: (os.symlink(t / "loop", t / "loop"), ds(t / "loop"))[1],
    "config key 'dataset.root'",
    "symbolic-link loop",
)
case(
    "image-folder-missing",
    "convert",
    lambda t, a: ds(make_dataset(t / "ds", {"a": GOOD})) + ["dataset.image_dir_name=images"],
    "image folder does not exist",
    "dataset.image_dir_name",
)
case(
    "label-not-text",
    "convert",
    lambda t, a: ds(make_dataset(t / "ds", {"000000": GOOD, "000001": b"\xff\xfe\x00binary"})),
    "label_2/000001.txt: not a text file",
)
case(
    "sequence-map-bad-json",
    "convert",
    lambda t, a: (
        ds(two_images(t))
        + [
            "dataset.partition_mode=sequence",
            f"dataset.kitti_sequence_to_frames_file={text(t / 's.json', SEQ_BAD_JSON)}",
        ]
    ),
    "s.json:1: not valid JSON",
)
case(
    "sequence-map-unknown-frame",
    "convert",
    lambda t, a: (
        ds(two_images(t))
        + [
            "dataset.partition_mode=sequence",
            f"dataset.kitti_sequence_to_frames_file={text(t / 's.json', SEQ_UNKNOWN_FRAME)}",
        ]
    ),
    "s.json: sequence 's' lists frame '9', which has no image",
)
case(
    "converted-dir-is-a-user-folder",
    "convert",
    lambda t, a: ds(two_images(t)) + [f"dataset.converted_dir={text(folder(t / 'mine') / 'thesis.tex').parent}"],
    "config key 'dataset.converted_dir'",
    "holds a conversion transferdet wrote",
    check=lambda t, a, r: (t / "mine" / "thesis.tex").read_text().startswith("this is"),
)
case(
    "converted-dir-is-a-file",
    "convert",
    lambda t, a: ds(two_images(t)) + [f"dataset.converted_dir={text(t / 'notes.txt')}"],
    "config key 'dataset.converted_dir'",
    "this file holds something else",
)
for name, overrides, fragments in [
    ("val-split-120", ["dataset.val_split=120"], ("dataset.val_split", "120", "[0, 100]")),
    (
        "partition-mode-unknown",
        ["dataset.partition_mode=alphabetical"],
        ("dataset.partition_mode", "alphabetical", "one of random, sequence"),
    ),
    ("misspelt-key", ["dataset.val_splt=20"], ("config key 'dataset.val_splt'", "a key of the convert config")),
    ("num-shards-not-a-number", ["dataset.num_shards=many"], ("dataset.num_shards", "'many'", "an integer")),
    ("extension-without-dot", ["dataset.image_extension=png"], ("dataset.image_extension", "starting with '.'")),
    (
        "sequence-without-map",
        ["dataset.partition_mode=sequence", "dataset.num_partitions=3"],
        ("dataset.kitti_sequence_to_frames_file", "a JSON file mapping sequence -> frame ids"),
    ),
    ("random-with-3-partitions", ["dataset.num_partitions=3"], ("dataset.num_partitions", "2 with partition_mode")),
    ("negative-seed", ["dataset.seed=-1"], ("config key 'dataset.seed' has value -1", "[0, 4294967295]")),
    (
        "mapping-all-dontcare",
        [
            "dataset.target_class_mapping.car=dontcare",
            "dataset.target_class_mapping.pedestrian=dontcare",
            "dataset.target_class_mapping.cyclist=dontcare",
        ],
        ("dataset.target_class_mapping", "at least one target class other than 'dontcare'"),
    ),
    ("unparsable-override", ["dataset.val_split=[1,2"], ("cannot read an override", "key=value")),
]:
    case(name, "convert", lambda t, a, o=overrides: ds(two_images(t)) + o, *fragments)
case("kitti-without-root", "convert", lambda t, a: ["dataset=kitti"], "dataset.root", "no default")


def _converted_ok(t: Path, a: dict, r) -> None:
    assert (t / "ds" / "converted" / "manifest.json").is_file()


for name, build in [
    ("crlf-labels", lambda t: make_dataset(t / "ds", {"a": f"{GOOD}\r\n{GOOD}\r\n"})),
    ("bom-labels", lambda t: make_dataset(t / "ds", {"a": b"\xef\xbb\xbf" + GOOD.encode() + b"\n"})),
    ("tab-separated-labels", lambda t: make_dataset(t / "ds", {"a": GOOD.replace(" ", "\t") + "\n"})),
    ("empty-label-file", lambda t: make_dataset(t / "ds", {"a": GOOD, "b": ""})),
    ("dontcare-lines", lambda t: make_dataset(t / "ds", {"a": f"{GOOD}\n{DONTCARE}\n"})),
    ("image-without-label", lambda t: make_dataset(t / "ds", {"a": GOOD}, ["a", "b"])),
    ("grey-png", lambda t: with_image(t, lambda p: Image.new("L", (64, 32), 90).save(p))),
    ("rgba-png", lambda t: with_image(t, lambda p: Image.new("RGBA", (64, 32), (90, 9, 9, 0)).save(p))),
    ("palette-png", lambda t: with_image(t, lambda p: Image.new("RGB", (64, 32), 90).convert("P").save(p))),
    ("16-bit-grey-png", lambda t: with_image(t, lambda p: png16(p, rgb=False))),
    ("16-bit-rgb-png", lambda t: with_image(t, lambda p: png16(p, rgb=True))),
    ("jpeg-bytes-named-png", lambda t: with_image(t, lambda p: Image.new("RGB", (64, 32), 90).save(p, "JPEG"))),
    ("images-of-different-sizes", lambda t: with_image(t, lambda p: Image.new("RGB", (100, 50), 90).save(p))),
    (
        "empty-box-is-a-warning",
        lambda t: make_dataset(t / "ds", {"a": f"{GOOD}\ncar 0 0 0 30 5 10 20 0 0 0 0 0 0 0\n"}),
    ),
    (
        "box-outside-is-a-warning",
        lambda t: make_dataset(t / "ds", {"a": f"{GOOD}\ncar 0 0 0 100 5 120 20 0 0 0 0 0 0 0\n"}),
    ),
]:
    case(name, "convert", lambda t, a, b=build: ds(b(t)), ok=True, check=_converted_ok)

# ---- synth
case(
    "refuses-a-user-folder",
    "synth",
    lambda t, a: ds(two_images(t)) + ["synth.num_images=2"],
    "config key 'dataset.root'",
    "synth.overwrite=true",
)
case(
    "overwrite-refuses-a-user-folder",
    "synth",
    lambda t, a: ds(two_images(t)) + ["synth.num_images=2", "synth.overwrite=true"],
    "config key 'dataset.root'",
    "a synthetic dataset (synth.json)",
)
case(
    "root-under-a-file",
    "synth",
    lambda t, a: [f"dataset.root={text(t / 'g')}/ds", "synth.num_images=2"],
    "cannot create this folder",
    "is in the way",
)
case(
    "negative-seed",
    "synth",
    lambda t, a: [f"dataset.root={t / 'ds'}", "synth.seed=-5"],
    "config key 'synth.seed' has value -5",
)
case(
    "max-objects-below-min",
    "synth",
    lambda t, a: [f"dataset.root={t / 'ds'}", "synth.max_objects=-1"],
    "synth.max_objects",
    "min_objects",
)
case(
    "image-size-not-a-number",
    "synth",
    lambda t, a: [f"dataset.root={t / 'ds'}", "synth.image_width=wide"],
    "config key 'synth.image_width'",
    "an integer",
)
case(
    "unknown-style",
    "synth",
    lambda t, a: [f"dataset.root={t / 'ds'}", "synth.style=photo"],
    "config key 'synth.style' has value 'photo'",
    "textured",
)
case(
    "jpeg-quality-zero",
    "synth",
    lambda t, a: [f"dataset.root={t / 'ds'}", "synth=kitti", "synth.jpeg_quality_min=0"],
    "config key 'synth.jpeg_quality_min' has value 0",
    "[1, 100]",
)

# ---- train: config keys, groups, starting weights, resuming, distillation
TRAIN = ["model=resnet10", *SMALL, "training.num_workers=0", "callbacks.progress_bar=null"]


def tr(*overrides: str) -> Callable[[Path, dict], list[str]]:
    return lambda t, a: [*ds(a["root"]), *TRAIN, *overrides]


for name, overrides, fragments in [
    (
        "evaluation-map-missing-a-class",
        ["~evaluation.minimum_detection_ground_truth_overlap.cyclist"],
        ("evaluation.minimum_detection_ground_truth_overlap", "missing: cyclist"),
    ),
    ("cost-map-missing-a-class", ["~cost.target_classes.cyclist"], ("cost.target_classes", "missing: cyclist")),
    (
        "evaluation-map-unknown-class",
        ["+evaluation.minimum_detection_ground_truth_overlap.truck=0.5"],
        ("evaluation.minimum_detection_ground_truth_overlap", "unknown: truck"),
    ),
    (
        "width-not-a-multiple-of-16",
        ["augmentation.preprocessing.output_image_width=1250"],
        ("augmentation.preprocessing.output_image_width", "1250", "a positive multiple of 16"),
    ),
    ("unsupported-depth", ["model.num_layers=19"], ("model.num_layers", "19", "10, 18, 34, 50, 101")),
    (
        "soft-start-after-annealing",
        ["training.learning_rate.soft_start_annealing_schedule.soft_start=0.9"],
        ("soft_start", "<= annealing (0.7)"),
    ),
    (
        "unknown-clustering",
        ["postprocessing.target_class_config.car.clustering_config.clustering_algorithm=kmeans"],
        ("clustering_algorithm", "kmeans", "dbscan, nms, hybrid"),
    ),
    ("unknown-model-option", ["model=resnet99"], ("config group 'model' has no option 'resnet99'", "resnet18")),
    (
        "epochs-not-a-number",
        ["training.num_epochs=abc"],
        ("config key 'training.num_epochs' has value 'abc'", "an integer"),
    ),
    (
        "unknown-precision",
        ["training.training_precision.backend_floatx=FLOAT8"],
        ("backend_floatx' has value 'FLOAT8'", "FLOAT32, FLOAT16, BFLOAT16"),
    ),
    ("unknown-key", ["training.num_epoch=3"], ("config key 'training.num_epoch'", "a key of the train config")),
    ("block-given-a-value", ["training.learning_rate=3"], ("config key 'training.learning_rate'", "block")),
    ("negative-seed", ["training.random_seed=-1"], ("config key 'training.random_seed' has value -1",)),
    ("trainer-refuses-devices", ["trainer.devices=abc"], ("config key 'trainer'", "devices")),
    ("freeze-unknown-block", ["model.freeze_blocks=[7]"], ("model.freeze_blocks", "block ids 0 (stem) to 4")),
    ("negative-workers", ["training.num_workers=-1"], ("training.num_workers", "an integer >= 0")),
    ("every-image-held-out", ["dataset.val_split=100"], ("dataset.val_split' has value 100", "below 100 to train")),
    ("ema-decay-of-one", ["training.ema_decay=1"], ("training.ema_decay", "a number in [0, 1)")),
    (
        "copy-paste-occlusion-4",
        ["augmentation.copy_paste.max_occlusion=4"],
        ("config key 'augmentation.copy_paste.max_occlusion' has value 4", "a KITTI occlusion level 0..3"),
    ),
    (
        "ema-while-pruning",
        [
            "training.ema_decay=0.99",
            "+callbacks.pruning={_target_: transferdet.callbacks.PruningCallback, epochs: [2]}",
        ],
        ("config key 'training.ema_decay' has value 0.99", "0 (off) with callbacks.pruning"),
    ),
    ("zero-epochs", ["training.num_epochs=0"], ("training.num_epochs", "an integer >= 1")),
    ("unknown-group", ["exporter=onnx"], ("config key 'exporter'",)),
    ("pretrained-unknown", ["model.pretrained=coco"], ("config key 'model.pretrained' has value 'coco'", "imagenet")),
    ("imagenet-for-resnet10", ["model=resnet10", "model.pretrained=imagenet"], ("ResNet-10 has no public ImageNet",)),
    (
        "imagenet-and-a-file",
        ["model.pretrained=imagenet", "model.pretrained_model_file=x.pth"],
        ("config key 'model.pretrained'", "one starting point"),
    ),
    (  # the tests' torch hub cache is empty and downloads are off
        "imagenet-not-cached-offline",
        ["model=resnet18", "model.pretrained=imagenet"],
        ("hub/checkpoints/resnet18-", "downloads are off", "https://download.pytorch.org/models/resnet18-"),
    ),
]:
    case(name, "train", tr(*overrides), *fragments)
case("kitti-without-root", "train", lambda t, a: ["dataset=kitti", *TRAIN], "dataset.root", "no default")
case(
    "retrain-an-unpruned-checkpoint",
    "train",
    lambda t, a: tr(f"model.pruned_checkpoint={a['ckpt']}")(t, a),
    "not a pruned checkpoint (no channel plan)",
    "transferdet prune",
)
case(
    "pretrained-of-a-shallower-resnet",
    "train",
    lambda t, a: [*ds(a["root"]), *SMALL, "model=resnet34", f"model.pretrained_model_file={a['resnet18']}"],
    "resnet18.pth: does not fit this model's backbone (ResNet-34)",
    "backbone.layer1.2.*",
    "model.pretrained_strict=false",
)
case(
    "pretrained-of-a-deeper-resnet",
    "train",
    lambda t, a: [*ds(a["root"]), *SMALL, "model=resnet18", f"model.pretrained_model_file={a['resnet34']}"],
    "resnet34.pth: does not fit this model's backbone (ResNet-18)",
    "the model has no backbone.layer1.2.*",
)
case(
    "pretrained-missing",
    "train",
    lambda t, a: tr(f"model.pretrained_model_file={t / 'w.pth'}")(t, a),
    "config key 'model.pretrained_model_file'",
    "an existing file",
)
case(
    "pretrained-not-a-torch-file",
    "train",
    lambda t, a: tr(f"model.pretrained_model_file={text(t / 'w.pth')}")(t, a),
    "w.pth: not a readable torch file",
)
case(
    "resume-missing",
    "train",
    lambda t, a: tr(f"training.resume={t / 'gone.ckpt'}")(t, a),
    "config key 'training.resume'",
    "'auto'",
)
case(
    "resume-truncated",
    "train",
    lambda t, a: tr(f"training.resume={cut(a['ckpt'], t / 'half.ckpt')}")(t, a),
    "half.ckpt: not a readable torch file",
)
case(
    "teacher-missing",
    "train",
    lambda t, a: tr(f"training.distillation.teacher={t / 't.ckpt'}")(t, a),
    "config key 'training.distillation.teacher'",
    "an existing transferdet checkpoint",
)
case(
    "teacher-onnx",
    "train",
    lambda t, a: tr(f"training.distillation.teacher={a['onnx']}")(t, a),
    "config key 'training.distillation.teacher'",
    "an ONNX model cannot teach",
)

# ---- evaluate
EV = lambda *o: lambda t, a: [*ds(a["root"]), *o]  # noqa: E731
case(
    "checkpoint-missing",
    "evaluate",
    lambda t, a: [f"checkpoint={t / 'none.ckpt'}"],
    "config key 'checkpoint'",
    "an existing file",
)
case(
    "checkpoint-truncated",
    "evaluate",
    lambda t, a: [f"checkpoint={cut(a['ckpt'], t / 'cut.ckpt')}"],
    "cut.ckpt: not a readable torch file (truncated or corrupt?)",
)
case(
    "checkpoint-with-edited-classes",
    "evaluate",
    lambda t, a: [f"checkpoint={resave(a['ckpt'], t / 'e.ckpt', edit_classes)}"],
    "e.ckpt: checksum mismatch",
)
case(
    "checkpoint-text-file",
    "evaluate",
    lambda t, a: [f"checkpoint={text(t / 'notes.ckpt')}"],
    "notes.ckpt: not a readable torch file",
)
case(
    "onnx-corrupt",
    "evaluate",
    lambda t, a: [f"checkpoint={text(t / 'm.onnx')}", "runtime=onnxruntime"],
    "m.onnx: not a readable ONNX model",
)
case(
    "onnx-other-input",
    "evaluate",
    lambda t, a: [f"checkpoint={onnx_model(t / 'x.onnx', 'image')}", "runtime=onnxruntime"],
    "x.onnx: the model's inputs are ['image']",
    "input_1",
)
case(
    "onnx-metadata-not-json",
    "evaluate",
    lambda t, a: [
        f"checkpoint={onnx_model(t / 'j.onnx', meta={'transferdet_spec': '{not json'})}",
        "runtime=onnxruntime",
    ],
    "j.onnx: the ONNX metadata entry transferdet_spec is not valid JSON",
)
case(
    "onnx-with-the-torch-runtime",
    "evaluate",
    lambda t, a: [f"checkpoint={a['onnx']}"],
    "config key 'runtime'",
    "onnxruntime for an ONNX model",
)
case(
    "checkpoint-with-onnxruntime",
    "evaluate",
    lambda t, a: [f"checkpoint={a['ckpt']}", "runtime=onnxruntime"],
    "config key 'checkpoint'",
    "an existing .onnx file",
)
case(
    "unknown-protocol",
    "evaluate",
    lambda t, a: [f"checkpoint={a['ckpt']}", "evaluation.protocol=coco"],
    "config key 'evaluation.protocol' has value 'coco'",
    "voc, kitti",
)
case(
    "kitti-recall-points",
    "evaluate",
    lambda t, a: [f"checkpoint={a['ckpt']}", "evaluation.protocol=kitti", "evaluation.kitti_recall_points=20"],
    "config key 'evaluation.kitti_recall_points' has value 20",
    "40 or 11",
)
case(
    "interval-confidence",
    "evaluate",
    lambda t, a: [f"checkpoint={a['ckpt']}", "evaluation.interval_confidence=90"],
    "config key 'evaluation.interval_confidence' has value 90",
    "between 0 and 1",
)
case(
    "negative-candidate-bound",
    "infer",
    lambda t, a: [
        f"checkpoint={a['ckpt']}",
        f"input={a['images']}",
        "postprocessing.target_class_config.car.clustering_config.max_candidates=-1",
    ],
    "max_candidates' has value -1",
    "an integer >= 0",
)
case(
    "fragment-merge-out-of-range",
    "infer",
    lambda t, a: [
        f"checkpoint={a['ckpt']}",
        f"input={a['images']}",
        "postprocessing.target_class_config.car.clustering_config.dbscan_merge_iou_threshold=1.5",
    ],
    "dbscan_merge_iou_threshold' has value 1.5",
    "a number in [0, 1]",
)
case(
    "test-time-flip-not-a-boolean",
    "evaluate",
    lambda t, a: [f"checkpoint={a['ckpt']}", "postprocessing.test_time_flip=sometimes"],
    "test_time_flip' has value 'sometimes'",
    "true or false",
)
case(
    "unknown-runtime",
    "evaluate",
    lambda t, a: [f"checkpoint={a['ckpt']}", "runtime=openvino"],
    "config key 'runtime' has value 'openvino'",
    "torch, onnxruntime, tensorrt",
)
case(  # without TensorRT or a GPU the runtime is missing; with them, a .ckpt is the wrong file for it
    "tensorrt-here",
    "evaluate",
    lambda t, a: [f"checkpoint={a['ckpt']}", "runtime=tensorrt"],
    *(
        ("config key 'runtime' has value 'tensorrt'", NO_TENSORRT.split(":")[0])
        if NO_TENSORRT
        else ("config key 'checkpoint'", "runtime=tensorrt")
    ),
)
case("no-model-no-files", "evaluate", lambda t, a: [], "config key 'checkpoint'", "predictions=DIR")
case(  # a model trained on every frame (dataset.val_split=0) has no validation images of its own to score on
    "empty-validation-split",
    "evaluate",
    lambda t, a: [f"checkpoint={a['ckpt']}", *ds(a["root"]), "dataset.val_split=0", f"dataset.converted_dir={t / 'c'}"],
    "config key 'dataset.val_split' has value 0",
    "validation images to score on (dataset.val_split=100",
)
case(
    "checkpoint-and-predictions",
    "evaluate",
    lambda t, a: [f"checkpoint={a['ckpt']}", f"predictions={predictions(a, t)}", f"labels={a['labels']}"],
    "either checkpoint=PATH or predictions=DIR labels=DIR, not both",
)
case(
    "predictions-without-scores",
    "evaluate",
    lambda t, a: [f"predictions={predictions(a, t, score=False)}", f"labels={a['labels']}"],
    ":1: 15 fields: prediction files need a 16th field, the confidence score",
)
case(
    "labels-folder-missing",
    "evaluate",
    lambda t, a: [f"predictions={predictions(a, t)}", f"labels={t / 'no'}"],
    "config key 'labels'",
    "an existing folder of KITTI .txt files",
)
case(
    "prediction-without-label",
    "evaluate",
    lambda t, a: [f"predictions={text(predictions(a, t) / 'zzz.txt', GOOD + ' 0.5').parent}", f"labels={a['labels']}"],
    "zzz.txt: prediction file has no ground-truth label file",
)
case(
    "override-of-an-unknown-class",
    "evaluate",
    EV("checkpoint=@", "postprocessing.target_class_config.truck.clustering_config.dbscan_eps=0.3"),
    "config key 'postprocessing.target_class_config.truck'",
    "a class of the model",
)
case(
    "override-of-training-augmentation",
    "evaluate",
    EV("checkpoint=@", "augmentation.spatial_augmentation.zoom_max=2"),
    "config key 'augmentation.spatial_augmentation'",
    "only augmentation.preprocessing",
)
case(
    "override-with-an-unknown-ap-mode",
    "evaluate",
    EV("checkpoint=@", "evaluation.average_precision_mode=MEDIAN"),
    "config key 'evaluation.average_precision_mode' has value 'MEDIAN'",
    "SAMPLE, INTEGRATE",
)
case(
    "override-width-not-a-multiple-of-16",
    "evaluate",
    EV("checkpoint=@", "augmentation.preprocessing.output_image_width=100"),
    "config key 'augmentation.preprocessing.output_image_width' has value 100",
    "a positive multiple of 16",
)
case(
    "dataset-of-other-classes",
    "evaluate",
    EV("checkpoint=@", "~dataset.target_class_mapping.cyclist", "dataset.converted_dir=@tmp/conv"),
    "config key 'dataset.target_class_mapping'",
    "the model's classes in the same order",
    check=lambda t, a, r: not (t / "conv").exists(),  # refused before anything was converted
)

# ---- infer
INF = lambda *o: lambda t, a: [f"checkpoint={a['ckpt']}", f"input={a['images']}", *o]  # noqa: E731
case(
    "weights-altered",
    "infer",
    lambda t, a: [f"checkpoint={resave(a['ckpt'], t / 'alt.ckpt', flip_weight)}", f"input={a['images']}"],
    "alt.ckpt: checksum mismatch",
    "refused",
)
case(
    "pruned-without-its-plan",
    "infer",
    lambda t, a: [
        f"checkpoint={resave(a['pruned'], t / 'np.ckpt', drop_channel_plan)}",
        f"input={a['images']}",
    ],
    "np.ckpt: tensor shapes do not match the architecture (a pruned checkpoint without its channel plan?)",
)
case(
    "onnx-without-metadata",
    "infer",
    lambda t, a: [f"checkpoint={onnx_model(t / 'id.onnx')}", "runtime=onnxruntime", f"input={a['images']}"],
    "id.onnx: ONNX model without transferdet metadata",
)
case(
    "input-missing",
    "infer",
    lambda t, a: [f"checkpoint={a['ckpt']}", f"input={t / 'nothing'}"],
    "config key 'input'",
    "an existing image file",
)
case(
    "corrupt-video",
    "infer",
    lambda t, a: INF()(t, a)[:1] + [f"input={text(t / 'clip.mp4')}"],
    "clip.mp4: cannot read video",
)
case("empty-folder", "infer", lambda t, a: INF()(t, a)[:1] + [f"input={folder(t / 'empty')}"], "empty: no images here")
case(
    "corrupt-image",
    "infer",
    lambda t, a: INF()(t, a)[:1] + [f"input={text(t / 'photo.png')}"],
    "photo.png: cannot decode image",
)
case(
    "unsupported-file",
    "infer",
    lambda t, a: INF()(t, a)[:1] + [f"input={text(t / 'notes.txt')}"],
    "config key 'input'",
    "an image (.png",
)
case("batch-size-zero", "infer", INF("batch_size=0"), "config key 'batch_size' has value 0", "an integer >= 1")
case("workers-zero", "infer", INF("workers=0"), "config key 'workers' has value 0", "an integer >= 1")
case("draw-threshold-not-a-number", "infer", INF("draw_threshold=high"), "config key 'draw_threshold'", "a number")
case("draw-threshold-above-1", "infer", INF("draw_threshold=2"), "config key 'draw_threshold' has value 2.0", "[0, 1]")
case("unknown-precision", "infer", INF("precision=fp8"), "config key 'precision' has value 'fp8'", "fp32, fp16")
if not torch.cuda.is_available():
    case("fp16-without-a-gpu", "infer", INF("precision=fp16"), "config key 'precision'", "CUDA GPU")


def _same_stem(t: Path, a: dict) -> list[str]:
    inputs = folder(t / "in")
    Image.new("RGB", (128, 64), 90).save(inputs / "a.png")
    Image.new("RGB", (128, 64), 90).save(inputs / "a.jpg")
    return [f"checkpoint={a['ckpt']}", f"input={inputs}"]


case(
    "inputs-sharing-a-stem",
    "infer",
    _same_stem,
    ok=True,
    check=lambda t, a, r: sorted(p.name for p in (t / "run" / "labels").iterdir()) == ["a_jpg.txt", "a_png.txt"],
)
case(
    "16-bit-input-image",
    "infer",
    lambda t, a: INF()(t, a)[:1] + [f"input={png16(t / 'deep.png', rgb=False)}"],
    ok=True,
    check=lambda t, a, r: (t / "run" / "labels" / "deep.txt").is_file(),
)
case(
    "truncated-video-says-so",
    "infer",
    lambda t, a: INF()(t, a)[:1] + [f"input={video(t / 'v.mp4', noise_frames(20), True)}"],
    ok=True,
    check=lambda t, a, r: (
        "could be decoded of the 20" in r.stdout and 0 < len(list((t / "run" / "labels").iterdir())) < 20
    ),
)

# ---- prune
case(
    "plain-state-dict",
    "prune",
    lambda t, a: [f"checkpoint={a['resnet18']}"],
    "resnet18.pth: not a transferdet checkpoint",
    "model.pretrained_model_file",
)
case("no-checkpoint", "prune", lambda t, a: [], "config key 'checkpoint'", "a trained transferdet checkpoint")
case(
    "sweep-ratio-above-1",
    "prune",
    lambda t, a: [f"checkpoint={a['ckpt']}", "sweep=true", "sweep_ratios=[2]"],
    "config key 'sweep_ratios'",
    "parameter ratios in (0, 1)",
)
case(
    "target-ratio-above-1",
    "prune",
    lambda t, a: [f"checkpoint={a['ckpt']}", "pruning.target_ratio=1.5"],
    "config key 'pruning.target_ratio' has value 1.5",
)
case(
    "unknown-excluded-layer",
    "prune",
    lambda t, a: [f"checkpoint={a['ckpt']}", "pruning.excluded_layers=[nope]"],
    "config key 'pruning.excluded_layers'",
    "convolution names of the model",
)
case(
    "unknown-normalizer",
    "prune",
    lambda t, a: [f"checkpoint={a['ckpt']}", "pruning.normalizer=L3"],
    "config key 'pruning.normalizer' has value 'L3'",
    "max, L2",
)

# ---- calibrate
case(
    "text-file-as-checkpoint",
    "calibrate",
    lambda t, a: [f"checkpoint={text(t / 'notes.ckpt')}", *ds(a["root"])],
    "notes.ckpt: not a readable torch file",
)
case("no-dataset-no-checkpoint", "calibrate", lambda t, a: [], "config key 'dataset.root'", "a dataset folder")
case(
    "zero-batches",
    "calibrate",
    lambda t, a: [f"checkpoint={a['ckpt']}", "calibration.batches=0"],
    "config key 'calibration.batches' has value 0",
)

# ---- export
EXP = lambda *o: lambda t, a: [f"checkpoint={a['ckpt']}", *ds(a["root"]), *o]  # noqa: E731
case(
    "checkpoint-without-checksum",
    "export",
    lambda t, a: [f"checkpoint={resave(a['ckpt'], t / 'ns.ckpt', lambda o: o.pop(CHECKSUM_KEY))}"],
    "ns.ckpt: transferdet checkpoint without a checksum",
)
case(
    "calibration-wrong-shape",
    "export",
    EXP("export.data_type=int8", "calibration.cal_data_file=@npy-shape"),
    "c.npy: calibration tensors are float32 [2, 3, 32, 32]; the model needs float32 [N, 3, 64, 128]",
)
case(
    "calibration-pickled-objects",
    "export",
    EXP("export.data_type=int8", "calibration.cal_data_file=@npy-object"),
    "o.npy: not a calibration tensor file",
)
case(
    "calibration-out-of-range",
    "export",
    EXP("export.data_type=int8", "calibration.cal_data_file=@npy-range"),
    "r.npy: calibration tensors must be finite RGB values in [0, 1]",
)
case(
    "calibration-npz-archive",
    "export",
    EXP("export.data_type=int8", "calibration.cal_data_file=@npz"),
    "c.npz: an .npz archive",
)
case(
    "unknown-data-type",
    "export",
    EXP("export.data_type=int4"),
    "config key 'export.data_type' has value 'int4'",
    "fp32, fp16, int8",
)
case("negative-map-drop", "export", EXP("export.max_map_drop=-1"), "config key 'export.max_map_drop'")
case(
    "tensorrt-11-cache",
    "export",
    EXP("export.data_type=int8", "export.tensorrt_version=11.0.0"),
    "config key 'export.tensorrt_version' has value '11.0.0'",
    "TensorRT 11 no longer reads calibration caches",
)
case(
    "tensorrt-version-not-a-version",
    "export",
    EXP("export.tensorrt_version=latest"),
    "config key 'export.tensorrt_version' has value 'latest'",
    "like 10.13.0",
)
case(
    "deepstream-video-missing",
    "export",
    EXP("export.deepstream_video=/nonexistent/road.mp4"),
    "config key 'export.deepstream_video' has value '/nonexistent/road.mp4'",
    "an existing video file or a URI",
)
case(
    "unknown-calibration-method",
    "export",
    EXP("calibration.calibration_method=kl"),
    "config key 'calibration.calibration_method' has value 'kl'",
)
case(
    "dataset-missing-writes-nothing",
    "export",
    lambda t, a: [f"checkpoint={a['ckpt']}", f"dataset.root={t / 'nowhere'}"],
    "nowhere: dataset root does not exist",
    check=lambda t, a, r: not (t / "run" / "model_fp32.onnx").exists(),
)

# ---- benchmark
case(
    "model-missing",
    "benchmark",
    lambda t, a: [f"benchmark.models={{x: {t / 'none.ckpt'}}}"],
    "config key 'benchmark.models.x'",
    "an existing transferdet checkpoint file",
)
case("no-models", "benchmark", lambda t, a: [], "config key 'benchmark.models'", "a map name -> checkpoint")
if NO_TENSORRT:
    case(
        "tensorrt-runtime-here",
        "benchmark",
        lambda t, a: [f"benchmark.models={{m: {a['ckpt']}}}", "benchmark.runtimes=[torch,tensorrt]"],
        "config key 'benchmark.runtimes' has value 'tensorrt'",
        NO_TENSORRT.split(":")[0],
    )
case(
    "unknown-benchmark-runtime",
    "benchmark",
    lambda t, a: [f"benchmark.models={{m: {a['ckpt']}}}", "benchmark.runtimes=[openvino]"],
    "config key 'benchmark.runtimes",
    "torch, onnxruntime, tensorrt",
)
case(
    "exported-not-a-folder",
    "benchmark",
    lambda t, a: [f"benchmark.models={{m: {a['ckpt']}}}", f"benchmark.exported={{m: {t / 'nothing'}}}"],
    "config key 'benchmark.exported.m'",
    "the run directory of `transferdet export`",
)
case(
    "threads-not-a-number",
    "benchmark",
    lambda t, a: [f"benchmark.models={{m: {a['ckpt']}}}", "benchmark.threads=many"],
    "config key 'benchmark.threads' has value 'many'",
    "an integer",
)
case(
    "threads-zero",
    "benchmark",
    lambda t, a: [f"benchmark.models={{m: {a['ckpt']}}}", "benchmark.threads=0"],
    "config key 'benchmark.threads' has value 0",
)
case(
    "workers-zero",
    "benchmark",
    lambda t, a: [f"benchmark.models={{m: {a['ckpt']}}}", "benchmark.workers=0"],
    "config key 'benchmark.workers' has value 0",
)
case(
    "batch-size-zero",
    "benchmark",
    lambda t, a: [f"benchmark.models={{m: {a['ckpt']}}}", "benchmark.batch_sizes=[0]"],
    "config key 'benchmark.batch_sizes[0]' has value 0",
)

# ---- pipeline
case(
    "synthesize-maybe",
    "pipeline",
    lambda t, a: [f"dataset.root={t / 'ds'}", "pipeline.synthesize=maybe"],
    "config key 'pipeline.synthesize' has value 'maybe'",
    "auto",
)
case(
    "retrain-unknown-key",
    "pipeline",
    lambda t, a: [f"dataset.root={t / 'ds'}", "pipeline.retrain={training: {num_epoch: 3}}"],
    "config key 'pipeline.retrain'",
    "num_epoch",
)
case(
    "retrain-factor-zero",
    "pipeline",
    lambda t, a: [f"dataset.root={t / 'ds'}", "pipeline.retrain_epochs_factor=0"],
    "config key 'pipeline.retrain_epochs_factor' has value 0",
)
case(
    "no-validation-images",
    "pipeline",
    lambda t, a: [f"dataset.root={t / 'ds'}", "dataset.val_split=0"],
    "config key 'dataset.val_split' has value 0",
    "above 0 for the pipeline",
    check=lambda t, a, r: not (t / "ds").exists(),
)
case(
    "bad-value-in-a-later-stage",
    "pipeline",
    lambda t, a: [f"dataset.root={t / 'ds'}", "export.data_type=int4"],
    "config key 'export.data_type' has value 'int4'",
    check=lambda t, a, r: not (t / "ds").exists(),
)  # refused before the first stage ran


# ---- import-spec (its own command line)
def tutorial_spec(t: Path, root: str) -> Path:
    """The repository's TLT-tutorial-style spec with ``root`` (as written in the spec) as its image folder."""
    body = (Path(__file__).parents[1] / "data" / "tlt_tutorial_style_spec.txt").read_text(encoding="utf-8")
    return text(t / "spec.txt", body.replace("“@DATASET_ROOT@”", root))


case(
    "spec-missing",
    "import-spec",
    lambda t, a: [str(t / "none.txt"), "--output-dir", str(t / "conf")],
    "config key 'spec'",
    "an existing TLT/TAO DetectNet_v2 experiment spec",
)
case(
    "spec-list-cut-off",
    "import-spec",
    lambda t, a: [str(spec_file(t, "model_config { freeze_blocks: [0, 1")), "--output-dir", str(t / "conf")],
    "spec.txt:1: the list of 'freeze_blocks' opened at line 1 has no closing ']'",
)
case(
    "spec-nested-too-deep",
    "import-spec",
    lambda t, a: [str(spec_file(t, "a { " * 60 + "} " * 60)), "--output-dir", str(t / "conf")],
    "spec.txt:1: blocks nested more than 32 deep",
)
case(
    "spec-not-utf8",
    "import-spec",
    lambda t, a: [
        str((t / "spec.txt").write_bytes(b'model_config { arch: "\xff" }') and t / "spec.txt"),
        "--output-dir",
        str(t / "conf"),
    ],
    "spec.txt: cannot read the spec as UTF-8 text",
)
case(
    "spec-with-an-environment-interpolation",
    "import-spec",
    lambda t, a: [
        str(tutorial_spec(t, '"${oc.env:TRANSFERDET_TEST_SECRET}"')),
        "--output-dir",
        str(t / "conf"),
    ],
    ok=True,
    check=lambda t, a, r: imported_root(t) == "${oc.env:TRANSFERDET_TEST_SECRET}",
)
case(
    "spec-with-a-windows-path",
    "import-spec",
    lambda t, a: [
        str(tutorial_spec(t, '"C:\\\\data\\\\kitti\\\\Users"')),
        "--output-dir",
        str(t / "conf"),
    ],
    ok=True,
    check=lambda t, a, r: imported_root(t) == "C:\\data\\kitti\\Users",
)

# ---- where outputs go
case(
    "run-dir-under-a-file",
    "evaluate",
    lambda t, a: [f"checkpoint={a['ckpt']}", f"hydra.run.dir={text(t / 'f')}/run"],
    "config key 'hydra.run.dir'",
    "is a file, not a folder",
)


# ---------------------------------------------------------------- running the catalogue
@pytest.fixture(scope="module")
def art(tmp_path_factory, trained):
    """The suite's trained checkpoint with its dataset, a pruned copy, its ONNX export, ResNet state dicts."""
    base = tmp_path_factory.mktemp("artefacts")
    r = run_cli("prune", f"checkpoint={trained['ckpt']}", "pruning.target_ratio=0.3", f"hydra.run.dir={base / 'prune'}")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("export", f"checkpoint={trained['ckpt']}", "export.parity_images=2", f"hydra.run.dir={base / 'export'}")
    assert r.returncode == 0, r.stderr[-2000:]
    torch.save(torchvision.models.resnet18().state_dict(), base / "resnet18.pth")
    torch.save(torchvision.models.resnet34().state_dict(), base / "resnet34.pth")
    labels = folder(base / "labels")
    for f in sorted((trained["root"] / "label_2").iterdir())[:3]:
        (labels / f.name).write_text(f.read_text())
    return {
        "base": base,
        "root": trained["root"],
        "ckpt": trained["ckpt"],
        "pruned": base / "prune" / "pruned.ckpt",
        "onnx": base / "export" / "model_fp32.onnx",
        "labels": labels,
        "images": trained["images"],
        "resnet18": base / "resnet18.pth",
        "resnet34": base / "resnet34.pth",
    }


def _expand(arg: str, t: Path, a: dict) -> str:
    """Placeholders of the table: @ (the trained checkpoint), @tmp, and calibration files made on demand."""
    key, _, value = arg.partition("=")
    made = {
        "@": lambda: a["ckpt"],
        "@npy-shape": lambda: npy(t / "c.npy", np.zeros((2, 3, 32, 32), np.float32)),
        "@npy-object": lambda: npy(t / "o.npy", np.array([{"a": 1}], dtype=object)),
        "@npy-range": lambda: npy(t / "r.npy", np.full((2, 3, 64, 128), 255, np.float32)),
        "@npz": lambda: npz(t / "c.npz"),
    }
    if value in made:
        return f"{key}={made[value]()}"
    return arg.replace("=@tmp/", f"={t}/")


def _files(root: Path, skip: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and skip not in p.parents and not p.is_symlink()
    }


def test_the_catalogue_has_100_cases_across_every_task():
    tasks = {c.task for c in CASES.values()}
    assert len(CASES) >= 100, len(CASES)
    assert tasks >= {
        "synth",
        "convert",
        "train",
        "evaluate",
        "infer",
        "prune",
        "calibrate",
        "export",
        "benchmark",
        "pipeline",
        "import-spec",
    }


# each task's first case runs in a fresh interpreter, as a user's command does; the others in a fork of a warm
# process (tests/warm_cli.py), which runs the same code without paying the imports again
FRESH = {c.task: name for name, c in reversed(CASES.items())}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(cli, art, tmp_path, name, monkeypatch):
    c = CASES[name]
    run = tmp_path / "run"
    args = [_expand(x, tmp_path, art) for x in c.args(tmp_path, art)]
    if c.task != "import-spec" and not any(x.startswith("hydra.run.dir=") for x in args):
        args.append(f"hydra.run.dir={run}")
    before = _files(tmp_path, run)
    monkeypatch.setenv("TRANSFERDET_TEST_SECRET", "do-not-write-me")
    env = {"TRANSFERDET_TEST_SECRET": "do-not-write-me", "TORCH_HOME": str(tmp_path / "torch")}
    r = cli(c.task, *args, env=env, timeout=300, fresh=FRESH[c.task] == name)
    if c.ok:
        assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    else:
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith(f"transferdet {c.task}: error: "), r.stderr[-2000:]
        for fragment in c.expect:
            assert fragment in lines[0], f"{fragment!r} not in: {lines[0]}"
        assert not (run / "metrics.json").exists()
        assert _files(tmp_path, run) == before  # nothing of the user's changed, nothing new half-written
    leftovers = [p for p in tmp_path.rglob("*.tmp")]
    assert not leftovers, leftovers
    assert "do-not-write-me" not in r.stdout + r.stderr
    if c.check:
        assert c.check(tmp_path, art, r) is not False


# ---------------------------------------------------------------- a full disk, Ctrl-C
def _run_limited(args: list[str], limit: int):
    """``transferdet ARGS`` where no file may grow beyond ``limit`` bytes (writes fail with EFBIG, like ENOSPC)."""
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


def _one_line(r, task: str, *fragments: str) -> None:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"transferdet {task}: error: "), r.stderr[-2000:]
    assert all(f in lines[0] for f in fragments), lines[0]


def test_disk_full_while_writing_a_dataset(tmp_path):
    root = tmp_path / "ds"
    # 20 kB: room for Hydra's files of the run (about 5 kB, more with a long path), not for a 384x128 image
    r = _run_limited(
        ["synth", f"dataset.root={root}", "synth.num_images=3", f"hydra.run.dir={tmp_path / 'run'}"], 20_000
    )
    assert r.returncode == 2 and not root.exists()  # no half-written dataset under the dataset's name
    _one_line(r, "synth", "cannot be written", "File too large", "nothing was left under this name")


def test_disk_full_before_the_task_starts(tmp_path):
    root, run = tmp_path / "ds", tmp_path / "run"
    r = _run_limited(["synth", f"dataset.root={root}", "synth.num_images=3", f"hydra.run.dir={run}"], 500)
    assert r.returncode == 2 and not root.exists()
    _one_line(r, "synth", f"the run directory {run} cannot be written", "File too large", "the task did not start")


def test_disk_full_while_writing_a_checkpoint(tmp_path, trained):
    run = tmp_path / "run"
    r = _run_limited(
        ["train", f"dataset.root={trained['root']}", *TRAIN, "training.num_epochs=1", f"hydra.run.dir={run}"], 2_000_000
    )
    assert r.returncode == 2
    _one_line(r, "train", "last.ckpt", "cannot be written", "is the disk full")
    assert not list((run / "checkpoints").glob("*.ckpt")) and not (run / "metrics.json").exists()


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, trained):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transferdet",
            "train",
            f"dataset.root={trained['root']}",
            *TRAIN,
            "training.num_epochs=50",
            f"hydra.run.dir={run}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # generous limits: a CI machine busy with other work starts Python and Lightning slowly
    deadline = time.monotonic() + 300
    while not (run / "train.log").is_file() or "model:" not in (run / "train.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "interrupted" in err
    assert not list(run.rglob("*.tmp")) and not (run / "metrics.json").exists()
