"""Lightning callbacks of transferdet (selected in the ``callbacks`` config group)."""

from transferdet.callbacks.data_order import DataOrderLog
from transferdet.callbacks.epoch_log import EpochLog
from transferdet.callbacks.pruning import PruningCallback

__all__ = ["DataOrderLog", "EpochLog", "PruningCallback"]
