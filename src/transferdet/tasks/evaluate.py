"""``transferdet evaluate``: mAP of a checkpoint on a dataset split, or of KITTI prediction files.

* ``checkpoint=PATH``: runs the model (a ``.ckpt`` with ``runtime=torch``, an exported ``.onnx`` with
  ``runtime=onnxruntime``) on the validation split of ``dataset`` (converted on the fly if needed), with the
  model's own post-processing and evaluation settings and the command line's ``postprocessing.*`` /
  ``evaluation.*`` / ``augmentation.preprocessing.*`` on top;
* ``predictions=DIR labels=DIR``: no model; prediction files have 16 fields (score last), ground truth 15;
  classes come from ``dataset``, the evaluation settings from ``evaluation/default.yaml`` and ``evaluation.*``.

Writes ``metrics.json`` (``mAP``, ``AP/<class>``, per KITTI level and size, COCO mAP, and with
``evaluation.protocol=kitti`` KITTI's own ``kitti/AP_<difficulty>/<class>``), a table on the terminal and
``pr_curves.png``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from transferdet.config.overrides import DetectorOverrides
from transferdet.config.tasks import task_args
from transferdet.config.validate import NO_VALIDATION_IMAGES, target_classes, typed
from transferdet.data.convert import normalised_mapping
from transferdet.data.converted import ConvertedDataset
from transferdet.data.prepare import ensure_converted
from transferdet.detector import checkpoint
from transferdet.errors import ConfigError
from transferdet.evaluation.coco import coco_map
from transferdet.evaluation.files import evaluate_files, files_evaluation_config
from transferdet.evaluation.report import plot_pr_curves, print_table
from transferdet.inference.evaluate import evaluate_predictor
from transferdet.inference.predictor import Predictor
from transferdet.utils.rundir import write_config


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Score a model on the validation split, or prediction files against label files."""
    args, overrides, dataset = task_args(cfg, "evaluate"), DetectorOverrides.from_config(cfg), typed(cfg, "dataset")
    if args.checkpoint and (args.predictions or args.labels):
        raise ConfigError(
            "checkpoint", args.checkpoint, "either checkpoint=PATH or predictions=DIR labels=DIR, not both"
        )
    if args.checkpoint:
        predictor = Predictor.load(args.checkpoint, args.runtime, overrides, precision=args.precision)
        write_config(run_dir, cfg, predictor.spec.as_config())
        dataset = checkpoint.dataset_for_model(dataset, args.checkpoint, predictor.classes)
        converted = ensure_converted(dataset)
        if len(ConvertedDataset(converted, verify=False).split("val")) == 0:
            raise ConfigError("dataset.val_split", dataset.val_split, NO_VALIDATION_IMAGES)
        ev = evaluate_predictor(predictor, converted)
        gts, dets, classes, result = ev.ground_truth, ev.detections, predictor.classes, ev.result
    elif args.predictions and args.labels:
        classes = target_classes(dataset)
        gts, dets, result = evaluate_files(
            Path(args.predictions),
            Path(args.labels),
            normalised_mapping(dataset),
            classes,
            files_evaluation_config(classes, overrides.evaluation),
        )
    else:
        raise ConfigError(
            "checkpoint",
            None,
            "checkpoint=PATH (a transferdet .ckpt), or predictions=DIR together "
            "with labels=DIR (KITTI prediction and ground-truth label folders)",
        )
    result.extra.update(coco_map(gts, dets, classes))
    source = args.checkpoint or args.predictions
    print_table(result, title=f"evaluate {source}")
    plot_pr_curves(result, run_dir / "pr_curves.png", title=Path(source).name)
    return {**result.metrics(), "num_images": len(gts)}
