"""``transferdet pipeline`` end to end on tiny data: every stage, the report, resuming after a kill
during retraining, and a failing stage that stops the run without touching the finished stages."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import compose_task, run_cli, start_cli
from transferdet.pipeline.runner import config_digest, stage_config
from transferdet.pipeline.stages import STAGES, stage_dirs

TINY = [
    "synth.num_images=40",
    "synth.image_width=128",
    "synth.image_height=64",
    "augmentation.preprocessing.output_image_width=128",
    "augmentation.preprocessing.output_image_height=64",
    "model=resnet10",
    "training.num_epochs=2",
    "training.checkpoint_interval=1",
    "training.num_workers=0",
    "training.batch_size_per_gpu=8",
    "callbacks.progress_bar=null",
    "pruning.target_ratio=0.3",
    "calibration.batches=2",
    "calibration.batch_size=4",
    "export.parity_images=4",
    # two epochs teach a model next to nothing: the INT8 gate is exercised by test_export, not here
    "export.max_map_drop=100",
    "benchmark.batch_sizes=[1]",
    "benchmark.repeats=2",
    # retraining runs long enough to be killed in the middle
    "pipeline.retrain={training: {num_epochs: 6}}",
]
SECTIONS = [
    "## Headline",
    "## Stages",
    "## Dataset",
    "## Training",
    "## Accuracy (validation split)",
    "## Pruning",
    "## Export and parity",
    "## Speed",
]


def _mtimes(folder: Path) -> dict[str, float]:
    return {p.name: (p / "metrics.json").stat().st_mtime for p in folder.iterdir() if (p / "metrics.json").is_file()}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A pipeline killed (SIGKILL) once retraining has written a checkpoint, then run again to the end."""
    base = tmp_path_factory.mktemp("pipeline")
    run_dir = base / "run"
    args = [f"dataset.root={base / 'data'}", *TINY, f"hydra.run.dir={run_dir}"]
    proc = start_cli("pipeline", *args, log=base / "killed.log")
    ckpt = run_dir / "06_retrain" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 400
    while not ckpt.exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.join()
    assert ckpt.exists(), "the pipeline never reached retraining"
    before = _mtimes(run_dir)
    r = run_cli("pipeline", *args, timeout=600)
    return run_dir, before, r


def test_kill_during_retraining_resumes_at_retraining(resumed):
    run_dir, before, r = resumed
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    after = _mtimes(run_dir)
    for i, stage in enumerate(("synth", "convert", "train", "evaluate", "prune"), 1):
        assert re.search(rf"\] {stage}\s+complete earlier", out), stage
        assert after[f"{i:02d}_{stage}"] == before[f"{i:02d}_{stage}"]
    assert "retrain         resuming an interrupted run" in out
    assert f"resuming from {run_dir / '06_retrain' / 'checkpoints' / 'last.ckpt'}" in out
    assert "06_retrain" not in before  # it had not finished when it was killed
    metrics = json.loads((run_dir / "06_retrain" / "metrics.json").read_text())
    assert metrics["train/epochs"] == 6


def test_report_has_every_section_and_picture(resumed):
    run_dir, _, r = resumed
    assert r.returncode == 0
    report = (run_dir / "report.md").read_text()
    positions = [report.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (run_dir / picture).is_file() and (run_dir / picture).stat().st_size > 1000, picture
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    for name in (
        "training_curves.png",
        "speed_vs_map.png",
        "04_evaluate/pr_curves.png",
        "07_evaluate_pruned/pr_curves.png",
        "10_evaluate_int8/pr_curves.png",
        "11_benchmark/benchmark.png",
        "02_convert/box_heights.png",
    ):
        assert name in pictures
    for stage, folder in stage_dirs(run_dir).items():
        record = json.loads((folder / "stage.json").read_text())
        assert record["status"] == "complete", stage
        assert (folder / "metrics.json").is_file() and (folder / "config.yaml").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    pruned = json.loads((run_dir / "05_prune" / "metrics.json").read_text())
    assert (
        metrics["pipeline/prune_ratio"] == pytest.approx(pruned["prune/ratio"])
        and metrics["pipeline/prune_ratio"] < 0.35
    )
    evaluated = json.loads((run_dir / "10_evaluate_int8" / "metrics.json").read_text())
    assert metrics["pipeline/mAP_int8"] == pytest.approx(evaluated["mAP"])
    # one INT8 model, one INT8 mAP: the benchmark timed and scored the file the export stage wrote
    rows = json.loads((run_dir / "11_benchmark" / "benchmark.json").read_text())["rows"]
    int8 = [x for x in rows if (x["model"], x["runtime"], x["precision"]) == ("pruned", "onnxruntime", "int8")]
    assert int8 and all(x["file"] == str(run_dir / "09_export" / "model_int8_onnxruntime.onnx") for x in int8)
    assert all(x["mAP"] == evaluated["mAP"] for x in int8)
    assert "| pruned | onnxruntime | int8 | 1 |" in report and f"{evaluated['mAP']:.4f}" in report
    assert "| 6 | retrain | complete |" in report
    assert (run_dir / "09_export" / "model_int8_onnxruntime.onnx").is_file() and (
        run_dir / "09_export" / "calibration.cache"
    ).is_file()


def test_rerun_of_a_finished_pipeline_runs_nothing(resumed, tmp_path):
    run_dir, _, _ = resumed
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = _mtimes(copy)
    r = run_cli("pipeline", f"dataset.root={run_dir.parent / 'data'}", *TINY, f"hydra.run.dir={copy}", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (r.stdout + r.stderr).count("complete earlier") == len(STAGES)
    after = _mtimes(copy)
    assert {k: v for k, v in after.items() if k in before} == before


def test_failing_stage_stops_the_pipeline_and_keeps_finished_stages(resumed, tmp_path):
    run_dir, _, _ = resumed
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = _mtimes(copy)
    # the export stage now fails: its calibration file is not a calibration file
    (copy / "08_calibrate" / "calibration.npy").write_bytes(b"not an array")
    # and a changed export setting makes it run again (an export-only key: calibrate's config stays the same)
    r = run_cli(
        "pipeline",
        f"dataset.root={run_dir.parent / 'data'}",
        *TINY,
        "export.parity_images=3",
        f"hydra.run.dir={copy}",
        timeout=300,
    )
    assert r.returncode == 2
    assert "stage 'export' failed" in r.stderr and "calibration.npy" in r.stderr and "Traceback" not in r.stderr
    after = _mtimes(copy)
    for stage in (
        "01_synth",
        "02_convert",
        "03_train",
        "04_evaluate",
        "05_prune",
        "06_retrain",
        "07_evaluate_pruned",
        "08_calibrate",
    ):
        assert after[stage] == before[stage]
    assert "09_export" not in after  # the failed stage has no metrics.json that would make it look complete
    assert json.loads((copy / "09_export" / "stage.json").read_text())["status"] == "running"


def test_stage_config_is_the_tasks_own_shape():
    cfg = compose_task("pipeline", ["pipeline.retrain={training: {num_epochs: 7}}", "benchmark.repeats=3"])
    dirs = stage_dirs(Path("/run"))
    stages = {s.name: s for s in STAGES}
    train = stage_config(cfg, stages["train"], dirs)
    assert set(train) == set(compose_task("train")) and train.task_name == "train"
    assert train.training.resume == "auto"
    retrain = stage_config(cfg, stages["retrain"], dirs)
    assert retrain.training.num_epochs == 7 and train.training.num_epochs == cfg.training.num_epochs
    assert retrain.model.pruned_checkpoint == "/run/05_prune/pruned.ckpt"
    bench = stage_config(cfg, stages["benchmark"], dirs)
    assert set(bench) == set(compose_task("benchmark")) and bench.benchmark.repeats == 3
    # a benchmark setting changes the benchmark stage's config, not training's
    other = compose_task("pipeline", ["pipeline.retrain={training: {num_epochs: 7}}", "benchmark.repeats=4"])

    def digest(c):
        return config_digest(c, Path("/run"))

    assert digest(stage_config(other, stages["train"], dirs)) == digest(train)
    assert digest(stage_config(other, stages["benchmark"], dirs)) != digest(bench)


def test_retrain_epochs_follow_the_factor_unless_set():
    from transferdet.errors import ConfigError

    retrain = next(s for s in STAGES if s.name == "retrain")
    dirs = stage_dirs(Path("/run"))
    default = compose_task("pipeline")
    assert default.training.num_epochs == 8 and default.pipeline.retrain_epochs_factor == 1.25
    assert stage_config(default, retrain, dirs).training.num_epochs == 10
    cfg = compose_task("pipeline", ["training.num_epochs=40", "pipeline.retrain_epochs_factor=0.5"])
    assert stage_config(cfg, retrain, dirs).training.num_epochs == 20
    cfg = compose_task("pipeline", ["pipeline.retrain={training: {num_epochs: 3}}"])
    assert stage_config(cfg, retrain, dirs).training.num_epochs == 3
    for bad in ("0", "-1", "two"):
        cfg = compose_task("pipeline", [f"pipeline.retrain_epochs_factor={bad}"])
        with pytest.raises(ConfigError, match=r"pipeline\.retrain_epochs_factor"):
            stage_config(cfg, retrain, dirs)


def test_distill_makes_the_unpruned_model_the_retraining_teacher():
    from transferdet.errors import ConfigError

    retrain = next(s for s in STAGES if s.name == "retrain")
    dirs = stage_dirs(Path("/run"))
    assert stage_config(compose_task("pipeline"), retrain, dirs).training.distillation.teacher is None
    taught = stage_config(compose_task("pipeline", ["pipeline.distill=true"]), retrain, dirs)
    assert taught.training.distillation.teacher == "/run/03_train/checkpoints/last.ckpt"
    with pytest.raises(ConfigError, match=r"pipeline\.distill"):
        stage_config(compose_task("pipeline", ["pipeline.distill=maybe"]), retrain, dirs)


def test_retrain_overrides_with_an_unknown_key_name_the_key():
    from transferdet.errors import ConfigError

    cfg = compose_task("pipeline", ["pipeline.retrain={training: {num_epoch: 7}}"])
    with pytest.raises(ConfigError, match=r"pipeline\.retrain.*num_epoch"):
        stage_config(cfg, next(s for s in STAGES if s.name == "retrain"), stage_dirs(Path("/run")))


def test_every_stage_config_validates_before_any_stage_has_run(tmp_path):
    """The pipeline checks every stage's config up front, when no checkpoint of a later stage exists yet."""
    from transferdet.config.validate import validate

    cfg = compose_task("pipeline", ["postprocessing.target_class_config.car.clustering_config.dbscan_eps=0.33"])
    dirs = stage_dirs(tmp_path / "run")
    for stage in STAGES:
        validate(stage_config(cfg, stage, dirs), stage.task)
    train, evaluate = (stage_config(cfg, s, dirs) for s in STAGES if s.name in ("train", "evaluate"))
    # the training stage gets the pipeline's settings; the evaluate stage takes them from the checkpoint
    assert train.postprocessing.target_class_config.car.clustering_config.dbscan_eps == 0.33
    assert dict(evaluate.postprocessing) == {} and dict(evaluate.augmentation.preprocessing) == {}
