"""Range checks and cross-group checks of a composed config.

Types and key names are already enforced by the schemas when Hydra composes the config; this step
checks what a type cannot express: ranges, multiples of 16, and that the class names agree across
``dataset.target_class_mapping``, ``rasterizer``, ``postprocessing``, ``cost`` and ``evaluation``
(TLT's classic silent 0-mAP mistake). Every error names the key, the bad value and what is allowed.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferdet.config import schema as S
from transferdet.config.overrides import OVERRIDE_ROOTS, DetectorOverrides
from transferdet.config.tasks import runs_trained_models, task_args
from transferdet.errors import ConfigError


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _in_range(key: str, value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    above = value > lo if lo_open else value >= lo
    below = value < hi if hi_open else value <= hi
    lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
    _require(above and below, key, value, f"a number in {lb}{lo:g}, {hi:g}{rb}")


MAX_SEED = 2**32 - 1  # numpy's and Lightning's seeds are unsigned 32-bit
NO_VALIDATION_IMAGES = (
    "a split with validation images to score on (dataset.val_split=100 scores every image of dataset.root)"
)


def seed(key: str, value: Any) -> None:
    """A random seed: an integer in [0, 2^32 - 1]."""
    _require(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED,
        key,
        value,
        f"an integer in [0, {MAX_SEED}]",
    )


def positive_int(key: str, value: Any, allowed: str = "an integer >= 1") -> int:
    """``value`` when it is an integer >= 1 (not a bool), else a ConfigError naming ``key``."""
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, key, value, allowed)
    return value


def target_classes(dataset: S.DatasetConfig) -> list[str]:
    """Target classes in model order: the mapping's distinct targets in the order they first appear."""
    out: list[str] = []
    for target in dataset.target_class_mapping.values():
        name = target.lower()
        if name != S.IGNORE_CLASS and name not in out:
            out.append(name)
    return out


def validate_dataset(d: S.DatasetConfig) -> None:
    """Ranges of ``dataset`` and the partition settings that go together."""
    seed("dataset.seed", d.seed)
    _in_range("dataset.val_split", d.val_split, 0, 100)  # 100: a whole folder to evaluate on
    positive_int("dataset.num_shards", d.num_shards)
    _require(
        d.image_extension.startswith("."),
        "dataset.image_extension",
        d.image_extension,
        "an extension starting with '.', e.g. '.png' or '.jpg'",
    )
    _require(bool(d.target_class_mapping), "dataset.target_class_mapping", {}, "at least one source -> target entry")
    _require(
        bool(target_classes(d)),
        "dataset.target_class_mapping",
        dict(d.target_class_mapping),
        f"at least one target class other than '{S.IGNORE_CLASS}'",
    )
    lowered = [k.lower() for k in d.target_class_mapping]
    dup = sorted({k for k in lowered if lowered.count(k) > 1})
    _require(
        not dup,
        "dataset.target_class_mapping",
        dup,
        "source class names that differ in more than case (names compare case-insensitively)",
    )
    if d.partition_mode is S.PartitionMode.random:
        _require(
            d.num_partitions == 2,
            "dataset.num_partitions",
            d.num_partitions,
            "2 with partition_mode=random (validation fold 0 and training fold 1)",
        )
        _require(
            d.validation_fold == 0,
            "dataset.validation_fold",
            d.validation_fold,
            "0 with partition_mode=random (fold 0 holds the val_split images)",
        )
    else:
        _require(d.num_partitions >= 1, "dataset.num_partitions", d.num_partitions, "an integer >= 1")
        _require(
            0 <= d.validation_fold < d.num_partitions,
            "dataset.validation_fold",
            d.validation_fold,
            f"0..{d.num_partitions - 1} (num_partitions={d.num_partitions})",
        )
        _require(
            bool(d.kitti_sequence_to_frames_file),
            "dataset.kitti_sequence_to_frames_file",
            d.kitti_sequence_to_frames_file,
            "a JSON file mapping sequence -> frame ids (partition_mode=sequence)",
        )


def validate_augmentation(a: S.AugmentationConfig) -> None:
    """Input size (multiples of 16) and augmentation ranges."""
    p = a.preprocessing
    for name in ("output_image_width", "output_image_height"):
        v = getattr(p, name)
        _require(v > 0 and v % 16 == 0, f"augmentation.preprocessing.{name}", v, "a positive multiple of 16")
    _require(
        p.output_image_channel in (1, 3),
        "augmentation.preprocessing.output_image_channel",
        p.output_image_channel,
        "1 or 3",
    )
    for name in ("min_bbox_width", "min_bbox_height"):
        _in_range(f"augmentation.preprocessing.{name}", getattr(p, name), 0, 1e6)
    s = a.spatial_augmentation
    for name in ("hflip_probability", "rotate_probability"):
        _in_range(f"augmentation.spatial_augmentation.{name}", getattr(s, name), 0, 1)
    _require(s.zoom_min > 0, "augmentation.spatial_augmentation.zoom_min", s.zoom_min, "a number > 0")
    _require(
        s.zoom_max >= s.zoom_min,
        "augmentation.spatial_augmentation.zoom_max",
        s.zoom_max,
        f"a number >= zoom_min ({s.zoom_min:g})",
    )
    for name in ("translate_max_x", "translate_max_y", "rotate_rad_max"):
        _in_range(f"augmentation.spatial_augmentation.{name}", getattr(s, name), 0, 1e6)
    c = a.color_augmentation
    _in_range("augmentation.color_augmentation.hue_rotation_max", c.hue_rotation_max, 0, 180)
    _in_range("augmentation.color_augmentation.saturation_shift_max", c.saturation_shift_max, 0, 1)
    _in_range("augmentation.color_augmentation.contrast_scale_max", c.contrast_scale_max, 0, 1)
    _in_range("augmentation.color_augmentation.contrast_center", c.contrast_center, 0, 1)
    _in_range("augmentation.color_augmentation.color_shift_stddev", c.color_shift_stddev, 0, 1)
    cp = a.copy_paste
    _in_range("augmentation.copy_paste.probability", cp.probability, 0, 1)
    _require(cp.max_objects >= 0, "augmentation.copy_paste.max_objects", cp.max_objects, "an integer >= 0")
    _require(
        cp.max_occlusion in (0, 1, 2, 3),
        "augmentation.copy_paste.max_occlusion",
        cp.max_occlusion,
        "a KITTI occlusion level 0..3",
    )
    _in_range("augmentation.copy_paste.max_truncation", cp.max_truncation, 0, 1)
    _in_range("augmentation.copy_paste.min_height", cp.min_height, 0, 1e6)
    _require(cp.bank_size >= 1, "augmentation.copy_paste.bank_size", cp.bank_size, "an integer >= 1")
    _require(a.debug_samples >= 0, "augmentation.debug_samples", a.debug_samples, "an integer >= 0")


SUPPORTED_RESNET_DEPTHS = (10, 18, 34, 50, 101)
IMAGENET_DEPTHS = (18, 34, 50, 101)  # torchvision's ResNets with ImageNet weights that transferdet builds


def require_imagenet_depth(depth: int) -> None:
    """ImageNet weights exist for this ResNet depth, or one clear error saying where else to start."""
    _require(
        depth in IMAGENET_DEPTHS,
        "model.pretrained",
        "imagenet",
        f"a ResNet of {', '.join(map(str, IMAGENET_DEPTHS))} layers (model.num_layers): ResNet-{depth} has no "
        "public ImageNet weights; start it from a transferdet checkpoint instead, e.g. the default pipeline's "
        "model: model.pretrained_model_file=outputs/pipeline/default/03_train/checkpoints/last.ckpt",
    )


def validate_model(m: S.ModelConfig) -> None:
    """Architecture, frozen blocks, box encoding and input normalisation."""
    _require(m.arch == "resnet", "model.arch", m.arch, "'resnet'")
    _require(
        m.num_layers in SUPPORTED_RESNET_DEPTHS,
        "model.num_layers",
        m.num_layers,
        ", ".join(map(str, SUPPORTED_RESNET_DEPTHS)),
    )
    _require(m.pretrained in (None, "imagenet"), "model.pretrained", m.pretrained, "null or imagenet")
    _require(
        not (m.pretrained and m.pretrained_model_file),
        "model.pretrained",
        m.pretrained,
        "null when model.pretrained_model_file is set (one starting point)",
    )
    if m.pretrained == "imagenet":  # at validation, not after the dataset is converted and the model built
        require_imagenet_depth(m.num_layers)
    bad = [b for b in m.freeze_blocks if b not in range(5)]
    _require(not bad, "model.freeze_blocks", list(m.freeze_blocks), "block ids 0 (stem) to 4 (last stage)")
    _require(
        m.objective_set.bbox.scale > 0, "model.objective_set.bbox.scale", m.objective_set.bbox.scale, "a number > 0"
    )
    n = m.input_normalization
    _require(len(n.mean) == 3, "model.input_normalization.mean", list(n.mean), "3 numbers (R, G, B)")
    _require(
        len(n.std) == 3 and all(s > 0 for s in n.std),
        "model.input_normalization.std",
        list(n.std),
        "3 positive numbers (R, G, B)",
    )


def validate_training(t: S.TrainingConfig) -> None:
    """Batch, epochs, schedule, optimizer, regularizer and distillation ranges."""
    seed("training.random_seed", t.random_seed)
    positive_int("training.batch_size_per_gpu", t.batch_size_per_gpu)
    positive_int("training.num_epochs", t.num_epochs)
    _require(t.checkpoint_interval >= 0, "training.checkpoint_interval", t.checkpoint_interval, "an integer >= 0")
    _require(t.num_workers >= 0, "training.num_workers", t.num_workers, "an integer >= 0")
    sch = t.learning_rate.soft_start_annealing_schedule
    key = "training.learning_rate.soft_start_annealing_schedule"
    _require(sch.min_learning_rate > 0, f"{key}.min_learning_rate", sch.min_learning_rate, "a number > 0")
    _require(
        sch.max_learning_rate >= sch.min_learning_rate,
        f"{key}.max_learning_rate",
        sch.max_learning_rate,
        f"a number >= min_learning_rate ({sch.min_learning_rate:g})",
    )
    _in_range(f"{key}.soft_start", sch.soft_start, 0, 1, hi_open=True)
    _in_range(f"{key}.annealing", sch.annealing, 0, 1, hi_open=True)
    _require(
        sch.soft_start <= sch.annealing,
        f"{key}.soft_start",
        sch.soft_start,
        f"a number <= annealing ({sch.annealing:g})",
    )
    _require(t.regularizer.weight >= 0, "training.regularizer.weight", t.regularizer.weight, "a number >= 0")
    adam = t.optimizer.adam
    _require(adam.epsilon > 0, "training.optimizer.adam.epsilon", adam.epsilon, "a number > 0")
    _in_range("training.optimizer.adam.beta1", adam.beta1, 0, 1, hi_open=True)
    _in_range("training.optimizer.adam.beta2", adam.beta2, 0, 1, hi_open=True)
    _require(t.distillation.weight >= 0, "training.distillation.weight", t.distillation.weight, "a number >= 0")
    _in_range("training.ema_decay", t.ema_decay, 0, 1, hi_open=True)


def validate_evaluation(e: S.EvaluationConfig) -> None:
    """IoU thresholds, box-size ranges and the validation cadence."""
    for cls, iou in e.minimum_detection_ground_truth_overlap.items():
        _in_range(f"evaluation.minimum_detection_ground_truth_overlap.{cls}", iou, 0, 1, lo_open=True)
    for cls, box in e.evaluation_box_config.items():
        key = f"evaluation.evaluation_box_config.{cls}"
        _require(
            box.maximum_height >= box.minimum_height,
            f"{key}.maximum_height",
            box.maximum_height,
            f"a number >= minimum_height ({box.minimum_height:g})",
        )
        _require(
            box.maximum_width >= box.minimum_width,
            f"{key}.maximum_width",
            box.maximum_width,
            f"a number >= minimum_width ({box.minimum_width:g})",
        )
    _require(e.kitti_recall_points in (40, 11), "evaluation.kitti_recall_points", e.kitti_recall_points, "40 or 11")
    positive_int("evaluation.validation_period_during_training", e.validation_period_during_training)
    _require(
        e.first_validation_epoch >= 0, "evaluation.first_validation_epoch", e.first_validation_epoch, "an integer >= 0"
    )
    positive_int("evaluation.batch_size", e.batch_size)
    n, conf = e.bootstrap_resamples, e.interval_confidence
    _require(n >= 0, "evaluation.bootstrap_resamples", n, "an integer >= 0 (0: no AP intervals)")
    _require(0 < conf < 1, "evaluation.interval_confidence", conf, "a number between 0 and 1, e.g. 0.9")


def validate_rasterizer(r: S.RasterizerConfig) -> None:
    """Coverage ellipses and the dead zone."""
    _in_range("rasterizer.deadzone_radius", r.deadzone_radius, 0, 1)
    for cls, c in r.target_class_config.items():
        key = f"rasterizer.target_class_config.{cls}"
        _in_range(f"{key}.cov_center_x", c.cov_center_x, 0, 1)
        _in_range(f"{key}.cov_center_y", c.cov_center_y, 0, 1)
        _require(c.cov_radius_x > 0, f"{key}.cov_radius_x", c.cov_radius_x, "a number > 0")
        _require(c.cov_radius_y > 0, f"{key}.cov_radius_y", c.cov_radius_y, "a number > 0")
        _in_range(f"{key}.bbox_min_radius", c.bbox_min_radius, 0, 1e3)


def validate_postprocessing(p: S.PostprocessingConfig) -> None:
    """Clustering thresholds of every class."""
    for cls, c in p.target_class_config.items():
        key = f"postprocessing.target_class_config.{cls}.clustering_config"
        cc = c.clustering_config
        _in_range(f"{key}.coverage_threshold", cc.coverage_threshold, 0, 1, hi_open=True)
        _in_range(f"{key}.dbscan_eps", cc.dbscan_eps, 0, 1, lo_open=True)
        _require(
            cc.dbscan_min_samples > 0,
            f"{key}.dbscan_min_samples",
            cc.dbscan_min_samples,
            "a number > 0 (minimum sum of coverage of a core point)",
        )
        _in_range(f"{key}.nms_iou_threshold", cc.nms_iou_threshold, 0, 1)
        _in_range(f"{key}.dbscan_merge_iou_threshold", cc.dbscan_merge_iou_threshold, 0, 1)
        _require(
            cc.dbscan_confidence_threshold >= 0,
            f"{key}.dbscan_confidence_threshold",
            cc.dbscan_confidence_threshold,
            "a number >= 0",
        )
        _in_range(f"{key}.nms_confidence_threshold", cc.nms_confidence_threshold, 0, 1)
        _require(
            cc.minimum_bounding_box_height >= 0,
            f"{key}.minimum_bounding_box_height",
            cc.minimum_bounding_box_height,
            "a number >= 0",
        )
        _require(cc.max_candidates >= 0, f"{key}.max_candidates", cc.max_candidates, "an integer >= 0 (0: no bound)")


def validate_cost(c: S.CostConfig) -> None:
    """Class and objective weights."""
    for cls, cc in c.target_classes.items():
        key = f"cost.target_classes.{cls}"
        _require(cc.class_weight >= 0, f"{key}.class_weight", cc.class_weight, "a number >= 0")
        _in_range(f"{key}.coverage_foreground_weight", cc.coverage_foreground_weight, 0, 1, lo_open=True, hi_open=True)
        _require(
            set(cc.objectives) == {"cov", "bbox"},
            f"{key}.objectives",
            sorted(cc.objectives),
            "exactly the objectives 'cov' and 'bbox'",
        )
        for name, obj in cc.objectives.items():
            _require(
                obj.initial_weight >= 0, f"{key}.objectives.{name}.initial_weight", obj.initial_weight, "a number >= 0"
            )
    _require(
        0 < c.min_objective_weight <= c.max_objective_weight,
        "cost.min_objective_weight",
        c.min_objective_weight,
        f"a number in (0, max_objective_weight={c.max_objective_weight:g}]",
    )


def validate_synth(s: S.SynthConfig) -> None:
    """The synthetic generator's settings."""
    seed("synth.seed", s.seed)
    _require(s.num_images >= 1, "synth.num_images", s.num_images, "an integer >= 1")
    for name in ("image_width", "image_height"):
        _require(getattr(s, name) >= 32, f"synth.{name}", getattr(s, name), "an integer >= 32 (pixels)")
    _require(s.min_objects >= 0, "synth.min_objects", s.min_objects, "an integer >= 0")
    _require(
        s.max_objects >= s.min_objects,
        "synth.max_objects",
        s.max_objects,
        f"an integer >= min_objects ({s.min_objects})",
    )
    allowed = {"car", "pedestrian", "cyclist"}
    bad = sorted(set(s.class_frequencies) - allowed)
    _require(not bad, "synth.class_frequencies", bad, "keys among car, pedestrian, cyclist")
    _require(
        all(v >= 0 for v in s.class_frequencies.values()) and sum(s.class_frequencies.values()) > 0,
        "synth.class_frequencies",
        dict(s.class_frequencies),
        "non-negative numbers, not all zero",
    )
    _in_range("synth.dontcare_probability", s.dontcare_probability, 0, 1)
    _require(s.num_distractors >= 0, "synth.num_distractors", s.num_distractors, "an integer >= 0")
    _in_range("synth.noise_stddev", s.noise_stddev, 0, 1)
    _require(s.min_object_height >= 2, "synth.min_object_height", s.min_object_height, "a number >= 2 (pixels)")
    if s.object_height_median is not None:
        _in_range("synth.object_height_median", s.object_height_median, 0, 1, lo_open=True)
    _require(s.object_height_spread > 0, "synth.object_height_spread", s.object_height_spread, "a number > 0")
    _require(s.blur_max >= 0, "synth.blur_max", s.blur_max, "a number >= 0 (pixels)")
    _in_range("synth.jpeg_quality_min", s.jpeg_quality_min, 1, 100)


def validate_export(e: S.ExportConfig) -> None:
    """Batch size, workspace and the mAP gate of the export."""
    positive_int("export.max_batch_size", e.max_batch_size)
    positive_int("export.max_workspace_size", e.max_workspace_size)
    _in_range("export.max_map_drop", e.max_map_drop, 0, 100)
    positive_int("export.parity_images", e.parity_images)
    _require(e.int8_weight_bits in (7, 8), "export.int8_weight_bits", e.int8_weight_bits, "7 or 8")


def validate_calibration(c: S.CalibrationConfig) -> None:
    """Calibration batches and batch size."""
    positive_int("calibration.batches", c.batches)
    positive_int("calibration.batch_size", c.batch_size)


def validate_pruning(p: S.PruningConfig) -> None:
    """Threshold, granularity, minimum filters and target ratio."""
    _require(p.pruning_threshold >= 0, "pruning.pruning_threshold", p.pruning_threshold, "a number >= 0")
    positive_int("pruning.pruning_granularity", p.pruning_granularity)
    positive_int("pruning.min_num_filters", p.min_num_filters)
    if p.target_ratio is not None:
        _in_range("pruning.target_ratio", p.target_ratio, 0, 1, lo_open=True)


# group name -> validator; the order is the order of the checks
_VALIDATORS = {
    "dataset": validate_dataset,
    "augmentation": validate_augmentation,
    "model": validate_model,
    "training": validate_training,
    "evaluation": validate_evaluation,
    "rasterizer": validate_rasterizer,
    "postprocessing": validate_postprocessing,
    "cost": validate_cost,
    "synth": validate_synth,
    "export": validate_export,
    "calibration": validate_calibration,
    "pruning": validate_pruning,
}

# where each group keeps its per-class map: group -> attribute path of the map
CLASS_MAPS = {
    "rasterizer": "target_class_config",
    "postprocessing": "target_class_config",
    "cost": "target_classes",
    "evaluation": "minimum_detection_ground_truth_overlap",
}


def typed(cfg: DictConfig, group: str) -> Any:
    """The typed dataclass instance of one group of a composed config."""
    return OmegaConf.to_object(cfg[group])


def validate_classes(cfg: DictConfig) -> None:
    """Every target class needs an entry in each per-class map, and no map may name another class."""
    classes = target_classes(typed(cfg, "dataset"))
    wanted = set(classes)
    listing = ", ".join(classes)
    for group, attr in CLASS_MAPS.items():
        if group not in cfg:
            continue
        have = [str(k) for k in cfg[group][attr].keys()]
        key = f"{group}.{attr}"
        missing = [c for c in classes if c not in have]
        extra = [c for c in have if c not in wanted]
        _require(
            not missing,
            key,
            have,
            f"an entry for every class of dataset.target_class_mapping ({listing}); missing: {', '.join(missing)}",
        )
        _require(
            not extra,
            key,
            have,
            f"only classes of dataset.target_class_mapping ({listing}); unknown: {', '.join(extra)}",
        )
    if "evaluation" in cfg:
        have = [str(k) for k in cfg.evaluation.evaluation_box_config.keys()]
        extra = [c for c in have if c not in wanted]
        _require(
            not extra,
            "evaluation.evaluation_box_config",
            have,
            f"only classes of dataset.target_class_mapping ({listing}); unknown: {', '.join(extra)}",
        )


def validate(cfg: DictConfig, task: str | None = None) -> None:
    """Check every group present in ``cfg`` and, for a task that runs a trained model, its own keys and its
    overrides of the model's settings; raise :class:`ConfigError` on the first problem."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        raise ConfigError(missing[0], "???", f"a value: this key has no default, set it as {missing[0]}=VALUE")
    task = task or cfg.get("task_name")
    takes_checkpoint = runs_trained_models(task)
    for group, check in _VALIDATORS.items():
        if takes_checkpoint and group in OVERRIDE_ROOTS:
            continue  # partial settings over the checkpoint's, checked below
        if group in cfg and cfg[group] is not None:
            check(typed(cfg, group))
    val_split = cfg.dataset.val_split if "dataset" in cfg else None
    if task in ("train", "pipeline") and val_split is not None and val_split >= 100:
        raise ConfigError(
            "dataset.val_split",
            val_split,
            "below 100 to train (100 holds every image out: for `transferdet evaluate` on a whole folder)",
        )
    random = "dataset" in cfg and cfg.dataset.get("partition_mode", "random") in ("random", S.PartitionMode.random)
    if random and val_split is not None and val_split <= 0:  # no validation images: refused before any work
        if task == "pipeline":
            raise ConfigError(
                "dataset.val_split",
                val_split,
                "above 0 for the pipeline, which scores every model it makes on the validation images "
                "(`transferdet train` takes 0 to train on every image)",
            )
        if task == "evaluate" and cfg.get("checkpoint"):
            raise ConfigError("dataset.val_split", val_split, NO_VALIDATION_IMAGES)
    if takes_checkpoint:
        task_args(cfg, task)
        DetectorOverrides.from_config(cfg)
    elif "dataset" in cfg and any(g in cfg for g in CLASS_MAPS):
        validate_classes(cfg)
