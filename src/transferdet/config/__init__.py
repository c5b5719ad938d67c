"""Config schemas (typed, registered in Hydra's ConfigStore) and the validate() step."""

from transferdet.config.schema import register_configs
from transferdet.config.validate import target_classes, typed, validate

__all__ = ["register_configs", "target_classes", "typed", "validate"]
