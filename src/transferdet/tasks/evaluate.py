"""``transferdet evaluate``: mAP of a checkpoint on a dataset split, or of KITTI prediction files.

* ``checkpoint=PATH``: runs the model (a ``.ckpt`` with ``runtime=torch``, an exported ``.onnx`` with
  ``runtime=onnxruntime``) on the validation split of ``dataset`` (converted on the fly if needed); the
  model's own post-processing and evaluation settings apply, with the command line's
  ``postprocessing.*`` / ``evaluation.*`` overrides on top.
* ``predictions=DIR labels=DIR``: no model; prediction files have 16 fields (score last), ground truth
  15; classes and thresholds come from the ``dataset`` and ``evaluation`` groups.

Writes ``metrics.json`` (``mAP``, ``AP/<class>``, per KITTI level and size, COCO mAP), a table on the
terminal and ``pr_curves.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from transferdet.config import target_classes, typed
from transferdet.data.kitti import find_files, read_label_file
from transferdet.errors import ConfigError, DataError
from transferdet.evaluation import Evaluator
from transferdet.evaluation.coco import coco_map
from transferdet.evaluation.report import plot_pr_curves, print_table
from transferdet.structures import Detections, GroundTruth

log = logging.getLogger(__name__)


def user_overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # called outside a Hydra run (tests)
        return []


def _label_arrays(
    path: Path, mapping: dict[str, str], classes: list[str], *, predictions: bool, warnings: list[str]
) -> tuple[np.ndarray, ...]:
    """Boxes, class ids (-1 = dontcare), truncation, occlusion, scores of one label or prediction file."""
    index = {c: k for k, c in enumerate(classes)}
    rows = []
    for o in read_label_file(path, allow_score=predictions):
        if predictions and o.score is None:
            raise DataError(path, "15 fields: prediction files need a 16th field, the confidence score", o.line)
        target = o.cls if predictions else mapping.get(o.cls)
        if target is None:
            continue
        if target not in index and target != "dontcare":
            warnings.append(f"{path}:{o.line}: class {o.cls!r} is not one of {', '.join(classes)}; ignored")
            continue
        if o.x2 <= o.x1 or o.y2 <= o.y1:
            warnings.append(f"{path}:{o.line}: empty box; ignored")
            continue
        rows.append((o.x1, o.y1, o.x2, o.y2, index.get(target, -1), o.truncated, o.occluded, o.score or 0.0))
    a = np.array(rows, np.float64).reshape(-1, 8)
    return a[:, :4], a[:, 4].astype(np.int64), a[:, 5], a[:, 6].astype(np.int64), a[:, 7]


def evaluate_files(
    predictions: Path, labels: Path, mapping: dict[str, str], classes: list[str]
) -> tuple[list[GroundTruth], list[Detections], list[str]]:
    for key, folder in (("predictions", predictions), ("labels", labels)):
        if not folder.is_dir():
            raise ConfigError(key, str(folder), "an existing folder of KITTI .txt files")
    gt_files, pred_files = find_files(labels, ".txt"), find_files(predictions, ".txt")
    if not gt_files:
        raise DataError(labels, "no ground-truth .txt label files here (config key labels)")
    orphans = sorted(set(pred_files) - set(gt_files))
    if orphans:
        raise DataError(
            pred_files[orphans[0]],
            f"prediction file has no ground-truth label file in {labels} ({len(orphans)} such files)",
        )
    warnings: list[str] = []
    gts, dets = [], []
    for id_, gt_path in gt_files.items():
        b, c, t, o, _ = _label_arrays(gt_path, mapping, classes, predictions=False, warnings=warnings)
        gts.append(GroundTruth(b, c, t, o))
        if id_ in pred_files:
            b, c, _, _, s = _label_arrays(pred_files[id_], mapping, classes, predictions=True, warnings=warnings)
            keep = c >= 0
            dets.append(Detections(b[keep], c[keep], s[keep]))
        else:
            dets.append(Detections.empty())
    return gts, dets, warnings


def evaluate_model(
    cfg: DictConfig, path: str, runtime: str, precision: str = "fp32"
) -> tuple[list[GroundTruth], list[Detections], list[str], Evaluator]:
    """Ground truth and detections of a checkpoint or exported model on the validation split (``precision``:
    the torch runtime's, see :meth:`Predictor.load`)."""
    from transferdet.inference.predictor import Predictor

    return evaluate_predictor(cfg, Predictor.load(path, runtime, user_overrides(), precision=precision))


def evaluate_predictor(cfg: DictConfig, predictor) -> tuple[list[GroundTruth], list[Detections], list[str], Evaluator]:
    """Ground truth and detections of a loaded :class:`Predictor` on the validation split."""
    from tqdm import tqdm

    from transferdet.tasks.train import ensure_converted
    from transferdet.training.datamodule import DetectionDataModule

    module = predictor.module
    data_classes = target_classes(typed(cfg, "dataset"))
    if data_classes != module.classes:
        raise ConfigError(
            "dataset.target_class_mapping",
            data_classes,
            f"the model's classes in the same order: {', '.join(module.classes)}",
        )
    dm = DetectionDataModule(
        ensure_converted(cfg),
        module.aug,
        batch_size=1,
        eval_batch_size=module.eval_cfg.batch_size,
        num_workers=0,
        seed=0,
    )
    dm.setup()
    gts, dets = [], []
    for batch in tqdm(dm.val_dataloader(), desc="evaluate", unit="batch", disable=None):
        dets.extend(module.postprocessor(*predictor.outputs(batch.images)))
        gts.extend(batch.ground_truth())
    return gts, dets, module.classes, module.evaluator


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    predictions, labels, checkpoint = cfg.get("predictions"), cfg.get("labels"), cfg.get("checkpoint")
    if checkpoint and (predictions or labels):
        raise ConfigError("checkpoint", checkpoint, "either checkpoint=PATH or predictions=DIR labels=DIR, not both")
    if checkpoint:
        gts, dets, classes, evaluator = evaluate_model(
            cfg, checkpoint, str(cfg.get("runtime", "torch")), str(cfg.get("precision", "fp32"))
        )
        source = str(checkpoint)
    elif predictions and labels:
        d = typed(cfg, "dataset")
        classes = target_classes(d)
        mapping = {k.lower(): v.lower() for k, v in d.target_class_mapping.items()}
        gts, dets, warnings = evaluate_files(Path(predictions), Path(labels), mapping, classes)
        for w in warnings[:20]:
            log.warning(w)
        if len(warnings) > 20:
            log.warning("... %d more warnings", len(warnings) - 20)
        evaluator = Evaluator(classes, typed(cfg, "evaluation"))
        source = str(predictions)
    else:
        raise ConfigError(
            "checkpoint",
            None,
            "checkpoint=PATH (a transferdet .ckpt), or predictions=DIR together with "
            "labels=DIR (KITTI prediction and ground-truth label folders)",
        )
    result = evaluator.evaluate(gts, dets)
    result.extra.update(coco_map(gts, dets, classes))
    print_table(result, title=f"evaluate {source}")
    plot_pr_curves(result, run_dir / "pr_curves.png", title=Path(source).name)
    metrics = result.metrics()
    metrics["num_images"] = len(gts)
    return metrics
