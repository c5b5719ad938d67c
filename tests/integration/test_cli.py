"""The CLI as a user runs it: synth, convert, reports, run directories, help, multirun."""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import run_cli
from transferdet.data.kitti import read_label_file


@pytest.fixture
def cli():
    """Every run of this module in a new interpreter: the commands exactly as a user types them."""
    return functools.partial(run_cli, fresh=True)


def _label_counts(root: Path) -> dict[str, Counter]:
    """Objects per class, counted straight from the label files, per split of the manifest."""
    manifest = json.loads((root / "converted" / "manifest.json").read_text())
    folds = manifest["partition"]["folds"]
    val = set(folds[str(manifest["partition"]["validation_fold"])])
    out = {"train": Counter(), "val": Counter()}
    for p in (root / "label_2").glob("*.txt"):
        for o in read_label_file(p):
            out["val" if p.stem in val else "train"][o.cls] += 1
    return out


def test_synth_then_convert_report_matches_labels_and_is_reproducible(tmp_path, cli):
    root = tmp_path / "ds"
    r = cli("synth", f"dataset.root={root}", "synth.num_images=200", f"hydra.run.dir={tmp_path / 'run_synth'}")
    assert r.returncode == 0, r.stderr
    assert len(list((root / "image_2").glob("*.png"))) == 200
    synth_metrics = json.loads((tmp_path / "run_synth" / "metrics.json").read_text())
    assert synth_metrics["dataset/num_images"] == 200

    r = cli("convert", f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'run1'}")
    assert r.returncode == 0, r.stderr
    conv = root / "converted"
    report = json.loads((conv / "report.json").read_text())
    labels = _label_counts(root)
    for split in ("train", "val"):
        s = report["splits"][split]
        assert s["num_objects"] == {c: labels[split][c] for c in ("car", "pedestrian", "cyclist")}
        assert s["num_ignore_regions"] == labels[split]["dontcare"]
    assert report["splits"]["val"]["num_images"] == 40 and report["splits"]["train"]["num_images"] == 160
    metrics = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert metrics["dataset/num_images"] == 200
    assert metrics["dataset/num_objects/car"] == labels["train"]["car"] + labels["val"]["car"]
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    md = (conv / "report.md").read_text()
    assert "| train | 160 |" in md and "box_heights.png" in md
    assert (conv / "box_heights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "run1" / "config.yaml").is_file()

    before = {p.relative_to(conv): p.read_bytes() for p in conv.rglob("*") if p.is_file()}
    r = cli("convert", f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'run2'}")
    assert r.returncode == 0, r.stderr
    after = {p.relative_to(conv): p.read_bytes() for p in conv.rglob("*") if p.is_file()}
    assert after[Path("manifest.json")] == before[Path("manifest.json")]
    assert after == before  # every file byte-identical, shards and plot included


def test_warnings_are_reported_by_file_and_line(tmp_path, cli, synth_root):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(synth_root, root)
    label = root / "label_2" / "000003.txt"
    label.write_text(label.read_text() + "car 0 0 0 50 20 40 30 0 0 0 0 0 0 0\n")
    n = len(label.read_text().splitlines())
    (root / "label_2" / "000004.txt").unlink()
    r = cli("convert", f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    warnings = (root / "converted" / "warnings.txt").read_text()
    assert f"{label}:{n}: car: empty box" in warnings
    assert "000004.png: image has no label file" in warnings
    report = json.loads((root / "converted" / "report.json").read_text())
    assert report["num_warnings"] == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["dataset/num_warnings"] == 2


def test_help_lists_every_task(cli):
    r = cli("--help")
    assert r.returncode == 0
    for task in (
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
    ):
        assert f"\n  {task} " in r.stdout


def test_task_help_is_hydras(cli):
    r = cli("convert", "--help")
    assert r.returncode == 0 and "transferdet convert" in r.stdout and "dataset:" in r.stdout


def test_multirun_gives_each_job_its_run_directory(cli, tmp_path):
    r = cli(
        "synth",
        "-m",
        f"dataset.root={tmp_path}/ds_${{synth.seed}}",
        "synth.num_images=3",
        "synth.seed=1,2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert r.returncode == 0, r.stderr
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
        assert metrics["dataset/num_images"] == 3
    a, b = (tmp_path / "ds_1" / "image_2" / "000000.png"), (tmp_path / "ds_2" / "image_2" / "000000.png")
    assert a.read_bytes() != b.read_bytes()


def test_default_run_directory_is_under_outputs_and_relative_roots_work(cli, tmp_path):
    r = cli("synth", "dataset.root=data/tiny", "synth.num_images=6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / "outputs" / "synth").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file() and (runs[0] / "config.yaml").is_file()
    assert len(list((tmp_path / "data" / "tiny" / "image_2").glob("*.png"))) == 6
    r = cli("convert", "dataset.root=data/tiny", cwd=tmp_path)  # a root relative to the working directory
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "data" / "tiny" / "converted" / "manifest.json").read_text())
    assert manifest["source"]["root"] == str((tmp_path / "data" / "tiny").resolve())


def test_hydra_flags_anywhere_on_the_line(cli, tmp_path):
    """The task word travels as an override next to the user's: a trailing -m or --cfg job keeps working."""
    r = cli("synth", "synth.num_images=2", "--cfg", "job")
    assert r.returncode == 0 and "task_name: synth" in r.stdout and "num_images: 2" in r.stdout, r.stderr
    r = cli(
        "synth",
        f"dataset.root={tmp_path}/ds_${{synth.seed}}",
        "synth.num_images=2",
        "synth.seed=3,4",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "-m",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ds_3" / "synth.json").is_file() and (tmp_path / "ds_4" / "synth.json").is_file()


def test_synth_recognises_a_dataset_from_before_the_style_settings(tmp_path, cli):
    """A synth.json written before the textured style existed names the same dataset as today's defaults:
    the pipeline's second run reuses it instead of refusing the folder; synth=kitti is another dataset."""
    root = tmp_path / "ds"
    assert cli("synth", f"dataset.root={root}", "synth.num_images=2").returncode == 0
    record = json.loads((root / "synth.json").read_text())
    assert record["settings"]["style"] == "flat"
    for key in ("style", "object_height_median", "object_height_spread", "blur_max", "jpeg_quality_min"):
        del record["settings"][key]
    (root / "synth.json").write_text(json.dumps(record))
    r = cli("synth", f"dataset.root={root}", "synth.num_images=2")
    assert r.returncode == 0 and "already holds this synthetic dataset" in r.stdout + r.stderr, r.stderr[-2000:]
    r = cli("synth", f"dataset.root={root}", "synth=kitti", "synth.num_images=2")
    assert r.returncode == 2 and "synth.overwrite=true" in r.stderr, r.stderr[-2000:]
