"""Training through the CLI: DDP on CPU, resume after a kill, W&B offline, checkpoints."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import run_cli, small_synth_config, start_cli, wandb_records
from transferdet.data.synth import generate

TINY = [
    "model=resnet10",
    "training.num_workers=0",
    "training.batch_size_per_gpu=4",
    "augmentation.preprocessing.output_image_width=128",
    "augmentation.preprocessing.output_image_height=64",
    "callbacks.progress_bar=null",
]


def test_ddp_two_cpu_processes_see_disjoint_data_and_checkpoint_once(cli, tiny_root, tmp_path):
    run = tmp_path / "run"
    r = cli(
        "train",
        f"dataset.root={tiny_root}",
        *TINY,
        "trainer=ddp_cpu",
        "training.num_epochs=2",
        "training.checkpoint_interval=1",
        "+callbacks.data_order={_target_: transferdet.callbacks.DataOrderLog}",
        f"hydra.run.dir={run}",
        timeout=600,
        fresh=True,  # Lightning re-launches the command line for the second process
    )
    assert r.returncode == 0, r.stderr[-3000:]
    order = {}
    for rank in (0, 1):
        rows = [line.split("\t") for line in (run / "data_order" / f"rank{rank}.tsv").read_text().splitlines()]
        order[rank] = {(int(e), int(i)) for e, _, idx in rows for i in idx.split(",")}
    for epoch in (0, 1):
        a = {i for e, i in order[0] if e == epoch}
        b = {i for e, i in order[1] if e == epoch}
        assert a and b and a.isdisjoint(b) and a | b == set(range(32))
    saves = [line for log in run.glob("*.log") for line in log.read_text().splitlines() if "saved checkpoint" in line]
    assert sorted(Path(s.split("saved checkpoint ")[1].split(" (")[0]).name for s in saves) == [
        "epoch_000.ckpt",
        "epoch_001.ckpt",
        "last.ckpt",
        "last.ckpt",
    ]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_000.ckpt", "epoch_001.ckpt", "last.ckpt"]
    assert not list(run.glob("**/.hydra/../*ddp*/"))  # one run directory, no per-rank duplicates
    assert json.loads((run / "metrics.json").read_text())["train/steps"] == 8  # 32 images / (2 x 4) x 2 epochs


def test_resume_after_kill_continues_at_the_right_epoch_with_optimizer_state(tiny_root, tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        f"dataset.root={tiny_root}",
        *TINY,
        "training.num_epochs=3",
        "training.checkpoint_interval=1",
        "evaluation.first_validation_epoch=3",
        f"hydra.run.dir={run}",
    ]
    proc = start_cli(*args, log=tmp_path / "killed.log")
    last = run / "checkpoints" / "last.ckpt"  # written after epoch_000.ckpt at the end of epoch 1
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.is_alive():
        time.sleep(0.05)
    proc.kill()
    proc.join()
    assert last.exists() and not (run / "metrics.json").exists()
    killed_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert killed_at["epoch"] in (0, 1)

    done = run_cli(*args, "training.resume=auto", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout  # ours, on the terminal; Lightning's own notice is in the log file
    assert "Restoring states from the checkpoint path" in (run / "train.log").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train/epochs"] == 3 and metrics["train/steps"] == 24  # 8 steps per epoch
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 24
    # Adam's step count and the LR schedule continued from the checkpoint instead of restarting
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {24}
    assert final["lr_schedulers"][0]["last_epoch"] == 24


def _wandb_history_keys(run_file: Path) -> set[str]:
    """History keys of an offline W&B run file."""
    return {
        item.key or "/".join(item.nested_key)
        for record in wandb_records(run_file)
        if record.WhichOneof("record_type") == "history"
        for item in record.history.item
    }


def test_wandb_offline_run_holds_the_logged_metrics(cli, tiny_root, tmp_path):
    run = tmp_path / "run"
    r = cli(
        "train",
        f"dataset.root={tiny_root}",
        *TINY,
        "training.num_epochs=1",
        "logger=wandb",
        "logger.wandb.offline=true",
        "trainer.log_every_n_steps=1",
        "augmentation.debug_samples=3",
        "augmentation.copy_paste.probability=1",
        f"hydra.run.dir={run}",
        env={"WANDB_SILENT": "true", "WANDB_API_KEY": "", "WANDB_MODE": "offline"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    keys = _wandb_history_keys(run_file)
    assert {"train/loss", "train/loss_cov/car", "train/loss_bbox/cyclist", "val/mAP", "val/AP/car"} <= keys
    assert "val/images/count" in keys  # the validation images with boxes
    assert list(run.glob("wandb/offline-run-*/files/media/images/val/*.png"))
    # augmentation.debug_samples: the augmented training samples with their boxes, for a person to look at
    assert sorted(p.name for p in (run / "augmented_samples").glob("*.png")) == [
        "sample_000.png",
        "sample_001.png",
        "sample_002.png",
    ]
    assert list((run / "val_images").glob("epoch_*.png"))
    # augmentation.copy_paste: the bank of whole objects is built once, from the training images
    assert re.search(r"copy-paste: [1-9]\d* objects from [1-9]\d* training images", (run / "train.log").read_text())
    # 1 epoch with checkpoint_interval 5: last.ckpt still holds the final state
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8


@pytest.mark.slow
def test_training_on_synthetic_data_reaches_a_measured_map(cli, tmp_path):
    """From scratch on 400 synthetic 192x64 images, 12 epochs of ResNet-10 with the quickstart settings.

    Measured on the 2-core CI machine: val mAP 0.167 (an untrained model scores ~0.000). The threshold
    leaves room for run-to-run differences of CPU kernels, not for a model that has not learnt.
    """
    root = tmp_path / "ds"
    generate(small_synth_config(400, seed=0, image_width=192, image_height=64), root, progress=False)
    r = cli(
        "train",
        f"dataset.root={root}",
        "model=resnet10",
        "training.num_workers=1",
        "training.num_epochs=12",
        "augmentation.preprocessing.output_image_width=192",
        "augmentation.preprocessing.output_image_height=64",
        "evaluation.first_validation_epoch=12",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val/mAP"] > 0.08, metrics
    assert metrics["val/AP/car"] > 0.1


def test_pruning_callback_shrinks_during_training_and_resume_restores_the_shape(cli, tiny_root, tmp_path):
    run = tmp_path / "run"
    callback = "+callbacks.pruning={_target_: transferdet.callbacks.PruningCallback, epochs: [1], target_ratio: 0.4}"
    r = cli(
        "train",
        f"dataset.root={tiny_root}",
        *TINY,
        "training.num_epochs=2",
        "training.checkpoint_interval=1",
        callback,
        f"hydra.run.dir={run}",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    first = torch.load(run / "checkpoints" / "epoch_000.ckpt", weights_only=True)
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    from transferdet.models import build_detector

    full = sum(p.numel() for p in build_detector(3, 10).parameters())  # unpruned ResNet-10 DetectNet_v2

    def params(ckpt):
        return sum(
            v.numel()
            for k, v in ckpt["state_dict"].items()  # noqa: E731
            if k.startswith("model.")
            and not k.endswith(("running_mean", "running_var", "num_batches_tracked", ".mean", ".std"))
        )

    assert final["hyper_parameters"]["spec"]["channel_plan"] and params(final) <= 0.4 * full
    assert params(first) == params(final)  # epoch 1's checkpoint was written after the pruning step
    assert final["global_step"] == 16

    # resume from the checkpoint taken after pruning: the pruned shape comes back, nothing is pruned twice
    r = cli(
        "train",
        f"dataset.root={tiny_root}",
        *TINY,
        "training.num_epochs=3",
        callback,
        f"training.resume={run / 'checkpoints' / 'epoch_000.ckpt'}",
        f"hydra.run.dir={tmp_path / 'resumed'}",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert params(resumed) == params(first) and resumed["global_step"] == 24


def test_distillation_pulls_the_student_towards_the_teacher_and_stays_out_of_checkpoints(cli, tiny_root, tmp_path):
    from transferdet.config.schema import AugmentationConfig
    from transferdet.data.augment import Augmenter
    from transferdet.data.converted import ConvertedDataset
    from transferdet.data.loader import DetectionDataset, collate
    from transferdet.detector import checkpoint

    r = cli("train", f"dataset.root={tiny_root}", *TINY, "training.num_epochs=2", f"hydra.run.dir={tmp_path / 't'}")
    assert r.returncode == 0, r.stderr[-3000:]
    teacher_ckpt = tmp_path / "t" / "checkpoints" / "last.ckpt"

    def student(name: str, *extra: str) -> Path:  # from scratch, another seed than the teacher's
        r = cli(
            "train",
            f"dataset.root={tiny_root}",
            *TINY,
            "training.num_epochs=4",
            "training.random_seed=7",
            "evaluation.first_validation_epoch=4",
            *extra,
            f"hydra.run.dir={tmp_path / name}",
        )
        assert r.returncode == 0, r.stderr[-3000:]
        return tmp_path / name / "checkpoints" / "last.ckpt"

    plain = student("plain")
    taught = student("taught", f"training.distillation.teacher={teacher_ckpt}", "training.distillation.weight=10")

    teacher = checkpoint.load(teacher_ckpt)
    preprocessing = AugmentationConfig(preprocessing=teacher.spec.preprocessing)
    data = DetectionDataset(
        ConvertedDataset(tiny_root / "converted").split("train"), Augmenter(preprocessing, train=False, seed=0)
    )
    batch = collate([data[i] for i in range(16)])
    with torch.no_grad():
        want = teacher.network(batch.images)[0]
        gap = {
            name: float((checkpoint.load(p).network(batch.images)[0] - want).abs().mean())
            for name, p in (("plain", plain), ("taught", taught))
        }
    # same seed, same batches: only the distillation differs (measured: coverage 0.026 vs 0.062 off the teacher's)
    assert gap["taught"] < 0.6 * gap["plain"], gap

    ckpt = torch.load(taught, weights_only=True)
    assert not [k for k in ckpt["state_dict"] if "teacher" in k]  # the teacher is not saved with the student
    assert ckpt["hyper_parameters"]["training"]["training"]["distillation"]["teacher"] == str(teacher_ckpt)
    history = (tmp_path / "taught" / "csv").rglob("metrics.csv")
    assert any("train/distillation" in f.read_text().splitlines()[0] for f in history)
    # a teacher that is not there: the bad-input catalogue's train/teacher-missing


def test_the_terminal_shows_our_lines_and_the_log_file_everything(cli, tiny_root, tmp_path):
    r = cli("train", f"dataset.root={tiny_root}", *TINY, "training.num_epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    shown = r.stdout + r.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    for noise in ("GPU available", "Tip:", "validation_step", "Total FLOPs", "LeafSpec", "`weights_only`"):
        assert noise not in shown, noise
    assert "GPU available" in log and "validation_step" in log  # Lightning's notices and warnings, in the file
    assert "model: ResNet-10 DetectNet_v2, 3 classes" in shown and "final val/mAP" in shown
    assert "starting from random weights" in shown  # no model.pretrained_model_file: said, not silent
    # no terminal here, so no progress bar to see: a line an epoch instead, in the log file too
    line = next(x for x in shown.splitlines() if "epoch 1/1: train/loss" in x)
    assert re.search(r"epoch 1/1: train/loss \d+\.\d{4}, \d+s an epoch$", line), line
    assert "epoch 1/1: train/loss" in log


class StepWeights(pl.Callback):
    """The network's weights after every optimizer step and at every validation (a callback the test below
    trains with: it watches the module's own validation, which runs after the callbacks' epoch end)."""

    seen: list[dict[str, torch.Tensor]] = []
    validated: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        StepWeights.seen.append(_weights(pl_module.model))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if "_outputs" not in vars(pl_module):
            network_outputs = pl_module._outputs

            def watched(images):
                if not StepWeights.validated or StepWeights.validated[-1][0] != trainer.current_epoch:
                    StepWeights.validated.append((trainer.current_epoch, _weights(pl_module.model)))
                return network_outputs(images)

            pl_module._outputs = watched


def _weights(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def test_ema_decay_validates_and_saves_the_average_and_a_resume_continues_it(tiny_root, tmp_path):
    from tests.conftest import compose_task
    from transferdet.tasks import train

    decay = 0.7

    def fit(run: Path, *extra: str) -> None:
        StepWeights.seen, StepWeights.validated = [], []
        overrides = [f"dataset.root={tiny_root}", *TINY, f"training.ema_decay={decay}", "training.num_epochs=2"]
        overrides += ["+callbacks.steps={_target_: tests.integration.test_train.StepWeights}", "logger=csv", *extra]
        train.run(compose_task("train", [*overrides, "evaluation.validation_period_during_training=1"]), run)

    def average(steps: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        avg = steps[0]  # the first step's weights, then decay * average + (1 - decay) * step
        for step in steps[1:]:
            avg = {k: decay * a + (1 - decay) * step[k] if a.is_floating_point() else a for k, a in avg.items()}
        return {k: v for k, v in avg.items() if v.is_floating_point()}

    run = tmp_path / "run"
    fit(run, "training.checkpoint_interval=1")
    assert len(StepWeights.seen) == 16
    want = average(StepWeights.seen)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    for k, v in want.items():
        torch.testing.assert_close(last["state_dict"][f"model.{k}"], v, rtol=1e-5, atol=1e-6)
        assert torch.equal(last["current_model_state"][f"model.{k}"], StepWeights.seen[-1][k])
    assert max(float((v - StepWeights.seen[-1][k]).abs().max()) for k, v in want.items()) > 1e-3

    # each validation scored the average of the steps so far (the weights checkpoints hold), not the last step's
    assert [epoch for epoch, _ in StepWeights.validated] == [0, 1]
    for (_, weights), steps in zip(StepWeights.validated, (8, 16)):
        for k, v in average(StepWeights.seen[:steps]).items():
            torch.testing.assert_close(weights[k], v, rtol=1e-5, atol=1e-6)

    # resumed after epoch 1: the average goes on from its 8 steps
    resumed = tmp_path / "resumed"
    fit(resumed, f"training.resume={run / 'checkpoints' / 'epoch_000.ckpt'}")
    final = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(final["averaging_state"]["n_averaged"]) == 16 and final["global_step"] == 16


def test_val_split_zero_trains_on_every_image_without_validation(cli, tiny_root, tmp_path):
    conv = f"dataset.converted_dir={tmp_path / 'every_image'}"
    r = cli(
        "train",
        f"dataset.root={tiny_root}",
        "dataset.val_split=0",
        conv,
        *TINY,
        "training.num_epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training without validation" in r.stdout + r.stderr and "final val/mAP" not in r.stdout + r.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/steps"] == 10 and not any(k.startswith("val/") for k in metrics)  # 40 images, batch 4
    r = cli(
        "evaluate",
        f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
        f"dataset.root={tiny_root}",
        "dataset.val_split=100",
        f"dataset.converted_dir={tmp_path / 'scored'}",
        f"hydra.run.dir={tmp_path / 'ev'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_images"] == 40
    # without dataset.root the model's own dataset is scored: its validation split is empty, which is one error
    r = cli(
        "evaluate", f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={tmp_path / 'x'}"
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "transferdet evaluate: error: config key 'dataset.val_split' has value 0.0; allowed: a split with validation "
        "images to score on (dataset.val_split=100 scores every image of dataset.root)"
    ], r.stderr[-3000:]
