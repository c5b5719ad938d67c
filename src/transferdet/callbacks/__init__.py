"""Lightning callbacks of transferdet (selected in the ``callbacks`` config group)."""

from transferdet.callbacks.data_order import DataOrderLog

__all__ = ["DataOrderLog"]
