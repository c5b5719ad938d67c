"""Real KITTI frames (../shared/data/kitti_real: 50 training frames, CC BY-NC-SA 3.0, never copied into this
repository): convert, a few training steps at KITTI's resolution, evaluation by VOC and by KITTI's protocol,
inference with annotated pictures. Skipped where the folder is absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kitti_real"
pytestmark = pytest.mark.skipif(not (REAL / "label_2").is_dir(), reason=f"no real KITTI frames at {REAL}")
KITTI = ["dataset=kitti", f"dataset.root={REAL}"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The real frames converted into a temporary folder (the shared folder stays read-only to us)."""
    out = tmp_path_factory.mktemp("real") / "converted"
    r = run_cli("convert", *KITTI, f"dataset.converted_dir={out}", f"hydra.run.dir={out.parent / 'convert'}")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_convert_reads_real_labels_cleanly(converted):
    report = json.loads((converted / "report.json").read_text())
    assert report["num_warnings"] == 0, (converted / "warnings.txt").read_text()[:2000]
    assert report["classes"] == ["car", "pedestrian", "cyclist"]
    assert report["unmapped_classes"] == {"misc": 2, "tram": 4, "truck": 7}  # left out, and said so
    splits = report["splits"].values()
    assert sum(s["num_images"] for s in splits) == 50
    counts = {c: sum(s["num_objects"][c] for s in splits) for c in report["classes"]}
    # Car 147, Pedestrian 23 (no Person_sitting here), Cyclist 7; Van 14 and DontCare 145 are ignore regions
    assert counts == {"car": 147, "pedestrian": 23, "cyclist": 7}, counts
    assert sum(s["num_ignore_regions"] for s in splits) == 14 + 145


def _predictions_from_labels(out: Path, shift: float = 0.0) -> Path:
    """Prediction files made of the ground truth's Car/Pedestrian/Cyclist lines (score 1), boxes moved by ``shift``
    of their width."""
    out.mkdir()
    for label in sorted((REAL / "label_2").glob("*.txt")):
        lines = []
        for line in label.read_text().splitlines():
            f = line.split()
            if f[0] in ("Car", "Pedestrian", "Cyclist"):
                x1, x2 = float(f[4]), float(f[6])
                dx = shift * (x2 - x1)
                f[4], f[6] = f"{x1 + dx:.2f}", f"{x2 + dx:.2f}"
                lines.append(" ".join([*f, "1.0"]))
        (out / label.name).write_text("".join(f"{x}\n" for x in lines))
    return out


def test_kitti_protocol_on_real_labels(tmp_path):
    """The ground truth scored as predictions: VOC AP 1, KITTI's car AP 1 at every difficulty (147 cars: enough
    for every recall point); boxes moved by 20% of their width fall below Car's 0.7 IoU: KITTI car AP 0."""
    for name, shift in (("perfect", 0.0), ("shifted", 0.2)):
        preds = _predictions_from_labels(tmp_path / name, shift)
        r = run_cli(
            "evaluate",
            *KITTI,
            f"predictions={preds}",
            f"labels={REAL / 'label_2'}",
            "evaluation.protocol=kitti",
            f"hydra.run.dir={tmp_path / ('ev_' + name)}",
        )
        assert r.returncode == 0, r.stderr[-3000:]
        m = json.loads((tmp_path / ("ev_" + name) / "metrics.json").read_text())
        kitti = [m[f"kitti/AP_{d}/car"] for d in ("easy", "moderate", "hard")]
        if shift == 0:
            assert m["AP/car"] == pytest.approx(1.0) and kitti == pytest.approx([1.0, 1.0, 1.0])
            assert 0 < m["kitti/AP_moderate/pedestrian"] <= 1
        else:
            assert kitti == [0.0, 0.0, 0.0] and m["AP/pedestrian"] > 0.5  # 0.8 IoU passes Pedestrian's 0.5


def test_training_steps_at_kitti_resolution_then_evaluate_and_infer(converted, tmp_path):
    run = tmp_path / "train"
    r = run_cli(
        "train",
        *KITTI,
        f"dataset.converted_dir={converted}",
        "model=resnet10",
        "augmentation.preprocessing.output_image_width=1248",
        "augmentation.preprocessing.output_image_height=384",
        "training.num_epochs=1",
        "training.batch_size_per_gpu=2",
        "training.num_workers=0",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=2",
        "callbacks.progress_bar=null",
        "evaluation.protocol=kitti",
        f"hydra.run.dir={run}",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [v for k, v in json.loads((run / "metrics.json").read_text()).items() if "loss" in k]
    assert losses and all(np.isfinite(losses))
    ckpt = run / "checkpoints" / "last.ckpt"

    r = run_cli("evaluate", f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'ev'}", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for d in ("easy", "moderate", "hard"):  # the protocol recorded in the model applies
        assert 0 <= m[f"kitti/AP_{d}/car"] <= 1 and f"kitti/mAP_{d}" in m
    assert m["num_images"] == json.loads((converted / "report.json").read_text())["splits"]["val"]["num_images"]

    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((REAL / "image_2").glob("*.png"))[:3]:
        (images / p.name).symlink_to(p)
    r = run_cli("infer", f"checkpoint={ckpt}", f"input={images}", f"hydra.run.dir={tmp_path / 'infer'}", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for p in sorted(images.iterdir()):
        drawn = next((tmp_path / "infer").rglob(f"{p.stem}*.png"), None) or next(
            (tmp_path / "infer").rglob(f"{p.stem}*.jpg")
        )
        assert Image.open(drawn).size == Image.open(p).size  # annotated at the image's own size
        assert next((tmp_path / "infer").rglob(f"{p.stem}.txt")).is_file()


def test_pretrain_on_kitti_like_scenes_then_finetune_on_real_frames(converted, tmp_path):
    """The documented recipe in miniature: synth=kitti scenes, experiment=kitti_pretrain on them, and
    experiment=kitti_finetune on the real frames starting from that model, every weight taken."""
    r = run_cli("synth", "synth=kitti", "synth.num_images=10", "dataset.root=data/synthetic_kitti", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    short = ["training.num_epochs=1", "training.num_workers=0", "+trainer.limit_train_batches=2"]
    short += ["+trainer.limit_val_batches=1", "callbacks.progress_bar=null"]
    r = run_cli("train", "experiment=kitti_pretrain", *short, f"hydra.run.dir={tmp_path / 'pre'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    pretrained = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    r = run_cli(
        "train",
        "experiment=kitti_finetune",
        f"dataset.root={REAL}",
        f"dataset.converted_dir={converted}",
        f"model.pretrained_model_file={pretrained}",
        *short,
        f"hydra.run.dir={tmp_path / 'fine'}",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "fine" / "train.log").read_text()
    assert "tensors loaded" in log, log[-3000:]  # strict loading: every tensor of the model, or an error
    assert "starting from random weights" not in log
    losses = [v for k, v in json.loads((tmp_path / "fine" / "metrics.json").read_text()).items() if "loss" in k]
    assert losses and all(np.isfinite(losses))
