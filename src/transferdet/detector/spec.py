"""The detector spec: everything a trained DetectNet_v2 is besides its weights.

A :class:`DetectorSpec` names the classes, the preprocessing (input canvas), the architecture (ResNet
depth, normalisation, box encoding, and for a pruned model its channel plan), the post-processing and the
evaluation settings. A checkpoint, an exported ONNX model and every predictor carry one; it converts to
and from a plain dict (JSON/YAML), so it travels inside files without pickled objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transferdet.config.overrides import DetectorOverrides
from transferdet.config.schema import (
    AugmentationConfig,
    EvaluationConfig,
    ModelConfig,
    PostprocessingConfig,
    PreprocessingConfig,
)
from transferdet.config.structured import from_plain, merge_plain, to_plain
from transferdet.config.validate import validate_augmentation, validate_evaluation, validate_postprocessing
from transferdet.errors import ConfigError
from transferdet.evaluation.evaluator import Evaluator
from transferdet.models.detectnet import STRIDE, DetectNetV2, apply_channel_plan
from transferdet.postprocess.flip import Outputs, flip_averaged
from transferdet.postprocess.postprocessor import Postprocessor

SPEC_VERSION = 2  # 1: the settings as the training config's groups (read by transferdet.detector.checkpoint)

ChannelPlan = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class DetectorSpec:
    """What a trained detector is, besides its weights. Immutable: changes make a new spec."""

    classes: tuple[str, ...]
    preprocessing: PreprocessingConfig
    model: ModelConfig
    postprocessing: PostprocessingConfig
    evaluation: EvaluationConfig
    channel_plan: ChannelPlan | None = None  # the layer shapes of a pruned model; None = unpruned
    version: int = SPEC_VERSION

    @property
    def width(self) -> int:
        return self.preprocessing.output_image_width

    @property
    def height(self) -> int:
        return self.preprocessing.output_image_height

    # ------------------------------------------------------------------ plain dicts
    def to_dict(self) -> dict[str, Any]:
        """Plain containers only (enums as their names): for checkpoints, ONNX metadata, config.yaml."""
        plan = {k: list(v) for k, v in self.channel_plan.items()} if self.channel_plan else None
        return {
            "version": self.version,
            "classes": list(self.classes),
            "preprocessing": to_plain(self.preprocessing),
            "model": to_plain(self.model),
            "postprocessing": to_plain(self.postprocessing),
            "evaluation": to_plain(self.evaluation),
            "channel_plan": plan,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetectorSpec:
        """The inverse of :meth:`to_dict`; a ConfigError names the first key that does not fit the schema."""
        if not isinstance(d, Mapping) or d.get("version") != SPEC_VERSION:
            found = d.get("version") if isinstance(d, Mapping) else type(d).__name__
            raise ConfigError("spec.version", found, f"{SPEC_VERSION} (a spec written by this transferdet)")
        classes = d.get("classes")
        if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) for c in classes):
            raise ConfigError("spec.classes", classes, "a non-empty list of class names")
        plan = d.get("channel_plan")
        if plan is not None and not (
            isinstance(plan, Mapping)
            and all(
                isinstance(v, (list, tuple)) and all(isinstance(n, int) and n > 0 for n in v) for v in plan.values()
            )
        ):
            raise ConfigError("spec.channel_plan", "...", "layer name -> [out, in] channel counts (positive integers)")
        return cls.from_groups(
            classes,
            from_plain(PreprocessingConfig, d.get("preprocessing"), "spec.preprocessing"),
            from_plain(ModelConfig, d.get("model"), "spec.model"),
            from_plain(PostprocessingConfig, d.get("postprocessing"), "spec.postprocessing"),
            from_plain(EvaluationConfig, d.get("evaluation"), "spec.evaluation"),
            plan,
        )

    @classmethod
    def from_groups(
        cls,
        classes: Sequence[str],
        preprocessing: PreprocessingConfig,
        model: ModelConfig,
        postprocessing: PostprocessingConfig,
        evaluation: EvaluationConfig,
        channel_plan: ChannelPlan | None = None,
    ) -> DetectorSpec:
        """A spec from the typed config groups of a training run; the per-class settings must name the classes."""
        classes = tuple(classes)
        for key, names in (
            ("postprocessing.target_class_config", postprocessing.target_class_config),
            ("evaluation.minimum_detection_ground_truth_overlap", evaluation.minimum_detection_ground_truth_overlap),
        ):
            missing = [c for c in classes if c not in names]
            if missing:
                raise ConfigError(key, sorted(names), f"an entry for every class ({', '.join(classes)})")
        plan = {str(k): tuple(int(n) for n in v) for k, v in channel_plan.items()} if channel_plan else None
        return cls(classes, preprocessing, model, postprocessing, evaluation, plan)

    # ------------------------------------------------------------------ changes
    def replace(self, **changes: Any) -> DetectorSpec:
        """A copy with some fields changed (e.g. ``channel_plan`` after pruning)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: DetectorOverrides | None) -> DetectorSpec:
        """This spec with a user's overrides applied (input size, clustering, evaluation), range-checked."""
        if not overrides:
            return self
        known = ", ".join(self.classes)
        per_class = [
            ("postprocessing.target_class_config", overrides.postprocessing.get("target_class_config") or {}),
            (
                "evaluation.minimum_detection_ground_truth_overlap",
                overrides.evaluation.get("minimum_detection_ground_truth_overlap") or {},
            ),
            ("evaluation.evaluation_box_config", overrides.evaluation.get("evaluation_box_config") or {}),
        ]
        for key, entries in per_class:
            unknown = [c for c in entries if c not in self.classes]
            if unknown:
                raise ConfigError(f"{key}.{unknown[0]}", entries[unknown[0]], f"a class of the model ({known})")
        pre = merge_plain(self.preprocessing, overrides.preprocessing, "augmentation.preprocessing")
        validate_augmentation(AugmentationConfig(preprocessing=pre))
        post = merge_plain(self.postprocessing, overrides.postprocessing, "postprocessing")
        validate_postprocessing(post)
        evaluation = merge_plain(self.evaluation, overrides.evaluation, "evaluation")
        validate_evaluation(evaluation)
        return self.replace(preprocessing=pre, postprocessing=post, evaluation=evaluation)

    # ------------------------------------------------------------------ what a spec builds
    def build_network(self) -> DetectNetV2:
        """The network of this spec with freshly initialised weights (pruned shapes included)."""
        m = self.model
        net = DetectNetV2(
            len(self.classes),
            m.num_layers,
            use_batch_norm=m.use_batch_norm,
            mean=m.input_normalization.mean,
            std=m.input_normalization.std,
        )
        if self.channel_plan:
            apply_channel_plan(net, self.channel_plan)
        return net

    def postprocessor(self) -> Postprocessor:
        """The post-processing of this spec: coverage/bbox maps to boxes on its canvas."""
        box = self.model.objective_set.bbox
        return Postprocessor(
            self.classes,
            self.postprocessing,
            width=self.width,
            height=self.height,
            stride=STRIDE,
            bbox_scale=box.scale,
            bbox_offset=box.offset,
        )

    def network_outputs(self, run: Outputs) -> Outputs:
        """``run`` (a network: preprocessed batch -> cov, bbox maps) as this spec uses it: with
        ``postprocessing.test_time_flip``, averaged with the outputs of the mirrored batch."""
        if not self.postprocessing.test_time_flip:
            return run
        box = self.model.objective_set.bbox
        return flip_averaged(run, STRIDE, box.scale, box.offset)

    def evaluator(self) -> Evaluator:
        """The evaluator of this spec's classes and evaluation settings."""
        return Evaluator(self.classes, self.evaluation)

    def as_config(self) -> dict[str, Any]:
        """The settings that apply, spelt as a training config's keys (for a run's config.yaml)."""
        d = self.to_dict()
        return {
            "classes": d["classes"],
            "model": d["model"],
            "augmentation": {"preprocessing": d["preprocessing"]},
            "postprocessing": d["postprocessing"],
            "evaluation": d["evaluation"],
            "pruned": self.channel_plan is not None,
        }
