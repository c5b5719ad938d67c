"""What a user may change on a trained model, and nothing else: :class:`DetectorOverrides`.

The six tasks that take a checkpoint (evaluate, infer, prune, calibrate, export, benchmark) run a model
with the settings it was trained with. Three of them may be changed on the command line, with the same
keys as the training config: the input size (``augmentation.preprocessing.output_image_width``,
``..._height``, ``...resize``; the network is fully convolutional), the clustering
(``postprocessing.target_class_config.<class>.clustering_config.*``) and the evaluation
(``evaluation.*``). Everything else (architecture, classes, training augmentation) belongs to the
checkpoint. The overrides are type-checked here, once, and applied by
:meth:`transferdet.detector.DetectorSpec.with_overrides`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferdet.config.schema import EvaluationConfig, PostprocessingConfig, PreprocessingConfig
from transferdet.config.structured import from_plain
from transferdet.errors import ConfigError

# the config keys of a checkpoint task that hold overrides, as they are spelt on the command line
OVERRIDE_ROOTS = ("augmentation", "postprocessing", "evaluation")
PREPROCESSING_KEYS = ("output_image_width", "output_image_height", "resize")


def _plain(node: Any) -> dict:
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)  # type: ignore[return-value]
    return dict(node)


@dataclass(frozen=True)
class DetectorOverrides:
    """Partial settings over a checkpoint's own: only the keys a user set, type-checked against the schemas."""

    preprocessing: Mapping[str, Any] = field(default_factory=dict)  # of PreprocessingConfig
    postprocessing: Mapping[str, Any] = field(default_factory=dict)  # of PostprocessingConfig
    evaluation: Mapping[str, Any] = field(default_factory=dict)  # of EvaluationConfig

    def __post_init__(self) -> None:
        unknown = sorted(set(self.preprocessing) - set(PREPROCESSING_KEYS))
        if unknown:
            raise ConfigError(
                f"augmentation.preprocessing.{unknown[0]}",
                self.preprocessing[unknown[0]],
                f"on a trained model only augmentation.preprocessing.{{{', '.join(PREPROCESSING_KEYS)}}} "
                "(the rest is the training's)",
            )
        from_plain(PreprocessingConfig, self.preprocessing, "augmentation.preprocessing")
        from_plain(PostprocessingConfig, self.postprocessing, "postprocessing")
        from_plain(EvaluationConfig, self.evaluation, "evaluation")

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> DetectorOverrides:
        """The overrides a checkpoint task's config holds (its ``augmentation``, ``postprocessing`` and
        ``evaluation`` nodes; absent nodes override nothing)."""
        augmentation = _plain(cfg.get("augmentation"))
        other = sorted(set(augmentation) - {"preprocessing"})
        if other:
            raise ConfigError(
                f"augmentation.{other[0]}",
                augmentation[other[0]],
                "on a trained model only augmentation.preprocessing (training augmentation belongs to training)",
            )
        return cls(
            preprocessing=_plain(augmentation.get("preprocessing")),
            postprocessing=_plain(cfg.get("postprocessing")),
            evaluation=_plain(cfg.get("evaluation")),
        )

    def __bool__(self) -> bool:
        return bool(self.preprocessing or self.postprocessing or self.evaluation)


def checkpoint_override_args(args: list[str]) -> list[str]:
    """On a task that runs a trained model, ``postprocessing.…=V`` (and ``evaluation.…``,
    ``augmentation.preprocessing.…``) override the checkpoint's own settings: its nodes start empty, so the
    keys are added (Hydra's ``++``) and checked against the schemas when the task applies them."""
    out = []
    for arg in args:
        key = arg.split("=", 1)[0]
        if "=" in arg and key.split(".", 1)[0] in OVERRIDE_ROOTS and not key.startswith(("+", "~")):
            arg = ("++" if "." in key else "+") + arg  # a whole group option: postprocessing=kitti
        out.append(arg)
    return out
