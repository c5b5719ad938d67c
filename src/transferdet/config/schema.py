"""Typed schemas of the config groups.

Key names follow the blocks of a TLT DetectNet_v2 experiment spec (``dataset_config``,
``augmentation_config``, ...), so a TLT user recognises them. Each schema is registered in Hydra's
ConfigStore as ``<group>/base``; every YAML option of the group lists it first in its defaults, so a
misspelt key or a value of the wrong type fails when the config is composed. Range checks and
cross-group checks live in :mod:`transferdet.config.validate`.

Per-class settings are maps keyed by class name; their schema defaults are empty (see DatasetConfig).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import MISSING, OmegaConf

IGNORE_CLASS = "dontcare"  # target name that turns objects into ignore regions (no loss, neither TP nor FP)


# --------------------------------------------------------------------------- enums
class PartitionMode(Enum):
    random = "random"
    sequence = "sequence"


class ClusteringAlgorithm(Enum):
    dbscan = "dbscan"
    nms = "nms"
    hybrid = "hybrid"


class ConfidenceModel(Enum):
    aggregate_cov = "aggregate_cov"
    mean_cov = "mean_cov"


class AveragePrecisionMode(Enum):
    SAMPLE = "SAMPLE"
    INTEGRATE = "INTEGRATE"


class EvaluationProtocol(Enum):
    voc = "voc"  # TLT's: VOC AP with the per-class IoU thresholds below
    kitti = "kitti"  # also KITTI's own (the object devkit's rules), from the dataset's label files


class SynthStyle(Enum):
    flat = "flat"  # plain-coloured shapes on a plain road: the default pipeline's scenes
    textured = "textured"  # shaded and textured surfaces, shadows, facades and trees, oblique parked cars


class BboxLoss(Enum):
    l1 = "l1"  # TLT's: |prediction - target| per edge, in units of the bbox scale
    scaled_l1 = "scaled_l1"  # each edge's error over the object's width (left, right) or height (top, bottom)


class RegularizerType(Enum):
    NO_REG = "NO_REG"
    L1 = "L1"
    L2 = "L2"


class BackendFloatx(Enum):
    FLOAT32 = "FLOAT32"
    FLOAT16 = "FLOAT16"
    BFLOAT16 = "BFLOAT16"


# --------------------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    """KITTI-layout dataset and its partition (TLT ``kitti_config`` + ``dataset_config``)."""

    root: Optional[str] = MISSING  # null: a task that runs a trained model takes the model's own dataset
    image_dir_name: str = "image_2"
    label_dir_name: str = "label_2"
    image_extension: str = ".png"
    # source class (case-insensitive) -> target class; many-to-one allowed; target "dontcare" = ignore region.
    # Per-class maps have no entries in the schemas: a YAML option lists its classes, and merging it onto
    # a default list of classes would silently add classes the user never asked for.
    target_class_mapping: Dict[str, str] = field(default_factory=dict)
    partition_mode: PartitionMode = PartitionMode.random
    num_partitions: int = 2
    val_split: float = 20.0
    validation_fold: int = 0
    num_shards: int = 4
    kitti_sequence_to_frames_file: Optional[str] = None
    seed: int = 42
    # where the converted (indexed, sharded) form is written; null = <root>/converted
    converted_dir: Optional[str] = None


# --------------------------------------------------------------------------- augmentation
@dataclass
class PreprocessingConfig:
    """Network input size (multiples of 16) and the smallest box kept after augmentation."""

    output_image_width: int = 384
    output_image_height: int = 128
    output_image_channel: int = 3
    min_bbox_width: float = 1.0
    min_bbox_height: float = 1.0
    resize: bool = False  # scale instead of pad/crop when the input size differs


@dataclass
class SpatialAugmentationConfig:
    """Training-only geometry: flip, zoom (r > 1 zooms in), integer translation (px), rotation (radians)."""

    hflip_probability: float = 0.5
    zoom_min: float = 1.0
    zoom_max: float = 1.0
    translate_max_x: float = 8.0
    translate_max_y: float = 8.0
    rotate_rad_max: float = 0.0
    rotate_probability: float = 0.0


@dataclass
class ColorAugmentationConfig:
    """Training-only colour jitter of 3-channel images: hue (degrees), saturation, contrast, brightness."""

    hue_rotation_max: float = 25.0
    saturation_shift_max: float = 0.2
    contrast_scale_max: float = 0.1
    contrast_center: float = 0.5
    color_shift_stddev: float = 0.0


@dataclass
class CopyPasteConfig:
    """Training-only, not in TLT: objects of other training images pasted at their own place in the frame
    (data/copy_paste.py). The bank holds whole objects: occlusion, truncation and height (source pixels) limits."""

    probability: float = 0.0  # of pasting into a training image; 0 = off
    max_objects: int = 8  # paste attempts per image (those that would cover a labelled box are skipped)
    max_occlusion: int = 0
    max_truncation: float = 0.15
    min_height: float = 10.0
    bank_size: int = 2000  # at most this many objects, decoded once when training starts


@dataclass
class AugmentationConfig:
    """TLT ``augmentation_config``: preprocessing, spatial and colour augmentation (and copy-paste, not in TLT)."""

    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    spatial_augmentation: SpatialAugmentationConfig = field(default_factory=SpatialAugmentationConfig)
    color_augmentation: ColorAugmentationConfig = field(default_factory=ColorAugmentationConfig)
    copy_paste: CopyPasteConfig = field(default_factory=CopyPasteConfig)
    debug_samples: int = 0  # write this many augmented samples with boxes drawn (PNG) to the run directory


# --------------------------------------------------------------------------- model
@dataclass
class BboxObjectiveConfig:
    scale: float = 35.0
    offset: float = 0.5


@dataclass
class CovObjectiveConfig:
    pass


@dataclass
class ObjectiveSetConfig:
    bbox: BboxObjectiveConfig = field(default_factory=BboxObjectiveConfig)
    cov: CovObjectiveConfig = field(default_factory=CovObjectiveConfig)


@dataclass
class InputNormalizationConfig:
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class ModelConfig:
    """TLT ``model_config``: DetectNet_v2 on a ResNet backbone; pretrained weights from ImageNet or a local file."""

    arch: str = "resnet"
    num_layers: int = 18
    pretrained: Optional[str] = None  # "imagenet": torchvision's ImageNet weights (ResNet-18/34/50/101)
    pretrained_model_file: Optional[str] = None
    # refuse a file whose backbone does not match the model's (another ResNet depth); false: load what fits
    pretrained_strict: bool = True
    pruned_checkpoint: Optional[str] = None  # TLT's load_graph: rebuild the pruned architecture and retrain it
    freeze_blocks: List[int] = field(default_factory=list)
    freeze_bn: bool = False
    use_batch_norm: bool = True
    objective_set: ObjectiveSetConfig = field(default_factory=ObjectiveSetConfig)
    input_normalization: InputNormalizationConfig = field(default_factory=InputNormalizationConfig)


# --------------------------------------------------------------------------- training
@dataclass
class SoftStartAnnealingScheduleConfig:
    min_learning_rate: float = 5e-6
    max_learning_rate: float = 5e-4
    soft_start: float = 0.1
    annealing: float = 0.7


@dataclass
class LearningRateConfig:
    soft_start_annealing_schedule: SoftStartAnnealingScheduleConfig = field(
        default_factory=SoftStartAnnealingScheduleConfig
    )


@dataclass
class RegularizerConfig:
    type: RegularizerType = RegularizerType.L1
    weight: float = 3e-9


@dataclass
class AdamConfig:
    epsilon: float = 9.9e-9
    beta1: float = 0.9
    beta2: float = 0.999


@dataclass
class OptimizerConfig:
    adam: AdamConfig = field(default_factory=AdamConfig)


@dataclass
class CostScalingConfig:
    enabled: bool = False
    initial_exponent: float = 20.0
    increment: float = 0.005
    decrement: float = 1.0


@dataclass
class TrainingPrecisionConfig:
    backend_floatx: BackendFloatx = BackendFloatx.FLOAT32


@dataclass
class DistillationConfig:
    """Beyond TLT: while (re)training, also match a teacher checkpoint's outputs, e.g. the unpruned model's
    while retraining its pruned copy."""

    teacher: Optional[str] = None  # a transferdet checkpoint with the same classes; None = no distillation
    weight: float = 1.0  # of the distillation cost, added to the DetectNet cost


@dataclass
class TrainingConfig:
    """TLT ``training_config``, plus ``training_precision`` (a ``model_config`` key in TLT) and resume."""

    batch_size_per_gpu: int = 16
    num_epochs: int = 20
    checkpoint_interval: int = 10
    random_seed: int = 42
    learning_rate: LearningRateConfig = field(default_factory=LearningRateConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    cost_scaling: CostScalingConfig = field(default_factory=CostScalingConfig)
    training_precision: TrainingPrecisionConfig = field(default_factory=TrainingPrecisionConfig)
    num_workers: int = 2
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    # beyond TLT: validate and save an exponential moving average of the weights (decay per optimizer step); 0 = off
    ema_decay: float = 0.0
    resume: Optional[str] = None  # "auto" = the run directory's last checkpoint, or a checkpoint path


# --------------------------------------------------------------------------- evaluation
@dataclass
class EvaluationBoxConfig:
    """Size range (px) of the boxes that count in evaluation; ground truth and predictions alike."""

    minimum_height: float = 0.0
    maximum_height: float = 9999.0
    minimum_width: float = 0.0
    maximum_width: float = 9999.0


@dataclass
class EvaluationConfig:
    """TLT ``evaluation_config``: AP mode, per-class IoU thresholds and box-size filters, validation cadence."""

    average_precision_mode: AveragePrecisionMode = AveragePrecisionMode.INTEGRATE
    validation_period_during_training: int = 5
    first_validation_epoch: int = 1
    minimum_detection_ground_truth_overlap: Dict[str, float] = field(default_factory=dict)
    evaluation_box_config: Dict[str, EvaluationBoxConfig] = field(default_factory=dict)
    pixel_inclusive_iou: bool = False
    kitti_difficulty: bool = True  # also VOC AP over KITTI's easy / moderate / hard subsets (not KITTI's protocol)
    protocol: EvaluationProtocol = EvaluationProtocol.voc
    kitti_recall_points: int = 40  # KITTI protocol: 40 (the devkit since 2019) or 11 (older papers)
    batch_size: int = 16
    bootstrap_resamples: int = 1000  # the evaluate task's AP intervals over the images; 0: none
    interval_confidence: float = 0.9


# --------------------------------------------------------------------------- rasterizer
@dataclass
class RasterizerClassConfig:
    """Coverage ellipse of one class: centre and radii relative to the box, minimum radius in grid cells."""

    cov_center_x: float = 0.5
    cov_center_y: float = 0.5
    cov_radius_x: float = 1.0
    cov_radius_y: float = 1.0
    bbox_min_radius: float = 1.0


@dataclass
class RasterizerConfig:
    """TLT ``bbox_rasterizer_config``: per-class coverage ellipses and the dead zone between objects."""

    target_class_config: Dict[str, RasterizerClassConfig] = field(default_factory=dict)
    deadzone_radius: float = 0.67


# --------------------------------------------------------------------------- postprocessing
@dataclass
class ClusteringConfig:
    """How one class's coverage/bbox maps become boxes (SPEC section 7)."""

    clustering_algorithm: ClusteringAlgorithm = ClusteringAlgorithm.dbscan
    coverage_threshold: float = 0.005
    dbscan_eps: float = 0.15
    dbscan_min_samples: float = 0.05
    dbscan_confidence_threshold: float = 0.1
    confidence_model: ConfidenceModel = ConfidenceModel.aggregate_cov
    nms_iou_threshold: float = 0.5
    nms_confidence_threshold: float = 0.1
    minimum_bounding_box_height: float = 4.0
    # dbscan only, not in TLT: clusters of one class overlapping the most confident by IoU > this are fused into it
    # (a small object's cells can fall into several clusters); 1 = off
    dbscan_merge_iou_threshold: float = 1.0
    # the most candidate cells (highest coverage first) one image's class is clustered from: bounds the cost of
    # clustering (quadratic in the candidates) whatever the model's state; 0 = no bound
    max_candidates: int = 300


@dataclass
class PostprocessingClassConfig:
    clustering_config: ClusteringConfig = field(default_factory=ClusteringConfig)


@dataclass
class PostprocessingConfig:
    """TLT ``postprocessing_config``: clustering settings per class."""

    target_class_config: Dict[str, PostprocessingClassConfig] = field(default_factory=dict)
    # not in TLT: average the network's outputs with those of the mirrored image before clustering (test-time
    # augmentation; the network runs twice)
    test_time_flip: bool = False


# --------------------------------------------------------------------------- cost
@dataclass
class ObjectiveConfig:
    initial_weight: float = 1.0
    weight_target: float = 1.0


def _default_objectives() -> Dict[str, ObjectiveConfig]:
    return {"cov": ObjectiveConfig(1.0, 1.0), "bbox": ObjectiveConfig(10.0, 10.0)}


@dataclass
class CostClassConfig:
    class_weight: float = 1.0
    coverage_foreground_weight: float = 0.05
    objectives: Dict[str, ObjectiveConfig] = field(default_factory=_default_objectives)


@dataclass
class CostConfig:
    """TLT ``cost_function_config``: per-class weights and objectives, objective autoweighting."""

    target_classes: Dict[str, CostClassConfig] = field(default_factory=dict)
    enable_autoweighting: bool = True
    max_objective_weight: float = 0.9999
    min_objective_weight: float = 0.0001
    # not in TLT: scaled_l1 weighs an edge's error relative to the object's size, as IoU does
    bbox_loss: BboxLoss = BboxLoss.l1


# --------------------------------------------------------------------------- synth (task block)
@dataclass
class SynthConfig:
    """The synthetic KITTI-format road-scene generator (``transferdet synth``)."""

    num_images: int = 1000
    seed: int = 0
    image_width: int = 384
    image_height: int = 128
    min_objects: int = 0
    max_objects: int = 7
    # relative frequency of each class (synth/default.yaml: KITTI-like imbalance, cyclists rarest)
    class_frequencies: Dict[str, float] = field(default_factory=dict)
    dontcare_probability: float = 0.3  # chance that an image has a far-away crowd marked dontcare
    num_distractors: int = 6  # upper bound of clutter objects (poles, signs, bins, blobs) per image
    noise_stddev: float = 0.03  # pixel noise, in [0,1] intensity units
    min_object_height: float = 10.0  # pixels; objects farther away than this are not placed
    style: SynthStyle = SynthStyle.flat
    # object heights: null = the default spread; a fraction of the image height = the median of a log-normal
    # with the spread below (KITTI's cars: median 0.12, spread 0.65)
    object_height_median: Optional[float] = None
    object_height_spread: float = 0.65
    blur_max: float = 0.0  # Gaussian blur of the whole image, sigma drawn in [0, blur_max] pixels
    jpeg_quality_min: int = 100  # < 100: each image passes through JPEG at a quality drawn in [this, 100]
    overwrite: bool = False  # replace an existing dataset at dataset.root


# --------------------------------------------------------------------------- export / calibrate (task blocks)
class DataType(Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class CalibrationMethod(Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


@dataclass
class CalibrationConfig:
    """INT8 calibration data: ``batches`` x ``batch_size`` training images, preprocessed, not augmented."""

    batches: int = 10
    batch_size: int = 8
    cal_data_file: Optional[str] = None  # a tensor file from `transferdet calibrate`; null = draw images now
    calibration_method: CalibrationMethod = CalibrationMethod.minmax


class Int8Activations(Enum):
    uint8 = "uint8"
    int8 = "int8"


@dataclass
class ExportConfig:
    """TLT ``tlt-export`` options."""

    data_type: DataType = DataType.fp32
    max_batch_size: int = 8
    max_workspace_size: int = 2 << 30  # bytes, for the TensorRT engine build
    max_map_drop: float = 1.0  # points of mAP an exported precision may lose against PyTorch fp32
    parity_images: int = 32  # validation images for the output comparison
    engine: bool = True  # build a TensorRT engine where TensorRT and a GPU exist
    # activations of the ONNX Runtime INT8 model (model_int8_onnxruntime.onnx): uint8 (asymmetric: post-ReLU
    # tensors keep all 8 bits) or int8; the portable QDQ model (model_int8_qdq.onnx) is always symmetric int8
    int8_activations: Int8Activations = Int8Activations.uint8
    # bits of the INT8 models' weights: 7 keeps the 8-bit dot products of CPUs without VNNI (AVX2, AVX-512 before
    # VNNI) from saturating in ONNX Runtime or OpenVINO; 8 for a model only GPUs or VNNI CPUs run
    int8_weight_bits: int = 7
    tensorrt_version: str = "10.13.0"  # the TensorRT the calibration cache is written for (8.x to 10.x)
    triton: bool = False  # also a Triton Inference Server model repository (triton/)
    deepstream_video: Optional[str] = None  # the video deepstream_app_config.txt runs (default: DeepStream's sample)


# --------------------------------------------------------------------------- pruning (task block)
class Normalizer(Enum):
    max = "max"
    L2 = "L2"


class EqualizationCriterion(Enum):
    union = "union"
    intersection = "intersection"
    arithmetic_mean = "arithmetic_mean"
    geometric_mean = "geometric_mean"


@dataclass
class PruningConfig:
    """TLT ``tlt-prune`` options (-pth, -n, -eq, -pg, -nf, -el) plus a target parameter ratio."""

    pruning_threshold: float = 0.1
    normalizer: Normalizer = Normalizer.max
    equalization_criterion: EqualizationCriterion = EqualizationCriterion.union
    pruning_granularity: int = 8
    min_num_filters: int = 16
    excluded_layers: List[str] = field(default_factory=list)
    target_ratio: Optional[float] = None  # find the threshold giving params(pruned)/params(original) <= this


GROUP_SCHEMAS: Dict[str, Any] = {
    "dataset": DatasetConfig,
    "augmentation": AugmentationConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
    "rasterizer": RasterizerConfig,
    "postprocessing": PostprocessingConfig,
    "cost": CostConfig,
    "synth": SynthConfig,
    "export": ExportConfig,
    "calibration": CalibrationConfig,
    "pruning": PruningConfig,
}


def sweep_group() -> Optional[str]:
    """``${sweep_group:}``: the sweep directory's name in a multirun (so the trials of one sweep share a
    W&B group), None in a single run."""
    try:
        hc = HydraConfig.get()
    except ValueError:  # not inside a Hydra run
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    return f"{hc.job.name}-{Path(hc.sweep.dir).name}"


def register_configs() -> None:
    """Register each schema as ``<group>/base`` and our resolvers (idempotent)."""
    if not OmegaConf.has_resolver("sweep_group"):
        OmegaConf.register_new_resolver("sweep_group", sweep_group)
    cs = ConfigStore.instance()
    for group, node in GROUP_SCHEMAS.items():
        cs.store(group=group, name="base", node=node)
